//! Closing connections that hold a slot and do nothing.
//!
//! hyper's header timeout starts only once a request's first bytes arrive, so a client that
//! connects and sends nothing, or keeps a connection alive between requests and never sends
//! the next one, would hold one of the `max_connections` slots for ever. [`Idle`] knows when
//! a connection last moved a byte and whether a request is in flight on it (a response body
//! still streaming counts: an event stream may be silent for minutes); [`Idle::expired`]
//! resolves once it has been idle, with nothing in flight, for the limit.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's activity.
pub struct Idle {
    started: Instant,
    /// Milliseconds since `started` when a byte last moved.
    last_ms: AtomicU64,
    /// Requests whose response has not been sent to the end.
    busy: AtomicUsize,
    /// Requests begun on this connection.
    served: AtomicUsize,
}

impl Idle {
    pub fn new() -> Arc<Idle> {
        Arc::new(Idle {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// A request starts; it is in flight until the returned guard is dropped (with its
    /// response body).
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once nothing was in flight and no byte moved for `first` before the first
    /// request (a client that connects and sends nothing), or for `between` after one (a
    /// keep-alive connection waiting for the next: longer than clients keep pooled
    /// connections, so that none sends a request on a connection being closed).
    pub async fn expired(&self, first: Duration, between: Duration) {
        loop {
            let limit = if self.served.load(Ordering::Relaxed) == 0 {
                first
            } else {
                between
            };
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if self.busy.load(Ordering::Relaxed) == 0 && quiet >= limit {
                return;
            }
            let wait = if quiet >= limit { limit } else { limit - quiet };
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }
}

/// A request in flight ([`Idle::begin`]).
pub struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub fn held(body: Body, busy: Busy) -> Body {
    Body::new(Held { body, _busy: busy })
}

struct Held {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The connection's stream, noting every byte read or written.
pub struct Touching<S> {
    pub inner: S,
    pub idle: Arc<Idle>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Touching<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.idle.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touching<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.idle.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_never_sent_a_request_has_the_first_limit() {
        let idle = Idle::new();
        let (first, between) = (Duration::from_millis(100), Duration::from_secs(60));
        let t = Instant::now();
        idle.expired(first, between).await;
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(idle.begin());
        let waited = tokio::time::timeout(Duration::from_millis(500), idle.expired(first, between)).await;
        assert!(waited.is_err(), "after a request, the keep-alive limit applies");
    }

    #[tokio::test]
    async fn idle_only_with_nothing_in_flight_for_the_limit() {
        let idle = Idle::new();
        let limit = Duration::from_millis(200);
        let busy = idle.begin();
        // In flight for longer than the limit: never idle.
        assert!(tokio::time::timeout(3 * limit, idle.expired(limit, limit))
            .await
            .is_err());
        drop(busy);
        let t = Instant::now();
        idle.expired(limit, limit).await;
        assert!(t.elapsed() >= limit);
        // A byte moving starts the quiet time over.
        let t = Instant::now();
        idle.touch();
        idle.expired(limit, limit).await;
        assert!(t.elapsed() >= limit);
    }
}

//! Streamed answers whose client stops reading.
//!
//! A streamed body is pulled by its client, so a client that stops reading (but stays
//! connected) would hold its model for as long as it likes: the generation waits on a full
//! socket and every other request for that model waits behind it. [`driven`] runs the stream
//! on its own task into a small buffer instead; when the client has not taken a frame for
//! `[daemon] stall_timeout`, the stream is told why ([`Stalled::stalled`]: its request
//! ends `failed` with that reason) and dropped, which stops the generation and frees the
//! model. A client that disconnects ends it at once.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc::{self, error::SendTimeoutError};

/// Frames produced ahead of what the client has read.
const BUFFER: usize = 8;

/// A stream's state that can be told its client stopped reading.
pub trait Stalled: Send + 'static {
    fn stalled(&mut self, why: &str);
}

/// The frames `step` produces from `state`, driven on a task of their own and dropped when
/// the client stops reading for `stall`.
pub fn driven<T, F, Fut>(state: T, mut step: F, stall: Duration) -> impl Stream<Item = Result<Bytes, Infallible>> + Send
where
    T: Stalled,
    F: FnMut(T) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Bytes, T)>> + Send,
{
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
    tokio::spawn(async move {
        let mut state = state;
        loop {
            // A client that disconnects ends the stream at once, even mid-step (a request
            // waiting in the queue leaves it).
            let produced = tokio::select! {
                produced = step(state) => produced,
                () = tx.closed() => return,
            };
            let Some((bytes, next)) = produced else { return };
            state = next;
            match tx.send_timeout(bytes, stall).await {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(_)) => {
                    let why = format!(
                        "the client stopped reading the stream for {}",
                        crate::units::format_duration(stall)
                    );
                    tracing::warn!("{why}; stopping its generation");
                    state.stalled(&why);
                    return;
                }
                Err(SendTimeoutError::Closed(_)) => return,
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) })
}

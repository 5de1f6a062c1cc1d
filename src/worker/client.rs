//! The daemon's side of the worker protocol (`vramd-protocol`): HTTP/1.1 over the worker's
//! private Unix socket, one connection per call. Dropping a generation stream closes its
//! connection, which is how the worker learns that the client went away (that is the
//! protocol's cancel).
//!
//! This is the only module that names a worker endpoint: everyone else calls the typed
//! methods of [`WorkerClient`] (the arbiter through its grants and lifecycle tasks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vramd_protocol::{
    EmbedRequest, EmbedResponse, GenerateEvent, GenerateRequest, Health, ImageEvent, ImageRequest, RestoreResponse,
    UnloadMode, UnloadRequest, WorkerError,
};

/// Why a call to a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The worker answered with an error of its own.
    #[error("{0}")]
    Worker(WorkerError, StatusCode),
    /// Nothing listens on the worker's socket: the worker is gone, and the request never
    /// reached it.
    #[error("worker unreachable: {0}")]
    Unreachable(String),
    /// The worker broke the connection (crashed, killed) after the request reached it.
    #[error("worker connection failed: {0}")]
    Transport(String),
    /// The worker answered something that is not the protocol.
    #[error("worker protocol violation: {0}")]
    Protocol(String),
}

#[derive(Clone, Debug)]
pub struct WorkerClient {
    socket: PathBuf,
}

impl WorkerClient {
    pub fn new(socket: &Path) -> WorkerClient {
        WorkerClient {
            socket: socket.to_owned(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn health(&self) -> Result<Health, CallError> {
        let resp = self.send("GET", vramd_protocol::HEALTH, None::<&()>).await?;
        read_json(resp).await
    }

    /// Drops the KV cache and compute buffers (`soft`) and reports what is held after.
    pub async fn unload(&self, mode: UnloadMode) -> Result<Health, CallError> {
        self.post(vramd_protocol::UNLOAD, &UnloadRequest { mode }).await
    }

    /// Recreates the context a soft unload dropped.
    pub async fn restore(&self) -> Result<RestoreResponse, CallError> {
        self.post(vramd_protocol::RESTORE, &serde_json::json!({})).await
    }

    /// Pooled embeddings of the inputs (a model loaded as an embedding model).
    pub async fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, CallError> {
        self.post(vramd_protocol::EMBED, req).await
    }

    pub(super) async fn post<B: Serialize, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, CallError> {
        let resp = self.send("POST", path, Some(body)).await?;
        read_json(resp).await
    }

    /// Starts a generation. Errors the worker reports before streaming come back as
    /// [`CallError::Worker`]; afterwards events arrive through [`EventStream`].
    pub async fn generate(&self, req: &GenerateRequest) -> Result<EventStream<GenerateEvent>, CallError> {
        self.stream(vramd_protocol::GENERATE, req).await
    }

    /// Starts an image generation (image workers).
    pub async fn image(&self, req: &ImageRequest) -> Result<EventStream<ImageEvent>, CallError> {
        self.stream(vramd_protocol::IMAGES, req).await
    }

    async fn stream<B: Serialize, E>(&self, path: &str, req: &B) -> Result<EventStream<E>, CallError> {
        let resp = self.send("POST", path, Some(req)).await?;
        if !resp.status().is_success() {
            return Err(read_json::<()>(resp).await.expect_err("non-success status is an error"));
        }
        Ok(EventStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
            _event: std::marker::PhantomData,
        })
    }

    async fn send<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<hyper::Response<Incoming>, CallError> {
        let transport = |e: &dyn std::fmt::Display| CallError::Transport(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transport(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| CallError::Protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "worker")
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| CallError::Protocol(e.to_string()))?;
        sender.send_request(req).await.map_err(|e| transport(&e))
    }
}

async fn read_json<R: DeserializeOwned>(resp: hyper::Response<Incoming>) -> Result<R, CallError> {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return match serde_json::from_slice::<WorkerError>(&body) {
            Ok(e) => Err(CallError::Worker(e, status)),
            Err(_) => Err(CallError::Protocol(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ))),
        };
    }
    serde_json::from_slice(&body).map_err(|e| CallError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&body))))
}

/// The NDJSON event stream of one generation.
pub struct EventStream<E> {
    body: Incoming,
    buf: BytesMut,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: DeserializeOwned> EventStream<E> {
    /// The next event; `Ok(None)` at a clean end (a worker that died mid-stream shows as a
    /// [`CallError::Transport`], or as `None` before the final event, which callers check).
    pub async fn next(&mut self) -> Result<Option<E>, CallError> {
        loop {
            if let Some(event) = next_event(&mut self.buf) {
                return event.map(Some);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => return Err(CallError::Transport(e.to_string())),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(CallError::Protocol("stream ended inside an event line".into())),
            }
        }
    }
}

/// The next event of an NDJSON stream from the bytes read so far: `None` until a whole line
/// is there (blank lines are skipped); the line is taken off `buf` either way. The framing,
/// apart from the I/O, so it can be fuzzed (`tests::framing_*`).
fn next_event<E: DeserializeOwned>(buf: &mut BytesMut) -> Option<Result<E, CallError>> {
    loop {
        let nl = buf.iter().position(|b| *b == b'\n')?;
        let line = buf.split_to(nl + 1);
        let line = &line[..nl];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Some(serde_json::from_slice(line).map_err(|e| CallError::Protocol(format!("bad event line: {e}"))));
    }
}

/// Polls `GET /internal/health` until it answers, the deadline passes, or `alive` says the
/// process is gone.
pub async fn wait_ready(
    client: &WorkerClient,
    deadline: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<Health, String> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        match client.health().await {
            Ok(h) => return Ok(h),
            Err(e) if started.elapsed() >= deadline => {
                return Err(format!("worker did not become ready within {deadline:?}: {e}"))
            }
            Err(_) => {}
        }
        if !alive() {
            return Err("worker exited before it became ready".into());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vramd_protocol::ImageEvent;

    fn events() -> Vec<ImageEvent> {
        vec![
            ImageEvent::Started { switch_ms: 3 },
            ImageEvent::Progress { step: 1, steps: 2 },
            ImageEvent::Preview {
                step: 1,
                png_base64: "iVBORw0KGgo=".into(),
            },
            ImageEvent::Image {
                index: 0,
                seed: 42,
                png_base64: "iVBORw0KGgo=".repeat(50),
            },
        ]
    }

    /// Every event the stream holds, fed in `chunks`.
    fn read_all(stream: &[u8], cuts: &[usize]) -> Vec<Result<ImageEvent, String>> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(stream.len());
        for cut in cuts {
            buf.extend_from_slice(&stream[at..cut.max(at)]);
            at = cut.max(at);
            while let Some(e) = next_event::<ImageEvent>(&mut buf) {
                out.push(e.map_err(|e| e.to_string()));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// However the bytes arrive, the same events come out, blank lines ignored.
        #[test]
        fn framing_does_not_depend_on_how_bytes_arrive(cuts in prop::collection::vec(any::<usize>(), 0..12), blank in any::<bool>()) {
            let mut stream = Vec::new();
            for e in events() {
                stream.extend(serde_json::to_vec(&e).unwrap());
                stream.push(b'\n');
                if blank {
                    stream.extend(b"  \n");
                }
            }
            let got: Vec<ImageEvent> = read_all(&stream, &cuts).into_iter().map(Result::unwrap).collect();
            prop_assert_eq!(got, events());
        }

        /// Whatever a (broken) worker sends, framing ends in events or protocol errors: never
        /// a panic, and every complete line is consumed.
        #[test]
        fn framing_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            let lines = bytes.iter().filter(|b| **b == b'\n').count();
            let got = read_all(&bytes, &cuts);
            prop_assert!(got.len() <= lines);
            for e in got.iter().filter_map(|e| e.as_ref().err()) {
                prop_assert!(e.contains("bad event line"), "{}", e);
            }
        }
    }
}

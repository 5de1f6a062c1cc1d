//! The engine thread both workers are built around: one OS thread owns the native library's
//! state (it is not `Sync` and every call blocks) and takes calls from a channel; the async
//! side only submits calls and reads the shared [`Health`], which answers even mid-generation.
//!
//! A call (each worker's `EngineCall`) carries the channel its answer goes back on: a
//! `oneshot` for a single answer ([`Engine::ask`]), an `mpsc` of [`Out`]s for a stream
//! ([`Engine::stream`]).

use std::sync::{mpsc, Arc, Mutex};

use axum::response::Response;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};
use vramd_protocol::{Bytes, ErrorCode, Health, WorkerError, WorkerState};

use crate::http::{error, ApiError};
use crate::ndjson::{stream_response, Out, StreamEvent};

/// The async side's handle on an engine thread taking calls of type `C`.
pub struct Engine<C> {
    calls: mpsc::Sender<C>,
    health: Arc<Mutex<Health>>,
    /// "the llama thread": how errors name it.
    what: &'static str,
}

impl<C> Clone for Engine<C> {
    fn clone(&self) -> Self {
        Engine {
            calls: self.calls.clone(),
            health: self.health.clone(),
            what: self.what,
        }
    }
}

/// The engine thread's stack: the C++ engines recurse over their input (stable-diffusion.cpp
/// parses a prompt with `std::regex`, about 300 bytes of stack per character), and a Rust
/// thread's default 2 MiB overflowed on an 8 KiB prompt, killing the worker. This is address
/// space, not memory: only the pages a deep recursion touches are ever backed.
pub const ENGINE_STACK: usize = 1 << 30;

impl<C: Send + 'static> Engine<C> {
    /// Starts the thread `name` running `run`. A worker whose engine thread panicked is
    /// useless, so the process then exits 70 (EX_SOFTWARE) and the daemon sees it.
    pub fn start(
        name: &str,
        what: &'static str,
        run: impl FnOnce(mpsc::Receiver<C>, HealthWriter) + Send + 'static,
    ) -> std::io::Result<Engine<C>> {
        let (calls, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(empty_health()));
        let writer = HealthWriter(health.clone());
        let thread = std::thread::Builder::new().name(name.into()).stack_size(ENGINE_STACK);
        thread.spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(rx, writer)));
            if ran.is_err() {
                tracing::error!("{what} panicked; exiting");
                std::process::exit(70);
            }
        })?;
        Ok(Engine { calls, health, what })
    }

    /// Queues `call` behind the ones already sent (the channel is the queue).
    pub fn submit(&self, call: C) -> Result<(), WorkerError> {
        self.calls.send(call).map_err(|_| self.stopped())
    }

    /// Submits the call `make` builds around a reply channel and waits for the answer. The
    /// handler awaits; the engine thread is never blocked on.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> C) -> Result<T, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.submit(make(reply))?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Submits the call `make` builds around a stream channel of `buffer` events and answers
    /// with what the engine sends on it (see [`stream_response`]).
    pub async fn stream<E: StreamEvent>(
        &self,
        buffer: usize,
        make: impl FnOnce(tokio_mpsc::Sender<Out<E>>) -> C,
    ) -> Result<Response, ApiError> {
        let (out, rx) = tokio_mpsc::channel(buffer);
        self.submit(make(out))?;
        stream_response(rx, self.stopped()).await
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// The error for an engine thread that no longer takes calls or dropped an answer.
    fn stopped(&self) -> WorkerError {
        error(ErrorCode::Internal, format!("{} has stopped", self.what))
    }
}

fn lock(h: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker with no model.
pub fn empty_health() -> Health {
    Health {
        state: WorkerState::Empty,
        model: None,
        bytes: Bytes::default(),
        peak_bytes: 0,
        pid: std::process::id(),
        device: "cpu".into(),
        cpu: None,
        image: None,
    }
}

/// A GPU as [`Health::device`] names it: `backend` lower-cased and the index that ends the
/// library's device name (`CUDA`, `CUDA0` → `cuda:0`; no index is 0).
pub fn device_label(backend: &str, device_name: &str) -> String {
    let index = device_name.trim_start_matches(|c: char| !c.is_ascii_digit());
    let index = if index.is_empty() { "0" } else { index };
    format!("{}:{index}", backend.to_ascii_lowercase())
}

/// The engine thread's writer of the shared [`Health`]; every update keeps the peak.
pub struct HealthWriter(Arc<Mutex<Health>>);

impl HealthWriter {
    pub fn update(&self, f: impl FnOnce(&mut Health)) -> Health {
        let mut h = lock(&self.0);
        f(&mut h);
        h.peak_bytes = h.peak_bytes.max(h.bytes.total);
        h.clone()
    }

    pub fn set_state(&self, state: WorkerState) -> Health {
        self.update(|h| h.state = state)
    }

    /// A load of `model` has begun: nothing is held any more (the peak starts again).
    pub fn loading(&self, model: &str) -> Health {
        self.update(|h| {
            *h = Health {
                cpu: h.cpu.take(),
                ..empty_health()
            };
            h.state = WorkerState::Loading;
            h.model = Some(model.to_owned());
        })
    }

    /// Nothing loaded any more; what the worker is (its [`Health::cpu`]) stays.
    pub fn clear(&self) -> Health {
        self.update(|h| {
            *h = Health {
                cpu: h.cpu.take(),
                ..empty_health()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_labelled_backend_colon_index() {
        assert_eq!(device_label("CUDA", "CUDA0"), "cuda:0");
        assert_eq!(device_label("Vulkan", "Vulkan1"), "vulkan:1");
        assert_eq!(device_label("Metal", "Metal"), "metal:0");
    }

    #[test]
    fn the_writer_keeps_the_peak_and_a_load_starts_afresh() {
        let writer = HealthWriter(Arc::new(Mutex::new(empty_health())));
        writer.update(|h| h.bytes = Bytes::new(10, 5, 0));
        let h = writer.update(|h| h.bytes = Bytes::new(10, 0, 0));
        assert_eq!((h.bytes.total, h.peak_bytes), (10, 15));
        let h = writer.loading("m");
        assert_eq!(
            (h.state, h.model.as_deref(), h.peak_bytes),
            (WorkerState::Loading, Some("m"), 0)
        );
        assert_eq!(writer.clear(), empty_health());
    }
}

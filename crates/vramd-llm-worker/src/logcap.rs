//! Reading facts out of llama.cpp's log.
//!
//! llama-cpp-2 turns llama.cpp's and ggml's log into tracing events (target `llama-cpp-2`).
//! Two facts exist only there: the compute buffer sizes printed while a context is created,
//! and the reason a model failed to load. [`CaptureLayer`] watches those events and keeps
//! them in one process-wide [`Capture`]; the engine thread (the only caller of llama.cpp)
//! brackets a load or a context creation with [`begin`] and [`take`].
//!
//! The layer has its own filter, so it sees llama.cpp's info lines even when `RUST_LOG`
//! hides them from stderr.

use std::fmt::Debug;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::memory;

/// The target llama-cpp-2 gives the events it forwards from llama.cpp and ggml.
pub const LLAMA_TARGET: &str = "llama-cpp-2";

/// Error lines kept for a load failure message.
const MAX_ERRORS: usize = 4;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Sum of the `compute buffer size = … MiB` lines seen.
    pub compute_bytes: u64,
    /// The last error-level lines, oldest first.
    pub errors: Vec<String>,
}

impl Capture {
    /// Why the call it watched failed: the error lines llama.cpp logged, else `fallback`
    /// (llama-cpp-2's own error, which says less).
    pub fn reason(&self, fallback: impl std::fmt::Display) -> String {
        if self.errors.is_empty() {
            fallback.to_string()
        } else {
            self.errors.join("; ")
        }
    }
}

static CAPTURE: Mutex<Capture> = Mutex::new(Capture {
    compute_bytes: 0,
    errors: Vec::new(),
});

fn lock() -> std::sync::MutexGuard<'static, Capture> {
    CAPTURE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts a fresh capture.
pub fn begin() {
    *lock() = Capture::default();
}

/// Ends the capture and returns what it saw.
pub fn take() -> Capture {
    std::mem::take(&mut *lock())
}

/// Whether an event comes from llama.cpp (the filter of [`CaptureLayer`]).
pub fn is_llama_log(meta: &Metadata<'_>) -> bool {
    meta.target() == LLAMA_TARGET
}

pub struct CaptureLayer;

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !is_llama_log(event.metadata()) {
            return;
        }
        let mut message = MessageVisitor(String::new());
        event.record(&mut message);
        let message = message.0;
        let mut cap = lock();
        if let Some(bytes) = memory::parse_compute_buffer(&message) {
            cap.compute_bytes += bytes;
        }
        if *event.metadata().level() == Level::ERROR {
            if cap.errors.len() == MAX_ERRORS {
                cap.errors.remove(0);
            }
            cap.errors.push(message.trim().to_string());
        }
    }
}

struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" && self.0.is_empty() {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_llama_cpp_s_own_lines_when_it_logged_any() {
        let mut cap = Capture::default();
        assert_eq!(cap.reason("binding error"), "binding error");
        cap.errors = vec!["first".into(), "second".into()];
        assert_eq!(cap.reason("binding error"), "first; second");
    }
}

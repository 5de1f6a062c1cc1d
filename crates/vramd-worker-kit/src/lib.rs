//! What every vramd worker process needs besides its inference library, in one place.
//!
//! A worker (`vramd-llm-worker`, `vramd-sd-worker`) is started by the daemon with
//! `--socket PATH` and stdin piped, serves the protocol of `vramd_protocol` over HTTP on that
//! Unix socket, and must never outlive the daemon. This crate holds the parts of that which
//! do not depend on the library:
//!
//! - [`lifetime`]: the CLI ([`Cli`]), [`die_with_parent`] (`PR_SET_PDEATHSIG`),
//!   [`exit_on_stdin_eof`] (on [`on_stdin_eof`], the stdin lifeline) and [`bind`] (stale
//!   socket files are replaced);
//! - [`logging`]: [`init_logging`], stderr without ANSI (the daemon collects it), with a
//!   default filter and an optional extra layer (each worker reads facts out of its library's
//!   log through one);
//! - [`http`]: [`ApiError`] (a [`WorkerError`](vramd_protocol::WorkerError) as a response, the
//!   one status mapping [`status_of`]), [`parse`] for JSON bodies, and [`with_fallbacks`], the
//!   JSON 404/405;
//! - [`ndjson`]: [`Out`], what an engine thread sends back for a streamed request, and
//!   [`stream_response`], which turns its receiver into an NDJSON response;
//! - [`cpu`]: which x86-64 level the engine's ggml was built for, and this CPU's, for health;
//! - [`engine`]: the engine thread and its handle ([`Engine`]: submit a call, [`Engine::ask`]
//!   for one answer, [`Engine::stream`] for an NDJSON stream), and [`HealthWriter`], its
//!   writer of the shared [`Health`](vramd_protocol::Health);
//! - `testing` (feature `testing`): the end-to-end harness both workers' tests use (a
//!   worker binary under test is described by a `testing::WorkerBinary`).
//!
//! The crate links no inference library, so it never brings a second ggml into a worker.

pub mod cpu;
pub mod engine;
pub mod http;
pub mod lifetime;
pub mod logging;
pub mod ndjson;
#[cfg(feature = "testing")]
pub mod testing;

pub use engine::{Engine, HealthWriter, ENGINE_STACK};
pub use http::{error, parse, status_of, with_fallbacks, ApiError};
pub use lifetime::{bind, die_with_parent, exit_code, exit_on_stdin_eof, on_stdin_eof, serve, Cli};
pub use logging::{init_logging, BoxedLayer};
pub use ndjson::{stream_response, Out, StreamEvent};

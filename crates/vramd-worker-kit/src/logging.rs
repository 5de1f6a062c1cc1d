//! Logging to stderr, which the daemon collects into its own log.

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// A layer a worker adds beside stderr, with its own filter (a reader of its library's log).
pub type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync + 'static>;

/// Logs to stderr without ANSI colours, at the level `RUST_LOG` sets or else `default_filter`
/// (such as `info,llama-cpp-2=warn`). `extra`, if any, sees every event its own filter lets
/// through, whatever `RUST_LOG` hides from stderr.
pub fn init_logging(default_filter: &str, extra: Option<BoxedLayer>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter);
    tracing_subscriber::registry().with(extra).with(stderr).init();
}

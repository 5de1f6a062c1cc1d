//! vramd's one integration-test binary. Every test starts the real `vramd` binary through
//! the harness in [`util`] (documented there) and talks to it over its socket.

mod activation;
mod api;
mod arbiter;
mod config;
mod lifecycle;
mod llm;
mod units;
mod util;
mod workers;

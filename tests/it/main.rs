//! vramd's one integration-test binary. Every test starts the real `vramd` binary through
//! the harness in [`util`] (documented there) and talks to it over its socket.

mod activation;
mod api;
mod arbiter;
mod config;
mod dbus;
mod dbus_util;
mod device;
mod images;
mod lifecycle;
mod llm;
mod notify;
mod scenarios;
mod units;
mod util;
mod vramctl;
mod workers;

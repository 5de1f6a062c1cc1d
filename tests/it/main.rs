//! vramd's one integration-test binary. Every test starts the real `vramd` binary through
//! the harness in [`util`] (documented there) and talks to it over its socket.

mod a1111;
mod activation;
mod api;
mod arbiter;
mod chaos;
mod chat_tools;
mod config;
mod dbus;
mod dbus_util;
mod desktop_notify;
mod device;
mod device_check;
mod edits;
mod fuzz;
mod grant;
mod hostile_files;
mod images;
mod keys;
mod lifecycle;
mod limits;
mod llm;
mod ollama;
mod polkit;
mod prompt_cache;
mod queue;
mod scenarios;
mod slots;
mod structure;
mod systemd_units;
mod top;
mod ui;
mod util;
mod vramctl;
mod workers;

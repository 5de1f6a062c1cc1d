//! vramd: lets one GPU serve a local LLM and Stable Diffusion without running out of memory.
//!
//! This crate is the daemon. It links neither llama.cpp nor stable-diffusion.cpp (each brings
//! its own, incompatible ggml); inference runs in worker processes it supervises. See
//! ARCHITECTURE.md for the bird's-eye view and the invariants.

pub mod access;
pub mod activity;
pub mod api;
pub mod arbiter;
pub mod chat;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dbus;
pub mod estimate;
pub mod events;
pub mod keys;
pub mod listeners;
pub mod logging;
pub mod memory;
pub mod model;
pub mod pagecache;
pub mod planner;
pub mod registry;
pub mod server;
pub mod systemd_notify;
pub mod units;
pub mod worker;

/// How many cases a fuzz-style property test runs: `VRAMD_FUZZ_CASES`, else `default` (the
/// short bound CI runs; see `tests/fuzz/README.md` for long runs).
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("VRAMD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

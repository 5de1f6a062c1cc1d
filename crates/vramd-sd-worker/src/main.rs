//! `vramd-sd-worker`: one stable-diffusion.cpp model behind the worker protocol
//! (`vramd_protocol`: `ImageLoadRequest`, `ImageRequest` → `ImageEvent`s).
//!
//! Wiring only: CLI, logging, lifetime guards (`vramd_worker_kit`), the stable-diffusion.cpp
//! thread ([`engine`]) and the HTTP server ([`server`]) on the Unix socket the daemon names.
//! [`sd`] is the safe wrapper around the C API, [`logcap`] reads its log and progress
//! callbacks, [`png`] writes the images.

mod engine;
mod logcap;
mod png;
mod sd;
mod server;

use std::process::ExitCode;

use anyhow::Context;
use vramd_worker_kit::{die_with_parent, exit_code, init_logging, serve, Cli};

/// stable-diffusion.cpp's per-load and per-generation chatter (target `sd`) is kept out of
/// the default log; its warnings and errors stay.
const DEFAULT_LOG: &str = "info,sd=warn";

fn main() -> ExitCode {
    let cli = Cli::parse_as(
        "vramd-sd-worker",
        "vramd's stable-diffusion.cpp worker (started by vramd, not by hand)",
    );
    die_with_parent("vramd-sd-worker");
    init_logging(DEFAULT_LOG, None);
    exit_code(run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let engine = engine::start().context("starting the stable-diffusion.cpp thread")?;
    serve(&cli.socket, server::router(engine))
}

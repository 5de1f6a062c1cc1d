//! `vramd-llm-worker`: one llama.cpp model behind the worker protocol (`vramd_protocol`).
//!
//! Wiring only: CLI, logging, lifetime guards, the llama thread ([`engine`]) and the HTTP
//! server ([`server`]) on the Unix socket the daemon names.

#[cfg(any(feature = "dynamic-backends", test))]
mod backends;
mod backlog;
mod cache;
mod embed;
mod engine;
mod generate;
mod logcap;
mod memory;
mod server;
mod slots;
mod stop;
mod utf8;

use std::process::ExitCode;

use anyhow::Context;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::Layer;
use vramd_worker_kit::{die_with_parent, exit_code, init_logging, serve, Cli};

/// llama.cpp's load chatter (every metadata key) is kept out of the default log.
const DEFAULT_LOG: &str = "info,llama-cpp-2=warn";

fn main() -> ExitCode {
    let cli = Cli::parse_as(
        "vramd-llm-worker",
        "vramd's llama.cpp worker (started by vramd, not by hand)",
    );
    die_with_parent("vramd-llm-worker");
    init_logging(
        DEFAULT_LOG,
        Some(Box::new(
            logcap::CaptureLayer.with_filter(filter_fn(logcap::is_llama_log)),
        )),
    );
    // llama.cpp's own log is routed into tracing, where [`logcap::CaptureLayer`] also reads the
    // facts it needs.
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    exit_code(run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let engine = engine::start().context("starting the llama thread")?;
    serve(&cli.socket, server::router(engine))
}

//! `vramd-llm-worker`: one llama.cpp model behind the worker protocol (`vramd_protocol`).
//!
//! Wiring only: CLI, logging, lifetime guards, the llama thread ([`engine`]) and the HTTP
//! server ([`server`]) on the Unix socket the daemon names.

mod engine;
mod generate;
mod logcap;
mod memory;
mod server;
mod stop;
mod utf8;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// llama.cpp's load chatter (every metadata key) is kept out of the default log.
const DEFAULT_LOG: &str = "info,llama-cpp-2=warn";

#[derive(Parser, Debug)]
#[command(version, about = "vramd's llama.cpp worker (started by vramd, not by hand)")]
struct Cli {
    /// The Unix socket to serve the worker protocol on.
    #[arg(long)]
    socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    die_with_parent();
    init_logging();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    exit_on_stdin_eof(cli.socket.clone());
    let engine = engine::Engine::start().context("starting the llama thread")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = bind(&cli.socket)?;
        tracing::info!(socket = %cli.socket.display(), pid = std::process::id(), "serving");
        axum::serve(listener, server::router(engine)).await.context("serving")
    })
}

/// Binds the socket, replacing a stale file left by an earlier worker.
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!("removed a stale socket file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

/// Logs to stderr (the daemon collects it), level from `RUST_LOG`; llama.cpp's own log is
/// routed into tracing, where [`logcap::CaptureLayer`] also reads the facts it needs.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter);
    let capture = logcap::CaptureLayer.with_filter(filter_fn(logcap::is_llama_log));
    tracing_subscriber::registry().with(stderr).with(capture).init();
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
}

/// The daemon holds the write end of our stdin: end-of-file means it is gone, and so are we.
fn exit_on_stdin_eof(socket: PathBuf) {
    let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        tracing::info!("stdin closed: the daemon is gone; exiting");
        let _ = std::fs::remove_file(&socket);
        std::process::exit(0);
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch stdin: {e}");
    }
}

/// A second guard: the kernel kills us when the thread that spawned us exits. (The signal
/// follows the spawning *thread*, so the daemon must spawn workers from a long-lived thread.)
fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and has no memory effects.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc != 0 {
        eprintln!(
            "vramd-llm-worker: prctl(PR_SET_PDEATHSIG): {}",
            std::io::Error::last_os_error()
        );
    }
}

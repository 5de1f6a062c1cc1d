//! The command line, and the guards that keep a worker from outliving the daemon.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};

/// A worker's command line: the daemon names the socket, nothing else.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Cli {
    /// The Unix socket to serve the worker protocol on.
    #[arg(long)]
    pub socket: PathBuf,
}

impl Cli {
    /// Parses the process's arguments; `--help` shows `name` and `about`.
    pub fn parse_as(name: &'static str, about: &'static str) -> Cli {
        let matches = Cli::command().name(name).about(about).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Binds the socket, replacing a stale file left by an earlier worker.
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!("removed a stale socket file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

/// The daemon holds the write end of our stdin: end-of-file means it is gone, and so are we.
/// A thread watches it, removes `socket` and exits the process with status 0.
pub fn exit_on_stdin_eof(socket: PathBuf) {
    on_stdin_eof(move || {
        tracing::info!("stdin closed: the daemon is gone; exiting");
        let _ = std::fs::remove_file(&socket);
        std::process::exit(0);
    });
}

/// Runs `then` on a thread of its own once stdin reaches end-of-file (or cannot be read):
/// the lifeline both workers, and the daemon's fake worker, hang on.
pub fn on_stdin_eof(then: impl FnOnce() + Send + 'static) {
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
        then();
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch stdin: {e}");
    }
}

/// A second guard: the kernel kills us when the thread that spawned us exits. (The signal
/// follows the spawning *thread*, so the daemon must spawn workers from a long-lived thread.)
/// Call it first thing in `main`; `name` prefixes the message if it fails (logging may not
/// be set up yet).
pub fn die_with_parent(name: &str) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and has no memory effects.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc != 0 {
        eprintln!("{name}: prctl(PR_SET_PDEATHSIG): {}", std::io::Error::last_os_error());
    }
}

/// Serves `app` on `socket` until the daemon goes away (stdin reaches end-of-file), on a
/// small runtime: the heavy work is on the engine thread, not here.
pub fn serve(socket: &Path, app: axum::Router) -> anyhow::Result<()> {
    exit_on_stdin_eof(socket.to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = bind(socket)?;
        tracing::info!(socket = %socket.display(), pid = std::process::id(), "serving");
        axum::serve(listener, app).await.context("serving")
    })
}

/// The process's exit: success, or the error logged and a failure status.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_takes_the_socket() {
        let cli = Cli::try_parse_from(["w", "--socket", "/tmp/x.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        assert!(Cli::try_parse_from(["w"]).is_err());
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_file() {
        use std::os::unix::fs::FileTypeExt;
        let dir = std::env::temp_dir().join(format!("vramd-kit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.sock");
        std::fs::write(&path, b"stale").unwrap();
        let listener = bind(&path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

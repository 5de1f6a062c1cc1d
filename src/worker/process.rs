//! Starting, watching and stopping worker processes.
//!
//! A worker gets its socket path on the command line, a pipe as stdin (it exits when the
//! pipe closes, so it cannot outlive the daemon even if `PR_SET_PDEATHSIG` misses) and a
//! pipe as stderr, whose lines are logged under the model's name and kept for failure
//! reasons. A watcher task owns the child, reaps it, and reports how it ended.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};

use super::client::{wait_ready, WorkerClient};

/// How a worker process ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub pid: u32,
    /// `exit status 1`, `killed by signal 9`.
    pub status: String,
    /// Whether the daemon asked for it (hard unload, restart).
    pub requested: bool,
    /// Its last stderr lines, for the failure reason.
    pub last_lines: Vec<String>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// It stopped answering its health checks and was killed for it (see [`spawn`]).
    pub hung: bool,
}

impl Exit {
    /// Whether something outside the worker ended it (`kill`, `SIGTERM`, the OOM killer)
    /// rather than its own failure (an abort, a segfault, an error exit): only then is the
    /// request it was handed not to blame, and safe to send again.
    pub fn killed_from_outside(&self) -> bool {
        !self.hung && matches!(self.signal, Some(libc::SIGKILL | libc::SIGTERM))
    }

    /// The most telling line: the last error line it logged, else the exit status.
    pub fn reason(&self) -> String {
        let err = self
            .last_lines
            .iter()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("error"));
        match err {
            Some(l) => format!("worker {} ({})", self.status, l.trim()),
            None => format!("worker {}", self.status),
        }
    }
}

/// A running worker.
pub struct Worker {
    pub client: WorkerClient,
    pub pid: u32,
    stop: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Worker {
    /// Stops the process (SIGTERM, then SIGKILL after a grace period). The exit is reported
    /// through the `on_exit` callback given to [`spawn`], with `requested = true`.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// How the process ended, if it has.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Whether the process is still running, asked of the kernel now: the watcher reports
    /// an exit a moment after it happened, and a grant must never be handed out in between.
    /// `waitid` with `WNOWAIT` sees a dead child without reaping it (the watcher still does).
    pub fn alive(&self) -> bool {
        if self.exit.borrow().is_some() {
            return false;
        }
        // SAFETY: waitid(2) on our own child with WNOHANG | WNOWAIT only reads its status.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // 0 with no pid filled in: still running. An error (already reaped): gone.
        rc == 0 && unsafe { info.si_pid() } == 0
    }

    /// A receiver that learns how the process ended, for whoever holds work on it.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// Waits up to `within` for the process to end, for a failure's reason: a worker whose
    /// connection broke has usually just died and logged why.
    pub async fn exited(&mut self, within: Duration) -> Option<Exit> {
        let _ = tokio::time::timeout(within, self.exit.wait_for(Option::is_some)).await;
        self.exit.borrow().clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("worker binary {0} not found (set [daemon] worker_dir)")]
    Missing(PathBuf),
    #[error("cannot start worker {0}: {1}")]
    Exec(PathBuf, std::io::Error),
    #[error("{reason}")]
    NotReady { reason: String },
}

const LAST_LINES: usize = 20;
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Starts `binary --socket <socket>` and waits until it answers its health check.
/// `on_exit` is called once, from the watcher task, when the process ends.
///
/// From then on the watcher asks for its health every half of `health_within` (`None`:
/// never): a worker that accepts the connection but does not answer in time (stopped with
/// SIGSTOP, or hung inside the engine, which the health endpoint does not wait for) is
/// killed with SIGKILL, which works on a stopped process too, and reported `hung`.
pub async fn spawn(
    binary: &Path,
    socket: PathBuf,
    model: &str,
    ready_within: Duration,
    health_within: Option<Duration>,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> Result<Worker, SpawnError> {
    if !binary.is_file() {
        return Err(SpawnError::Missing(binary.to_owned()));
    }
    let _ = std::fs::remove_file(&socket);
    let mut child = command(binary, &socket)
        .spawn()
        .map_err(|e| SpawnError::Exec(binary.to_owned(), e))?;
    let pid = child.id().unwrap_or(0);
    let lines = Arc::new(Mutex::new(VecDeque::with_capacity(LAST_LINES)));
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_stderr(stderr, model.to_owned(), pid, lines.clone()));
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let (exit_tx, exit_rx) = watch::channel(None::<Exit>);
    let client = WorkerClient::new(&socket);
    let watchdog = health_within.map(|d| (client.clone(), d));
    tokio::spawn(watch_child(
        child,
        socket.clone(),
        stop_rx,
        exit_tx,
        lines,
        watchdog,
        on_exit,
    ));
    let mut worker = Worker {
        client,
        pid,
        stop: Some(stop_tx),
        exit: exit_rx.clone(),
    };
    if let Err(reason) = wait_ready(&worker.client, ready_within, || exit_rx.borrow().is_none()).await {
        worker.stop();
        let reason = match worker.exited(Duration::from_secs(1)).await {
            Some(exit) if !exit.requested => format!("{reason}: {}", exit.reason()),
            _ => reason,
        };
        return Err(SpawnError::NotReady { reason });
    }
    Ok(worker)
}

/// `binary --socket <socket>` with the lifeline on stdin, stderr piped, no systemd
/// variables, and `PR_SET_PDEATHSIG` so the kernel stops it if the daemon dies.
fn command(binary: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--socket")
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ] {
        cmd.env_remove(var);
    }
    // SAFETY: prctl is async-signal-safe; this runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Owns the child until it ends (by itself, or stopped on request), reaps it, removes its
/// socket and reports how it ended: to `exit` at once, then to `on_exit`.
async fn watch_child(
    mut child: tokio::process::Child,
    socket: PathBuf,
    stop: oneshot::Receiver<()>,
    exit: watch::Sender<Option<Exit>>,
    lines: Arc<Mutex<VecDeque<String>>>,
    watchdog: Option<(WorkerClient, Duration)>,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) {
    let pid = child.id().unwrap_or(0);
    let stdin = child.stdin.take();
    let (requested, hung) = tokio::select! {
        _ = child.wait() => (false, false),
        _ = stop => (true, false),
        silence = unanswered(watchdog) => {
            tracing::error!(pid, "the worker did not answer its health check within {silence:?}: killing it");
            (false, true)
        }
    };
    let status = if requested {
        terminate(&mut child).await
    } else {
        if hung {
            let _ = child.start_kill();
        }
        child.wait().await
    };
    drop(stdin);
    // A worker that was killed could not remove its socket.
    let _ = std::fs::remove_file(&socket);
    // Give the stderr forwarder a moment to drain the last lines.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let signal = status.as_ref().ok().and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.signal()
    });
    let status = match status {
        Ok(_) if hung => "killed: it stopped answering its health checks (hung or stopped)".to_owned(),
        Ok(s) => describe(s),
        Err(e) => format!("wait failed: {e}"),
    };
    let last_lines = lines.lock().expect("stderr lines").iter().cloned().collect();
    let report = Exit {
        pid,
        status,
        requested,
        last_lines,
        signal,
        hung,
    };
    let _ = exit.send(Some(report.clone()));
    on_exit(report);
}

/// Returns once the worker leaves a health check unanswered for `deadline`, checking every
/// half of it; never without a watchdog. Only a check that times out counts: a refused or
/// broken connection is a worker starting or ending, which the other branches handle.
async fn unanswered(watchdog: Option<(WorkerClient, Duration)>) -> Duration {
    let Some((client, deadline)) = watchdog else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(deadline / 2).await;
        if tokio::time::timeout(deadline, client.health()).await.is_err() {
            return deadline;
        }
    }
}

async fn terminate(child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended".into(),
    }
}

async fn forward_stderr(
    stderr: tokio::process::ChildStderr,
    model: String,
    pid: u32,
    keep: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "vramd::worker", model = %model, pid, "{line}");
        let mut keep = keep.lock().expect("stderr lines");
        if keep.len() == LAST_LINES {
            keep.pop_front();
        }
        keep.push_back(line);
    }
}

//! Telling systemd how the daemon is doing (`sd_notify`): `READY=1` once serving, a
//! `STATUS=` line that follows the arbiter's state, `WATCHDOG=1` pings and `STOPPING=1`.
//! Without `NOTIFY_SOCKET` (started by hand) every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::registry::Snapshot;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping(why: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(why)]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), halved as sd_watchdog_enabled(3)
/// recommends. Like libsystemd, a missing `WATCHDOG_PID` means the watchdog is ours.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Follows the arbiter's snapshots, sending `STATUS=` when the summary changes, and pings
/// the watchdog from the async runtime, so a wedged runtime stops pinging and systemd
/// restarts the daemon.
pub async fn follow(mut snapshots: watch::Receiver<Arc<Snapshot>>, watchdog: Option<Duration>) {
    let mut last = snapshots.borrow().status_line();
    let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                let line = snapshots.borrow_and_update().status_line();
                if line != last {
                    send(&[NotifyState::Status(&line)]);
                    last = line;
                }
            }
            _ = tick.tick(), if watchdog.is_some() => send(&[NotifyState::Watchdog]),
        }
    }
}

//! Who is using the daemon right now, for idle exit.
//!
//! Socket activation makes exiting cheap: systemd keeps the listening socket and starts
//! vramd again on the next connection. So with nothing loaded, nobody connected and no
//! request for `idle_exit`, vramd exits 0 and gives its memory back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    connections: AtomicUsize,
    requests: AtomicUsize,
    last: Mutex<Instant>,
}

/// Held while a connection is open; dropping it records activity.
pub struct ConnectionGuard(Activity);

/// Held while a request is being served.
pub struct RequestGuard(Activity);

impl Default for Activity {
    fn default() -> Self {
        Activity {
            inner: Arc::new(Inner {
                connections: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                last: Mutex::new(Instant::now()),
            }),
        }
    }
}

impl Activity {
    pub fn connection(&self) -> ConnectionGuard {
        self.inner.connections.fetch_add(1, Ordering::SeqCst);
        self.touch();
        ConnectionGuard(self.clone())
    }

    pub fn request(&self) -> RequestGuard {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        self.touch();
        RequestGuard(self.clone())
    }

    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub fn last_activity(&self) -> Instant {
        *self.inner.last.lock().expect("activity lock")
    }

    fn touch(&self) {
        *self.inner.last.lock().expect("activity lock") = Instant::now();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.inner.requests.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// What idle exit looks at, sampled at one instant.
#[derive(Clone, Copy, Debug)]
pub struct IdleInputs {
    pub loaded_models: usize,
    pub connections: usize,
    pub requests: usize,
    pub idle_for: Duration,
}

/// How long until the daemon may exit: `Some(ZERO)` now, `Some(d)` after `d` more idle
/// time, `None` while something keeps it alive or idle exit is off.
pub fn idle_exit_in(limit: Option<Duration>, i: IdleInputs) -> Option<Duration> {
    let limit = limit?;
    if i.loaded_models > 0 || i.connections > 0 || i.requests > 0 {
        return None;
    }
    Some(limit.saturating_sub(i.idle_for))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(secs: u64) -> IdleInputs {
        IdleInputs {
            loaded_models: 0,
            connections: 0,
            requests: 0,
            idle_for: Duration::from_secs(secs),
        }
    }

    #[test]
    fn exits_only_when_everything_is_quiet() {
        let limit = Some(Duration::from_secs(300));
        assert_eq!(idle_exit_in(limit, idle(300)), Some(Duration::ZERO));
        assert_eq!(idle_exit_in(limit, idle(100)), Some(Duration::from_secs(200)));
        assert_eq!(idle_exit_in(None, idle(100_000)), None);
        let busy = [
            IdleInputs {
                loaded_models: 1,
                ..idle(1000)
            },
            IdleInputs {
                connections: 1,
                ..idle(1000)
            },
            IdleInputs {
                requests: 1,
                ..idle(1000)
            },
        ];
        for b in busy {
            assert_eq!(idle_exit_in(limit, b), None, "{b:?}");
        }
    }

    #[test]
    fn guards_count_and_release() {
        let a = Activity::default();
        let c = a.connection();
        let r = a.request();
        assert_eq!((a.connections(), a.requests()), (1, 1));
        let before = a.last_activity();
        std::thread::sleep(Duration::from_millis(5));
        drop(r);
        drop(c);
        assert_eq!((a.connections(), a.requests()), (0, 0));
        assert!(a.last_activity() > before);
    }
}

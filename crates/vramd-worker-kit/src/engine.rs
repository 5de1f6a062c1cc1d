//! The engine thread both workers are built around: one OS thread owns the native library's
//! state (it is not `Sync` and every call blocks) and takes jobs from a channel; the async
//! side only submits jobs and reads the shared [`Health`], which answers even mid-generation.

use std::sync::{mpsc, Arc, Mutex};

use vramd_protocol::{Bytes, ErrorCode, Health, WorkerError, WorkerState};

use crate::http::error;

/// The async side's handle on an engine thread taking jobs of type `J`.
pub struct Engine<J> {
    jobs: mpsc::Sender<J>,
    health: Arc<Mutex<Health>>,
    /// "the llama thread": how errors name it.
    what: &'static str,
}

impl<J> Clone for Engine<J> {
    fn clone(&self) -> Self {
        Engine {
            jobs: self.jobs.clone(),
            health: self.health.clone(),
            what: self.what,
        }
    }
}

impl<J: Send + 'static> Engine<J> {
    /// Starts the thread `name` running `run`. A worker whose engine thread panicked is
    /// useless, so the process then exits 70 (EX_SOFTWARE) and the daemon sees it.
    pub fn start(
        name: &str,
        what: &'static str,
        run: impl FnOnce(mpsc::Receiver<J>, Status) + Send + 'static,
    ) -> std::io::Result<Engine<J>> {
        let (jobs, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(empty_health()));
        let status = Status(health.clone());
        std::thread::Builder::new().name(name.into()).spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(rx, status)));
            if ran.is_err() {
                tracing::error!("{what} panicked; exiting");
                std::process::exit(70);
            }
        })?;
        Ok(Engine { jobs, health, what })
    }

    pub fn submit(&self, job: J) -> Result<(), WorkerError> {
        self.jobs
            .send(job)
            .map_err(|_| error(ErrorCode::Internal, format!("{} has stopped", self.what)))
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }
}

fn lock(h: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// A worker with no model.
pub fn empty_health() -> Health {
    Health {
        state: WorkerState::Empty,
        model: None,
        bytes: Bytes::default(),
        peak_bytes: 0,
        pid: std::process::id(),
        device: "cpu".into(),
        image: None,
    }
}

/// The engine thread's writer of the shared [`Health`]; every update keeps the peak.
pub struct Status(Arc<Mutex<Health>>);

impl Status {
    pub fn update(&self, f: impl FnOnce(&mut Health)) -> Health {
        let mut h = lock(&self.0);
        f(&mut h);
        h.peak_bytes = h.peak_bytes.max(h.bytes.total);
        h.clone()
    }

    pub fn set_state(&self, state: WorkerState) -> Health {
        self.update(|h| h.state = state)
    }

    pub fn clear(&self) -> Health {
        self.update(|h| *h = empty_health())
    }
}

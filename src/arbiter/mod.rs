//! The arbiter task: the one owner of all VRAM state.
//!
//! HTTP (and D-Bus) handlers never touch the [`Registry`](crate::registry::Registry); they
//! send a [`Command`] and await its reply, or read the latest [`Snapshot`] from a `watch`
//! channel. One owner means no lock ordering to get wrong and one place where decisions are
//! made. Decisions come from the pure [`planner`](crate::planner); slow work (starting a
//! worker, loading, unloading) runs in tasks the arbiter spawns, which report back as
//! internal events, so the arbiter itself never waits on I/O.

mod lifecycle;
mod queue;
mod restore;
mod task;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use vramd_protocol::{Health, RestoreResponse};
pub use vramd_protocol::{UnloadMode, VaePlacement};

use crate::config::Config;
use crate::events::EventFeed;
use crate::memory::MemorySource;
use crate::planner::Action;
use crate::registry::{ModelState, Snapshot};
use crate::worker::client::WorkerClient;
use crate::worker::WorkerPaths;

/// What a request will do with its model, which decides how much memory it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Text generation (or anything that needs the model loaded and nothing more).
    Text,
    /// One image of this size (batches run one image at a time); `vae` forces a placement
    /// instead of letting the planner choose.
    Image {
        width: u32,
        height: u32,
        vae: Option<VaePlacement>,
    },
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UnloadOutcome {
    pub model: String,
    pub mode: UnloadMode,
    pub state: ModelState,
    pub freed_bytes: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LoadOutcome {
    pub model: String,
    pub state: ModelState,
    /// Load time; `null` when it was already loaded.
    pub load_ms: Option<u64>,
    pub bytes: vramd_protocol::Bytes,
    /// What the arbiter did to make room.
    pub actions: Vec<Action>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArbiterError {
    #[error("model {0:?} is not configured")]
    UnknownModel(String),
    #[error("model {model:?} has failed: {reason}")]
    ModelFailed { model: String, reason: String },
    #[error("model {model:?} could not be started: {reason}")]
    WorkerFailed { model: String, reason: String },
    #[error("model {model:?} is busy: {reason}")]
    Busy { model: String, reason: String },
    /// Not enough memory now; it may be later.
    #[error("not enough GPU memory for {model:?} now: {reason}")]
    NoMemory {
        model: String,
        reason: String,
        retry_after: u64,
    },
    /// More than the whole budget: it never will be.
    #[error("{model:?} can never fit: {reason}")]
    TooLarge { model: String, reason: String },
    #[error("the arbiter has stopped")]
    Stopped,
}

pub(crate) enum Command {
    Acquire {
        model: String,
        job: Job,
        reply: oneshot::Sender<Result<Lease, ArbiterError>>,
    },
    Load {
        model: String,
        reply: oneshot::Sender<Result<LoadOutcome, ArbiterError>>,
    },
    Unload {
        model: String,
        mode: UnloadMode,
        reply: oneshot::Sender<Result<UnloadOutcome, ArbiterError>>,
    },
    SetPinned {
        model: String,
        pinned: bool,
        reply: oneshot::Sender<Result<(), ArbiterError>>,
    },
    Estimate {
        model: String,
        job: EstimateJob,
        reply: oneshot::Sender<Result<serde_json::Value, ArbiterError>>,
    },
    Interrupt {
        model: String,
        reply: oneshot::Sender<Result<bool, ArbiterError>>,
    },
    /// The state now, after every event already sent (a released lease, a finished load).
    Snapshot {
        reply: oneshot::Sender<Result<Arc<Snapshot>, ArbiterError>>,
    },
}

/// What to estimate: an image size, an LLM context, or just the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EstimateJob {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub context: Option<u32>,
}

/// Internal events, from tasks the arbiter spawned and from dropped leases.
pub(crate) enum Event {
    Release {
        model: String,
        seq: u64,
        job: Job,
        /// The memory reservation the request held (see `registry::Reservations`).
        ticket: u64,
        report: Option<Report>,
    },
    LoadDone {
        model: String,
        seq: u64,
        result: lifecycle::LoadResult,
    },
    SoftUnloadDone {
        model: String,
        seq: u64,
        result: Result<Health, String>,
    },
    RestoreDone {
        model: String,
        seq: u64,
        result: Result<RestoreResponse, String>,
    },
    WorkerExit {
        model: String,
        seq: u64,
        exit: crate::worker::process::Exit,
    },
}

/// What a finished request measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub health: Health,
}

/// The right to use a loaded model's worker for one request. While it lives the model is
/// busy and cannot be evicted; dropping it tells the arbiter the request is over.
pub struct Lease {
    pub model: String,
    pub client: WorkerClient,
    /// How long this request waited for the model to load, when it had to.
    pub load_ms: Option<u64>,
    pub context_length: u32,
    /// Where this request's VAE decode runs (images).
    pub vae: VaePlacement,
    /// What the arbiter did to make room for this request, in order.
    pub actions: Vec<Action>,
    job: Job,
    seq: u64,
    ticket: u64,
    report: Option<Report>,
    events: mpsc::UnboundedSender<Event>,
}

impl Lease {
    /// Records what the worker reported at the end of the request.
    pub fn report(&mut self, health: Health) {
        self.report = Some(Report { health });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Release {
            model: std::mem::take(&mut self.model),
            seq: self.seq,
            job: self.job,
            ticket: self.ticket,
            report: self.report.take(),
        });
    }
}

/// What handlers hold: a way to send commands, read the latest snapshot and follow events.
#[derive(Clone)]
pub struct ArbiterHandle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: EventFeed,
}

impl ArbiterHandle {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// The state as of now: unlike [`ArbiterHandle::snapshot`], it reflects every request
    /// that finished before this call (what a client that just got its answer expects).
    pub async fn current(&self) -> Result<Arc<Snapshot>, ArbiterError> {
        self.ask(|reply| Command::Snapshot { reply }).await
    }

    /// A receiver that wakes on every state change (status line, idle exit).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn events(&self) -> &EventFeed {
        &self.events
    }

    /// Gets a lease on `model` for `job`, making room and loading it first if needed.
    pub async fn acquire(&self, model: &str, job: Job) -> Result<Lease, ArbiterError> {
        self.ask(|reply| Command::Acquire {
            model: model.to_owned(),
            job,
            reply,
        })
        .await
    }

    pub async fn load(&self, model: &str) -> Result<LoadOutcome, ArbiterError> {
        self.ask(|reply| Command::Load {
            model: model.to_owned(),
            reply,
        })
        .await
    }

    pub async fn unload(&self, model: &str, mode: UnloadMode) -> Result<UnloadOutcome, ArbiterError> {
        self.ask(|reply| Command::Unload {
            model: model.to_owned(),
            mode,
            reply,
        })
        .await
    }

    pub async fn set_pinned(&self, model: &str, pinned: bool) -> Result<(), ArbiterError> {
        self.ask(|reply| Command::SetPinned {
            model: model.to_owned(),
            pinned,
            reply,
        })
        .await
    }

    /// Stops the worker of `model` in the middle of its work (image generations cannot be
    /// cancelled any other way); `false` when it had none.
    pub async fn interrupt(&self, model: &str) -> Result<bool, ArbiterError> {
        self.ask(|reply| Command::Interrupt {
            model: model.to_owned(),
            reply,
        })
        .await
    }

    pub async fn estimate(&self, model: &str, job: EstimateJob) -> Result<serde_json::Value, ArbiterError> {
        self.ask(|reply| Command::Estimate {
            model: model.to_owned(),
            job,
            reply,
        })
        .await
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ArbiterError>>) -> Command,
    ) -> Result<T, ArbiterError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ArbiterError::Stopped)?;
        rx.await.map_err(|_| ArbiterError::Stopped)?
    }
}

/// Starts the arbiter task.
pub fn spawn(config: Arc<Config>, source: Box<dyn MemorySource>, paths: WorkerPaths) -> ArbiterHandle {
    let (tx, rx) = mpsc::channel(256);
    let (snapshot, events, task) = task::Arbiter::new(config, source, paths);
    tokio::spawn(task.run(rx));
    ArbiterHandle { tx, snapshot, events }
}

//! The arbiter task: the one owner of all VRAM state.
//!
//! HTTP (and D-Bus) handlers never touch the [`Registry`](crate::registry::Registry); they
//! send a [`Command`] and await its reply, or read the latest [`Snapshot`] from a `watch`
//! channel. One owner means no lock ordering to get wrong and one place where decisions are
//! made. Decisions come from the pure [`planner`](crate::planner).
//!
//! The arbiter's loop awaits nothing but its next input (a command, an [`Internal`] event,
//! the tick). Slow work (starting a worker, loading, unloading, restoring a context) runs in
//! tasks it spawns, which report back as [`Internal`] events. Its own synchronous I/O is short:
//! device memory and the page cache go through `host::Host` (an NVML query, `mincore`,
//! `WILLNEED`), and a worker is asked of the kernel whether it is alive (`waitid`) before it
//! is granted; the calibration file is written on a blocking thread, and the model headers
//! are read once, when the arbiter is made.
//!
//! This file is the interface ([`ArbiterHandle`], the commands); `state` holds the types
//! (the one `Arbiter` struct), `task` the loop, `queue` planning and plan execution,
//! `lifecycle` loads, unloads and crashes, `running` the grants in progress, `restore` the
//! background restores, `grant` the [`Grant`] (the one way a request reaches a worker) and
//! `host` the I/O. The behaviour modules import `state` (and `host`, `grant`), never one
//! another (`tests/it/structure.rs`).

mod grant;
mod host;
mod lifecycle;
mod queue;
mod restore;
mod running;
mod state;
mod task;

pub use grant::{Grant, ImageRun, RunError};

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use vramd_protocol::{EmbedRequest, EmbedResponse, GenerateEvent, GenerateRequest, Health, RestoreResponse};
pub use vramd_protocol::{UnloadMode, VaePlacement};

use crate::config::Config;
use crate::estimate::{Estimate, EstimateQuery};
use crate::events::EventFeed;
use crate::memory::MemorySource;
use crate::planner::Action;
use crate::registry::{ModelState, Snapshot};
use crate::units::Timeout;
use crate::worker::client::EventStream;
use crate::worker::WorkerPaths;

/// What a request will do with its model, which decides how much memory it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Text generation (or anything that needs the model loaded and nothing more).
    Text,
    /// `count` images of this size, made one at a time; `vae` is the caller's forced
    /// placement (vramd's `vae` extension) instead of the planner's choice.
    Image {
        width: u32,
        height: u32,
        count: u32,
        vae: Option<VaePlacement>,
    },
}

/// A client's wish about a model's idle life (Ollama's `keep_alive`): advice about its own
/// use, never an order, so it can neither fail a request nor take a model from another user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload it after this long unused ([`Timeout::NEVER`]: never for idleness) instead of
    /// its configured `keep_alive`, until it is next unloaded.
    Idle(Timeout),
    /// The client is done with it: the first model to go when memory is needed, until it is
    /// used again. What `keep_alive: 0` means from a caller who may not unload it.
    EvictFirst,
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
    /// A person's unload of a model that is loading or serving requests.
    #[error("model {model:?} is busy: {reason}")]
    InUse { model: String, reason: String },
    /// Not enough memory now; it may be later.
    #[error("not enough GPU memory for {model:?} now: {reason}")]
    NoMemory {
        model: String,
        reason: String,
        retry_after: u64,
    },
    /// The model's worker did not get to the request within `[policy] wait_timeout`: it is
    /// serving others; it may later.
    #[error("model {model:?} is busy: {reason}")]
    Busy {
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

/// What handlers ask of the arbiter.
pub(crate) enum Command {
    Acquire {
        model: String,
        work: Work,
        request_id: String,
        reply: oneshot::Sender<Result<Grant, ArbiterError>>,
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
    KeepAlive {
        model: String,
        wish: KeepAlive,
        reply: oneshot::Sender<Result<(), ArbiterError>>,
    },
    Estimate {
        model: String,
        query: EstimateQuery,
        reply: oneshot::Sender<Result<Estimate, ArbiterError>>,
    },
    /// Stops the running image generations (of `model`, or of any image model).
    Interrupt {
        model: Option<String>,
        reply: oneshot::Sender<Result<Option<String>, ArbiterError>>,
    },
    /// The state now, after every event already sent (a dropped grant, a finished load).
    Snapshot {
        reply: oneshot::Sender<Result<Arc<Snapshot>, ArbiterError>>,
    },
}

/// What the arbiter learns from the tasks it spawned and from its grants (not to be
/// confused with [`crate::events`], what it tells the world).
/// A granted request is over: what its grant reports when dropped.
pub(crate) struct Released {
    pub model: String,
    pub seq: u64,
    pub work: Work,
    /// The memory reservation the request held (see `registry::Reservations`).
    pub ticket: u64,
    pub report: Option<Report>,
    /// When the request ended (Unix seconds): its model's last use, read when the grant
    /// was dropped, before the client had its answer, not when the arbiter gets to it.
    pub ended: u64,
    /// How it ended and why it failed; `None` when it is sent again to a new worker.
    pub end: Option<(crate::events::Ending, Option<String>)>,
    /// An image was still being made for it when it was dropped: its client left (or its
    /// handler gave up) mid-generation, and the worker would go on for nobody.
    pub abandoned: bool,
}

pub(crate) enum Internal {
    Release(Released),
    /// An image generation's step, for progress readers.
    Progress {
        model: String,
        ticket: u64,
        image: u32,
        step: u32,
        steps: u32,
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

    /// A grant of `model` for `work`, making room and loading it first if needed. The
    /// worker was alive when it was granted; [`ArbiterHandle::generate`] and
    /// [`ArbiterHandle::images`] also recover when it dies before the work starts.
    pub async fn acquire(&self, model: &str, work: Work, request_id: &str) -> Result<Grant, ArbiterError> {
        self.ask(|reply| Command::Acquire {
            model: model.to_owned(),
            work,
            request_id: request_id.to_owned(),
            reply,
        })
        .await
    }

    /// Grants `model` and starts `req` on its worker; returns once the worker has taken it
    /// (its `started` event), so a worker that died before then is replaced and the
    /// request sent again, on every transport alike.
    pub async fn generate(
        &self,
        model: &str,
        req: &GenerateRequest,
    ) -> Result<(Grant, EventStream<GenerateEvent>), RunError> {
        grant::retrying(|| async {
            let mut grant = self.acquire(model, Work::Text, &req.request_id).await?;
            let events = grant.generate(req).await;
            Ok((grant, events))
        })
        .await
    }

    /// Grants `model` and computes the embeddings of `req` on its worker, sent again on a
    /// replacement when the worker died before it answered.
    pub async fn embed(&self, model: &str, req: &EmbedRequest) -> Result<EmbedResponse, RunError> {
        let (_grant, response) = grant::retrying(|| async {
            let mut grant = self.acquire(model, Work::Text, &req.request_id).await?;
            let response = grant.embed(req).await;
            Ok((grant, response))
        })
        .await?;
        Ok(response)
    }

    /// Grants `model` for images of `work` and starts the first, `req`, as
    /// [`ArbiterHandle::generate`] does; the next images of the batch go through
    /// [`Grant::image`].
    pub async fn images(
        &self,
        model: &str,
        work: Work,
        req: &vramd_protocol::ImageRequest,
    ) -> Result<(Grant, ImageRun), RunError> {
        grant::retrying(|| async {
            let mut grant = self.acquire(model, work, &req.request_id).await?;
            let run = grant.image(req.clone()).await;
            Ok((grant, run))
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

    /// Records a client's wish about `model`'s idle life (see [`KeepAlive`]); it shows in
    /// `/v1/status` as `keep_alive_override` and `evict_first`.
    pub async fn keep_alive(&self, model: &str, wish: KeepAlive) -> Result<(), ArbiterError> {
        self.ask(|reply| Command::KeepAlive {
            model: model.to_owned(),
            wish,
            reply,
        })
        .await
    }

    /// Stops the image generations running on `model` (any image model when `None`) by
    /// stopping its worker: stable-diffusion.cpp has no cancel call. Their grants learn
    /// that they were interrupted. Returns the model stopped, `None` when nothing ran.
    pub async fn interrupt(&self, model: Option<&str>) -> Result<Option<String>, ArbiterError> {
        self.ask(|reply| Command::Interrupt {
            model: model.map(str::to_owned),
            reply,
        })
        .await
    }

    pub async fn estimate(&self, model: &str, query: EstimateQuery) -> Result<Estimate, ArbiterError> {
        self.ask(|reply| Command::Estimate {
            model: model.to_owned(),
            query,
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
    let (snapshot, events, task) = state::Arbiter::new(config, source, paths);
    tokio::spawn(task.run(rx));
    ArbiterHandle { tx, snapshot, events }
}

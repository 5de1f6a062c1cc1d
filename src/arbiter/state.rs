//! The arbiter's state: the one struct the arbiter task owns, and the records it keeps
//! per model and per waiting request. Types only (and the two accessors every part uses);
//! the behaviour is in the modules beside it, which all depend on this one and on no
//! other sibling but `host` (the I/O) and `grant`: `task` (the loop), `queue` (planning),
//! `lifecycle` (loads and unloads), `running` (grants in progress), `restore` (background
//! restores). `tests/it/structure.rs` holds them to that.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use vramd_protocol::{Bytes, UnloadMode, VaePlacement};

use super::host::Host;
use super::{ArbiterError, Grant, Internal, LoadOutcome, Work};
use crate::config::Config;
use crate::estimate::{Calibration, Shape};
use crate::events::{Cause, EventBus, Freed};
use crate::planner::Action;
use crate::registry::{Registry, Snapshot};
use crate::worker::process::Worker;
use crate::worker::WorkerPaths;

pub(crate) struct Arbiter {
    pub(super) config: Arc<Config>,
    pub(super) registry: Registry,
    pub(super) runtime: HashMap<String, Runtime>,
    /// Device memory, page cache, calibration file: all the I/O the arbiter does itself.
    pub(super) host: Host,
    pub(super) paths: WorkerPaths,
    pub(super) publish: watch::Sender<Arc<Snapshot>>,
    pub(super) internal_tx: mpsc::UnboundedSender<Internal>,
    pub(super) internal_rx: mpsc::UnboundedReceiver<Internal>,
    pub(super) next_seq: u64,
    /// Numbers the memory reservations of granted requests.
    pub(super) next_ticket: u64,
    /// When a request last arrived or finished, or an eviction last settled: background
    /// restores wait for `[policy] restore_after` of quiet after it.
    pub(super) last_activity: Instant,
    pub(super) bus: EventBus,
    pub(super) pending: VecDeque<Pending>,
    /// The model being evicted for the request at the head of `pending`.
    pub(super) evicting: Option<String>,
    pub(super) shapes: HashMap<String, Shape>,
    pub(super) calibration: Calibration,
    pub(super) residency_at: Instant,
    /// After a hard unload on a real device: wait (until the instant) for its free memory
    /// to reach the figure, since the driver returns memory a moment after the process dies.
    pub(super) settling: Option<(Instant, u64)>,
}

impl Arbiter {
    pub(super) fn rt(&mut self, model: &str) -> &mut Runtime {
        self.runtime
            .get_mut(model)
            .expect("every configured model has a runtime")
    }

    /// Where the tasks the arbiter spawns (and its grants) report back.
    pub(super) fn reply_later(&self) -> mpsc::UnboundedSender<Internal> {
        self.internal_tx.clone()
    }
}

/// What the arbiter keeps per model beside its registry entry.
#[derive(Default)]
pub(super) struct Runtime {
    pub worker: Option<Worker>,
    /// Bumped for every worker, so late events from an old one are recognised.
    pub seq: u64,
    /// Requests granted memory, waiting for the load to finish.
    pub waiters: Vec<Granted>,
    pub unload_waiters: Vec<(UnloadMode, u64, UnloadReply)>,
    /// Why the model is being unloaded (for the event), when the arbiter decided it.
    pub unload_reason: Option<(String, Cause)>,
    pub last_failure: Option<Instant>,
    /// The load time to report to requests that waited for it.
    pub just_loaded_ms: Option<u64>,
    /// Whether the page cache held the files when the load started.
    pub warm: bool,
    /// What the model held when it was last fully loaded: better than any estimate.
    pub known: Option<Bytes>,
    /// Why the model's context is being restored.
    pub restore_reason: Option<String>,
    /// A background restore failed: do not try again until the model is used.
    pub restore_failed: bool,
    /// Its soft unload made room for a request (not a person's `unload`): restore it in the
    /// background once memory allows.
    pub restore_when_free: bool,
    /// How to tell each running grant (by ticket) that `interrupt` stopped its work.
    pub interrupts: HashMap<u64, oneshot::Sender<()>>,
    /// What was done for each granted request (by ticket), told when it ends.
    pub stories: HashMap<u64, Story>,
}

/// What the arbiter did for a granted request, published as `request_finished` when the
/// request ends, so its whole story is one event.
pub(super) struct Story {
    pub request_id: String,
    pub queued: bool,
    pub waited_ms: u64,
    pub freed: Vec<Freed>,
    /// Where its VAE decodes run, as decided (images).
    pub vae: VaePlacement,
}

pub(super) enum Waiter {
    Acquire {
        reply: oneshot::Sender<Result<Grant, ArbiterError>>,
        request_id: String,
    },
    Load(oneshot::Sender<Result<LoadOutcome, ArbiterError>>),
}

pub(super) struct Pending {
    pub model: String,
    pub work: Work,
    pub waiter: Waiter,
    pub since: Instant,
    /// Whether `request_queued` was published for it.
    pub queued: bool,
    /// What was done for it so far.
    pub done: Vec<Action>,
}

/// A request that may go ahead, waiting only for its model to finish loading.
pub(super) struct Granted {
    pub waiter: Waiter,
    pub work: Work,
    pub vae: VaePlacement,
    pub actions: Vec<Action>,
    /// Its memory reservation (`registry::Reservations`), given back when it is done.
    pub ticket: u64,
}

impl Waiter {
    /// The request's id; `None` for an explicit load.
    pub fn request_id(&self) -> Option<String> {
        match self {
            Waiter::Acquire { request_id, .. } => Some(request_id.clone()),
            Waiter::Load(_) => None,
        }
    }

    /// Whether whoever waits has gone (its HTTP client disconnected).
    pub fn gone(&self) -> bool {
        match self {
            Waiter::Acquire { reply, .. } => reply.is_closed(),
            Waiter::Load(reply) => reply.is_closed(),
        }
    }
}

pub(super) fn reject(waiter: Waiter, err: ArbiterError) {
    match waiter {
        Waiter::Acquire { reply: r, .. } => drop(r.send(Err(err))),
        Waiter::Load(r) => drop(r.send(Err(err))),
    }
}

pub(super) type UnloadReply = oneshot::Sender<Result<super::UnloadOutcome, ArbiterError>>;

//! What vramd did, as events: for the WebUI (`GET /v1/events`, Server-Sent Events), for
//! D-Bus signals, and for the log.
//!
//! The arbiter is the only publisher. Subscribers get every event after they subscribe, and
//! a late subscriber can ask for a replay of the last [`REPLAY`] first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::broadcast;
use vramd_protocol::VaePlacement;

mod describe;
pub use describe::describe;

/// Events kept for late subscribers.
pub const REPLAY: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    ModelLoading {
        model: String,
        /// What the load is expected to take.
        bytes: u64,
        reason: String,
    },
    ModelLoaded {
        model: String,
        bytes: u64,
        load_ms: u64,
        /// Whether the weights were already in RAM (page cache) when the load started.
        from_page_cache: bool,
    },
    ModelSoftUnloaded {
        model: String,
        freed_bytes: u64,
        /// An LLM's KV cache copied to host memory first (`kv_ram`), put back when the
        /// context is recreated, so its conversations need no prefill; 0: nothing kept.
        kept_bytes: u64,
        reason: String,
        cause: Cause,
    },
    ModelUnloaded {
        model: String,
        freed_bytes: u64,
        reason: String,
        cause: Cause,
    },
    /// A soft-unloaded model got its context back before anyone asked for it.
    ModelRestored {
        model: String,
        /// What the context took (KV cache and compute buffers).
        bytes: u64,
        context_ms: u64,
        reason: String,
    },
    VaeTiled {
        model: String,
        width: u32,
        height: u32,
        reason: String,
        /// The request this placement is for.
        request_id: Option<String>,
    },
    VaeOnCpu {
        model: String,
        width: u32,
        height: u32,
        reason: String,
        request_id: Option<String>,
    },
    RequestQueued {
        model: String,
        /// Its place in the arbiter's queue, or among the requests waiting in the worker for
        /// a free slot (1: next to be served).
        position: u32,
        reason: String,
        /// `None` for an explicit load.
        request_id: Option<String>,
        /// The busy or unloading model it waits for, if any.
        waiting_for: Option<String>,
        need_bytes: u64,
        free_bytes: u64,
    },
    /// A request that never ran: no room now (503), more than the budget (507), or waited
    /// `[policy] wait_timeout` in vain (503).
    RequestRejected {
        model: String,
        status: u16,
        reason: String,
        request_id: Option<String>,
        /// `None` for an explicit load.
        kind: Option<RequestKind>,
        why: Rejection,
        waited_ms: u64,
        need_bytes: u64,
        free_bytes: u64,
    },
    /// A request that ran is over: how it ended and what vramd did for it, so a reader can
    /// tell its whole story from this one event.
    RequestFinished {
        model: String,
        request_id: String,
        kind: RequestKind,
        outcome: Ending,
        /// Why it failed (`outcome` `failed`).
        error: Option<String>,
        /// Whether it waited in the queue (a `request_queued` was published for it).
        queued: bool,
        /// Time in the arbiter's queue before it was granted.
        waited_ms: u64,
        /// Images: where the VAE decode ran, its measured time, and how much longer that
        /// was than a whole decode on the device per this model's measurements (`None`:
        /// no device decode measured yet).
        vae: Option<VaePlacement>,
        vae_ms: Option<u64>,
        slower_ms: Option<u64>,
        /// What was unloaded to make room for it.
        freed: Vec<Freed>,
    },
    WorkerCrashed {
        model: String,
        reason: String,
    },
    WorkerRestarted {
        model: String,
        pid: u32,
    },
    MemoryPressure {
        model: String,
        need_bytes: u64,
        free_bytes: u64,
        reason: String,
    },
}

/// Why a model gave memory back.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// It made room for a request of `model` that needed `need_bytes` more.
    Room {
        model: String,
        /// `None` for an explicit load.
        request_id: Option<String>,
        /// What the request was (`None` for an explicit load), so that the sentence for this
        /// unload can say "to make room for an image of sd".
        request_kind: Option<RequestKind>,
        need_bytes: u64,
    },
    /// Its keep_alive ran out.
    Idle,
    /// A person or client asked for it.
    Requested,
    /// Its image was interrupted: stopping the worker is how an image is stopped.
    Interrupted,
    /// Anything else (the daemon stopping).
    Other,
}

impl Cause {
    /// The D-Bus `cause` argument.
    pub fn name(&self) -> &'static str {
        match self {
            Cause::Room { .. } => "room",
            Cause::Idle => "idle",
            Cause::Requested => "requested",
            Cause::Interrupted => "interrupted",
            Cause::Other => "other",
        }
    }
}

/// Why a request was refused before it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// No room now, and waiting for a busy model would not make it (503).
    Refused,
    /// More than the whole budget (507).
    TooLarge,
    /// It waited `[policy] wait_timeout` for memory (503).
    TimedOut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Text,
    Image,
}

/// How a request that ran ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Done,
    /// The client went away before it finished.
    Cancelled,
    /// Stopped by `interrupt` (A1111's Stop).
    Interrupted,
    Failed,
}

/// A model unloaded to make room for a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Freed {
    pub model: String,
    /// `soft` or `hard`.
    pub mode: &'static str,
    pub bytes: u64,
}

impl EventKind {
    /// The SSE event name: the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ModelLoading { .. } => "model_loading",
            EventKind::ModelLoaded { .. } => "model_loaded",
            EventKind::ModelSoftUnloaded { .. } => "model_soft_unloaded",
            EventKind::ModelUnloaded { .. } => "model_unloaded",
            EventKind::ModelRestored { .. } => "model_restored",
            EventKind::VaeTiled { .. } => "vae_tiled",
            EventKind::VaeOnCpu { .. } => "vae_on_cpu",
            EventKind::RequestQueued { .. } => "request_queued",
            EventKind::RequestRejected { .. } => "request_rejected",
            EventKind::RequestFinished { .. } => "request_finished",
            EventKind::WorkerCrashed { .. } => "worker_crashed",
            EventKind::WorkerRestarted { .. } => "worker_restarted",
            EventKind::MemoryPressure { .. } => "memory_pressure",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Counts from 1 in each daemon run.
    pub id: u64,
    /// Unix time in seconds, with milliseconds.
    pub at: f64,
    #[serde(flatten)]
    pub kind: EventKind,
    /// The event in plain words ([`describe`]), so that every reader (the status page,
    /// `vramctl events`, `vramctl top`) says the same thing.
    pub text: String,
}

/// The publishing side, owned by the arbiter; [`EventFeed`] is the reading side.
pub struct EventBus {
    next_id: u64,
    tx: broadcast::Sender<Arc<Event>>,
    recent: Arc<Mutex<VecDeque<Arc<Event>>>>,
}

/// Subscribing to events, from anywhere.
#[derive(Clone)]
pub struct EventFeed {
    tx: broadcast::Sender<Arc<Event>>,
    recent: Arc<Mutex<VecDeque<Arc<Event>>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            next_id: 1,
            tx: broadcast::channel(1024).0,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(REPLAY))),
        }
    }
}

impl EventBus {
    pub fn feed(&self) -> EventFeed {
        EventFeed {
            tx: self.tx.clone(),
            recent: self.recent.clone(),
        }
    }

    pub fn publish(&mut self, kind: EventKind) -> Arc<Event> {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| (d.as_millis() as f64) / 1000.0);
        let event = Arc::new(Event {
            id: self.next_id,
            at,
            text: describe(&kind),
            kind,
        });
        self.next_id += 1;
        tracing::info!(
            event = event.kind.name(),
            "{}",
            serde_json::to_string(&event.kind).unwrap_or_default()
        );
        let mut recent = self.recent.lock().expect("events lock");
        if recent.len() == REPLAY {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // Publishing under the lock orders replay and live delivery for subscribers.
        let _ = self.tx.send(event.clone());
        event
    }
}

impl EventFeed {
    /// The last `replay` events and a receiver for everything after them, with no gap and no
    /// duplicate between the two.
    pub fn subscribe(&self, replay: usize) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let recent = self.recent.lock().expect("events lock");
        let rx = self.tx.subscribe();
        let skip = recent.len().saturating_sub(replay);
        (recent.iter().skip(skip).cloned().collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crashed(n: u32) -> EventKind {
        EventKind::WorkerCrashed {
            model: format!("m{n}"),
            reason: "x".into(),
        }
    }

    #[test]
    fn replay_then_live_without_gaps() {
        let mut bus = EventBus::default();
        let feed = bus.feed();
        for n in 0..3 {
            bus.publish(crashed(n));
        }
        let (replayed, mut rx) = feed.subscribe(2);
        assert_eq!(replayed.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]);
        bus.publish(crashed(3));
        assert_eq!(rx.try_recv().unwrap().id, 4);
        let json = serde_json::to_value(&*replayed[0]).unwrap();
        assert_eq!(json["type"], "worker_crashed");
        assert_eq!(json["model"], "m1");
        assert!(json["at"].as_f64().unwrap() > 1.6e9);
    }

    #[test]
    fn replay_keeps_only_the_last_ones() {
        let mut bus = EventBus::default();
        for n in 0..(REPLAY as u32 + 10) {
            bus.publish(crashed(n));
        }
        let (replayed, _) = bus.feed().subscribe(usize::MAX);
        assert_eq!(replayed.len(), REPLAY);
        assert_eq!(replayed[0].id, 11);
    }
}

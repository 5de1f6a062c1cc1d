//! The arbiter's events as D-Bus signals, and `FreeBytes` change notifications.
//!
//! [`signal_for`] is the pure mapping (tested on values); [`forward`] follows the arbiter's
//! event feed and snapshots and emits on one connection until that connection fails.
//! Events the desktop has no use for (a load starting, memory pressure before the steps
//! that relieve it, a restart) stay on `GET /v1/events` only, and so does the end of a
//! request with nothing to tell ([`signal_for`]).

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use zbus::object_server::InterfaceRef;

use super::interface::Vramd1;
use crate::arbiter::ArbiterHandle;
use crate::events::{Cause, Ending, EventKind, Rejection, RequestKind};
use crate::registry::Snapshot;
use vramd_protocol::VaePlacement;

/// `FreeBytes` is announced when it has moved this far from the last announced value: a
/// load or unload always crosses it, the small drift of NVML readings does not.
pub const FREE_BYTES_THRESHOLD: u64 = 64 << 20;

/// One D-Bus signal, with the arguments the interface declares.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    ModelLoaded {
        model: String,
        bytes: u64,
        seconds: f64,
        from_page_cache: bool,
    },
    ModelUnloaded {
        model: String,
        /// `soft` (weights kept) or `hard` (worker stopped), from the event kind.
        mode: &'static str,
        reason: String,
        freed_bytes: u64,
        cause: &'static str,
        for_model: String,
        for_request: String,
        needed_bytes: u64,
        /// An LLM's KV kept in host memory across a soft unload; 0 otherwise.
        kept_bytes: u64,
    },
    VaeOffloaded {
        model: String,
        width: u32,
        height: u32,
        /// `tiled` or `cpu`.
        placement: &'static str,
        reason: String,
        for_request: String,
    },
    RequestQueued {
        model: String,
        reason: String,
        request_id: String,
        waiting_for: String,
        needed_bytes: u64,
        free_bytes: u64,
    },
    ModelRestored {
        model: String,
        bytes: u64,
        reason: String,
    },
    RequestFinished(Finished),
    WorkerCrashed {
        model: String,
        reason: String,
    },
}

/// `RequestFinished`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub model: String,
    pub request_id: String,
    pub kind: &'static str,
    pub outcome: &'static str,
    pub error: String,
    pub waited_seconds: f64,
    pub needed_bytes: u64,
    pub free_bytes: u64,
    pub vae_placement: &'static str,
    pub vae_seconds: f64,
    /// -1 when not known.
    pub slower_seconds: f64,
    pub freed: Vec<(String, &'static str, u64)>,
}

/// The signal an event becomes, if any.
pub fn signal_for(kind: &EventKind) -> Option<Signal> {
    Some(match kind.clone() {
        EventKind::ModelLoaded {
            model,
            bytes,
            load_ms,
            from_page_cache,
        } => Signal::ModelLoaded {
            model,
            bytes,
            seconds: secs(load_ms),
            from_page_cache,
        },
        EventKind::ModelSoftUnloaded {
            model,
            freed_bytes,
            kept_bytes,
            reason,
            cause,
        } => unloaded(model, "soft", reason, (freed_bytes, kept_bytes), cause),
        EventKind::ModelUnloaded {
            model,
            freed_bytes,
            reason,
            cause,
        } => unloaded(model, "hard", reason, (freed_bytes, 0), cause),
        EventKind::VaeTiled {
            model,
            width,
            height,
            reason,
            request_id,
        } => Signal::VaeOffloaded {
            model,
            width,
            height,
            placement: "tiled",
            reason,
            for_request: request_id.unwrap_or_default(),
        },
        EventKind::VaeOnCpu {
            model,
            width,
            height,
            reason,
            request_id,
        } => Signal::VaeOffloaded {
            model,
            width,
            height,
            placement: "cpu",
            reason,
            for_request: request_id.unwrap_or_default(),
        },
        EventKind::RequestQueued {
            model,
            reason,
            request_id,
            waiting_for,
            need_bytes,
            free_bytes,
            ..
        } => Signal::RequestQueued {
            model,
            reason,
            request_id: request_id.unwrap_or_default(),
            waiting_for: waiting_for.unwrap_or_default(),
            needed_bytes: need_bytes,
            free_bytes,
        },
        EventKind::ModelRestored {
            model, bytes, reason, ..
        } => Signal::ModelRestored { model, bytes, reason },
        EventKind::RequestRejected {
            model,
            reason,
            request_id,
            kind,
            why,
            waited_ms,
            need_bytes,
            free_bytes,
            ..
        } => Signal::RequestFinished(Finished {
            model,
            request_id: request_id.unwrap_or_default(),
            kind: kind.map_or("", kind_name),
            outcome: match why {
                Rejection::Refused => "refused",
                Rejection::TooLarge => "too_large",
                Rejection::TimedOut => "timed_out",
            },
            error: reason,
            waited_seconds: secs(waited_ms),
            needed_bytes: need_bytes,
            free_bytes,
            vae_placement: "",
            vae_seconds: 0.0,
            slower_seconds: -1.0,
            freed: Vec::new(),
        }),
        EventKind::RequestFinished { .. } => return finished(kind).map(Signal::RequestFinished),
        EventKind::WorkerCrashed { model, reason } => Signal::WorkerCrashed { model, reason },
        EventKind::ModelLoading { .. } | EventKind::WorkerRestarted { .. } | EventKind::MemoryPressure { .. } => {
            return None
        }
    })
}

/// `ModelUnloaded`; `bytes` are those freed and those kept in host memory.
fn unloaded(model: String, mode: &'static str, reason: String, bytes: (u64, u64), cause: Cause) -> Signal {
    let (freed_bytes, kept_bytes) = bytes;
    let name = cause.name();
    let (for_model, for_request, needed_bytes) = match cause {
        Cause::Room {
            model,
            request_id,
            need_bytes,
            ..
        } => (model, request_id.unwrap_or_default(), need_bytes),
        _ => (String::new(), String::new(), 0),
    };
    Signal::ModelUnloaded {
        model,
        mode,
        reason,
        freed_bytes,
        cause: name,
        for_model,
        for_request,
        needed_bytes,
        kept_bytes,
    }
}

/// `RequestFinished` for a request that ran, when it is worth telling about: it waited,
/// had memory freed for it, decoded its VAE off the device, or did not finish (a client
/// that left is news only if it waited, so that its waiting notice can go).
fn finished(kind: &EventKind) -> Option<Finished> {
    let EventKind::RequestFinished {
        model,
        request_id,
        kind,
        outcome,
        error,
        queued,
        waited_ms,
        vae,
        vae_ms,
        slower_ms,
        freed,
    } = kind.clone()
    else {
        return None;
    };
    let off_device = matches!(vae, Some(VaePlacement::Tiled | VaePlacement::Cpu));
    let worth = match outcome {
        Ending::Done => queued || off_device || !freed.is_empty(),
        Ending::Cancelled => queued,
        Ending::Interrupted | Ending::Failed => true,
    };
    worth.then(|| Finished {
        model,
        request_id,
        kind: kind_name(kind),
        outcome: match outcome {
            Ending::Done => "done",
            Ending::Cancelled => "cancelled",
            Ending::Interrupted => "interrupted",
            Ending::Failed => "failed",
        },
        error: error.unwrap_or_default(),
        waited_seconds: secs(waited_ms),
        needed_bytes: 0,
        free_bytes: 0,
        vae_placement: match vae {
            None => "",
            Some(VaePlacement::Gpu) => "gpu",
            Some(VaePlacement::Tiled) => "tiled",
            Some(VaePlacement::Cpu) => "cpu",
        },
        vae_seconds: vae_ms.map_or(0.0, secs),
        slower_seconds: slower_ms.map_or(-1.0, secs),
        freed: freed.into_iter().map(|f| (f.model, f.mode, f.bytes)).collect(),
    })
}

fn kind_name(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Text => "text",
        RequestKind::Image => "image",
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Whether free memory moved far enough from what was last announced to announce it again.
pub fn free_bytes_moved(announced: u64, now: u64) -> bool {
    announced.abs_diff(now) > FREE_BYTES_THRESHOLD
}

/// Emits signals for the arbiter's events and `FreeBytes` changes until emitting fails
/// (the connection is gone), returning that error.
pub async fn forward(iface: InterfaceRef<Vramd1>, arbiter: ArbiterHandle) -> zbus::Error {
    let (_, mut events) = arbiter.events().subscribe(0);
    let mut snapshots = arbiter.subscribe();
    let mut announced = snapshots.borrow_and_update().memory.free_bytes;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    if let Some(signal) = signal_for(&ev.kind) {
                        if let Err(e) = emit(&iface, signal).await {
                            return e;
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::warn!("D-Bus: {n} events were not signalled (the bus was too slow)"),
                Err(RecvError::Closed) => return std::future::pending().await,
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                let snapshot: Arc<Snapshot> = snapshots.borrow_and_update().clone();
                let free = snapshot.memory.free_bytes;
                if free_bytes_moved(announced, free) {
                    announced = free;
                    let result = iface.get().await.free_bytes_changed(iface.signal_emitter()).await;
                    if let Err(e) = result {
                        return e;
                    }
                }
            }
        }
    }
}

async fn emit(iface: &InterfaceRef<Vramd1>, signal: Signal) -> zbus::Result<()> {
    let e = iface.signal_emitter();
    match signal {
        Signal::ModelLoaded {
            model,
            bytes,
            seconds,
            from_page_cache,
        } => Vramd1::model_loaded(e, &model, bytes, seconds, from_page_cache).await,
        Signal::ModelUnloaded {
            model,
            mode,
            reason,
            freed_bytes,
            cause,
            for_model,
            for_request,
            needed_bytes,
            kept_bytes,
        } => {
            Vramd1::model_unloaded(
                e,
                &model,
                mode,
                &reason,
                freed_bytes,
                cause,
                &for_model,
                &for_request,
                needed_bytes,
                kept_bytes,
            )
            .await
        }
        Signal::VaeOffloaded {
            model,
            width,
            height,
            placement,
            reason,
            for_request,
        } => Vramd1::vae_offloaded(e, &model, width, height, placement, &reason, &for_request).await,
        Signal::RequestQueued {
            model,
            reason,
            request_id,
            waiting_for,
            needed_bytes,
            free_bytes,
        } => Vramd1::request_queued(e, &model, &reason, &request_id, &waiting_for, needed_bytes, free_bytes).await,
        Signal::ModelRestored { model, bytes, reason } => Vramd1::model_restored(e, &model, bytes, &reason).await,
        Signal::RequestFinished(f) => {
            let freed: Vec<(&str, &str, u64)> = f.freed.iter().map(|(m, mode, b)| (m.as_str(), *mode, *b)).collect();
            Vramd1::request_finished(
                e,
                &f.model,
                &f.request_id,
                f.kind,
                f.outcome,
                &f.error,
                f.waited_seconds,
                f.needed_bytes,
                f.free_bytes,
                f.vae_placement,
                f.vae_seconds,
                f.slower_seconds,
                &freed,
            )
            .await
        }
        Signal::WorkerCrashed { model, reason } => Vramd1::worker_crashed(e, &model, &reason).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Freed;

    #[test]
    fn unload_mode_comes_from_the_event_kind() {
        let soft = EventKind::ModelSoftUnloaded {
            model: "chat".into(),
            freed_bytes: 512,
            kept_bytes: 64,
            reason: "chat is idle".into(),
            cause: Cause::Room {
                model: "sd".into(),
                request_id: Some("r1".into()),
                request_kind: Some(RequestKind::Image),
                need_bytes: 300,
            },
        };
        let hard = EventKind::ModelUnloaded {
            model: "chat".into(),
            freed_bytes: 4096,
            reason: "requested".into(),
            cause: Cause::Requested,
        };
        assert_eq!(
            signal_for(&soft),
            Some(Signal::ModelUnloaded {
                model: "chat".into(),
                mode: "soft",
                reason: "chat is idle".into(),
                freed_bytes: 512,
                cause: "room",
                for_model: "sd".into(),
                for_request: "r1".into(),
                needed_bytes: 300,
                kept_bytes: 64,
            })
        );
        assert!(matches!(
            signal_for(&hard),
            Some(Signal::ModelUnloaded {
                mode: "hard",
                freed_bytes: 4096,
                cause: "requested",
                needed_bytes: 0,
                kept_bytes: 0,
                ..
            })
        ));
    }

    #[test]
    fn vae_placements_and_load_seconds() {
        let tiled = EventKind::VaeTiled {
            model: "sd".into(),
            width: 1024,
            height: 768,
            reason: "r".into(),
            request_id: Some("r2".into()),
        };
        let cpu = EventKind::VaeOnCpu {
            model: "sd".into(),
            width: 512,
            height: 512,
            reason: "r".into(),
            request_id: None,
        };
        assert!(matches!(
            signal_for(&tiled),
            Some(Signal::VaeOffloaded {
                placement: "tiled",
                width: 1024,
                height: 768,
                ..
            })
        ));
        assert!(matches!(
            signal_for(&tiled),
            Some(Signal::VaeOffloaded { for_request, .. }) if for_request == "r2"
        ));
        assert!(matches!(
            signal_for(&cpu),
            Some(Signal::VaeOffloaded { placement: "cpu", .. })
        ));
        let loaded = EventKind::ModelLoaded {
            model: "chat".into(),
            bytes: 7,
            load_ms: 1250,
            from_page_cache: true,
        };
        assert_eq!(
            signal_for(&loaded),
            Some(Signal::ModelLoaded {
                model: "chat".into(),
                bytes: 7,
                seconds: 1.25,
                from_page_cache: true
            })
        );
    }

    #[test]
    fn quiet_events_are_not_signalled() {
        let loading = EventKind::ModelLoading {
            model: "chat".into(),
            bytes: 1,
            reason: "r".into(),
        };
        let restarted = EventKind::WorkerRestarted {
            model: "chat".into(),
            pid: 1,
        };
        assert_eq!(signal_for(&loading), None);
        assert_eq!(signal_for(&restarted), None);
        let crashed = EventKind::WorkerCrashed {
            model: "chat".into(),
            reason: "signal 9".into(),
        };
        assert!(matches!(signal_for(&crashed), Some(Signal::WorkerCrashed { .. })));
    }

    fn finished_event(outcome: Ending, queued: bool, vae: Option<VaePlacement>, freed: Vec<Freed>) -> EventKind {
        EventKind::RequestFinished {
            model: "sd".into(),
            request_id: "r9".into(),
            kind: RequestKind::Image,
            outcome,
            error: None,
            queued,
            waited_ms: 1500,
            vae,
            vae_ms: Some(30_000),
            slower_ms: Some(28_000),
            freed,
        }
    }

    #[test]
    fn a_request_is_signalled_only_when_there_is_something_to_tell() {
        let gpu = Some(VaePlacement::Gpu);
        assert_eq!(signal_for(&finished_event(Ending::Done, false, gpu, vec![])), None);
        assert_eq!(signal_for(&finished_event(Ending::Cancelled, false, gpu, vec![])), None);
        for worth in [
            finished_event(Ending::Done, true, gpu, vec![]),
            finished_event(Ending::Cancelled, true, gpu, vec![]),
            finished_event(Ending::Done, false, Some(VaePlacement::Cpu), vec![]),
            finished_event(Ending::Failed, false, gpu, vec![]),
            finished_event(Ending::Interrupted, false, gpu, vec![]),
        ] {
            assert!(
                matches!(signal_for(&worth), Some(Signal::RequestFinished(_))),
                "{worth:?}"
            );
        }
        let freed = vec![Freed {
            model: "chat".into(),
            mode: "soft",
            bytes: 512,
        }];
        let Some(Signal::RequestFinished(f)) = signal_for(&finished_event(Ending::Done, false, gpu, freed)) else {
            panic!("freed memory is worth telling");
        };
        assert_eq!(
            (
                f.outcome,
                f.kind,
                f.vae_placement,
                f.waited_seconds,
                f.vae_seconds,
                f.slower_seconds
            ),
            ("done", "image", "gpu", 1.5, 30.0, 28.0)
        );
        assert_eq!(f.freed, vec![("chat".to_owned(), "soft", 512)]);
    }

    #[test]
    fn a_rejection_is_a_finished_request_with_its_figures() {
        let rejected = EventKind::RequestRejected {
            model: "sd".into(),
            status: 503,
            reason: "waited 5 s for memory".into(),
            request_id: Some("r3".into()),
            kind: Some(RequestKind::Text),
            why: Rejection::TimedOut,
            waited_ms: 5000,
            need_bytes: 900,
            free_bytes: 100,
        };
        let Some(Signal::RequestFinished(f)) = signal_for(&rejected) else {
            panic!("a rejection is signalled");
        };
        assert_eq!(
            (
                f.outcome,
                f.kind,
                f.request_id.as_str(),
                f.waited_seconds,
                f.needed_bytes,
                f.free_bytes
            ),
            ("timed_out", "text", "r3", 5.0, 900, 100)
        );
        assert_eq!(f.slower_seconds, -1.0);
    }

    #[test]
    fn free_bytes_threshold() {
        assert!(!free_bytes_moved(1 << 30, (1 << 30) + FREE_BYTES_THRESHOLD));
        assert!(free_bytes_moved(1 << 30, (1 << 30) + FREE_BYTES_THRESHOLD + 1));
        assert!(free_bytes_moved(1 << 30, 0));
    }
}

//! The arbiter's events as D-Bus signals, and `FreeBytes` change notifications.
//!
//! [`signal_for`] is the pure mapping (tested on values); [`forward`] follows the arbiter's
//! event feed and snapshots and emits on one connection until that connection fails.
//! Events the desktop has no use for (a load starting, memory pressure before the steps
//! that relieve it, a restart, a context restored in the background) stay on
//! `GET /v1/events` only.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use zbus::object_server::InterfaceRef;

use super::interface::Vramd1;
use crate::arbiter::ArbiterHandle;
use crate::events::EventKind;
use crate::registry::Snapshot;

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
    },
    VaeOffloaded {
        model: String,
        width: u32,
        height: u32,
        /// `tiled` or `cpu`.
        placement: &'static str,
        reason: String,
    },
    RequestQueued {
        model: String,
        reason: String,
    },
    WorkerCrashed {
        model: String,
        reason: String,
    },
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
            seconds: load_ms as f64 / 1000.0,
            from_page_cache,
        },
        EventKind::ModelSoftUnloaded {
            model,
            freed_bytes,
            reason,
        } => Signal::ModelUnloaded {
            model,
            mode: "soft",
            reason,
            freed_bytes,
        },
        EventKind::ModelUnloaded {
            model,
            freed_bytes,
            reason,
        } => Signal::ModelUnloaded {
            model,
            mode: "hard",
            reason,
            freed_bytes,
        },
        EventKind::VaeTiled {
            model,
            width,
            height,
            reason,
        } => Signal::VaeOffloaded {
            model,
            width,
            height,
            placement: "tiled",
            reason,
        },
        EventKind::VaeOnCpu {
            model,
            width,
            height,
            reason,
        } => Signal::VaeOffloaded {
            model,
            width,
            height,
            placement: "cpu",
            reason,
        },
        EventKind::RequestQueued { model, reason, .. } => Signal::RequestQueued { model, reason },
        EventKind::WorkerCrashed { model, reason } => Signal::WorkerCrashed { model, reason },
        EventKind::ModelLoading { .. }
        | EventKind::ModelRestored { .. }
        | EventKind::RequestRejected { .. }
        | EventKind::WorkerRestarted { .. }
        | EventKind::MemoryPressure { .. } => return None,
    })
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
        } => Vramd1::model_unloaded(e, &model, mode, &reason, freed_bytes).await,
        Signal::VaeOffloaded {
            model,
            width,
            height,
            placement,
            reason,
        } => Vramd1::vae_offloaded(e, &model, width, height, placement, &reason).await,
        Signal::RequestQueued { model, reason } => Vramd1::request_queued(e, &model, &reason).await,
        Signal::WorkerCrashed { model, reason } => Vramd1::worker_crashed(e, &model, &reason).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unload_mode_comes_from_the_event_kind() {
        let soft = EventKind::ModelSoftUnloaded {
            model: "chat".into(),
            freed_bytes: 512,
            reason: "chat is idle".into(),
        };
        let hard = EventKind::ModelUnloaded {
            model: "chat".into(),
            freed_bytes: 4096,
            reason: "requested".into(),
        };
        assert!(matches!(
            signal_for(&soft),
            Some(Signal::ModelUnloaded {
                mode: "soft",
                freed_bytes: 512,
                ..
            })
        ));
        assert!(matches!(
            signal_for(&hard),
            Some(Signal::ModelUnloaded {
                mode: "hard",
                freed_bytes: 4096,
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
        };
        let cpu = EventKind::VaeOnCpu {
            model: "sd".into(),
            width: 512,
            height: 512,
            reason: "r".into(),
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

    #[test]
    fn free_bytes_threshold() {
        assert!(!free_bytes_moved(1 << 30, (1 << 30) + FREE_BYTES_THRESHOLD));
        assert!(free_bytes_moved(1 << 30, (1 << 30) + FREE_BYTES_THRESHOLD + 1));
        assert!(free_bytes_moved(1 << 30, 0));
    }
}

//! Model lifecycles: `unloaded → loading → loaded ⇄ busy`, `loaded → unloading →
//! soft_unloaded | unloaded`, and `failed` when a model cannot work (a load error, or
//! [`MAX_FAILURES`] worker crashes in a row).

use std::path::Path;
use std::time::{Duration, Instant};

use vramd_protocol::{Health, UnloadMode, VaePlacement};

use super::state::{reject, Arbiter, UnloadReply};
use super::{ArbiterError, Internal, UnloadOutcome, Work};
use crate::config::{ModelConfig, ModelKind};
use crate::events::{Cause, Ending, EventKind};
use crate::registry::ModelState;
use crate::worker::client::CallError;
use crate::worker::process::{self, Worker};

/// Worker crashes or failed starts in a row before a model is marked `failed`.
pub const MAX_FAILURES: u32 = 3;

/// How long to wait for a device to report the memory of a stopped worker as free.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

pub(crate) type LoadResult = Result<Loaded, LoadFailure>;

pub(crate) struct Loaded {
    worker: Worker,
    health: Health,
    context_length: Option<u32>,
    ms: u64,
}

#[derive(Debug)]
pub(crate) enum LoadFailure {
    /// The model itself is bad (the worker said so): retrying will not help.
    Model(String),
    /// The worker could not start or died while loading.
    Worker(String),
}

impl Arbiter {
    pub(super) fn start_load(&mut self, model: &str) {
        let cfg = self.config.model(model).expect("configured").clone();
        let need = self.need_for(model, Work::Text).load;
        let warm = self.host.residency(model).warm();
        let entry = self.registry.get_mut(model).expect("entry");
        entry.state = ModelState::Loading;
        let backoff = backoff(entry.failures);
        let seq = self.next_seq;
        self.next_seq += 1;
        // An image whose VAE must run on the CPU gets a context made that way from the start.
        let vae = self
            .rt(model)
            .waiters
            .iter()
            .map(|g| g.vae)
            .find(|v| *v == VaePlacement::Cpu)
            .unwrap_or_default();
        let rt = self.rt(model);
        rt.seq = seq;
        rt.warm = warm;
        self.registry.get_mut(model).expect("entry").reservations.loading = need;
        let rt = self.rt(model);
        let wait = rt
            .last_failure
            .map_or(Duration::ZERO, |t| backoff.saturating_sub(t.elapsed()));
        self.bus.publish(EventKind::ModelLoading {
            model: model.to_owned(),
            bytes: need,
            reason: if wait.is_zero() {
                "requested".into()
            } else {
                format!("restarting after a crash, in {} ms", wait.as_millis())
            },
        });
        let binary = self.paths.binary(cfg.kind);
        let socket = self.paths.socket(seq);
        let ready_within = self
            .config
            .daemon
            .worker_start_timeout
            .0
            .unwrap_or(Duration::from_secs(3600));
        let health_within = self.config.daemon.worker_health_timeout.0;
        let events = self.reply_later();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let name = cfg.name.clone();
            let limits = Deadlines {
                ready: ready_within,
                health: health_within,
            };
            let result = load(&cfg, &binary, socket, seq, limits, vae, events.clone()).await;
            let _ = events.send(Internal::LoadDone {
                model: name,
                seq,
                result,
            });
        });
    }

    pub(super) fn load_done(&mut self, model: &str, seq: u64, result: LoadResult) {
        if self.rt(model).seq != seq {
            if let Ok(mut stale) = result {
                stale.worker.stop();
            }
            return;
        }
        // A worker that died right after answering the load may have had its exit handled
        // already (as that of a load in progress): it must not be installed as alive.
        let result = match result {
            Ok(loaded) if !loaded.worker.alive() => {
                let reason = loaded
                    .worker
                    .exit()
                    .map_or_else(|| "the worker ended right after loading".to_owned(), |e| e.reason());
                Err(LoadFailure::Worker(reason))
            }
            other => other,
        };
        let entry = self.registry.get_mut(model).expect("entry");
        // From here on the worker's report (or nothing, if it failed) stands for the load.
        entry.reservations.loading = 0;
        match result {
            Ok(loaded) => {
                let restarted = entry.failures > 0;
                entry.state = ModelState::Loaded;
                entry.report(&loaded.health);
                entry.load_ms = Some(loaded.ms);
                entry.context_length = loaded.context_length;
                entry.error = None;
                let (pid, bytes) = (loaded.worker.pid, loaded.health.bytes);
                let rt = self.rt(model);
                rt.worker = Some(loaded.worker);
                rt.restore_failed = false;
                rt.just_loaded_ms = Some(loaded.ms);
                rt.known = Some(bytes);
                let from_page_cache = rt.warm;
                if restarted {
                    self.bus.publish(EventKind::WorkerRestarted {
                        model: model.to_owned(),
                        pid,
                    });
                }
                self.bus.publish(EventKind::ModelLoaded {
                    model: model.to_owned(),
                    bytes: bytes.total,
                    load_ms: loaded.ms,
                    from_page_cache,
                });
                for g in std::mem::take(&mut self.rt(model).waiters) {
                    self.serve(model, g);
                }
                self.rt(model).just_loaded_ms = None;
            }
            Err(LoadFailure::Model(reason)) => {
                tracing::warn!(model, "load failed: {reason}");
                entry.fail(reason.clone());
                entry.failures += 1;
                self.fail_waiters(model, |m| ArbiterError::ModelFailed {
                    model: m,
                    reason: reason.clone(),
                });
            }
            Err(LoadFailure::Worker(reason)) => {
                self.bus.publish(EventKind::WorkerCrashed {
                    model: model.to_owned(),
                    reason: reason.clone(),
                });
                self.count_failure(model, reason.clone());
                self.fail_waiters(model, |m| ArbiterError::WorkerFailed {
                    model: m,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// `POST /v1/models/{name}/unload`: a person asked; busy models are refused, not waited for.
    pub(super) fn unload(&mut self, model: &str, mode: UnloadMode, reply: UnloadReply) {
        let Some(entry) = self.registry.get(model) else {
            let _ = reply.send(Err(ArbiterError::UnknownModel(model.to_owned())));
            return;
        };
        let busy = |reason: String| ArbiterError::InUse {
            model: model.to_owned(),
            reason,
        };
        let done = |state| UnloadOutcome {
            model: model.to_owned(),
            mode,
            state,
            freed_bytes: 0,
        };
        let image = entry.kind == ModelKind::Image;
        match entry.state {
            ModelState::Unloaded | ModelState::Failed => drop(reply.send(Ok(done(entry.state)))),
            ModelState::SoftUnloaded if mode == UnloadMode::Soft => drop(reply.send(Ok(done(entry.state)))),
            ModelState::Loading => drop(reply.send(Err(busy("it is loading".into())))),
            ModelState::Busy => drop(reply.send(Err(busy(format!("{} request(s) in flight", entry.in_flight))))),
            ModelState::Unloading => {
                let before = entry.bytes.total;
                self.rt(model).unload_waiters.push((mode, before, reply));
            }
            ModelState::Loaded | ModelState::SoftUnloaded => {
                let before = entry.bytes.total;
                self.rt(model).unload_waiters.push((mode, before, reply));
                let reason = "requested".to_owned();
                // An image worker has no context to drop apart from its model.
                if mode == UnloadMode::Hard || image {
                    self.evict_hard(model, reason, Cause::Requested)
                } else {
                    // A person asked for it: keep it so until the model is used again.
                    self.rt(model).restore_when_free = false;
                    self.evict_soft(model, reason, Cause::Requested)
                }
            }
        }
    }

    pub(super) fn evict_soft(&mut self, model: &str, reason: String, cause: Cause) {
        self.registry.get_mut(model).expect("entry").state = ModelState::Unloading;
        self.mark_evicting(model);
        let events = self.reply_later();
        let rt = self.rt(model);
        rt.unload_reason = Some((reason, cause));
        let (client, seq, name) = (
            rt.worker.as_ref().expect("worker").client.clone(),
            rt.seq,
            model.to_owned(),
        );
        tokio::spawn(async move {
            let result = client.unload(UnloadMode::Soft).await.map_err(|e| e.to_string());
            let _ = events.send(Internal::SoftUnloadDone {
                model: name,
                seq,
                result,
            });
        });
    }

    /// Stops the model's worker: the only way to give back every byte, CUDA context included.
    pub(super) fn evict_hard(&mut self, model: &str, reason: String, cause: Cause) {
        let held = self.registry.get(model).expect("entry").held();
        if let Some(free) = self.memory().device_free {
            self.settling = Some((Instant::now() + SETTLE_LIMIT, free + held / 10 * 9));
        }
        self.registry.get_mut(model).expect("entry").state = ModelState::Unloading;
        self.mark_evicting(model);
        let rt = self.rt(model);
        rt.unload_reason = Some((reason, cause));
        rt.worker.as_mut().expect("resident models have a worker").stop();
    }

    /// Evictions the queue's head asked for hold the queue until they settle.
    fn mark_evicting(&mut self, model: &str) {
        let for_head = self.pending.front().is_some_and(|h| {
            h.done
                .last()
                .is_some_and(|a| matches!(&a.step, crate::planner::Step::SoftUnload { model: m, .. } | crate::planner::Step::HardUnload { model: m, .. } if m == model))
        });
        if for_head {
            self.evicting = Some(model.to_owned());
        }
    }

    pub(super) fn soft_unload_done(&mut self, model: &str, seq: u64, result: Result<Health, String>) {
        let unloading = self
            .registry
            .get(model)
            .is_some_and(|e| e.state == ModelState::Unloading);
        // A worker that exited meanwhile has settled the model already.
        if self.rt(model).seq != seq || self.rt(model).worker.is_none() || !unloading {
            return;
        }
        match result {
            Ok(health) => {
                let entry = self.registry.get_mut(model).expect("entry");
                let freed = entry.bytes.total.saturating_sub(health.bytes.total);
                let kept = if entry.kind == crate::config::ModelKind::Llm {
                    health.bytes.host
                } else {
                    0
                };
                entry.report(&health);
                entry.state = ModelState::SoftUnloaded;
                let (reason, cause) = self
                    .rt(model)
                    .unload_reason
                    .take()
                    .unwrap_or_else(|| (String::new(), Cause::Other));
                self.bus.publish(EventKind::ModelSoftUnloaded {
                    model: model.to_owned(),
                    freed_bytes: freed,
                    kept_bytes: kept,
                    reason,
                    cause,
                });
                self.settle_unload(model);
            }
            // A worker that cannot drop its context is stopped instead: that frees it all.
            Err(e) => {
                tracing::warn!(model, "soft unload failed ({e}); stopping the worker instead");
                let rt = self.rt(model);
                if let Some(w) = rt.worker.as_mut() {
                    w.stop();
                }
            }
        }
    }

    pub(super) fn worker_exit(&mut self, model: &str, seq: u64, exit: process::Exit) {
        let rt = self.rt(model);
        if rt.seq != seq || rt.worker.is_none() {
            return; // an old worker, or one whose failed load was already handled
        }
        rt.worker = None;
        let reason = rt.unload_reason.take();
        let entry = self.registry.get_mut(model).expect("entry");
        let freed = entry.bytes.total;
        entry.clear_worker();
        // Requests that were running on it use nothing any more (they fail as it is gone),
        // and no longer keep the model busy.
        entry.reservations.worker_gone();
        let serving = entry.in_flight > 0 || !entry.running.is_empty();
        entry.in_flight = 0;
        if exit.requested {
            entry.state = ModelState::Unloaded;
            // Clients' keep_alive wishes were about this load; the next one starts afresh.
            entry.keep_alive_override = None;
            entry.evict_first = false;
            let (reason, cause) = reason.unwrap_or_else(|| ("stopped".into(), Cause::Other));
            self.bus.publish(EventKind::ModelUnloaded {
                model: model.to_owned(),
                freed_bytes: freed,
                reason,
                cause,
            });
            // Keep its pages in RAM so that loading it again is fast.
            self.host.will_need(model);
        } else {
            let reason = exit.reason();
            self.bus.publish(EventKind::WorkerCrashed {
                model: model.to_owned(),
                reason: reason.clone(),
            });
            self.crashed_after_load(model, reason, serving);
        }
        self.settle_unload(model);
    }

    /// Answers unload waiters once the model left `unloading`, and lets the queue go on.
    fn settle_unload(&mut self, model: &str) {
        self.last_activity = Instant::now();
        let entry = self.registry.get(model).expect("entry");
        let (state, now) = (entry.state, entry.bytes.total);
        for (mode, before, reply) in std::mem::take(&mut self.rt(model).unload_waiters) {
            let _ = reply.send(Ok(UnloadOutcome {
                model: model.to_owned(),
                mode,
                state,
                freed_bytes: before.saturating_sub(now),
            }));
        }
        if self.evicting.as_deref() == Some(model) {
            self.evicting = None;
        }
        // Requests granted before a crash: their model is gone, load it again for them,
        // unless it has failed for good.
        if state == ModelState::Unloaded && !self.rt(model).waiters.is_empty() {
            self.start_load(model);
        } else if state == ModelState::Failed {
            let reason = self
                .registry
                .get(model)
                .and_then(|e| e.error.clone())
                .unwrap_or_default();
            self.fail_waiters(model, |m| ArbiterError::ModelFailed {
                model: m,
                reason: reason.clone(),
            });
        }
    }

    /// A worker that died after it had loaded its model: whatever it was serving failed
    /// (each client is told the cause), but the model loads, so the next request starts a
    /// new worker. Only failed starts count towards `failed` ([`Self::count_failure`]):
    /// otherwise one client's requests crashing the worker would take the model from
    /// everyone until root reloads it.
    fn crashed_after_load(&mut self, model: &str, reason: String, serving: bool) {
        self.rt(model).worker = None;
        let entry = self.registry.get_mut(model).expect("entry");
        entry.clear_worker();
        entry.state = ModelState::Unloaded;
        entry.error = Some(match serving {
            true => format!("its worker stopped while serving a request: {reason}"),
            false => format!("its worker stopped: {reason}"),
        });
    }

    fn count_failure(&mut self, model: &str, reason: String) {
        let rt = self.rt(model);
        rt.worker = None;
        rt.last_failure = Some(Instant::now());
        let entry = self.registry.get_mut(model).expect("entry");
        entry.failures += 1;
        if entry.failures >= MAX_FAILURES {
            let n = entry.failures;
            entry.fail(format!("worker failed {n} times in a row; last: {reason}"));
        } else {
            entry.clear_worker();
            entry.state = ModelState::Unloaded;
            entry.error = Some(reason);
        }
    }

    pub(super) fn fail_waiters(&mut self, model: &str, err: impl Fn(String) -> ArbiterError) {
        for g in std::mem::take(&mut self.rt(model).waiters) {
            let entry = self.registry.get_mut(model).expect("entry");
            entry.reservations.release(g.ticket);
            let e = err(model.to_owned());
            if let Some(story) = self.rt(model).stories.remove(&g.ticket) {
                let finished = self.finished(model, g.work, story, Ending::Failed, Some(e.to_string()), None);
                self.bus.publish(finished);
            }
            reject(g.waiter, e);
        }
    }
}

/// Restart delay after `failures` crashes in a row: 0.5 s, 1 s, 2 s, … at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_millis(500u64.saturating_mul(1 << (n - 1).min(6))).min(Duration::from_secs(30)),
    }
}

/// How long a new worker may take to answer its first health check, and later ones.
struct Deadlines {
    ready: Duration,
    health: Option<Duration>,
}

async fn load(
    cfg: &ModelConfig,
    binary: &Path,
    socket: std::path::PathBuf,
    seq: u64,
    limits: Deadlines,
    vae: VaePlacement,
    events: tokio::sync::mpsc::UnboundedSender<Internal>,
) -> LoadResult {
    let started = Instant::now();
    let name = cfg.name.clone();
    let on_exit = move |exit| {
        let _ = events.send(Internal::WorkerExit { model: name, seq, exit });
    };
    let mut worker = process::spawn(binary, socket, &cfg.name, limits.ready, limits.health, on_exit)
        .await
        .map_err(|e| LoadFailure::Worker(e.to_string()))?;
    match worker.client.load(cfg, vae).await {
        Ok(report) => Ok(Loaded {
            worker,
            health: report.health,
            context_length: report.context_length,
            ms: started.elapsed().as_millis() as u64,
        }),
        Err(CallError::Worker(e, _)) => {
            worker.stop();
            Err(LoadFailure::Model(e.message))
        }
        Err(e) => {
            let reason = match worker.exited(Duration::from_secs(2)).await {
                Some(exit) => exit.reason(),
                None => e.to_string(),
            };
            worker.stop();
            Err(LoadFailure::Worker(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}

//! Requests waiting for memory, served in arrival order, and the execution of plans.
//!
//! The request at the head of the queue is planned ([`crate::planner::plan`]); if the plan
//! evicts something, the arbiter performs its first eviction, waits for it to finish and
//! plans again, so every step is decided on the state as it is. A request that must wait
//! for a busy model stays at the head (bounded by `[policy] wait_timeout`); later requests
//! queue behind it and are never served out of order.

use std::time::Instant;

use tokio::sync::oneshot;

use super::task::{reject, Arbiter, Shape};
use super::{ArbiterError, Job, Lease, LoadOutcome};
use crate::config::ModelKind;
use crate::estimate;
use crate::events::EventKind;
use crate::planner::{self, Action, Memory, ModelView, Need, Outcome, Policy, Step, VaeNeed, VaePlacement};
use crate::registry::ModelState;

pub(super) enum Waiter {
    Acquire(oneshot::Sender<Result<Lease, ArbiterError>>),
    Load(oneshot::Sender<Result<LoadOutcome, ArbiterError>>),
}

pub(super) struct Pending {
    pub model: String,
    pub job: Job,
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
    pub job: Job,
    pub vae: VaePlacement,
    pub actions: Vec<Action>,
    /// Its memory reservation (`registry::Reservations`), given back when it is done.
    pub ticket: u64,
}

impl Arbiter {
    pub(super) fn enqueue(&mut self, model: String, job: Job, waiter: Waiter) {
        if self.config.model(&model).is_none() {
            return reject(waiter, ArbiterError::UnknownModel(model));
        }
        self.last_activity = Instant::now();
        self.pending.push_back(Pending {
            model,
            job,
            waiter,
            since: Instant::now(),
            queued: false,
            done: Vec::new(),
        });
    }

    /// Serves the head of the queue as far as memory allows.
    pub(super) fn drive(&mut self) {
        if let Some((until, want)) = self.settling {
            let free = self.memory().device_free.unwrap_or(u64::MAX);
            if free < want && Instant::now() < until {
                return; // the tick drives again
            }
            self.settling = None;
        }
        while self.evicting.is_none() {
            let Some(head) = self.pending.front() else { return };
            let model = head.model.clone();
            let entry = self.registry.get(&model).expect("queued models are configured");
            match entry.state {
                ModelState::Failed => {
                    let reason = entry.error.clone().unwrap_or_default();
                    let head = self.pending.pop_front().expect("head");
                    reject(head.waiter, ArbiterError::ModelFailed { model, reason });
                    continue;
                }
                // Settles soon; plan it then (never revive a model in the middle of an unload).
                ModelState::Loading | ModelState::Unloading => return,
                _ => {}
            }
            let need = self.need_for(&model, head.job);
            let policy = Policy {
                ladder: self.config.policy.ladder.clone(),
                llm_idle_first: self.config.policy.llm_idle_first.0.map_or(u64::MAX, |d| d.as_secs()),
                retry_after: self.config.policy.retry_after.0.map_or(5, |d| d.as_secs().max(1)),
            };
            let memory = self.memory();
            let plan = planner::plan(&self.views(), memory, &need, crate::clock::now_unix(), &policy);
            match plan.outcome {
                Outcome::Proceed { vae } => {
                    if let Some(action) = plan.actions.iter().find(|a| is_eviction(&a.step)).cloned() {
                        if !self.pending[0].done.iter().any(|a| is_eviction(&a.step)) {
                            self.bus.publish(EventKind::MemoryPressure {
                                model: model.clone(),
                                need_bytes: plan.need,
                                free_bytes: plan.free,
                                reason: format!("{} free, making room", crate::units::format_size_human(plan.free)),
                            });
                        }
                        self.pending[0].done.push(action.clone());
                        self.execute(action);
                        return;
                    }
                    let mut head = self.pending.pop_front().expect("head");
                    let forced = match head.job {
                        Job::Image { vae: Some(v), .. } => Some(v),
                        _ => None,
                    };
                    for a in plan.actions {
                        // With a forced placement the planner's VAE steps are moot.
                        if forced.is_some() && !is_eviction(&a.step) {
                            continue;
                        }
                        self.publish_vae(&model, head.job, &a);
                        head.done.push(a);
                    }
                    self.grant(head, forced.unwrap_or(vae), &need);
                }
                Outcome::Wait { model: busy, reason } => {
                    let head = &mut self.pending[0];
                    if !head.queued {
                        head.queued = true;
                        let reason = format!("waiting for {busy}: {reason}");
                        self.bus.publish(EventKind::RequestQueued { model, reason });
                    }
                    return;
                }
                Outcome::Busy { reason, retry_after } => {
                    let head = self.pending.pop_front().expect("head");
                    self.bus.publish(EventKind::RequestRejected {
                        model: model.clone(),
                        status: 503,
                        reason: reason.clone(),
                    });
                    reject(
                        head.waiter,
                        ArbiterError::NoMemory {
                            model,
                            reason,
                            retry_after,
                        },
                    );
                }
                Outcome::TooLarge { reason } => {
                    let head = self.pending.pop_front().expect("head");
                    self.bus.publish(EventKind::RequestRejected {
                        model: model.clone(),
                        status: 507,
                        reason: reason.clone(),
                    });
                    reject(head.waiter, ArbiterError::TooLarge { model, reason });
                }
            }
        }
    }

    /// Rejects the head when it has waited longer than `[policy] wait_timeout`.
    pub(super) fn expire_waits(&mut self) {
        let Some(limit) = self.config.policy.wait_timeout.0 else {
            return;
        };
        let expired = self
            .pending
            .front()
            .is_some_and(|h| h.queued && h.since.elapsed() >= limit);
        if expired && self.evicting.is_none() {
            let head = self.pending.pop_front().expect("head");
            let reason = format!("waited {} for memory", crate::units::format_duration(limit));
            self.bus.publish(EventKind::RequestRejected {
                model: head.model.clone(),
                status: 503,
                reason: reason.clone(),
            });
            let retry_after = self.config.policy.retry_after.0.map_or(5, |d| d.as_secs().max(1));
            reject(
                head.waiter,
                ArbiterError::NoMemory {
                    model: head.model,
                    reason,
                    retry_after,
                },
            );
        }
    }

    /// Lets the head go ahead. What it will use beyond what its model holds is reserved
    /// until it is done (the model's own load reserves itself in `start_load`).
    fn grant(&mut self, head: Pending, vae: VaePlacement, need: &Need) {
        let model = head.model;
        let state = self.registry.get(&model).expect("entry").state;
        let explicit_load = matches!(head.waiter, Waiter::Load(_));
        let reserve = match (head.job, state) {
            (Job::Image { .. }, _) => need.peak(vae).saturating_sub(need.load),
            // Its context comes back within the request.
            (Job::Text, ModelState::SoftUnloaded) if !explicit_load => need.load,
            (Job::Text, _) => 0,
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let entry = self.registry.get_mut(&model).expect("entry");
        entry.reservations.grant(ticket, reserve);
        let granted = Granted {
            waiter: head.waiter,
            job: head.job,
            vae,
            actions: head.done,
            ticket,
        };
        match state {
            ModelState::Unloaded => {
                self.rt(&model).waiters.push(granted);
                self.start_load(&model);
            }
            // `POST /v1/models/{name}/load` on a soft-unloaded LLM: bring its context back.
            ModelState::SoftUnloaded if explicit_load => {
                self.rt(&model).waiters.push(granted);
                self.start_restore(&model, "requested".into());
            }
            _ => self.serve(&model, granted),
        }
    }

    fn execute(&mut self, action: Action) {
        match action.step {
            Step::SoftUnload { model, .. } => {
                self.evict_soft(&model, action.reason);
                // Made room for a request: give the context back once that is over.
                self.rt(&model).restore_when_free = true;
            }
            Step::HardUnload { model, .. } => self.evict_hard(&model, action.reason),
            Step::VaeTiled { .. } | Step::VaeOnCpu { .. } => unreachable!("not an eviction"),
        }
    }

    fn publish_vae(&mut self, model: &str, job: Job, action: &Action) {
        let Job::Image { width, height, .. } = job else { return };
        let (model, reason) = (model.to_owned(), action.reason.clone());
        match action.step {
            Step::VaeTiled { .. } => self.bus.publish(EventKind::VaeTiled {
                model,
                width,
                height,
                reason,
            }),
            Step::VaeOnCpu { .. } => self.bus.publish(EventKind::VaeOnCpu {
                model,
                width,
                height,
                reason,
            }),
            _ => return,
        };
    }

    pub(super) fn memory(&mut self) -> Memory {
        let reading = self.source.read();
        Memory {
            total: reading.map_or(self.config.memory.budget.0, |r| r.total),
            reserve: self.config.memory.reserve.0,
            device_free: reading.map(|r| r.free),
        }
    }

    /// The registry as the planner sees it.
    pub(super) fn views(&self) -> Vec<ModelView> {
        self.registry
            .models()
            .iter()
            .map(|e| {
                let llm = e.kind == ModelKind::Llm;
                // NVML's excess over the worker's account (the CUDA context) goes with the weights.
                let unaccounted = e.held() - e.bytes.total;
                ModelView {
                    name: e.name.clone(),
                    kind: e.kind,
                    state: e.state,
                    weights: unaccounted + if llm { e.bytes.weights } else { e.bytes.total },
                    context: if llm { e.bytes.context + e.bytes.compute } else { 0 },
                    last_used: e.last_used,
                    in_flight: e.in_flight,
                    pinned: e.pinned,
                    priority: e.priority,
                }
            })
            .collect()
    }

    /// What `job` on `model` needs beyond what the model holds: measured figures when it
    /// was loaded before, estimates otherwise. A request granted earlier on the same model
    /// has reserved working memory that this one reuses after it (one request at a time).
    pub(super) fn need_for(&self, model: &str, job: Job) -> Need {
        let entry = self.registry.get(model).expect("configured");
        let cfg = self.config.model(model).expect("configured");
        let known = self.runtime.get(model).and_then(|rt| rt.known);
        let granted = entry.reservations.largest_grant(entry.bytes.total);
        let shape = self.shapes.get(model).expect("every model has a shape");
        let mut need = Need {
            model: model.to_owned(),
            load: 0,
            work: 0,
            vae: None,
        };
        let resident = matches!(
            entry.state,
            ModelState::Loaded | ModelState::Busy | ModelState::SoftUnloaded
        );
        match (cfg.kind, shape) {
            (ModelKind::Llm, shape) => {
                let est = match shape {
                    Shape::Llm(s) => {
                        let ctx = cfg.llm_options.as_ref().map_or(0, |o| o.context_length);
                        let e = estimate::llm(s, ctx, Some(&self.calibration), model);
                        (e.weights, e.context + e.compute)
                    }
                    Shape::Opaque(b) => (*b, 0),
                    Shape::Image(_) => (0, 0),
                };
                let (weights, context) = known.map_or(est, |b| (b.weights, b.context + b.compute));
                need.load = match entry.state {
                    ModelState::SoftUnloaded => context.saturating_sub(granted),
                    ModelState::Unloaded | ModelState::Failed => weights + context,
                    _ => 0,
                };
            }
            (ModelKind::Image, shape) => {
                let weights = match shape {
                    Shape::Image(w) => w.clone(),
                    Shape::Opaque(b) => crate::estimate::ImageWeights {
                        components: vec![("model".into(), *b)],
                        taesd: false,
                    },
                    Shape::Llm(_) => Default::default(),
                };
                if !resident {
                    need.load = known.map_or(weights.total(), |b| b.total);
                }
                if let Job::Image { width, height, vae } = job {
                    let e = estimate::image(&weights, width, height, Some(&self.calibration), model);
                    need.work = e.sampling.saturating_sub(granted);
                    let mut v = VaeNeed {
                        gpu: e.vae_gpu.saturating_sub(granted),
                        tiled: e.vae_tiled.saturating_sub(granted),
                        cpu: e.vae_cpu.saturating_sub(granted),
                    };
                    // A forced placement costs what it costs, whatever the planner would pick.
                    if let Some(forced) = vae {
                        let bytes = match forced {
                            VaePlacement::Gpu => v.gpu,
                            VaePlacement::Tiled => v.tiled,
                            VaePlacement::Cpu => v.cpu,
                        };
                        v = VaeNeed {
                            gpu: bytes,
                            tiled: bytes,
                            cpu: bytes,
                        };
                    }
                    need.vae = Some(v);
                }
            }
        }
        need
    }
}

fn is_eviction(step: &Step) -> bool {
    matches!(step, Step::SoftUnload { .. } | Step::HardUnload { .. })
}

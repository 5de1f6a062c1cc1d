//! Requests waiting for memory, served in arrival order, and the execution of plans.
//!
//! The request at the head of the queue is planned ([`crate::planner::plan`]); if the plan
//! evicts something, the arbiter performs its first eviction, waits for it to finish and
//! plans again, so every step is decided on the state as it is. A request that must wait
//! for a busy model stays at the head (bounded by `[policy] wait_timeout`); later requests
//! queue behind it and are never served out of order.

use std::time::Instant;

use super::state::{reject, Arbiter, Granted, Pending, Story, Waiter};
use super::{ArbiterError, Work};
use crate::config::ModelKind;
use crate::estimate::{self, Shape};
use crate::events::{Cause, Ending, EventKind, Freed, Rejection, RequestKind};
use crate::planner::{self, Action, Memory, ModelView, Need, Outcome, Step, VaeNeed, VaePlacement};
use crate::registry::ModelState;

impl Arbiter {
    pub(super) fn enqueue(&mut self, model: String, work: Work, waiter: Waiter) {
        if self.config.model(&model).is_none() {
            return reject(waiter, ArbiterError::UnknownModel(model));
        }
        self.last_activity = Instant::now();
        self.pending.push_back(Pending {
            model,
            work,
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
            if head.waiter.gone() {
                let head = self.pending.pop_front().expect("head");
                self.left(head);
                continue;
            }
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
            if !self.serve_head(model) {
                return;
            }
        }
    }

    /// Plans the head of the queue and acts on the plan: an eviction started or a wait
    /// return `false` (drive again once it settles), a grant or a refusal `true`.
    fn serve_head(&mut self, model: String) -> bool {
        let need = self.need_for(&model, self.pending[0].work);
        let policy = self.config.policy.planner();
        let memory = self.memory();
        let plan = planner::plan(&self.views(), memory, &need, crate::clock::now_unix(), &policy);
        match plan.outcome {
            Outcome::Proceed { vae } => self.proceed(model, plan, vae, &need),
            Outcome::Wait { model: busy, reason } => {
                let head = &mut self.pending[0];
                if !head.queued {
                    head.queued = true;
                    let request_id = head.waiter.request_id();
                    let reason = format!("waiting for {busy}: {reason}");
                    self.bus.publish(EventKind::RequestQueued {
                        model,
                        position: 1,
                        reason,
                        request_id,
                        waiting_for: Some(busy),
                        need_bytes: plan.need,
                        free_bytes: plan.free,
                    });
                }
                false
            }
            Outcome::NoRoom { reason, retry_after } => {
                let refusal = Refusal {
                    status: 503,
                    why: Rejection::Refused,
                    need_bytes: plan.need,
                    free_bytes: plan.free,
                };
                self.refuse(model, refusal, reason, |model, reason| ArbiterError::NoMemory {
                    model,
                    reason,
                    retry_after,
                });
                true
            }
            Outcome::TooLarge { reason } => {
                let refusal = Refusal {
                    status: 507,
                    why: Rejection::TooLarge,
                    need_bytes: plan.need,
                    free_bytes: plan.free,
                };
                self.refuse(model, refusal, reason, |model, reason| ArbiterError::TooLarge {
                    model,
                    reason,
                });
                true
            }
        }
    }

    /// A plan that lets the head go ahead: its first eviction, if any, is performed (and the
    /// head waits for it); otherwise the head is granted with the planned VAE placement.
    fn proceed(&mut self, model: String, plan: planner::Plan, vae: VaePlacement, need: &Need) -> bool {
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
            let request_id = self.pending[0].waiter.request_id();
            let cause = Cause::Room {
                model,
                request_kind: request_id.is_some().then(|| kind_of(self.pending[0].work)),
                request_id,
                need_bytes: plan.need,
            };
            self.execute(action, cause);
            return false;
        }
        let mut head = self.pending.pop_front().expect("head");
        let forced = match head.work {
            Work::Image { vae: Some(v), .. } => Some(v),
            _ => None,
        };
        for a in plan.actions {
            // With a forced placement the planner's VAE steps are moot.
            if forced.is_some() && !is_eviction(&a.step) {
                continue;
            }
            self.publish_vae(&model, head.work, &a, head.waiter.request_id());
            head.done.push(a);
        }
        self.grant(head, forced.unwrap_or(vae), need);
        true
    }

    /// Answers the head with a refusal, published as an event too.
    fn refuse(&mut self, model: String, r: Refusal, reason: String, err: impl FnOnce(String, String) -> ArbiterError) {
        let head = self.pending.pop_front().expect("head");
        self.bus.publish(EventKind::RequestRejected {
            model: model.clone(),
            status: r.status,
            reason: reason.clone(),
            request_id: head.waiter.request_id(),
            kind: head.waiter.request_id().map(|_| kind_of(head.work)),
            why: r.why,
            waited_ms: ms(head.since.elapsed()),
            need_bytes: r.need_bytes,
            free_bytes: r.free_bytes,
        });
        reject(head.waiter, err(model, reason));
    }

    /// Forgets waiting requests whose client went away: they leave the queue without ever
    /// being planned (the head's eviction in progress, if any, still settles).
    pub(super) fn drop_abandoned(&mut self) {
        let (gone, staying): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.waiter.gone());
        self.pending = staying.into();
        if !gone.is_empty() {
            tracing::debug!(left = gone.len(), "clients left the queue");
        }
        for p in gone {
            self.left(p);
        }
    }

    /// A request whose client left before it was granted: if it was told to be waiting, its
    /// story ends (`cancelled`), so that whoever showed it waiting can take that down.
    fn left(&mut self, p: Pending) {
        let Some(request_id) = p.waiter.request_id().filter(|_| p.queued) else {
            return;
        };
        let vae = match p.work {
            Work::Text => None,
            Work::Image { vae, .. } => vae,
        };
        self.bus.publish(EventKind::RequestFinished {
            model: p.model,
            request_id,
            kind: kind_of(p.work),
            outcome: Ending::Cancelled,
            error: None,
            queued: true,
            waited_ms: ms(p.since.elapsed()),
            vae,
            vae_ms: None,
            slower_ms: None,
            freed: p.done.iter().filter_map(freed).collect(),
        });
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
            let model = self.pending[0].model.clone();
            let need = self.need_for(&model, self.pending[0].work);
            let memory = self.memory();
            let refusal = Refusal {
                status: 503,
                why: Rejection::TimedOut,
                need_bytes: need.peak(cheapest(&need)),
                free_bytes: planner::free_bytes(&self.views(), memory),
            };
            let reason = format!("waited {} for memory", crate::units::format_duration(limit));
            let retry_after = self.config.policy.retry_after.0.map_or(5, |d| d.as_secs().max(1));
            self.refuse(model, refusal, reason, |model, reason| ArbiterError::NoMemory {
                model,
                reason,
                retry_after,
            });
        }
    }

    /// Lets the head go ahead. What it will use beyond what its model holds is reserved
    /// until it is done (the model's own load reserves itself in `start_load`).
    fn grant(&mut self, head: Pending, vae: VaePlacement, need: &Need) {
        let model = head.model;
        let state = self.registry.get(&model).expect("entry").state;
        let explicit_load = matches!(head.waiter, Waiter::Load(_));
        let reserve = match (head.work, state) {
            (Work::Image { .. }, _) => need.peak(vae).saturating_sub(need.load),
            // Its context comes back within the request.
            (Work::Text, ModelState::SoftUnloaded) if !explicit_load => need.load,
            (Work::Text, _) => 0,
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if let Some(request_id) = head.waiter.request_id() {
            let waits_for_slot = head.work == Work::Text && self.publish_slot_wait(&model, &request_id);
            let story = Story {
                request_id,
                queued: head.queued || waits_for_slot,
                waited_ms: ms(head.since.elapsed()),
                freed: head.done.iter().filter_map(freed).collect(),
                vae,
            };
            self.rt(&model).stories.insert(ticket, story);
        }
        let entry = self.registry.get_mut(&model).expect("entry");
        entry.reservations.grant(ticket, reserve);
        let granted = Granted {
            waiter: head.waiter,
            work: head.work,
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

    /// A text request granted while every slot of its model is taken waits in the worker
    /// for one: said as `request_queued` (its place among those waiting for a slot), so that
    /// a client or a status page sees why nothing comes yet. Returns whether it was said.
    fn publish_slot_wait(&mut self, model: &str, request_id: &str) -> bool {
        let slots = self.config.model(model).map_or(1, crate::estimate::slots);
        let running = self.registry.get(model).map_or(0, |e| e.in_flight);
        if running < slots {
            return false;
        }
        self.bus.publish(EventKind::RequestQueued {
            model: model.to_owned(),
            position: running - slots + 1,
            reason: format!("every slot busy ({slots}): waiting for one to be free"),
            request_id: Some(request_id.to_owned()),
            waiting_for: None,
            need_bytes: 0,
            free_bytes: 0,
        });
        true
    }

    fn execute(&mut self, action: Action, cause: Cause) {
        match action.step {
            Step::SoftUnload { model, .. } => {
                self.evict_soft(&model, action.reason, cause);
                // Made room for a request: give the context back once that is over.
                self.rt(&model).restore_when_free = true;
            }
            Step::HardUnload { model, .. } => self.evict_hard(&model, action.reason, cause),
            Step::VaeTiled { .. } | Step::VaeOnCpu { .. } => unreachable!("not an eviction"),
        }
    }

    fn publish_vae(&mut self, model: &str, work: Work, action: &Action, request_id: Option<String>) {
        let Work::Image { width, height, .. } = work else {
            return;
        };
        let (model, reason) = (model.to_owned(), action.reason.clone());
        match action.step {
            Step::VaeTiled { .. } => self.bus.publish(EventKind::VaeTiled {
                model,
                width,
                height,
                reason,
                request_id,
            }),
            Step::VaeOnCpu { .. } => self.bus.publish(EventKind::VaeOnCpu {
                model,
                width,
                height,
                reason,
                request_id,
            }),
            _ => return,
        };
    }

    pub(super) fn memory(&mut self) -> Memory {
        let reading = self.host.memory();
        Memory {
            total: reading.map_or(self.config.memory.budget.0, |r| r.total),
            reserve: self.config.memory.reserve.0,
            device_free: reading.map(|r| r.free),
        }
    }

    /// The registry as the planner sees it.
    pub(super) fn views(&self) -> Vec<ModelView> {
        self.registry.planner_views()
    }

    /// What `work` on `model` needs beyond what the model holds: measured figures when it
    /// was loaded before, estimates otherwise. A request granted earlier on the same model
    /// has reserved working memory that this one reuses after it (one request at a time).
    pub(super) fn need_for(&self, model: &str, work: Work) -> Need {
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
                        let ctx = estimate::context_length(cfg, shape);
                        let e = estimate::llm(s, ctx, estimate::slots(cfg), Some(&self.calibration), model);
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
                // A context with its VAE on the CPU holds it in host RAM (`Bytes::host`, its
                // weights and decode buffer): decoding on the device brings it back there.
                let on_host = if resident {
                    entry.bytes.host
                } else {
                    known.map_or(0, |b| b.host)
                };
                if let Work::Image { width, height, vae, .. } = work {
                    let e = estimate::image(&weights, width, height, Some(&self.calibration), model);
                    need.work = e.sampling.saturating_sub(granted);
                    let mut v = VaeNeed {
                        gpu: (e.vae_gpu + on_host).saturating_sub(granted),
                        tiled: (e.vae_tiled + on_host).saturating_sub(granted),
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

/// A refusal's figures, for its `request_rejected` event.
struct Refusal {
    status: u16,
    why: Rejection,
    need_bytes: u64,
    free_bytes: u64,
}

/// The planned eviction as what it freed for the request.
fn freed(a: &Action) -> Option<Freed> {
    match &a.step {
        Step::SoftUnload { model, frees } => Some(Freed {
            model: model.clone(),
            mode: "soft",
            bytes: *frees,
        }),
        Step::HardUnload { model, frees } => Some(Freed {
            model: model.clone(),
            mode: "hard",
            bytes: *frees,
        }),
        _ => None,
    }
}

fn kind_of(work: Work) -> RequestKind {
    match work {
        Work::Text => RequestKind::Text,
        Work::Image { .. } => RequestKind::Image,
    }
}

/// The placement that needs the least device memory.
fn cheapest(need: &Need) -> VaePlacement {
    if need.vae.is_some() {
        VaePlacement::Cpu
    } else {
        VaePlacement::Gpu
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_eviction(step: &Step) -> bool {
    matches!(step, Step::SoftUnload { .. } | Step::HardUnload { .. })
}

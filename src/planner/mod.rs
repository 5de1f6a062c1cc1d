//! The planner: a pure function from (models, memory, request, time, policy) to a plan.
//!
//! No I/O, no clock, no randomness: the same input always gives the same plan, so every
//! rule below is unit- and property-tested on values (see `tests.rs`). The arbiter executes
//! plans one action at a time and plans again after each, so a plan only has to be right
//! for the state it was given.
//!
//! The ladder, in its default order (`[policy] ladder`):
//! 1. it fits: proceed, evicting nothing (keep everything loaded that fits);
//! 2. `soft`: soft-unload idle models (KV cache and compute buffers), least recently used first;
//! 3. `hard_idle`: hard-unload LLMs idle for `llm_idle_first` (default 10 minutes): a model
//!    nobody used for that long is not worth a slower image;
//! 4. `vae_tiled`: for an image whose VAE decode is what does not fit, decode it in tiles;
//! 5. `vae_cpu`: decode this image's VAE on the CPU instead of evicting a model in use;
//! 6. `hard`: hard-unload idle models, least recently used first.
//!
//! After the heavy request, [`restore`] picks which soft-unloaded model gets its context
//! back, once it fits again.
//!
//! Busy and pinned models are never evicted. Before evicting anything the planner checks that
//! the request could fit after every eviction it is allowed: a request that can never fit is
//! rejected (507 when it exceeds the whole budget, else 503 with `Retry-After`), one that could
//! fit once a busy or unloading model is done waits for it.

#[cfg(test)]
mod tests;

use serde::Serialize;
pub use vramd_protocol::VaePlacement;

use crate::config::ModelKind;
use crate::registry::ModelState;
use crate::units::format_size_human as h;

/// A model as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelView {
    pub name: String,
    pub kind: ModelKind,
    pub state: ModelState,
    /// Bytes that only a hard unload frees (weights; for image models everything).
    pub weights: u64,
    /// Bytes a soft unload frees (KV cache and compute buffers of an LLM).
    pub context: u64,
    /// Unix seconds of last use; `None` if never used.
    pub last_used: Option<u64>,
    pub in_flight: u32,
    pub pinned: bool,
    /// Higher stays longer: among evictable models, lower priority goes first.
    pub priority: i32,
}

impl ModelView {
    fn held(&self) -> u64 {
        self.weights + self.context
    }

    fn busy(&self) -> bool {
        self.in_flight > 0 || matches!(self.state, ModelState::Busy | ModelState::Loading)
    }
}

/// What the request needs on top of what its model already holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    pub model: String,
    /// Loading (or re-creating the context of) the model.
    pub load: u64,
    /// Working memory of the request itself (diffusion sampling); freed before the VAE runs.
    pub work: u64,
    /// For images: the VAE decode's memory per placement.
    pub vae: Option<VaeNeed>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeNeed {
    pub gpu: u64,
    pub tiled: u64,
    /// Device memory still needed with the VAE on the CPU (usually 0).
    pub cpu: u64,
}

impl Need {
    /// Peak device bytes with the VAE at `placement`: sampling and decoding do not overlap.
    pub fn peak(&self, placement: VaePlacement) -> u64 {
        let vae = self.vae.map_or(0, |v| match placement {
            VaePlacement::Gpu => v.gpu,
            VaePlacement::Tiled => v.tiled,
            VaePlacement::Cpu => v.cpu,
        });
        self.load + self.work.max(vae)
    }

    /// The placements worth trying, best first.
    fn placements(&self) -> &'static [VaePlacement] {
        match self.vae {
            Some(_) => &[VaePlacement::Gpu, VaePlacement::Tiled, VaePlacement::Cpu],
            None => &[VaePlacement::Gpu],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    Soft,
    VaeTiled,
    HardIdle,
    VaeCpu,
    Hard,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub ladder: Vec<Rung>,
    /// LLMs idle this long are the first hard-unload candidates.
    pub llm_idle_first: u64,
    /// Suggested `Retry-After` for a request that cannot fit now.
    pub retry_after: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            ladder: vec![Rung::Soft, Rung::HardIdle, Rung::VaeTiled, Rung::VaeCpu, Rung::Hard],
            llm_idle_first: 600,
            retry_after: 5,
        }
    }
}

/// The memory the plan may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub reserve: u64,
    /// What the device says is free, when there is a device.
    pub device_free: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Step {
    SoftUnload { model: String, frees: u64 },
    HardUnload { model: String, frees: u64 },
    VaeTiled { saves: u64 },
    VaeOnCpu { saves: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Action {
    #[serde(flatten)]
    pub step: Step,
    /// Why, in a sentence a person can read.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Proceed {
        vae: VaePlacement,
    },
    /// Could fit once this busy or unloading model is done: queue behind it.
    Wait {
        model: String,
        reason: String,
    },
    /// Cannot fit now, nor by waiting for anything: try again later (503 + Retry-After).
    Busy {
        reason: String,
        retry_after: u64,
    },
    /// Exceeds the whole budget (507).
    TooLarge {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub outcome: Outcome,
    /// Bytes free before the plan.
    pub free: u64,
    /// Peak bytes the request needs with the chosen (or best) placement.
    pub need: u64,
}

/// Free bytes: what may be planned into, `min(device free − reserve, total − reserve − held)`.
pub fn free_bytes(models: &[ModelView], memory: Memory) -> u64 {
    let held: u64 = models.iter().map(ModelView::held).sum();
    let by_registry = memory.total.saturating_sub(memory.reserve).saturating_sub(held);
    memory
        .device_free
        .map_or(by_registry, |d| by_registry.min(d.saturating_sub(memory.reserve)))
}

/// Plans the request `need` at time `now` (Unix seconds).
pub fn plan(models: &[ModelView], memory: Memory, need: &Need, now: u64, policy: &Policy) -> Plan {
    let free = free_bytes(models, memory);
    let best = need.placements()[0];
    let cheapest = *need.placements().last().expect("at least one placement");
    let budget = memory.total.saturating_sub(memory.reserve);
    let mut plan = Plan {
        actions: Vec::new(),
        outcome: Outcome::Proceed { vae: best },
        free,
        need: need.peak(best),
    };
    if need.peak(best) <= free {
        return plan;
    }

    // What the request's own model holds is never evicted for it.
    let others = || models.iter().filter(|m| m.name != need.model);
    let evictable: Vec<&ModelView> = others().filter(|m| !m.busy() && !m.pinned && is_resident(m)).collect();
    let evictable_bytes: u64 = evictable.iter().map(|m| m.held()).sum();
    let own_bytes: u64 = models
        .iter()
        .filter(|m| m.name == need.model)
        .map(ModelView::held)
        .sum();
    let min_need = need.peak(cheapest);
    if min_need + own_bytes > budget {
        plan.outcome = Outcome::TooLarge {
            reason: format!(
                "needs {} but the whole budget is {} (total {} minus reserve {})",
                h(min_need + own_bytes),
                h(budget),
                h(memory.total),
                h(memory.reserve)
            ),
        };
        return plan;
    }
    if min_need > free + evictable_bytes {
        // Not now. Would it fit once a busy or unloading model is done?
        let waitable = others()
            .filter(|m| !m.pinned && (m.busy() || m.state == ModelState::Unloading))
            .min_by_key(|m| (m.last_used, m.name.clone()));
        let pinned: u64 = others().filter(|m| m.pinned).map(ModelView::held).sum();
        let could = budget.saturating_sub(own_bytes).saturating_sub(pinned);
        plan.outcome = match waitable {
            Some(m) if min_need <= could => Outcome::Wait {
                model: m.name.clone(),
                reason: format!(
                    "needs {}, {} free and {} could be freed now; waiting for {} ({})",
                    h(min_need),
                    h(free),
                    h(evictable_bytes),
                    m.name,
                    if m.state == ModelState::Unloading {
                        "unloading"
                    } else {
                        "busy"
                    }
                ),
            },
            _ => Outcome::Busy {
                reason: format!(
                    "needs {}, only {} free and {} could be freed{}",
                    h(min_need),
                    h(free),
                    h(evictable_bytes),
                    if pinned > 0 {
                        format!("; {} is pinned", h(pinned))
                    } else {
                        String::new()
                    }
                ),
                retry_after: policy.retry_after,
            },
        };
        return plan;
    }

    let mut free_now = free;
    let mut unloaded: Vec<&str> = Vec::new();
    let mut soft_done: Vec<&str> = Vec::new();
    let mut placement = best;
    let fits = |p: VaePlacement, free_now: u64| need.peak(p) <= free_now;
    for rung in &policy.ladder {
        if fits(placement, free_now) {
            break;
        }
        match rung {
            Rung::Soft => {
                for m in order(&evictable, now, policy, false) {
                    if fits(placement, free_now) {
                        break;
                    }
                    if m.context == 0 || m.kind != ModelKind::Llm || m.state == ModelState::SoftUnloaded {
                        continue;
                    }
                    free_now += m.context;
                    soft_done.push(&m.name);
                    plan.actions.push(Action {
                        step: Step::SoftUnload {
                            model: m.name.clone(),
                            frees: m.context,
                        },
                        reason: format!(
                            "{} is idle{}: freeing its KV cache and compute buffers ({}) keeps its weights loaded",
                            m.name,
                            idle_for(m, now),
                            h(m.context)
                        ),
                    });
                }
            }
            Rung::VaeTiled | Rung::VaeCpu => {
                let target = if *rung == Rung::VaeTiled {
                    VaePlacement::Tiled
                } else {
                    VaePlacement::Cpu
                };
                if need.vae.is_none() || rank(target) <= rank(placement) {
                    continue;
                }
                let (before, after) = (need.peak(placement), need.peak(target));
                placement = target;
                let (step, what) = match target {
                    VaePlacement::Tiled => (
                        Step::VaeTiled {
                            saves: before.saturating_sub(after),
                        },
                        "in tiles",
                    ),
                    _ => (
                        Step::VaeOnCpu {
                            saves: before.saturating_sub(after),
                        },
                        "on the CPU",
                    ),
                };
                plan.actions.push(Action {
                    step,
                    reason: format!(
                        "the image needs {} at its peak (the VAE decode) and {} is free: decoding {what} for this image ({}) instead of evicting a model",
                        h(before),
                        h(free_now),
                        h(after)
                    ),
                });
            }
            Rung::HardIdle | Rung::Hard => {
                for m in order(&evictable, now, policy, true) {
                    if fits(placement, free_now) {
                        break;
                    }
                    let stale = m.kind == ModelKind::Llm && idle_secs(m, now) >= policy.llm_idle_first;
                    if unloaded.contains(&m.name.as_str()) || (*rung == Rung::HardIdle && !stale) {
                        continue;
                    }
                    // What is left after a soft unload already planned for it.
                    let frees = if soft_done.contains(&m.name.as_str()) {
                        m.weights
                    } else {
                        m.held()
                    };
                    free_now += frees;
                    unloaded.push(&m.name);
                    plan.actions.push(Action {
                        step: Step::HardUnload {
                            model: m.name.clone(),
                            frees,
                        },
                        reason: format!(
                            "{} is idle{}{}: unloading it frees {}",
                            m.name,
                            idle_for(m, now),
                            if stale {
                                " (an idle LLM goes first)"
                            } else {
                                ", least recently used"
                            },
                            h(frees)
                        ),
                    });
                }
            }
        }
    }
    // Something freed more than the degraded placement needed: take back the best that fits.
    if let Some(better) = need
        .placements()
        .iter()
        .find(|p| fits(**p, free_now) && rank(**p) < rank(placement))
    {
        placement = *better;
        plan.actions.retain(|a| match (&a.step, placement) {
            (Step::VaeOnCpu { .. }, _) => false,
            (Step::VaeTiled { .. }, VaePlacement::Tiled) => true,
            (Step::VaeTiled { .. }, _) => false,
            _ => true,
        });
    }
    plan.need = need.peak(placement);
    plan.outcome = if fits(placement, free_now) {
        Outcome::Proceed { vae: placement }
    } else {
        // Only reachable with a ladder that leaves out rungs (say, no `hard`).
        Outcome::Busy {
            reason: format!(
                "needs {}, {} free after every step the policy allows",
                h(need.peak(placement)),
                h(free_now)
            ),
            retry_after: policy.retry_after,
        }
    };
    if !matches!(plan.outcome, Outcome::Proceed { .. }) {
        plan.actions.clear();
    }
    plan
}

/// A soft-unloaded model whose context could be recreated, and what that takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreCandidate {
    pub name: String,
    pub bytes: u64,
}

/// Which soft-unloaded model to restore now, if any: the first, by priority (highest first)
/// then most recent use (the model likeliest to be asked for next) then name, whose context
/// fits in what is free. Restoring never evicts anything, so this is all it has to decide;
/// the arbiter restores one model at a time and asks again, so each choice sees the memory
/// the previous one took.
pub fn restore<'a>(
    models: &[ModelView],
    memory: Memory,
    candidates: &'a [RestoreCandidate],
) -> Option<&'a RestoreCandidate> {
    let free = free_bytes(models, memory);
    let view = |name: &str| models.iter().find(|m| m.name == name);
    let mut ordered: Vec<&RestoreCandidate> = candidates
        .iter()
        .filter(|c| view(&c.name).is_some_and(|m| m.state == ModelState::SoftUnloaded && !m.busy()))
        .collect();
    ordered.sort_by(|a, b| {
        let key = |c: &RestoreCandidate| {
            view(&c.name).map(|m| (std::cmp::Reverse(m.priority), std::cmp::Reverse(m.last_used)))
        };
        key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    ordered.into_iter().find(|c| c.bytes <= free)
}

fn rank(p: VaePlacement) -> u8 {
    match p {
        VaePlacement::Gpu => 0,
        VaePlacement::Tiled => 1,
        VaePlacement::Cpu => 2,
    }
}

fn is_resident(m: &ModelView) -> bool {
    matches!(m.state, ModelState::Loaded | ModelState::SoftUnloaded) && m.held() > 0
}

fn idle_secs(m: &ModelView, now: u64) -> u64 {
    m.last_used.map_or(u64::MAX, |t| now.saturating_sub(t))
}

fn idle_for(m: &ModelView, now: u64) -> String {
    match m.last_used {
        None => " and never used".into(),
        Some(t) => format!(
            " for {}",
            crate::units::format_duration(std::time::Duration::from_secs(now.saturating_sub(t)))
        ),
    }
}

/// Eviction order: lower priority first; for hard unloads LLMs idle past `llm_idle_first`
/// before everything else; then least recently used (never used first); then by name, so
/// that the order is total and plans deterministic.
fn order<'a>(evictable: &[&'a ModelView], now: u64, policy: &Policy, hard: bool) -> Vec<&'a ModelView> {
    let key = |m: &ModelView| {
        let stale = hard && m.kind == ModelKind::Llm && idle_secs(m, now) >= policy.llm_idle_first;
        (!stale, m.priority, m.last_used)
    };
    let mut v = evictable.to_vec();
    v.sort_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name)));
    v
}

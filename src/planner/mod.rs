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
//! A rung is climbed only when the ones before it were not enough, and within a rung models
//! go one at a time until the request fits. Once it fits, the plan is settled: the best VAE
//! placement the planned evictions allow is taken back (an image is not made slower for
//! memory that was freed anyway), then every eviction the request does not need at that
//! placement is dropped, cheapest (earliest in the ladder) first, so a plan never holds a step
//! that buys nothing: a soft unload that was not enough, once tiling alone fits; several soft
//! unloads before a hard unload that alone is enough. A model is evicted at most once in a
//! plan: when a later rung hard-unloads a model whose soft unload was planned, the hard unload
//! frees its whole holding and the soft one goes.
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

use crate::model::{ModelKind, ModelState};
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
    /// No room now, nor by waiting for anything: try again later (503 + Retry-After).
    /// Serialised as `busy`, its name before, so a logged plan reads the same.
    #[serde(rename = "busy")]
    NoRoom {
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
///
/// The steps, each its own function below: if the request fits as things are, it proceeds
/// and nothing is evicted. Otherwise [`Room`] checks, before any step is planned, whether it
/// could ever fit and whether it can fit now, since a request that cannot fit is rejected
/// (or waits) before anything is evicted for it. Only then is the ladder climbed ([`Climb`]),
/// the plan settled ([`Climb::settle`]: the best VAE placement the freed memory allows taken
/// back, the evictions that buy nothing at it dropped) and the outcome decided.
pub fn plan(models: &[ModelView], memory: Memory, need: &Need, now: u64, policy: &Policy) -> Plan {
    let free = free_bytes(models, memory);
    let best = need.placements()[0];
    let as_is = Plan {
        actions: Vec::new(),
        outcome: Outcome::Proceed { vae: best },
        free,
        need: need.peak(best),
    };
    if need.peak(best) <= free {
        return as_is;
    }
    let room = Room::survey(models, memory, need, free);
    if let Some(outcome) = room.never_fits(memory).or_else(|| room.not_now(models, need, policy)) {
        return Plan { outcome, ..as_is };
    }
    let mut climb = Climb::new(need, free, best);
    for rung in &policy.ladder {
        if climb.fits(climb.placement) {
            break;
        }
        climb.step(*rung, &room.evictable, now, policy);
    }
    climb.settle();
    climb.into_plan(free, policy)
}

/// The models other than the request's own: what the request's own model holds is never
/// evicted for it.
fn others<'a>(models: &'a [ModelView], need: &'a Need) -> impl Iterator<Item = &'a ModelView> {
    models.iter().filter(move |m| m.name != need.model)
}

/// Where the request stands before any step is planned: what it needs at its cheapest
/// placement, what its own model holds, and what evicting every model it may evict would
/// free. Enough to tell a request that can never fit, or cannot fit now, from one the
/// ladder can make room for.
struct Room<'a> {
    /// Total minus reserve: everything any model may ever hold.
    budget: u64,
    free: u64,
    /// What the request's own model holds now.
    own_bytes: u64,
    /// Peak bytes at the cheapest placement.
    min_need: u64,
    /// Idle, unpinned, resident models other than the request's own.
    evictable: Vec<&'a ModelView>,
    evictable_bytes: u64,
}

impl<'a> Room<'a> {
    fn survey(models: &'a [ModelView], memory: Memory, need: &'a Need, free: u64) -> Room<'a> {
        let cheapest = *need.placements().last().expect("at least one placement");
        let evictable: Vec<&ModelView> = others(models, need).filter(|m| evictable(m)).collect();
        Room {
            budget: memory.total.saturating_sub(memory.reserve),
            free,
            own_bytes: models
                .iter()
                .filter(|m| m.name == need.model)
                .map(ModelView::held)
                .sum(),
            min_need: need.peak(cheapest),
            evictable_bytes: evictable.iter().map(|m| m.held()).sum(),
            evictable,
        }
    }

    /// 507 when the request, with its own model, needs more than the whole budget: no
    /// eviction and no wait could ever make room, so the caller is told at once.
    fn never_fits(&self, memory: Memory) -> Option<Outcome> {
        (self.min_need + self.own_bytes > self.budget).then(|| Outcome::TooLarge {
            reason: format!(
                "needs {} but the whole budget is {} (total {} minus reserve {})",
                h(self.min_need + self.own_bytes),
                h(self.budget),
                h(memory.total),
                h(memory.reserve)
            ),
        })
    }

    /// When even evicting every evictable model leaves too little: wait for a busy or
    /// unloading model whose end would make room (busy models are never evicted), else
    /// refuse for now (503) rather than evict anything in vain.
    fn not_now(&self, models: &[ModelView], need: &Need, policy: &Policy) -> Option<Outcome> {
        if self.min_need <= self.free + self.evictable_bytes {
            return None;
        }
        let waitable = others(models, need)
            .filter(|m| !m.pinned && (m.busy() || m.state == ModelState::Unloading))
            .min_by_key(|m| (m.last_used, m.name.clone()));
        let pinned: u64 = others(models, need).filter(|m| m.pinned).map(ModelView::held).sum();
        let could = self.budget.saturating_sub(self.own_bytes).saturating_sub(pinned);
        Some(match waitable {
            Some(m) if self.min_need <= could => self.wait_for(m),
            _ => self.no_room(pinned, policy),
        })
    }

    fn wait_for(&self, m: &ModelView) -> Outcome {
        Outcome::Wait {
            model: m.name.clone(),
            reason: format!(
                "needs {}, {} free and {} could be freed now; waiting for {} ({})",
                h(self.min_need),
                h(self.free),
                h(self.evictable_bytes),
                m.name,
                if m.state == ModelState::Unloading {
                    "unloading"
                } else {
                    "busy"
                }
            ),
        }
    }

    fn no_room(&self, pinned: u64, policy: &Policy) -> Outcome {
        Outcome::NoRoom {
            reason: format!(
                "needs {}, only {} free and {} could be freed{}",
                h(self.min_need),
                h(self.free),
                h(self.evictable_bytes),
                if pinned > 0 {
                    format!("; {} is pinned", h(pinned))
                } else {
                    String::new()
                }
            ),
            retry_after: policy.retry_after,
        }
    }
}

/// The ladder being climbed: the actions planned so far, the free memory they leave and the
/// VAE placement they assume. Each rung adds actions until the request fits at that
/// placement; the next rung is only tried when the ones before were not enough.
struct Climb<'a> {
    need: &'a Need,
    /// Free bytes once the actions so far are done.
    free: u64,
    placement: VaePlacement,
    actions: Vec<Action>,
    /// Models with a soft unload planned: never planned twice, and replaced by a later hard
    /// unload of the same model.
    soft_unloaded: Vec<&'a str>,
    /// Models with a hard unload planned: never planned twice, nor soft-unloaded after.
    hard_unloaded: Vec<&'a str>,
}

impl<'a> Climb<'a> {
    fn new(need: &'a Need, free: u64, placement: VaePlacement) -> Climb<'a> {
        Climb {
            need,
            free,
            placement,
            actions: Vec::new(),
            soft_unloaded: Vec::new(),
            hard_unloaded: Vec::new(),
        }
    }

    fn fits(&self, placement: VaePlacement) -> bool {
        self.need.peak(placement) <= self.free
    }

    fn step(&mut self, rung: Rung, evictable: &[&'a ModelView], now: u64, policy: &Policy) {
        match rung {
            Rung::Soft => self.soft_unload(evictable, now, policy),
            Rung::VaeTiled => self.degrade_vae(VaePlacement::Tiled),
            Rung::VaeCpu => self.degrade_vae(VaePlacement::Cpu),
            Rung::HardIdle => self.hard_unload(evictable, now, policy, true),
            Rung::Hard => self.hard_unload(evictable, now, policy, false),
        }
    }

    /// Frees the KV cache and compute buffers of idle LLMs, least recently used first: the
    /// cheapest room there is, since the weights stay loaded and the context comes back later.
    fn soft_unload(&mut self, evictable: &[&'a ModelView], now: u64, policy: &Policy) {
        for m in order(evictable, now, policy, false) {
            if self.fits(self.placement) {
                break;
            }
            let planned = |names: &[&str]| names.contains(&m.name.as_str());
            if m.context == 0
                || m.kind != ModelKind::Llm
                || m.state == ModelState::SoftUnloaded
                || planned(&self.soft_unloaded)
                || planned(&self.hard_unloaded)
            {
                continue;
            }
            self.free += m.context;
            self.soft_unloaded.push(&m.name);
            self.actions.push(Action {
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

    /// Moves this image's VAE decode to `target` (tiles, or the CPU): a slower image costs
    /// less than evicting a model someone is using. Never moves it back up the placements.
    /// The reason is written once the plan is settled ([`Climb::explain_vae_steps`]), since
    /// the free memory it states depends on the evictions the plan keeps before it.
    fn degrade_vae(&mut self, target: VaePlacement) {
        if self.need.vae.is_none() || rank(target) <= rank(self.placement) {
            return;
        }
        let saves = self.need.peak(self.placement).saturating_sub(self.need.peak(target));
        self.placement = target;
        let step = match target {
            VaePlacement::Tiled => Step::VaeTiled { saves },
            _ => Step::VaeOnCpu { saves },
        };
        self.actions.push(Action {
            step,
            reason: String::new(),
        });
    }

    /// Unloads idle models in eviction order ([`order`]); with `stale_only` (the `hard_idle`
    /// rung), only LLMs idle for `llm_idle_first`, which nobody is likely to miss.
    fn hard_unload(&mut self, evictable: &[&'a ModelView], now: u64, policy: &Policy, stale_only: bool) {
        for m in order(evictable, now, policy, true) {
            if self.fits(self.placement) {
                break;
            }
            let stale = m.kind == ModelKind::Llm && idle_secs(m, now) >= policy.llm_idle_first;
            if self.hard_unloaded.contains(&m.name.as_str()) || (stale_only && !stale) {
                continue;
            }
            // A soft unload planned for it buys nothing once it goes entirely: the hard unload
            // frees its whole holding, and the soft one is taken out of the plan.
            if self.soft_unloaded.contains(&m.name.as_str()) {
                self.free -= m.context;
                self.actions
                    .retain(|a| !matches!(&a.step, Step::SoftUnload { model, .. } if *model == m.name));
            }
            let frees = m.held();
            self.free += frees;
            self.hard_unloaded.push(&m.name);
            self.actions.push(Action {
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

    /// Settles a climb that reached a placement where the request fits: takes back the best
    /// placement the planned evictions allow ([`Climb::take_back_best_placement`]), then
    /// drops the evictions that buy nothing at that placement ([`Climb::prune`]).
    ///
    /// Take-back comes first, and the order matters. Pruning first would judge the evictions
    /// against whatever degraded placement the climb stopped at, and could drop an eviction
    /// the ladder ranks cheaper than the VAE steps (a soft unload before tiling) that the
    /// better placement needed: with `soft chat, tiled, cpu, hard old` where every eviction
    /// together fits the VAE on the GPU, pruning at `cpu` may drop `soft chat`, and take-back
    /// would then only find `tiled`: a slower image to save a step the policy calls cheaper.
    /// Taken back first, the placement is decided with every planned eviction counted, and
    /// pruning keeps what that placement needs. Take-back stays right after pruning without
    /// running again: pruning only lowers free memory (never below the placement's peak), so
    /// the evictions left cannot fit a better placement that all of them together could not,
    /// and no VAE step is left that the remaining evictions would make unnecessary.
    ///
    /// On a climb that did not fit, both leave it as it is, and `into_plan` refuses it whole.
    fn settle(&mut self) {
        self.take_back_best_placement();
        self.prune();
        self.one_vae_step();
    }

    /// Keeps one VAE step, the placement the image gets, with what it saves against the
    /// decode on the device: a climb through `tiled` to `cpu` is one decision for the image,
    /// and told as two ("in tiles", then "on the CPU") it reads as a contradiction.
    fn one_vae_step(&mut self) {
        let Some(last) = self.actions.iter().rposition(|a| is_vae_step(&a.step)) else {
            return;
        };
        let saves = self
            .need
            .peak(VaePlacement::Gpu)
            .saturating_sub(self.need.peak(self.placement));
        match &mut self.actions[last].step {
            Step::VaeTiled { saves: s } | Step::VaeOnCpu { saves: s } => *s = saves,
            _ => unreachable!("a VAE step"),
        }
        let mut i = 0;
        self.actions.retain(|a| {
            i += 1;
            i - 1 == last || !is_vae_step(&a.step)
        });
    }

    /// When a later rung freed more than the degraded placement needed, takes back the best
    /// placement that fits and drops the VAE steps it no longer needs: an image is not made
    /// slower for memory that was freed anyway.
    fn take_back_best_placement(&mut self) {
        let better = self
            .need
            .placements()
            .iter()
            .copied()
            .find(|p| self.fits(*p) && rank(*p) < rank(self.placement));
        if let Some(placement) = better {
            self.placement = placement;
            self.actions.retain(|a| match (&a.step, placement) {
                (Step::VaeOnCpu { .. }, _) => false,
                (Step::VaeTiled { .. }, VaePlacement::Tiled) => true,
                (Step::VaeTiled { .. }, _) => false,
                _ => true,
            });
        }
    }

    /// Drops every eviction the request does not need at the settled placement, in plan
    /// order, which is the ladder's: the cheapest goes first, so what stays is the more
    /// decisive steps. One pass is enough: free memory only shrinks as evictions are dropped,
    /// so an eviction kept because the request did not fit without it is still needed at the
    /// end. Whatever stays, taking any one eviction out leaves the request without room.
    fn prune(&mut self) {
        let need = self.need.peak(self.placement);
        let mut free = self.free;
        self.actions.retain(|a| match &a.step {
            Step::SoftUnload { frees, .. } | Step::HardUnload { frees, .. } if free.saturating_sub(*frees) >= need => {
                free -= frees;
                false
            }
            _ => true,
        });
        self.free = free;
    }

    /// Writes the VAE steps' reasons as the settled plan has them: each states the image's
    /// peak at the placement it leaves, the memory free at that point of the plan (`free`,
    /// the free bytes before it, plus what the evictions before it free) and the peak at the
    /// placement it takes.
    fn explain_vae_steps(&mut self, free: u64) {
        let (mut free, mut from) = (free, VaePlacement::Gpu);
        for a in &mut self.actions {
            let (to, what) = match a.step {
                Step::SoftUnload { frees, .. } | Step::HardUnload { frees, .. } => {
                    free += frees;
                    continue;
                }
                Step::VaeTiled { .. } => (VaePlacement::Tiled, "in tiles"),
                Step::VaeOnCpu { .. } => (VaePlacement::Cpu, "on the CPU"),
            };
            a.reason = format!(
                "the image needs {} at its peak (the VAE decode) and {} is free: decoding {what} for this image ({}) instead of evicting a model",
                h(self.need.peak(from)),
                h(free),
                h(self.need.peak(to))
            );
            from = to;
        }
    }

    /// The plan: proceed with the actions, or, when the rungs the policy allows were not
    /// enough, refuse with no actions at all, so that nothing is evicted in vain.
    fn into_plan(mut self, free: u64, policy: &Policy) -> Plan {
        let need = self.need.peak(self.placement);
        let outcome = if self.fits(self.placement) {
            Outcome::Proceed { vae: self.placement }
        } else {
            // Only reachable with a ladder that leaves out rungs (say, no `hard`).
            Outcome::NoRoom {
                reason: format!(
                    "needs {}, {} free after every step the policy allows",
                    h(need),
                    h(self.free)
                ),
                retry_after: policy.retry_after,
            }
        };
        if matches!(outcome, Outcome::Proceed { .. }) {
            self.explain_vae_steps(free);
        } else {
            self.actions.clear();
        }
        Plan {
            actions: self.actions,
            outcome,
            free,
            need,
        }
    }
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

fn is_vae_step(step: &Step) -> bool {
    matches!(step, Step::VaeTiled { .. } | Step::VaeOnCpu { .. })
}

fn rank(p: VaePlacement) -> u8 {
    match p {
        VaePlacement::Gpu => 0,
        VaePlacement::Tiled => 1,
        VaePlacement::Cpu => 2,
    }
}

/// Whether a plan may evict `m` at all: idle, unpinned and holding memory.
fn evictable(m: &ModelView) -> bool {
    !m.busy() && !m.pinned && is_resident(m)
}

/// Each model's place in the eviction order, 1 going first, computed with the ladder's own
/// rule ([`order`], as the hard unloads take models): what `/v1/status` shows as
/// `eviction_rank`, so that no reader (the status page, `vramctl`) restates the rule. Busy,
/// pinned and unloaded models get `None`: no plan would evict them now. The order ignores
/// which request asks (a request never evicts its own model), and a soft unload, which
/// keeps the weights, takes idle LLMs in this order too, stale ones aside.
pub fn eviction_ranks(models: &[ModelView], now: u64, policy: &Policy) -> Vec<Option<u32>> {
    let candidates: Vec<&ModelView> = models.iter().filter(|m| evictable(m)).collect();
    let ordered = order(&candidates, now, policy, true);
    models
        .iter()
        .map(|m| {
            let at = ordered.iter().position(|o| std::ptr::eq(*o, m))?;
            Some(u32::try_from(at).unwrap_or(u32::MAX - 1) + 1)
        })
        .collect()
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

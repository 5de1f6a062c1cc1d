//! One test per rule of the ladder, then properties over random registries.

use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const NOW: u64 = 1_000_000;

fn llm(name: &str, weights: u64, context: u64, idle_secs: u64) -> ModelView {
    ModelView {
        name: name.into(),
        kind: ModelKind::Llm,
        state: ModelState::Loaded,
        weights,
        context,
        last_used: Some(NOW - idle_secs),
        in_flight: 0,
        pinned: false,
        priority: 0,
    }
}

fn image_model(name: &str, weights: u64) -> ModelView {
    ModelView {
        kind: ModelKind::Image,
        ..llm(name, weights, 0, 30)
    }
}

fn unloaded_image(name: &str) -> ModelView {
    ModelView {
        state: ModelState::Unloaded,
        weights: 0,
        last_used: None,
        ..image_model(name, 0)
    }
}

fn mem(total: u64) -> Memory {
    Memory {
        total,
        reserve: 0,
        device_free: None,
    }
}

/// An image request: load `load`, sample with `work`, VAE decode `gpu`/`tiled` bytes.
fn image_need(load: u64, work: u64, gpu: u64, tiled: u64) -> Need {
    Need {
        model: "sd".into(),
        load,
        work,
        vae: Some(VaeNeed { gpu, tiled, cpu: 0 }),
    }
}

fn steps(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| match &a.step {
            Step::SoftUnload { model, .. } => format!("soft {model}"),
            Step::HardUnload { model, .. } => format!("hard {model}"),
            Step::VaeTiled { .. } => "tiled".into(),
            Step::VaeOnCpu { .. } => "cpu".into(),
        })
        .collect()
}

#[test]
fn fits_so_everything_stays_loaded() {
    let models = [llm("chat", 2 * GIB, GIB, 5), unloaded_image("sd")];
    let p = plan(
        &models,
        mem(8 * GIB),
        &image_need(2 * GIB, GIB, 2 * GIB, 200 * MIB),
        NOW,
        &Policy::default(),
    );
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });
    assert!(p.actions.is_empty());
    assert_eq!((p.free, p.need), (5 * GIB, 4 * GIB));
}

#[test]
fn soft_unload_comes_first_least_recently_used_first() {
    let models = [
        llm("recent", 2 * GIB, GIB, 10),
        llm("old", 2 * GIB, GIB, 100),
        unloaded_image("sd"),
    ];
    // 2 GiB free; the image needs 2.5 GiB at GPU placement: one soft unload is enough.
    let p = plan(
        &models,
        mem(8 * GIB),
        &image_need(GIB, GIB / 2, GIB + GIB / 2, 100 * MIB),
        NOW,
        &Policy::default(),
    );
    assert_eq!(steps(&p), ["soft old"]);
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });
    assert!(
        p.actions[0].reason.contains("old is idle for 1m40s"),
        "{}",
        p.actions[0].reason
    );
}

#[test]
fn vae_is_tiled_then_moved_to_cpu_rather_than_evicting_the_llm() {
    let models = [llm("chat", 4 * GIB, GIB, 60), unloaded_image("sd")];
    let policy = Policy::default();
    // 3 GiB free. Load 2 GiB + VAE 2 GiB on GPU = 4 GiB; soft frees 1 GiB -> 4 GiB free: fits.
    let p = plan(
        &models,
        mem(8 * GIB),
        &image_need(2 * GIB, GIB, 2 * GIB, 200 * MIB),
        NOW,
        &policy,
    );
    assert_eq!(steps(&p), ["soft chat"]);
    // A bigger VAE and more sampling: after the soft unload (4 GiB free), tiling (3.5 GiB)
    // fits, and tiling alone (3 GiB free) would not, so both steps stay.
    let p = plan(
        &models,
        mem(8 * GIB),
        &image_need(2 * GIB, GIB + GIB / 2, 3 * GIB, 200 * MIB),
        NOW,
        &policy,
    );
    assert_eq!(steps(&p), ["soft chat", "tiled"]);
    assert!(
        p.actions[1]
            .reason
            .contains("5.0 GiB at its peak (the VAE decode) and 4.0 GiB is free"),
        "{}",
        p.actions[1].reason
    );
    assert_eq!(
        p.outcome,
        Outcome::Proceed {
            vae: VaePlacement::Tiled
        }
    );
    // Tiling still too big: the VAE goes to the CPU, the LLM keeps its weights.
    let p = plan(
        &models,
        mem(8 * GIB),
        &image_need(3 * GIB + GIB / 2, GIB / 2, 3 * GIB, GIB),
        NOW,
        &policy,
    );
    // One VAE step, the placement the image gets: never "tiled" then "cpu".
    assert_eq!(steps(&p), ["soft chat", "cpu"]);
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Cpu });
    assert!(p.actions[1].reason.contains("on the CPU"), "{}", p.actions[1].reason);
    let need = image_need(3 * GIB + GIB / 2, GIB / 2, 3 * GIB, GIB);
    assert_eq!(
        p.actions[1].step,
        Step::VaeOnCpu {
            saves: need.peak(VaePlacement::Gpu) - need.peak(VaePlacement::Cpu)
        },
        "it saves what the decode on the device would take"
    );
}

#[test]
fn an_llm_idle_for_ten_minutes_goes_before_the_vae_moves_to_the_cpu() {
    let policy = Policy::default();
    let need = image_need(3 * GIB + GIB / 2, GIB / 2, 3 * GIB, GIB);
    // Idle 9 minutes: the VAE moves to the CPU.
    let models = [llm("chat", 4 * GIB, GIB, 9 * 60), unloaded_image("sd")];
    assert_eq!(
        steps(&plan(&models, mem(8 * GIB), &need, NOW, &policy)),
        ["soft chat", "cpu"]
    );
    // Idle 10 minutes: the LLM is unloaded and the image gets its VAE back on the GPU.
    let models = [llm("chat", 4 * GIB, GIB, 10 * 60), unloaded_image("sd")];
    let p = plan(&models, mem(8 * GIB), &need, NOW, &policy);
    // The soft unload the first rung planned buys nothing once chat goes entirely: the hard
    // unload frees everything chat holds, and says so.
    assert_eq!(steps(&p), ["hard chat"]);
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });
    assert!(p.actions[0].reason.contains("an idle LLM goes first"));
    assert!(
        p.actions[0].reason.ends_with("frees 5.0 GiB"),
        "{}",
        p.actions[0].reason
    );
    assert_eq!(
        p.actions[0].step,
        Step::HardUnload {
            model: "chat".into(),
            frees: 5 * GIB
        }
    );
}

/// Issue 19: an idle chat model was unloaded while the image's VAE was tiled too, and tiling
/// alone would have been enough. The plan tiles and evicts nothing, or evicts and keeps the
/// VAE on the GPU, never both when one suffices.
#[test]
fn no_eviction_when_tiling_alone_fits() {
    let policy = Policy::default();
    // 3 GiB free; the image needs 5 GiB with its VAE whole and 3 GiB tiled. Soft-unloading
    // chat (4 GiB free) is not enough for the VAE whole, and tiling alone is enough.
    let need = image_need(2 * GIB, GIB, 3 * GIB, 200 * MIB);
    let models = [llm("chat", 4 * GIB, GIB, 60), unloaded_image("sd")];
    let p = plan(&models, mem(8 * GIB), &need, NOW, &policy);
    assert_eq!(steps(&p), ["tiled"], "{p:?}");
    assert_eq!(
        p.outcome,
        Outcome::Proceed {
            vae: VaePlacement::Tiled
        }
    );
    assert_eq!((p.free, p.need), (3 * GIB, 3 * GIB));
    // The reason states what is free without the soft unload that was dropped.
    assert_eq!(
        p.actions[0].reason,
        "the image needs 5.0 GiB at its peak (the VAE decode) and 3.0 GiB is free: decoding in tiles for this image (3.0 GiB) instead of evicting a model"
    );

    // Chat idle for ten minutes: unloading it lets the VAE decode whole, so it goes and the
    // VAE stays on the GPU: no tiling on top.
    let models = [llm("chat", 4 * GIB, GIB, 10 * 60), unloaded_image("sd")];
    let p = plan(&models, mem(8 * GIB), &need, NOW, &policy);
    assert_eq!(steps(&p), ["hard chat"]);
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });

    // The reported run: a VAE that does not fit whole even with chat gone (9 GiB in an 8 GiB
    // budget). The ladder unloads the stale chat, then tiles; the tiling alone fits, so chat
    // stays loaded.
    let need = image_need(2 * GIB, GIB, 7 * GIB, 200 * MIB);
    let p = plan(&models, mem(8 * GIB), &need, NOW, &policy);
    assert_eq!(steps(&p), ["tiled"], "{p:?}");
    assert_eq!(
        p.outcome,
        Outcome::Proceed {
            vae: VaePlacement::Tiled
        }
    );
}

/// Take-back before pruning (`Climb::settle`): the placement is decided with every planned
/// eviction counted, then only the evictions that placement does not need go.
#[test]
fn the_placement_is_taken_back_before_the_evictions_are_pruned() {
    let models = [
        llm("chat", 2 * GIB, GIB, 60),
        ModelView {
            last_used: Some(NOW - 1000),
            ..image_model("old", 3 * GIB)
        },
        unloaded_image("sd"),
    ];
    // 2 GiB free; the image needs 6 GiB whole, 4 GiB tiled or with the VAE on the CPU. The
    // climb soft-unloads chat (3 GiB), tiles, moves the VAE to the CPU, then unloads old
    // (6 GiB free): enough for the VAE whole, which needs chat's soft unload too. Pruned at
    // the CPU placement first, the soft unload would have gone and the image been tiled.
    let need = image_need(3 * GIB, GIB, 3 * GIB, GIB / 2);
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert_eq!(steps(&p), ["soft chat", "hard old"]);
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });
}

#[test]
fn a_hard_unload_that_alone_is_enough_drops_the_soft_unloads_before_it() {
    let models = [
        llm("a", GIB, GIB, 100),
        llm("b", GIB, GIB, 200),
        ModelView {
            last_used: Some(NOW - 1000),
            ..image_model("old", 4 * GIB)
        },
    ];
    let need = Need {
        model: "x".into(),
        load: 4 * GIB,
        work: 0,
        vae: None,
    };
    // Nothing free: soft-unloading b then a frees 2 GiB, not enough; unloading the least
    // recently used model (old, 4 GiB) is, and alone.
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert_eq!(steps(&p), ["hard old"]);
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });
    // Half a GiB more: one soft unload is needed with it. The cheapest, first in the plan,
    // is b's (least recently used): it is dropped, and a's is kept.
    let need = Need {
        load: 4 * GIB + GIB / 2,
        ..need
    };
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert_eq!(steps(&p), ["soft a", "hard old"]);
}

#[test]
fn hard_unload_in_lru_order_when_nothing_else_helps() {
    let models = [
        llm("a", 3 * GIB, 0, 50),
        llm("b", 3 * GIB, 0, 100),
        ModelView {
            state: ModelState::SoftUnloaded,
            ..llm("c", GIB, 0, 10)
        },
    ];
    let need = Need {
        model: "d".into(),
        load: 5 * GIB,
        work: 0,
        vae: None,
    };
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert_eq!(steps(&p), ["hard b", "hard a"]);
    assert_eq!(p.free, GIB);
}

#[test]
fn busy_and_pinned_models_are_never_evicted() {
    let busy = ModelView {
        in_flight: 1,
        ..llm("busy", 3 * GIB, GIB, 1000)
    };
    let pinned = ModelView {
        pinned: true,
        ..llm("pinned", 2 * GIB, GIB, 1000)
    };
    let idle = llm("idle", GIB, 0, 5);
    let need = Need {
        model: "x".into(),
        load: 2 * GIB,
        work: 0,
        vae: None,
    };
    let models = [busy, pinned, idle];
    // 1 GiB free, 1 GiB idle: the idle model goes.
    let p = plan(&models, mem(9 * GIB), &need, NOW, &Policy::default());
    assert_eq!(steps(&p), ["hard idle"]);
    // More than the idle one can give: wait for the busy model rather than evict anything.
    let need = Need { load: 3 * GIB, ..need };
    let p = plan(&models, mem(9 * GIB), &need, NOW, &Policy::default());
    assert!(p.actions.is_empty());
    assert!(
        matches!(&p.outcome, Outcome::Wait { model, .. } if model == "busy"),
        "{:?}",
        p.outcome
    );
}

#[test]
fn what_can_never_fit_is_rejected_before_anything_is_evicted() {
    let models = [llm("chat", 2 * GIB, GIB, 5000)];
    let over = Need {
        model: "big".into(),
        load: 9 * GIB,
        work: 0,
        vae: None,
    };
    let p = plan(&models, mem(8 * GIB), &over, NOW, &Policy::default());
    assert!(matches!(p.outcome, Outcome::TooLarge { .. }), "{:?}", p.outcome);
    assert!(p.actions.is_empty());
    // Fits the budget, but only with the pinned model gone: 503, nothing evicted.
    let models = [
        ModelView {
            pinned: true,
            ..llm("chat", 5 * GIB, GIB, 5000)
        },
        llm("other", GIB, 0, 5000),
    ];
    let need = Need { load: 3 * GIB, ..over };
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert!(
        matches!(p.outcome, Outcome::NoRoom { retry_after: 5, .. }),
        "{:?}",
        p.outcome
    );
    assert!(p.actions.is_empty());
}

#[test]
fn an_unloading_model_is_waited_for_not_revived() {
    let unloading = ModelView {
        state: ModelState::Unloading,
        ..llm("chat", 4 * GIB, 0, 5)
    };
    // Even with the VAE on the CPU the image needs 6 GiB; 4 GiB are free until chat is gone.
    let need = image_need(3 * GIB, 3 * GIB, 3 * GIB, 3 * GIB);
    let p = plan(&[unloading], mem(8 * GIB), &need, NOW, &Policy::default());
    assert!(
        matches!(&p.outcome, Outcome::Wait { model, reason } if model == "chat" && reason.contains("unloading")),
        "{:?}",
        p.outcome
    );
}

#[test]
fn reserve_and_device_free_limit_what_is_free() {
    let models = [llm("chat", GIB, 0, 5)];
    let m = Memory {
        total: 8 * GIB,
        reserve: GIB,
        device_free: Some(3 * GIB),
    };
    assert_eq!(
        free_bytes(&models, m),
        2 * GIB,
        "the device knows better than the registry"
    );
    let m = Memory { device_free: None, ..m };
    assert_eq!(free_bytes(&models, m), 6 * GIB);
}

#[test]
fn a_ladder_without_hard_steps_rejects_instead_of_half_evicting() {
    let policy = Policy {
        ladder: vec![Rung::Soft],
        ..Policy::default()
    };
    let models = [llm("chat", 5 * GIB, GIB, 5)];
    let need = Need {
        model: "x".into(),
        load: 4 * GIB,
        work: 0,
        vae: None,
    };
    let p = plan(&models, mem(8 * GIB), &need, NOW, &policy);
    assert!(matches!(p.outcome, Outcome::NoRoom { .. }), "{:?}", p.outcome);
    assert!(p.actions.is_empty(), "no soft unload for a request that will not run");
}

#[test]
fn the_request_s_own_model_is_not_evicted_for_it() {
    let models = [ModelView {
        state: ModelState::SoftUnloaded,
        ..llm("chat", 6 * GIB, 0, 5)
    }];
    let need = Need {
        model: "chat".into(),
        load: GIB,
        work: 0,
        vae: None,
    };
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert_eq!(p.outcome, Outcome::Proceed { vae: VaePlacement::Gpu });
    let need = Need { load: 3 * GIB, ..need };
    let p = plan(&models, mem(8 * GIB), &need, NOW, &Policy::default());
    assert!(matches!(p.outcome, Outcome::TooLarge { .. }), "{:?}", p.outcome);
}

fn soft(name: &str, weights: u64, idle_secs: u64) -> ModelView {
    ModelView {
        state: ModelState::SoftUnloaded,
        ..llm(name, weights, 0, idle_secs)
    }
}

fn candidate(name: &str, bytes: u64) -> RestoreCandidate {
    RestoreCandidate {
        name: name.into(),
        bytes,
    }
}

#[test]
fn restore_picks_the_most_recently_used_context_that_fits_again() {
    let models = [
        soft("old", GIB, 900),
        soft("recent", GIB, 60),
        image_model("sd", 2 * GIB),
    ];
    let c = [candidate("old", GIB), candidate("recent", GIB)];
    // 8 − 4 held: both fit; the one used last comes back first.
    assert_eq!(
        restore(&models, mem(8 * GIB), &c).map(|c| c.name.as_str()),
        Some("recent")
    );
    // 4.5 GiB total: 0.5 free, neither fits yet.
    assert_eq!(restore(&models, mem(4 * GIB + GIB / 2), &c), None);
    // Only the smaller context fits: it goes, whatever the order.
    let c = [candidate("old", GIB / 4), candidate("recent", GIB)];
    assert_eq!(
        restore(&models, mem(4 * GIB + GIB / 2), &c).map(|c| c.name.as_str()),
        Some("old")
    );
}

#[test]
fn restore_follows_priority_and_skips_what_is_not_soft_unloaded() {
    let mut high = soft("high", GIB, 900);
    high.priority = 5;
    let busy = ModelView {
        in_flight: 1,
        ..soft("busy", GIB, 1)
    };
    let loaded = llm("loaded", GIB, GIB, 1);
    let models = [high, soft("low", GIB, 1), busy, loaded];
    let c = [
        candidate("low", GIB),
        candidate("high", GIB),
        candidate("busy", GIB),
        candidate("loaded", GIB),
    ];
    assert_eq!(
        restore(&models, mem(16 * GIB), &c).map(|c| c.name.as_str()),
        Some("high")
    );
    let c = [
        candidate("busy", GIB),
        candidate("loaded", GIB),
        candidate("unknown", 1),
    ];
    assert_eq!(restore(&models, mem(16 * GIB), &c), None);
}

fn arb_model(i: usize) -> impl Strategy<Value = ModelView> {
    (
        any::<bool>(),
        0u64..3 * GIB,
        0u64..GIB,
        prop::option::of(0u64..3600),
        0u32..2,
        prop::bool::weighted(0.2),
        0usize..4,
        -1i32..2,
    )
        .prop_map(
            move |(is_llm, weights, context, idle, in_flight, pinned, state, priority)| {
                let state = [
                    ModelState::Loaded,
                    ModelState::SoftUnloaded,
                    ModelState::Unloaded,
                    ModelState::Unloading,
                ][state];
                let (weights, context) = match state {
                    ModelState::Unloaded => (0, 0),
                    ModelState::SoftUnloaded => (weights, 0),
                    _ => (weights, if is_llm { context } else { 0 }),
                };
                ModelView {
                    name: format!("m{i}"),
                    kind: if is_llm { ModelKind::Llm } else { ModelKind::Image },
                    state: if in_flight > 0 && state == ModelState::Loaded {
                        ModelState::Busy
                    } else {
                        state
                    },
                    weights,
                    context,
                    last_used: idle.map(|s| NOW - s),
                    in_flight: if state == ModelState::Loaded { in_flight } else { 0 },
                    pinned,
                    priority,
                }
            },
        )
}

fn arb_models() -> impl Strategy<Value = Vec<ModelView>> {
    (0usize..8).prop_flat_map(|n| (0..n).map(arb_model).collect::<Vec<_>>())
}

fn arb_need() -> impl Strategy<Value = Need> {
    (
        0u64..8 * GIB,
        0u64..2 * GIB,
        prop::option::of((0u64..4 * GIB, 0u64..GIB)),
    )
        .prop_map(|(load, work, vae)| Need {
            model: "req".into(),
            load,
            work,
            vae: vae.map(|(gpu, tiled)| VaeNeed {
                gpu,
                tiled: tiled.min(gpu),
                cpu: 0,
            }),
        })
}

/// Any policy: the ladder's rungs in any order, some left out or repeated, and any idle
/// threshold; the default among them.
fn arb_policy() -> impl Strategy<Value = Policy> {
    let rung = prop::sample::select(vec![
        Rung::Soft,
        Rung::HardIdle,
        Rung::VaeTiled,
        Rung::VaeCpu,
        Rung::Hard,
    ]);
    prop_oneof![
        Just(Policy::default()),
        (prop::collection::vec(rung, 0..7), prop::option::of(0u64..3600)).prop_map(|(ladder, idle)| Policy {
            ladder,
            llm_idle_first: idle.unwrap_or(u64::MAX),
            retry_after: 5,
        }),
    ]
}

/// The rules every plan keeps, whatever the policy; returns what the plan's evictions free.
fn check_rules(
    models: &[ModelView],
    memory: Memory,
    need: &Need,
    policy: &Policy,
    p: &Plan,
) -> Result<u64, TestCaseError> {
    // Deterministic.
    prop_assert_eq!(p, &plan(models, memory, need, NOW, policy));
    // Terminates with a bounded plan.
    prop_assert!(p.actions.len() <= 2 * models.len() + 2);
    let mut freed = 0u64;
    let mut hard: Vec<&str> = Vec::new();
    for a in &p.actions {
        match &a.step {
            Step::SoftUnload { model, frees } | Step::HardUnload { model, frees } => {
                let m = models.iter().find(|m| &m.name == model).expect("evicts a known model");
                // Never busy, pinned, unloading or the request's own model.
                prop_assert!(!m.busy() && !m.pinned && m.state != ModelState::Unloading && m.name != need.model);
                prop_assert!(
                    !hard.contains(&model.as_str()),
                    "after a hard unload nothing else happens to it"
                );
                if matches!(a.step, Step::HardUnload { .. }) {
                    hard.push(model);
                } else {
                    prop_assert!(*frees == m.context);
                }
                freed += frees;
            }
            Step::VaeTiled { .. } | Step::VaeOnCpu { .. } => prop_assert!(need.vae.is_some()),
        }
        prop_assert!(!a.reason.is_empty());
    }
    let (total, reserve) = (memory.total, memory.reserve);
    match &p.outcome {
        Outcome::Proceed { vae } => {
            // Never above the budget.
            prop_assert!(need.peak(*vae) <= p.free + freed, "{:?}", p);
            let held: u64 = models.iter().map(|m| m.weights + m.context).sum();
            prop_assert!(held - freed + need.peak(*vae) <= total - reserve.min(total));
        }
        _ => prop_assert!(
            p.actions.is_empty(),
            "nothing is evicted for a request that does not run"
        ),
    }
    Ok(freed)
}

proptest! {
    #[test]
    fn plans_respect_the_budget_and_the_rules(models in arb_models(), need in arb_need(), total in 4 * GIB..16 * GIB, reserve in 0u64..GIB) {
        let memory = Memory { total, reserve, device_free: None };
        // A registry the arbiter can be in: what is held fits the budget.
        prop_assume!(models.iter().map(|m| m.weights + m.context).sum::<u64>() <= total - reserve);
        let p = plan(&models, memory, &need, NOW, &Policy::default());
        check_rules(&models, memory, &need, &Policy::default(), &p)?;
    }

    /// A plan has no step that buys nothing: take out any one of its evictions and the
    /// request no longer fits at the plan's placement; a model is evicted at most once (a
    /// hard unload frees all it holds); and no VAE step is there when the plan's evictions
    /// alone would fit a better placement. Under any policy.
    #[test]
    fn plans_have_no_step_that_buys_nothing(models in arb_models(), need in arb_need(), policy in arb_policy(), total in 4 * GIB..16 * GIB, reserve in 0u64..GIB) {
        let memory = Memory { total, reserve, device_free: None };
        prop_assume!(models.iter().map(|m| m.weights + m.context).sum::<u64>() <= total - reserve);
        let p = plan(&models, memory, &need, NOW, &policy);
        let freed = check_rules(&models, memory, &need, &policy, &p)?;
        let Outcome::Proceed { vae } = p.outcome else {
            return Ok(());
        };
        let mut evicted: Vec<&str> = Vec::new();
        for a in &p.actions {
            if let Step::SoftUnload { model, frees } | Step::HardUnload { model, frees } = &a.step {
                prop_assert!(!evicted.contains(&model.as_str()), "{} evicted twice: {:?}", model, p);
                evicted.push(model);
                if matches!(a.step, Step::HardUnload { .. }) {
                    let m = models.iter().find(|m| &m.name == model).expect("a known model");
                    prop_assert_eq!(*frees, m.weights + m.context, "a hard unload frees all {} holds", model);
                }
                prop_assert!(
                    need.peak(vae) > p.free + freed - frees,
                    "without {:?} the request still fits: {:?}", a.step, p
                );
            }
        }
        let vae_steps = p.actions.iter().filter(|a| matches!(a.step, Step::VaeTiled { .. } | Step::VaeOnCpu { .. })).count();
        prop_assert!(vae != VaePlacement::Gpu || vae_steps == 0, "{:?}", p);
        prop_assert!(vae_steps <= 1, "one VAE step, the placement the image gets: {:?}", p);
        if let Some(a) = p.actions.iter().find(|a| matches!(a.step, Step::VaeTiled { .. } | Step::VaeOnCpu { .. })) {
            let told = if matches!(a.step, Step::VaeTiled { .. }) { VaePlacement::Tiled } else { VaePlacement::Cpu };
            prop_assert_eq!(told, vae, "the VAE step tells the placement granted: {:?}", p);
        }
        if vae_steps > 0 {
            for better in need.placements().iter().take_while(|b| **b != vae) {
                prop_assert!(
                    need.peak(*better) > p.free + freed,
                    "the evictions alone fit the VAE {:?}: {:?}", better, p
                );
            }
        }
    }

    #[test]
    fn restores_never_exceed_the_budget(models in arb_models(), sizes in prop::collection::vec(0u64..2 * GIB, 8), total in 4 * GIB..16 * GIB, reserve in 0u64..GIB) {
        let memory = Memory { total, reserve, device_free: None };
        prop_assume!(models.iter().map(|m| m.weights + m.context).sum::<u64>() <= total - reserve);
        let candidates: Vec<RestoreCandidate> = models.iter().zip(&sizes).map(|(m, b)| candidate(&m.name, *b)).collect();
        let chosen = restore(&models, memory, &candidates);
        prop_assert_eq!(chosen, restore(&models, memory, &candidates));
        if let Some(c) = chosen {
            let m = models.iter().find(|m| m.name == c.name).expect("a known model");
            prop_assert!(m.state == ModelState::SoftUnloaded && !m.busy());
            let held: u64 = models.iter().map(|m| m.weights + m.context).sum();
            prop_assert!(held + c.bytes <= total - reserve, "restoring {} over the budget", c.name);
        } else {
            // Nothing chosen: every soft-unloaded idle candidate is too big.
            let free = free_bytes(&models, memory);
            for c in &candidates {
                let m = models.iter().find(|m| m.name == c.name).expect("a known model");
                prop_assert!(m.state != ModelState::SoftUnloaded || m.busy() || c.bytes > free);
            }
        }
    }
}

#[test]
fn eviction_ranks_follow_the_ladders_own_order() {
    let pinned = ModelView {
        pinned: true,
        ..llm("pinned", GIB, 0, 5000)
    };
    let busy = ModelView {
        in_flight: 1,
        ..llm("busy", GIB, 0, 5000)
    };
    let low = ModelView {
        priority: -1,
        ..llm("low", GIB, 0, 5)
    };
    let models = [
        llm("recent", GIB, GIB, 10),
        image_model("sd", GIB),
        llm("old", GIB, GIB, 2000),
        pinned,
        busy,
        unloaded_image("idle-image"),
        low,
    ];
    let ranks = eviction_ranks(&models, NOW, &Policy::default());
    // An LLM idle past `llm_idle_first` first, then lower priority, then least recently used;
    // pinned, busy and unloaded models have no rank.
    assert_eq!(ranks, [Some(4), Some(3), Some(1), None, None, None, Some(2)]);
    // The rank is who the planner unloads first: with only hard unloads, rank 1 goes.
    let policy = Policy {
        ladder: vec![Rung::Hard],
        ..Policy::default()
    };
    let need = Need {
        model: "new".into(),
        load: GIB,
        work: 0,
        vae: None,
    };
    let plan = plan(&models, mem(5 * GIB), &need, NOW, &policy);
    assert_eq!(steps(&plan), ["hard old"], "{plan:?}");
}

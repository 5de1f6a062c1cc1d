//! Plan latency with 1, 10 and 100 registered models (target: p99 under 50 µs).
//!
//! `cargo bench --bench planner` runs criterion's measurement, then prints a table of
//! p50 / p99 / max over 20,000 single plans per size, which is what the target is about.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion};
use vramd::config::ModelKind;
use vramd::planner::{plan, Memory, ModelView, Need, Policy, VaeNeed};
use vramd::registry::ModelState;

const GIB: u64 = 1 << 30;
const NOW: u64 = 1_000_000;

/// A registry of `n` loaded models with varied sizes and ages, in a budget they just fill,
/// and an image request that must go down the ladder: the expensive case.
fn fixture(n: usize) -> (Vec<ModelView>, Memory, Need) {
    let models: Vec<ModelView> = (0..n)
        .map(|i| ModelView {
            name: format!("model-{i}"),
            kind: if i % 3 == 0 { ModelKind::Image } else { ModelKind::Llm },
            state: ModelState::Loaded,
            weights: GIB / 4 + (i as u64 % 7) * (GIB / 16),
            context: if i % 3 == 0 { 0 } else { GIB / 8 },
            last_used: Some(NOW - (i as u64 * 37) % 1200),
            in_flight: u32::from(i % 11 == 0),
            pinned: i % 13 == 0,
            priority: (i % 3) as i32 - 1,
        })
        .collect();
    let held: u64 = models.iter().map(|m| m.weights + m.context).sum();
    let memory = Memory {
        total: held + GIB,
        reserve: GIB / 2,
        device_free: None,
    };
    let need = Need {
        model: "sd".into(),
        load: 2 * GIB,
        work: GIB / 2,
        vae: Some(VaeNeed {
            gpu: 3 * GIB,
            tiled: GIB / 4,
            cpu: 0,
        }),
    };
    (models, memory, need)
}

fn main() {
    let policy = Policy::default();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("plan");
    for n in [1usize, 10, 100] {
        let (models, memory, need) = fixture(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| plan(black_box(&models), memory, black_box(&need), NOW, &policy))
        });
    }
    group.finish();
    c.final_summary();

    println!("\n| models | p50 µs | p99 µs | max µs | actions in the plan |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [1usize, 10, 100] {
        let (models, memory, need) = fixture(n);
        let mut samples: Vec<f64> = (0..20_000)
            .map(|_| {
                let t = Instant::now();
                black_box(plan(black_box(&models), memory, black_box(&need), NOW, &policy));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
        let actions = plan(&models, memory, &need, NOW, &policy).actions.len();
        println!("| {n} | {:.2} | {:.2} | {:.2} | {actions} |", q(0.5), q(0.99), q(1.0));
    }
}

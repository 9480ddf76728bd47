//! Criterion benchmarks of the decision path: a full decision (forecast, warm refit, decide over
//! the 840 default candidates) at N = 60, 200 and 500 observations, and its parts at N = 500.
//!
//! `CARGO_TARGET_DIR=target/h-gp cargo bench -p demeter-core --bench decision`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace};
use demeter_core::decide::{CurrentHealth, DecideConfig, bench_decision_with_clock, decide};
use demeter_core::perf::synthetic::SyntheticJob;
use demeter_core::perf::{PerfModel, PerfModelConfig};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn full_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("decision");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for n in [60usize, 200, 500] {
        g.bench_with_input(BenchmarkId::new("full", n), &n, |b, &n| {
            // One benchmark iteration = one decision of `bench_decision` (1 iteration after the
            // untimed warm-up and cold fit); criterion times it with its own clock.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    let r = bench_decision_with_clock(n, 1, i, &mut || start.elapsed());
                    total += Duration::from_secs_f64(r.mean_ms / 1e3);
                }
                total
            })
        });
    }
    g.finish();
}

fn parts(c: &mut Criterion) {
    let space = SearchSpace::default();
    let quota = Quota::default();
    let cands = space.candidates(&quota);
    let hist = SyntheticJob::default().history(&cands, 501, 3);
    let cfg = PerfModelConfig::default();
    let model = PerfModel::fit(&hist[..500], &cfg);
    let mut g = c.benchmark_group("parts_n500");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("cold_fit", |b| b.iter(|| PerfModel::fit(black_box(&hist[1..]), &cfg)));
    g.bench_function("warm_refit", |b| b.iter(|| model.refit(black_box(&hist[1..]))));
    g.bench_function("predict_840", |b| b.iter(|| model.predict_many(black_box(&cands), 60_000.0)));
    g.bench_function("decide_840", |b| {
        b.iter(|| {
            decide(
                &model,
                &cands,
                &JobConfig::STATIC_DEFAULT,
                black_box(60_000.0),
                CurrentHealth::default(),
                &Constraints::default(),
                &quota,
                &space,
                &DecideConfig::default(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, full_decision, parts);
criterion_main!(benches);

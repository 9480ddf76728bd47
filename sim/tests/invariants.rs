//! Invariants of the simulated job and the baseline strategies, through the public API.

use demeter_common::{JobConfig, Sample};
use demeter_sim::strategies::{self, Hpa, HpaOptions, StaticStrategy};
use demeter_sim::strategy::{Command, StepContext, Strategy};
use demeter_sim::{Prepared, SimOptions, StrategyRun, Trace, prepare, run, run_one};

fn ads_trace(len: usize) -> Trace {
    // A slow sine between 10k and 30k per generator, like the real traces' range.
    let values = (0..len).map(|t| 20_000.0 + 10_000.0 * (t as f64 / 3_000.0).sin()).collect();
    Trace { name: "synthetic".into(), workload: "ads".into(), start_unix_s: 1_700_000_000, values }
}

fn prepared(trace: &Trace, seed: u64, failures: bool) -> Prepared {
    prepare(trace, &SimOptions { seed, failures, ..SimOptions::default() }).unwrap()
}

fn run_static(p: &Prepared, cfg: JobConfig) -> StrategyRun {
    run_one(p, &mut StaticStrategy::with_config(cfg), &mut |_, _| {})
}

#[test]
fn events_are_conserved_over_a_run() {
    let trace = ads_trace(20_000);
    let p = prepared(&trace, 7, true);
    let r = run_static(&p, JobConfig::STATIC_DEFAULT);
    let offered: f64 = r.series.iter().map(|s| s.offered_rate).sum();
    let last_lag = r.series.last().unwrap().lag;
    // produced = processed (net of replays) + lag
    let net = r.summary.processed_fraction * offered;
    assert!((offered - (net + last_lag)).abs() / offered < 1e-9, "{offered} vs {net} + {last_lag}");
    // Replayed records are processed twice: gross ≥ net.
    let gross: f64 = r.series.iter().map(|s| s.throughput).sum();
    assert!(gross >= net - 1e-6);
    assert!(r.series.iter().all(|s| s.lag >= 0.0 && s.throughput >= 0.0));
    assert!(r.summary.failures_injected >= 7, "{}", r.summary.failures_injected);
}

#[test]
fn latency_grows_with_utilisation() {
    let p = prepare(&Trace::constant("ads", 1.0, 10), &SimOptions::default()).unwrap();
    let cfg = JobConfig { parallelism: 8, ..JobConfig::STATIC_DEFAULT };
    let cap = demeter_sim::OracleView::true_capacity(&p, &cfg);
    let mut last = 0.0;
    for u in [0.1, 0.5, 0.8, 0.95, 1.02, 1.2] {
        // Per-generator value so that the offered rate is u × capacity.
        let per_gen = u * cap / 3.0 / p.wp.rate_scale;
        let trace = Trace::constant("ads", per_gen, 1_800);
        let pr = prepared(&trace, 3, false);
        let r = run_static(&pr, cfg);
        let l = r.summary.mean_p95_latency_ms;
        assert!(l > last, "utilisation {u}: {l} ms is not above {last} ms");
        last = l;
    }
    assert!(last > 60_000.0, "overloaded by 20 % for 30 min should be far behind: {last}");
}

#[test]
fn a_failure_costs_time_and_latency() {
    let trace = ads_trace(6_000);
    let with = run_static(&prepared(&trace, 5, true), JobConfig::STATIC_DEFAULT);
    let without = run_static(&prepared(&trace, 5, false), JobConfig::STATIC_DEFAULT);
    assert_eq!(without.summary.failures_injected, 0);
    assert_eq!(with.summary.failures_injected, 2);
    assert!(with.summary.downtime_s >= 2.0 * 20.0, "{}", with.summary.downtime_s);
    assert!(without.summary.downtime_s < 1e-9);
    assert!(with.summary.mean_p95_latency_ms > without.summary.mean_p95_latency_ms);
    assert!(with.summary.pct_seconds_latency_over_5s > without.summary.pct_seconds_latency_over_5s);
    assert_eq!(with.failures.len(), 2);
    assert!(with.failures.iter().all(|f| f.recovered && f.recovery_s > 20.0));
}

#[test]
fn every_baseline_is_deterministic_for_a_seed() {
    let trace = ads_trace(8_000);
    let go = |seed: u64| {
        let p = prepared(&trace, seed, true);
        strategies::NAMES
            .iter()
            .map(|n| {
                let mut s = strategies::build(n, &p).unwrap();
                run_one(&p, s.as_mut(), &mut |_, _| {})
            })
            .collect::<Vec<_>>()
    };
    let a = go(11);
    let b = go(11);
    let c = go(12);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.summary, y.summary);
        assert_eq!(x.series, y.series);
        assert_eq!(x.reconfigurations, y.reconfigurations);
    }
    assert_ne!(a[0].series[0].offered_rate, c[0].series[0].offered_rate);
}

#[test]
fn run_reports_every_strategy_and_progress() {
    let trace = ads_trace(3_000);
    let opts = SimOptions { seed: 1, ..SimOptions::default() };
    let p = prepare(&trace, &opts).unwrap();
    let list: Vec<Box<dyn Strategy>> = strategies::NAMES
        .iter()
        .map(|n| strategies::build(n, &p).unwrap() as Box<dyn demeter_sim::Strategy>)
        .collect();
    let mut calls = Vec::new();
    let rep = run(&trace, list, &opts, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(rep.strategies.len(), strategies::NAMES.len());
    assert_eq!(calls.last(), Some(&(15_000, 15_000)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
    let st = rep.get("static").unwrap();
    assert!((st.summary.cpu_ratio - 1.0).abs() < 1e-12 && (st.summary.memory_ratio - 1.0).abs() < 1e-12);
    assert_eq!(st.series.len(), 3_000);
    let mut csv = Vec::new();
    st.write_series_csv(&mut csv).unwrap();
    let text = String::from_utf8(csv).unwrap();
    assert!(text.starts_with("t,offered_rate,throughput,capacity,lag,p95_latency_ms,"));
    assert_eq!(text.lines().count(), 3_001);
}

#[test]
fn the_hpa_follows_cpu_and_the_oracle_keeps_its_budget() {
    // Low load: the HPA gives TaskManagers back.
    let low = Trace::constant("ads", 3_000.0, 3_600);
    let p = prepared(&low, 2, false);
    let r = run_one(&p, &mut Hpa::new(HpaOptions::default()), &mut |_, _| {});
    assert!(r.summary.mean_taskmanagers < 20.0, "{}", r.summary.mean_taskmanagers);
    let last = r.series.last().unwrap();
    assert!(last.taskmanagers < 10, "{}", last.taskmanagers);

    let trace = ads_trace(64_800 / 4);
    let p = prepared(&trace, 2, true);
    let mut o = strategies::build("oracle", &p).unwrap();
    let r = run_one(&p, o.as_mut(), &mut |_, _| {});
    assert!(r.summary.reconfigurations <= 4, "{}", r.summary.reconfigurations);
    assert!(r.summary.cpu_ratio < 1.0);
}

/// Profiles one configuration at t = 0 and asks for metric batches.
struct Prober {
    cfg: JobConfig,
    outcomes: usize,
    batches_seen: usize,
    tms_max: usize,
    seqs: std::collections::HashMap<String, u64>,
}

impl Strategy for Prober {
    fn name(&self) -> &str {
        "prober"
    }
    fn initial_config(&self) -> JobConfig {
        JobConfig { parallelism: 8, task_slots: 2, ..JobConfig::STATIC_DEFAULT }
    }
    fn wants_batches(&self) -> bool {
        true
    }
    fn step(&mut self, ctx: &mut StepContext<'_>) {
        if ctx.now.0 == 1_700_000_001_000 {
            ctx.commands.push(Command::StartProfile {
                id: 9,
                config: self.cfg,
                duration_s: 300,
                inject_failure_after_s: None,
            });
        }
        self.outcomes += ctx.profile_outcomes.len();
        self.batches_seen += ctx.batches.len();
        self.tms_max = self.tms_max.max(ctx.batches.len());
        for b in ctx.batches {
            assert!(b.samples.iter().any(|s| matches!(s, Sample::Container(_))));
            assert_eq!(b.source.namespace, "sim");
            assert_eq!(b.collected_at, ctx.now);
            // Sequence numbers start at 0 and have no gaps within an agent run.
            let expect = self.seqs.get(&b.agent_run_id).map_or(0, |s| s + 1);
            assert_eq!(b.agent_seq, expect, "{}", b.agent_run_id);
            self.seqs.insert(b.agent_run_id.clone(), b.agent_seq);
        }
    }
}

#[test]
fn profiling_runs_are_accounted_and_batches_are_per_taskmanager() {
    let trace = Trace::constant("ads", 8_000.0, 1_000);
    let p = prepared(&trace, 4, false);
    let cfg = JobConfig { parallelism: 4, task_slots: 2, tm_cpu_milli: 2000, ..JobConfig::STATIC_DEFAULT };
    let mut s = Prober { cfg, outcomes: 0, batches_seen: 0, tms_max: 0, seqs: Default::default() };
    let r = run_one(&p, &mut s, &mut |_, _| {});
    assert_eq!(s.outcomes, 1);
    assert_eq!(r.profiles.len(), 1);
    let pr = &r.profiles[0];
    assert!((pr.throughput / pr.offered_rate - 1.0).abs() < 0.05, "{pr:?}");
    // 2 TaskManagers × 2 cores for 300 s.
    assert!((r.summary.profiling_core_hours - 4.0 * 300.0 / 3600.0).abs() < 1e-9);
    let prod_cores = 4.0 * 1_000.0 / 3600.0;
    assert!((r.summary.profiling_cpu_overhead - (4.0 * 300.0 / 3600.0) / prod_cores).abs() < 1e-9);
    // 4 TaskManagers publish every second.
    assert_eq!(s.tms_max, 4);
    assert_eq!(s.batches_seen, 4 * 1_000);
}

/// Feeds the batches through the coordinator's aggregator and compares with the observation.
struct Aggregating {
    agg: demeter_core::aggregate::JobAggregator,
    compared: usize,
}

impl Strategy for Aggregating {
    fn name(&self) -> &str {
        "aggregating"
    }
    fn initial_config(&self) -> JobConfig {
        JobConfig { parallelism: 12, task_slots: 3, tm_cpu_milli: 2000, ..JobConfig::STATIC_DEFAULT }
    }
    fn wants_batches(&self) -> bool {
        true
    }
    fn step(&mut self, ctx: &mut StepContext<'_>) {
        for b in ctx.batches {
            self.agg.handle_batch(ctx.now, b).unwrap();
        }
        let Some(a) = self.agg.poll_observation(ctx.now) else { return };
        let o = ctx.observation;
        // Compare seconds in which every TaskManager reported (a silent or removed one stays in
        // the aggregator until it is stale).
        let n = ctx.batches.len() as u32;
        let all = ctx.current.taskmanagers();
        if n != all || o.p95_latency_ms.is_none() || a.taskmanagers != n || o.taskmanagers != n {
            return;
        }
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-6 * (1.0 + x.abs().max(y.abs()));
        assert!(close(a.throughput, o.throughput), "{} vs {}", a.throughput, o.throughput);
        assert!(close(a.lag, o.lag), "{} vs {}", a.lag, o.lag);
        assert!(close(a.p95_latency_ms.unwrap(), o.p95_latency_ms.unwrap()));
        assert!(close(a.cpu_cores_used, o.cpu_cores_used));
        assert!(close(a.memory_used_mb, o.memory_used_mb));
        assert!(close(a.busy_ratio, o.busy_ratio), "{} vs {}", a.busy_ratio, o.busy_ratio);
        self.compared += 1;
    }
}

#[test]
fn batches_aggregate_to_the_observation() {
    let trace = ads_trace(3_000);
    let p = prepared(&trace, 8, true);
    let mut s =
        Aggregating { agg: demeter_core::aggregate::JobAggregator::new(Default::default()), compared: 0 };
    run_one(&p, &mut s, &mut |_, _| {});
    assert!(s.compared > 2_500, "{}", s.compared);
}

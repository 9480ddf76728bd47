use super::*;
use crate::perf::synthetic::SyntheticJob;
use crate::perf::{Criteria, PerfModel, PerfModelConfig};
use demeter_common::config::Steps;
use proptest::prelude::*;

fn cands() -> Vec<JobConfig> {
    SearchSpace::default().candidates(&Quota::default())
}

fn trained(n: usize, seed: u64) -> PerfModel {
    PerfModel::fit(&SyntheticJob::default().history(&cands(), n, seed), &PerfModelConfig::default())
}

thread_local! {
    static MODEL: PerfModel = trained(250, 21);
}

fn run(model: &PerfModel, current: &JobConfig, peak: f64, health: CurrentHealth) -> Decision {
    decide(
        model,
        &cands(),
        current,
        peak,
        health,
        &Constraints::default(),
        &Quota::default(),
        &SearchSpace::default(),
        &DecideConfig::default(),
    )
}

#[test]
fn oversized_current_switches_to_a_cheaper_confidently_feasible_config() {
    let d = MODEL.with(|m| run(m, &JobConfig::STATIC_DEFAULT, 40_000.0, CurrentHealth::default()));
    assert!(d.switch, "{}", d.explanation.text);
    let Reason::Cheaper { saving } = d.reason else { panic!("{:?}", d.reason) };
    assert!(saving >= 0.10);
    let ex = &d.explanation;
    assert_eq!(ex.target.config, d.target);
    assert_eq!(ex.target.score.class, FeasibilityClass::Feasible);
    assert!(ex.target.prediction.capacity.lower >= 1.1 * 40_000.0);
    assert!(ex.target.prediction.recovery_s.upper <= 180.0);
    assert!(ex.n_admissible == 840 && ex.n_feasible > 0 && ex.top.len() == 5);
    assert!(d.target.total_cpu() < 24.0);
    // The truth agrees that the target copes.
    assert!(SyntheticJob::default().capacity(&d.target) >= 40_000.0);
    assert_eq!(d.reason.label(), "cheaper");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["reason"]["kind"], "cheaper");
    assert!(json["explanation"]["top"][0]["prediction"]["capacity"]["lower"].is_number());
}

#[test]
fn hysteresis_keeps_a_config_whose_saving_is_too_small() {
    MODEL.with(|m| {
        let first = run(m, &JobConfig::STATIC_DEFAULT, 40_000.0, CurrentHealth::default());
        // From the chosen config, the same decision again: no saving left worth a switch.
        let again = run(m, &first.target, 40_000.0, CurrentHealth::default());
        assert!(!again.switch, "{:?}: {}", again.reason, again.explanation.text);
        assert!(matches!(again.reason, Reason::NoBetterCandidate | Reason::SavingBelowThreshold { .. }));
        // With an impossible threshold nothing ever switches for cost.
        let cfg = DecideConfig { min_saving: 1.5, ..DecideConfig::default() };
        let d = decide(
            m,
            &cands(),
            &JobConfig::STATIC_DEFAULT,
            40_000.0,
            CurrentHealth::default(),
            &Constraints::default(),
            &Quota::default(),
            &SearchSpace::default(),
            &cfg,
        );
        assert!(!d.switch);
        assert!(matches!(d.reason, Reason::SavingBelowThreshold { saving } if saving > 0.0));
    });
}

#[test]
fn failing_current_moves_up_even_at_a_higher_cost() {
    MODEL.with(|m| {
        let small = JobConfig {
            parallelism: 8,
            task_slots: 4,
            tm_cpu_milli: 1000,
            tm_memory_mb: 1024,
            checkpoint_interval_ms: 30_000,
        };
        let d = run(
            m,
            &small,
            60_000.0,
            CurrentHealth { lagging: true, latency_violated: true, observed_p95_ms: Some(40_000.0) },
        );
        assert!(d.switch);
        assert_eq!(d.reason, Reason::Lagging);
        assert!(d.reason.is_urgent());
        assert!(d.target.total_cpu() > small.total_cpu());
        assert_eq!(d.explanation.current.score.class, FeasibilityClass::Failing);
        // Predicted (not observed) failure.
        let d = run(m, &small, 60_000.0, CurrentHealth::default());
        assert!(d.switch);
        assert!(
            matches!(d.reason, Reason::CurrentPredictedToFail { p_feasible } if p_feasible < 0.5),
            "{:?}",
            d.reason
        );
    });
}

#[test]
fn nothing_confident_and_failing_goes_to_the_safest_config() {
    MODEL.with(|m| {
        let small = JobConfig {
            parallelism: 8,
            task_slots: 4,
            tm_cpu_milli: 1000,
            tm_memory_mb: 1024,
            checkpoint_interval_ms: 30_000,
        };
        // Far beyond any configuration's capacity.
        let d = run(m, &small, 2_000_000.0, CurrentHealth { lagging: true, ..CurrentHealth::default() });
        assert_eq!(d.reason, Reason::NoConfidentCandidate);
        assert!(d.explanation.fallback_to_safest);
        let best = d.explanation.top.iter().map(|s| s.prediction.capacity.lower).fold(0.0, f64::max);
        assert!(d.explanation.target.prediction.capacity.lower >= best);
    });
    // A prior-only model: healthy → keep; failing → largest capacity (most CPU) within quota.
    let prior = PerfModel::fit(&[], &PerfModelConfig::default());
    let small = JobConfig {
        parallelism: 8,
        task_slots: 4,
        tm_cpu_milli: 1000,
        tm_memory_mb: 1024,
        checkpoint_interval_ms: 30_000,
    };
    let d = run(&prior, &small, 30_000.0, CurrentHealth::default());
    assert!(!d.switch);
    assert_eq!(d.reason, Reason::InsufficientModel);
    let d =
        run(&prior, &small, 30_000.0, CurrentHealth { latency_violated: true, ..CurrentHealth::default() });
    assert!(d.switch);
    assert_eq!(d.target.total_cpu(), 24.0);
}

#[test]
fn reason_labels_are_stable() {
    let all = [
        (Reason::Cheaper { saving: 0.2 }, "cheaper"),
        (Reason::SavingBelowThreshold { saving: 0.01 }, "saving_below_threshold"),
        (Reason::NoBetterCandidate, "no_better_candidate"),
        (Reason::CurrentPredictedToFail { p_feasible: 0.1 }, "current_predicted_to_fail"),
        (Reason::LatencyViolated, "latency_violated"),
        (Reason::Lagging, "lagging"),
        (Reason::CurrentOutOfBounds, "current_out_of_bounds"),
        (Reason::NoConfidentCandidate, "no_confident_candidate"),
        (Reason::InsufficientModel, "insufficient_model"),
        (Reason::NoAdmissibleCandidate, "no_admissible_candidate"),
    ];
    for (r, l) in all {
        assert_eq!(r.label(), l);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], l);
        assert_eq!(serde_json::from_value::<Reason>(v).unwrap(), r);
    }
}

#[test]
fn bench_decision_runs_full_decisions() {
    let r = bench_decision(60, 3, 1);
    assert_eq!(r.n_observations, 60);
    assert_eq!(r.iterations, 3);
    assert_eq!(r.n_candidates, 840);
    assert!(r.p50_ms > 0.0 && r.p99_ms >= r.p50_ms && r.max_ms >= r.p99_ms);
    assert!(r.training_points[0] > 0 && r.training_points[1] > 0);
    assert!(!r.last_reason.is_empty());
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["p50_ms"].is_number() && v["p99_ms"].is_number());
}

fn arb_config() -> impl Strategy<Value = JobConfig> {
    (1u32..=32, 1u32..=6, 1u32..=4, 1u32..=5, 0u64..6).prop_map(|(p, s, c, m, k)| JobConfig {
        parallelism: p,
        task_slots: s,
        tm_cpu_milli: c * 1000,
        tm_memory_mb: m * 1024,
        checkpoint_interval_ms: 10_000 + k * 20_000,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Guardrails that hold whatever the model says.
    #[test]
    fn decisions_respect_space_quota_and_never_switch_to_worse(
        current in arb_config(),
        peak in 0.0f64..300_000.0,
        lagging in any::<bool>(),
        latency_violated in any::<bool>(),
        qcpu in 2.0f64..40.0,
        qmem in 2_048u64..160_000,
        pmax in 2u64..7,
        prior_only in any::<bool>(),
    ) {
        let space = SearchSpace { parallelism: Steps::new(8, pmax * 4, 4), ..SearchSpace::default() };
        let quota = Quota { max_total_cpu: qcpu, max_total_memory_mb: qmem };
        // Candidates from the default space: some fall outside this space or quota.
        let all = cands();
        let health = CurrentHealth { lagging, latency_violated, observed_p95_ms: None };
        let cfg = DecideConfig::default();
        let admissible: Vec<JobConfig> = all.iter().filter(|c| space.contains(c) && quota.admits(c)).copied().collect();
        let crit = Criteria { constraints: Constraints::default(), capacity_margin: cfg.capacity_margin, z: cfg.confidence_z };
        let run_with = |m: &PerfModel| {
            let d = decide(m, &all, &current, peak, health, &Constraints::default(), &quota, &space, &cfg);
            let safest = m.predict_many_with(&admissible, peak, &crit).iter().map(|p| p.capacity.lower).fold(0.0, f64::max);
            (d, safest)
        };
        let (d, safest) = if prior_only {
            run_with(&PerfModel::fit(&[], &PerfModelConfig::default()))
        } else {
            MODEL.with(run_with)
        };
        let current_ok = space.contains(&current) && quota.admits(&current);
        if !admissible.is_empty() || current_ok {
            prop_assert!(space.contains(&d.target), "{} outside the space", d.target);
            prop_assert!(quota.admits(&d.target), "{} over the quota", d.target);
        } else {
            prop_assert!(!d.switch);
            prop_assert_eq!(d.reason.clone(), Reason::NoAdmissibleCandidate);
        }
        prop_assert_eq!(d.switch, d.target != current);
        if d.switch {
            let (t, c) = (&d.explanation.target.score, &d.explanation.current.score);
            prop_assert!(t.better_than(c), "switched to a worse score: {:?} vs {:?}", t, c);
        }
        // Failing with nothing confidently feasible: the safest admissible configuration.
        let failing = lagging || latency_violated || !current_ok;
        if failing && d.explanation.n_feasible == 0 && !admissible.is_empty() {
            prop_assert!(d.explanation.fallback_to_safest);
            prop_assert!(d.explanation.target.prediction.capacity.lower >= safest * (1.0 - 1e-9));
        }
    }
}

/// `cargo test --release -p demeter-core bench_decision_report -- --ignored --nocapture`
#[test]
#[ignore = "timing report; run in release mode"]
fn bench_decision_report() {
    // On a shared machine wall time includes waiting for a core; the thread's on-CPU time
    // (Linux schedstat, nanoseconds) is what "on one core" means.
    let mut on_cpu = || {
        let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        std::time::Duration::from_nanos(s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    for n in [60, 200, 500] {
        let r = bench_decision(n, 100, 1);
        eprintln!("wall   {}", serde_json::to_string(&r).unwrap());
        let r = bench_decision_with_clock(n, 100, 1, &mut on_cpu);
        eprintln!("on-cpu {}", serde_json::to_string(&r).unwrap());
    }
}

use super::*;
use crate::perf::synthetic::SyntheticJob;
use crate::perf::{PerfModel, PerfModelConfig};
use demeter_common::{Quota, SearchSpace};
use proptest::prelude::*;

#[test]
fn hypervolume_of_known_fronts() {
    let r = [1.0, 1.0];
    assert_eq!(hypervolume_2d(&[], r), 0.0);
    assert!((hypervolume_2d(&[[0.5, 0.5]], r) - 0.25).abs() < 1e-12);
    // Staircase: (0.2,0.8), (0.5,0.4), (0.8,0.1): 0.8·0.2 + 0.5·0.4 + 0.2·0.3 = 0.42.
    let f = [[0.5, 0.4], [0.2, 0.8], [0.8, 0.1]];
    assert!((hypervolume_2d(&f, r) - 0.42).abs() < 1e-12);
    // A dominated point and a point beyond the reference change nothing.
    let g = [[0.5, 0.4], [0.2, 0.8], [0.8, 0.1], [0.6, 0.6], [1.2, 0.0]];
    assert!((hypervolume_2d(&g, r) - 0.42).abs() < 1e-12);
    assert_eq!(pareto_front(&g).len(), 4); // (1.2, 0) is non-dominated but outside the box.
}

#[test]
fn hypervolume_improvement_is_the_difference_of_hypervolumes() {
    let r = [1.0, 1.0];
    let f = [[0.5, 0.4], [0.2, 0.8], [0.8, 0.1]];
    let p = [0.3, 0.3];
    let mut with = f.to_vec();
    with.push(p);
    let expect = hypervolume_2d(&with, r) - hypervolume_2d(&f, r);
    assert!((hvi_2d(p, &f, r) - expect).abs() < 1e-12);
    assert_eq!(hvi_2d([0.6, 0.6], &f, r), 0.0, "dominated point");
    assert_eq!(hvi_2d([0.5, 0.4], &f, r), 0.0, "point already on the front");
    assert!((ehvi_2d(p, &f, r, 0.25) - 0.25 * expect).abs() < 1e-12);
}

proptest! {
    #[test]
    fn ehvi_is_never_negative_and_matches_the_hypervolume_difference(
        front in proptest::collection::vec((0.0f64..1.3, 0.0f64..1.3), 0..12),
        p in (0.0f64..1.3, 0.0f64..1.3),
        prob in 0.0f64..1.0,
    ) {
        let r = [1.0, 1.0];
        let f: Vec<[f64; 2]> = front.iter().map(|&(a, b)| [a, b]).collect();
        let pt = [p.0, p.1];
        let e = ehvi_2d(pt, &f, r, prob);
        prop_assert!(e >= 0.0);
        let mut with = f.clone();
        with.push(pt);
        let diff = hypervolume_2d(&with, r) - hypervolume_2d(&f, r);
        prop_assert!((hvi_2d(pt, &f, r) - diff).abs() < 1e-9);
        prop_assert!(e <= diff + 1e-12);
    }
}

fn setup(n: usize, seed: u64) -> (Vec<JobConfig>, Vec<PerfSample>, PerfModel) {
    let cands = SearchSpace::default().candidates(&Quota::default());
    let hist = SyntheticJob::default().history(&cands, n, seed);
    let model = PerfModel::fit(&hist, &PerfModelConfig::default());
    (cands, hist, model)
}

#[test]
fn suggestions_respect_the_budget_and_skip_configs_measured_at_this_rate() {
    let (cands, hist, model) = setup(120, 3);
    let policy = ProfilingPolicy {
        max_concurrent: 4,
        budget_cpu: 20.0,
        budget_memory_mb: 60_000,
        stop_threshold: 0.0,
        p_stop: 1.1,
        ..ProfilingPolicy::default()
    };
    let rate = 60_000.0;
    let plan = suggest_profiles(&model, &cands, &hist, rate, &Constraints::default(), &policy, 7);
    assert!(!plan.stop, "{}", plan.reason);
    assert!(!plan.configs.is_empty());
    let cpu: f64 = plan.configs.iter().map(|(c, _)| c.total_cpu()).sum();
    let mem: u64 = plan.configs.iter().map(|(c, _)| c.total_memory_mb()).sum();
    assert!(cpu <= 20.0 + 1e-9 && mem <= 60_000, "{cpu} {mem}");
    for (c, a) in &plan.configs {
        assert!(*a > 0.0);
        assert!(
            !hist.iter().any(|s| s.config == *c && (s.offered_rate / rate - 1.0).abs() <= 0.1),
            "{c} repeats"
        );
    }
    // Distinct configurations, deterministic for a seed.
    let mut seen: Vec<JobConfig> = plan.configs.iter().map(|p| p.0).collect();
    seen.dedup();
    assert_eq!(seen.len(), plan.configs.len());
    assert_eq!(plan, suggest_profiles(&model, &cands, &hist, rate, &Constraints::default(), &policy, 7));
    // Profiling the first suggestion at this rate removes it from the next plan.
    let mut more = hist.clone();
    let s = SyntheticJob::default().sample(
        &plan.configs[0].0,
        rate,
        SampleOrigin::Profiling,
        true,
        demeter_common::UnixMillis(0),
        &mut <ChaCha8Rng as SeedableRng>::seed_from_u64(1),
    );
    more.push(s);
    let next = suggest_profiles(&model, &cands, &more, rate, &Constraints::default(), &policy, 7);
    assert!(next.configs.iter().all(|(c, _)| *c != plan.configs[0].0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn any_plan_fits_its_budget(cpu in 1.0f64..40.0, mem in 1_000u64..150_000, k in 1usize..5, seed in 0u64..1000) {
        let (cands, hist, model) = SETUP.with(|s| s.clone());
        let policy = ProfilingPolicy { max_concurrent: k, budget_cpu: cpu, budget_memory_mb: mem, ..ProfilingPolicy::default() };
        let plan = suggest_profiles(&model, &cands, &hist, 50_000.0, &Constraints::default(), &policy, seed);
        prop_assert!(plan.configs.len() <= k);
        prop_assert!(plan.configs.iter().map(|(c, _)| c.total_cpu()).sum::<f64>() <= cpu + 1e-9);
        prop_assert!(plan.configs.iter().map(|(c, _)| c.total_memory_mb()).sum::<u64>() <= mem);
    }
}

thread_local! {
    static SETUP: (Vec<JobConfig>, Vec<PerfSample>, PerfModel) = setup(80, 5);
}

#[test]
fn prior_only_model_never_stops_and_runs_a_seeded_initial_design() {
    let cands = SearchSpace::default().candidates(&Quota::default());
    let model = PerfModel::fit(&[], &PerfModelConfig::default());
    let policy = ProfilingPolicy::default();
    let a = suggest_profiles(&model, &cands, &[], 40_000.0, &Constraints::default(), &policy, 1);
    let b = suggest_profiles(&model, &cands, &[], 40_000.0, &Constraints::default(), &policy, 1);
    assert!(!a.stop);
    assert_eq!(a, b);
    assert_eq!(a.configs.len(), policy.max_concurrent);
    assert!(a.configs.iter().all(|(_, v)| *v == -1.0));
    assert!(a.reason.contains("prior-only"));
    assert_ne!(a.configs[0].0, a.configs[1].0);
}

#[test]
fn stopping_rule_fires_once_the_model_is_confident_and_not_before() {
    // Closed loop: profile what the policy asks for (measured on the synthetic truth), refit,
    // repeat. The rule must stop within a few rounds: the uncertain cheap candidates get
    // measured and the front settles.
    let (cands, mut hist, mut model) = setup(150, 9);
    let policy = ProfilingPolicy::default();
    let job = SyntheticJob::default();
    let mut rng = <ChaCha8Rng as SeedableRng>::seed_from_u64(2);
    let rate = 45_000.0;
    let mut rounds = 0;
    let mut runs = 0;
    loop {
        let plan = suggest_profiles(&model, &cands, &hist, rate, &Constraints::default(), &policy, rounds);
        if plan.stop {
            assert!(plan.configs.is_empty());
            eprintln!("stopped after {rounds} rounds, {runs} runs: {}", plan.reason);
            break;
        }
        assert!(!plan.configs.is_empty(), "neither stopping nor suggesting: {}", plan.reason);
        for (c, _) in &plan.configs {
            let at = demeter_common::UnixMillis(1_000_000 + rounds as i64);
            hist.push(job.sample(c, rate, SampleOrigin::Profiling, true, at, &mut rng));
            runs += 1;
        }
        model = model.refit(&hist);
        rounds += 1;
        assert!(rounds <= 15, "profiling did not stop after {runs} runs: {}", plan.reason);
    }
    assert!(rounds >= 1, "a 150-sample history should leave something to learn at this rate");
    // The same history with only a handful of production samples: keep profiling.
    let few: Vec<PerfSample> =
        hist.iter().filter(|s| s.origin == SampleOrigin::Production).take(12).cloned().collect();
    let weak = PerfModel::fit(&few, &PerfModelConfig::default());
    let plan = suggest_profiles(&weak, &cands, &few, 45_000.0, &Constraints::default(), &policy, 1);
    assert!(!plan.stop, "{plan:?}");
    assert!(!plan.configs.is_empty());
    // Rule 1 alone: a threshold above any possible value stops at once, with its reason.
    let strict = ProfilingPolicy { stop_threshold: 2.0, n_init: 0, ..policy.clone() };
    let plan = suggest_profiles(&weak, &cands, &few, 45_000.0, &Constraints::default(), &strict, 1);
    assert!(plan.stop && plan.reason.contains("below the threshold"), "{}", plan.reason);
}

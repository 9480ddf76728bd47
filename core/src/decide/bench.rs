//! The decision benchmark behind `demeter-coordinator bench-decision`.
//!
//! One iteration is a full decision as the controller makes it every loop: a minute of
//! observations into the workload forecaster and a forecast, a warm-started refit of the
//! performance model on the latest `N` samples (a sliding window over a synthetic history, so
//! every iteration fits new data), and the decision over all 840 default candidates. The
//! current configuration follows the decisions. The first, cold fit is timed separately.
//!
//! Measuring time is the one thing here that reads a clock: [`bench_decision_with_clock`] takes
//! it as an argument; [`bench_decision`] passes `std::time::Instant`. No decision depends on it.

use super::{CurrentHealth, DecideConfig, decide};
use crate::forecast::{ForecastConfig, WorkloadForecaster};
use crate::perf::synthetic::SyntheticJob;
use crate::perf::{PerfModel, PerfModelConfig};
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Timings of the decision benchmark, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub n_observations: usize,
    pub iterations: usize,
    pub seed: u64,
    pub n_candidates: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
    /// The first fit, without warm start (not part of the percentiles).
    pub cold_fit_ms: f64,
    /// Mean time of the three phases over the iterations.
    pub forecast_ms: f64,
    pub fit_ms: f64,
    pub decide_ms: f64,
    /// Training points of the last model after pooling: capacity, latency, recovery.
    pub training_points: [usize; 3],
    pub switches: usize,
    pub last_reason: String,
}

/// Runs the benchmark with `std::time::Instant` as the clock.
pub fn bench_decision(n_observations: usize, iterations: usize, seed: u64) -> BenchReport {
    let start = std::time::Instant::now();
    bench_decision_with_clock(n_observations, iterations, seed, &mut || start.elapsed())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the benchmark, reading elapsed time from `clock`.
pub fn bench_decision_with_clock(
    n_observations: usize,
    iterations: usize,
    seed: u64,
    clock: &mut dyn FnMut() -> Duration,
) -> BenchReport {
    let n = n_observations.max(1);
    let iterations = iterations.max(1);
    let space = SearchSpace::default();
    let quota = Quota::default();
    let constraints = Constraints::default();
    let candidates = space.candidates(&quota);
    let job = SyntheticJob::default();
    let history = job.history(&candidates, n + iterations, seed);
    let model_cfg = PerfModelConfig::default();
    let decide_cfg = DecideConfig::default();

    // Warm-up, not timed: the forecaster sees the seconds of the first window's history.
    let mut forecaster = WorkloadForecaster::new(ForecastConfig::default());
    let window_s = 60i64;
    let mut t_s = 0i64;
    while t_s < n as i64 * window_s {
        forecaster.observe(t_s, job.rate_at(t_s));
        t_s += 1;
    }
    let c0 = clock();
    let mut model = PerfModel::fit(&history[..n], &model_cfg);
    let cold_fit_ms = (clock() - c0).as_secs_f64() * 1e3;
    let mut current: JobConfig = JobConfig::STATIC_DEFAULT;

    let mut times = Vec::with_capacity(iterations);
    let (mut f_ms, mut m_ms, mut d_ms) = (0.0, 0.0, 0.0);
    let mut switches = 0;
    let mut last_reason = String::new();
    for k in 0..iterations {
        let t0 = clock();
        let end = t_s + window_s;
        let mut recent_peak = 0.0f64;
        while t_s < end {
            let r = job.rate_at(t_s);
            recent_peak = recent_peak.max(r);
            forecaster.observe(t_s, r);
            t_s += 1;
        }
        let peak = forecaster.forecast(t_s).map_or(recent_peak * 1.2, |f| f.decision_peak.max(recent_peak));
        let t1 = clock();
        model = model.refit(&history[k + 1..k + 1 + n]);
        let t2 = clock();
        let decision = decide(
            &model,
            &candidates,
            &current,
            peak,
            CurrentHealth::default(),
            &constraints,
            &quota,
            &space,
            &decide_cfg,
        );
        let t3 = clock();
        if decision.switch {
            current = decision.target;
            switches += 1;
        }
        last_reason = decision.reason.label().to_string();
        times.push((t3 - t0).as_secs_f64() * 1e3);
        f_ms += (t1 - t0).as_secs_f64() * 1e3;
        m_ms += (t2 - t1).as_secs_f64() * 1e3;
        d_ms += (t3 - t2).as_secs_f64() * 1e3;
    }
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let st = model.status();
    let it = iterations as f64;
    BenchReport {
        n_observations: n,
        iterations,
        seed,
        n_candidates: candidates.len(),
        p50_ms: percentile(&sorted, 0.50),
        p99_ms: percentile(&sorted, 0.99),
        mean_ms,
        max_ms: sorted.last().copied().unwrap_or(0.0),
        cold_fit_ms,
        forecast_ms: f_ms / it,
        fit_ms: m_ms / it,
        decide_ms: d_ms / it,
        training_points: [st.capacity.n_points, st.latency.n_points, st.recovery.n_points],
        switches,
        last_reason,
    }
}

//! Turning performance samples into GP training sets.
//!
//! - **Capacity** (the sustainable throughput, log scale, over the configuration features): a
//!   saturated window measured it (the job ran flat out: `throughput ≈ capacity`); a window with
//!   a known busy ratio `b` estimates it as `throughput / b` (DS2's true processing rate); any
//!   other healthy window only bounds it from below (`capacity ≥ throughput`): a right-censored
//!   value. Samples of the same configuration are pooled into one training point.
//! - **Latency** (log p95) and **recovery time** (log seconds): over the configuration features
//!   plus the log utilisation `v = ln(rate / capacity)`, with the capacity taken from the
//!   capacity model. Recovery times of runs that never recovered are right-censored at their
//!   bound. Samples of one configuration at nearly the same utilisation are pooled.

use super::PerfModelConfig;
use super::features::{FeatureScaling, N_CONFIG_FEATURES};
use crate::obs::{PerfSample, RecoveryTime};
use demeter_common::JobConfig;
use std::collections::BTreeMap;

/// One pooled training point.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: Vec<f64>,
    pub y: f64,
    /// Noise multiplier (1 for a single observation, less for a pooled one).
    pub w: f64,
    /// `y` is a lower bound only.
    pub censored: bool,
}

/// Whether a sample shows a saturated job (the sources could not keep up).
pub fn is_saturated(s: &PerfSample, cfg: &PerfModelConfig) -> bool {
    s.p95_latency_ms >= cfg.saturation_latency_ms
        || (s.offered_rate > 0.0 && s.throughput < cfg.saturation_throughput_ratio * s.offered_rate)
}

/// Whether a sample can train the models: valid values and a running job.
pub fn usable(s: &PerfSample) -> bool {
    s.is_valid() && s.throughput > 0.0 && s.offered_rate > 0.0
}

/// How far (in `ln`) below a healthy window's throughput its configuration's capacity floor sits.
pub const FLOOR_SLACK: f64 = 0.02;

fn pool_weight(k: usize, floor: f64) -> f64 {
    (1.0 / k as f64).max(floor)
}

/// Capacity training points, one per configuration (in configuration order), and the floor
/// `ln capacity ≥ b` each configuration's healthy windows put on its own capacity.
pub fn capacity_points(
    samples: &[&PerfSample],
    cfg: &PerfModelConfig,
) -> (Vec<JobConfig>, Vec<Point>, Vec<(JobConfig, f64)>) {
    #[derive(Default)]
    struct Acc {
        obs: Vec<f64>,
        lower: f64,
    }
    let mut by: BTreeMap<JobConfig, Acc> = BTreeMap::new();
    for s in samples {
        let a = by.entry(s.config).or_insert(Acc { obs: Vec::new(), lower: f64::NEG_INFINITY });
        let thr = s.throughput.ln();
        if is_saturated(s, cfg) {
            a.obs.push(thr);
        } else {
            a.lower = a.lower.max(thr);
            if let Some(b) = s.busy_ratio
                && b >= cfg.busy_ratio_min
            {
                a.obs.push(thr - b.ln());
            }
        }
    }
    let mut configs = Vec::with_capacity(by.len());
    let mut points = Vec::with_capacity(by.len());
    let mut floors = Vec::new();
    for (c, a) in by {
        if a.lower.is_finite() {
            // A little below the measurement: throughput is measured with noise.
            floors.push((c, a.lower - FLOOR_SLACK));
        }
        let x = cfg.features.features(&c).to_vec();
        let p = if a.obs.is_empty() {
            Point { x, y: a.lower, w: 1.0, censored: true }
        } else {
            let mean = a.obs.iter().sum::<f64>() / a.obs.len() as f64;
            Point {
                x,
                y: mean.max(a.lower),
                w: pool_weight(a.obs.len(), cfg.pooled_noise_floor),
                censored: false,
            }
        };
        configs.push(c);
        points.push(p);
    }
    (configs, points, floors)
}

/// Inputs of the latency and recovery models: configuration features, `v`, `max(v, 0)`.
pub fn rate_inputs(features: &FeatureScaling, c: &JobConfig, v: f64) -> Vec<f64> {
    let mut x = features.features(c).to_vec();
    x.push(v);
    x.push(v.max(0.0));
    debug_assert_eq!(x.len(), N_CONFIG_FEATURES + 2);
    x
}

/// Clamps a log utilisation into the modelled range.
pub fn clamp_v(v: f64) -> f64 {
    v.clamp(-3.0, 1.5)
}

/// Log utilisation of a training sample given the capacity model's log mean at its
/// configuration, made consistent with what the sample showed: a saturated window ran at
/// utilisation ≥ 1 (it may have drained a backlog faster than the offered rate), a healthy one
/// below 1.
pub fn sample_v(s: &PerfSample, log_capacity: f64, cfg: &PerfModelConfig) -> f64 {
    let v = clamp_v(s.offered_rate.ln() - log_capacity);
    if is_saturated(s, cfg) { v.max(0.05) } else { v.min(-0.02) }
}

/// Pools rate-dependent points that share a configuration, a censoring state and a
/// utilisation bin of width `width`.
pub fn pool_rate_points(raw: Vec<(JobConfig, Point)>, width: f64, floor: f64) -> Vec<Point> {
    let mut groups: BTreeMap<(JobConfig, i64, bool), Vec<Point>> = BTreeMap::new();
    for (c, p) in raw {
        let bin = (p.x[N_CONFIG_FEATURES] / width.max(1e-6)).round() as i64;
        groups.entry((c, bin, p.censored)).or_default().push(p);
    }
    groups
        .into_values()
        .map(|g| {
            let k = g.len();
            if k == 1 {
                return g.into_iter().next().expect("one point");
            }
            let censored = g[0].censored;
            let mut x = vec![0.0; g[0].x.len()];
            for p in &g {
                x.iter_mut().zip(&p.x).for_each(|(a, b)| *a += b / k as f64);
            }
            let v = x[N_CONFIG_FEATURES];
            x[N_CONFIG_FEATURES + 1] = v.max(0.0);
            if censored {
                // The strongest bound holds; pooling bounds gives no extra precision.
                let y = g.iter().map(|p| p.y).fold(f64::NEG_INFINITY, f64::max);
                Point { x, y, w: 1.0, censored }
            } else {
                let y = g.iter().map(|p| p.y).sum::<f64>() / k as f64;
                Point { x, y, w: pool_weight(k, floor), censored }
            }
        })
        .collect()
}

/// The log recovery time of a sample and whether it is censored.
pub fn recovery_target(r: &RecoveryTime) -> (f64, bool) {
    match *r {
        RecoveryTime::Measured(s) => (s.max(1.0).ln(), false),
        RecoveryTime::NotRecovered(s) => (s.max(1.0).ln(), true),
    }
}

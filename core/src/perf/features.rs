//! Model inputs derived from a configuration.
//!
//! The five knobs are re-expressed, one-to-one for full TaskManagers, as the quantities a
//! Flink job's performance follows physically: parallelism, CPU per slot, memory per slot, slots
//! per TaskManager and the checkpoint interval. Each is taken in log space (capacity is roughly a
//! power law of them: linear in logs) and scaled so that upstream's default search space spans
//! [0, 1] on every axis; a unit lengthscale then means "the whole default range".

use demeter_common::JobConfig;
use serde::{Deserialize, Serialize};

/// Number of configuration features.
pub const N_CONFIG_FEATURES: usize = 5;
/// Index of the checkpoint-interval feature.
pub const CHECKPOINT_FEATURE: usize = 4;

/// A log-scaled axis: `(ln v − ln lo) / (ln hi − ln lo)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogAxis {
    pub lo: f64,
    pub hi: f64,
}

impl LogAxis {
    pub const fn new(lo: f64, hi: f64) -> Self {
        LogAxis { lo, hi }
    }

    fn map(&self, v: f64) -> f64 {
        let span = (self.hi / self.lo).ln();
        let span = if span.abs() < 1e-9 { 1.0 } else { span };
        (v.max(1e-9) / self.lo).ln() / span
    }
}

/// Scaling of the configuration features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureScaling {
    pub parallelism: LogAxis,
    pub cpu_per_slot: LogAxis,
    pub memory_per_slot_mb: LogAxis,
    pub task_slots: LogAxis,
    pub checkpoint_interval_s: LogAxis,
}

impl Default for FeatureScaling {
    /// Upstream's default search space: parallelism 8–24, 0.25–3 cores and 256–4096 MB per slot,
    /// 1–4 slots, checkpoints every 10–90 s.
    fn default() -> Self {
        FeatureScaling {
            parallelism: LogAxis::new(8.0, 24.0),
            cpu_per_slot: LogAxis::new(0.25, 3.0),
            memory_per_slot_mb: LogAxis::new(256.0, 4096.0),
            task_slots: LogAxis::new(1.0, 4.0),
            checkpoint_interval_s: LogAxis::new(10.0, 90.0),
        }
    }
}

impl FeatureScaling {
    /// The five configuration features of `c`.
    pub fn features(&self, c: &JobConfig) -> [f64; N_CONFIG_FEATURES] {
        let slots = c.task_slots.max(1) as f64;
        [
            self.parallelism.map(c.parallelism.max(1) as f64),
            self.cpu_per_slot.map(c.tm_cpu_cores() / slots),
            self.memory_per_slot_mb.map(c.tm_memory_mb as f64 / slots),
            self.task_slots.map(slots),
            self.checkpoint_interval_s.map(c.checkpoint_interval_ms as f64 / 1000.0),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use demeter_common::{Quota, SearchSpace};

    #[test]
    fn default_space_maps_into_the_unit_cube_and_features_identify_the_config() {
        let s = FeatureScaling::default();
        let cands = SearchSpace::default().candidates(&Quota::default());
        let mut seen = std::collections::HashSet::new();
        for c in &cands {
            let f = s.features(c);
            assert!(f.iter().all(|v| (-1e-9..=1.0 + 1e-9).contains(v)), "{c}: {f:?}");
            assert!(seen.insert(f.map(|v| (v * 1e9).round() as i64)), "two configs share features: {c}");
        }
    }
}

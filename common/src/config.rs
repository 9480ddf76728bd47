//! Job configurations, the search space they are drawn from, the resource quota and the quality
//! constraints, with validation that names the key, the value and the allowed range.
//!
//! The five knobs Demeter tunes together are the ones of a Flink job on Kubernetes:
//! parallelism, task slots per TaskManager, CPU per TaskManager, memory per TaskManager and the
//! checkpoint interval. The number of TaskManagers follows: `ceil(parallelism / slots)`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One configuration of a Flink job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobConfig {
    /// Parallelism of every vertex (Flink's `parallelism.default` / `spec.job.parallelism`).
    pub parallelism: u32,
    /// `taskmanager.numberOfTaskSlots`.
    pub task_slots: u32,
    /// CPU per TaskManager in millicores (`spec.taskManager.resource.cpu` × 1000).
    pub tm_cpu_milli: u32,
    /// Memory per TaskManager in MiB (`spec.taskManager.resource.memory`).
    pub tm_memory_mb: u32,
    /// `execution.checkpointing.interval` in milliseconds.
    pub checkpoint_interval_ms: u64,
}

impl JobConfig {
    /// Upstream Demeter's default and the static baseline: 24 TaskManagers × 1 slot × 1 CPU ×
    /// 4096 MB, checkpoint every 10 s.
    pub const STATIC_DEFAULT: JobConfig = JobConfig {
        parallelism: 24,
        task_slots: 1,
        tm_cpu_milli: 1000,
        tm_memory_mb: 4096,
        checkpoint_interval_ms: 10_000,
    };

    /// TaskManagers needed to host `parallelism` slots.
    pub fn taskmanagers(&self) -> u32 {
        self.parallelism.div_ceil(self.task_slots.max(1))
    }

    pub fn tm_cpu_cores(&self) -> f64 {
        self.tm_cpu_milli as f64 / 1000.0
    }

    /// Total CPU cores over all TaskManagers.
    pub fn total_cpu(&self) -> f64 {
        self.taskmanagers() as f64 * self.tm_cpu_cores()
    }

    /// Total memory in MiB over all TaskManagers.
    pub fn total_memory_mb(&self) -> u64 {
        self.taskmanagers() as u64 * self.tm_memory_mb as u64
    }

    /// Whether `other` differs from `self` only in parallelism, so that Flink's adaptive scheduler
    /// can apply it in place when enough slots exist.
    pub fn parallelism_only_change(&self, other: &JobConfig) -> bool {
        self.task_slots == other.task_slots
            && self.tm_cpu_milli == other.tm_cpu_milli
            && self.tm_memory_mb == other.tm_memory_mb
            && self.checkpoint_interval_ms == other.checkpoint_interval_ms
    }

    /// Checks each knob against `space`, collecting every violation.
    pub fn validate_in(&self, space: &SearchSpace) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        space.parallelism.check_value("parallelism", self.parallelism as u64, &mut errs);
        space.task_slots.check_value("task_slots", self.task_slots as u64, &mut errs);
        space.tm_cpu_milli.check_value("tm_cpu_milli", self.tm_cpu_milli as u64, &mut errs);
        space.tm_memory_mb.check_value("tm_memory_mb", self.tm_memory_mb as u64, &mut errs);
        space.checkpoint_interval_ms.check_value(
            "checkpoint_interval_ms",
            self.checkpoint_interval_ms,
            &mut errs,
        );
        if space.full_taskmanagers_only && !self.parallelism.is_multiple_of(self.task_slots.max(1)) {
            errs.push(
                "parallelism",
                self.parallelism,
                format!("a multiple of task_slots ({}) when full_taskmanagers_only", self.task_slots),
            );
        }
        errs.into_result()
    }
}

impl fmt::Display for JobConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p={} ({}TM×{}slot, {}CPU, {}MB) chk={}s",
            self.parallelism,
            self.taskmanagers(),
            self.task_slots,
            self.tm_cpu_cores(),
            self.tm_memory_mb,
            self.checkpoint_interval_ms as f64 / 1000.0
        )
    }
}

/// An inclusive range of integers walked with a fixed step: `min, min+step, …, ≤ max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steps {
    pub min: u64,
    pub max: u64,
    pub step: u64,
}

impl Steps {
    pub const fn new(min: u64, max: u64, step: u64) -> Self {
        Steps { min, max, step }
    }

    /// The values of the range; empty when the range is invalid.
    pub fn values(&self) -> impl Iterator<Item = u64> + '_ {
        let valid = self.step > 0 && self.min <= self.max;
        let n = if valid { (self.max - self.min) / self.step + 1 } else { 0 };
        (0..n).map(move |i| self.min + i * self.step)
    }

    pub fn contains(&self, v: u64) -> bool {
        self.step > 0 && v >= self.min && v <= self.max && (v - self.min).is_multiple_of(self.step)
    }

    fn check_value(&self, key: &str, v: u64, errs: &mut ValidationErrors) {
        if !self.contains(v) {
            errs.push(key, v, format!("{}..={} in steps of {}", self.min, self.max, self.step));
        }
    }

    fn validate(&self, key: &str, hard: std::ops::RangeInclusive<u64>, errs: &mut ValidationErrors) {
        let allowed = format!("{}..={}", hard.start(), hard.end());
        if !hard.contains(&self.min) {
            errs.push(format!("{key}.min"), self.min, allowed.clone());
        }
        if !hard.contains(&self.max) {
            errs.push(format!("{key}.max"), self.max, allowed);
        }
        if self.min > self.max {
            errs.push(format!("{key}.max"), self.max, format!(">= {key}.min ({})", self.min));
        }
        if self.step == 0 {
            errs.push(format!("{key}.step"), self.step, ">= 1");
        }
    }
}

/// The discrete space of configurations to consider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchSpace {
    pub parallelism: Steps,
    pub task_slots: Steps,
    pub tm_cpu_milli: Steps,
    pub tm_memory_mb: Steps,
    pub checkpoint_interval_ms: Steps,
    /// Keep only configurations whose parallelism fills every TaskManager's slots.
    pub full_taskmanagers_only: bool,
}

impl Default for SearchSpace {
    /// Upstream Demeter's space: parallelism 8–24 step 4, slots 1–4, CPU 1–3, memory 1024–4096 MB
    /// step 1024, checkpoint interval 10–90 s step 20 s, full TaskManagers only.
    fn default() -> Self {
        SearchSpace {
            parallelism: Steps::new(8, 24, 4),
            task_slots: Steps::new(1, 4, 1),
            tm_cpu_milli: Steps::new(1000, 3000, 1000),
            tm_memory_mb: Steps::new(1024, 4096, 1024),
            checkpoint_interval_ms: Steps::new(10_000, 90_000, 20_000),
            full_taskmanagers_only: true,
        }
    }
}

impl SearchSpace {
    /// Validates the ranges, collecting every error.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        self.parallelism.validate("search_space.parallelism", 1..=100_000, &mut errs);
        self.task_slots.validate("search_space.task_slots", 1..=1024, &mut errs);
        self.tm_cpu_milli.validate("search_space.tm_cpu_milli", 100..=256_000, &mut errs);
        self.tm_memory_mb.validate("search_space.tm_memory_mb", 256..=1_048_576, &mut errs);
        self.checkpoint_interval_ms.validate(
            "search_space.checkpoint_interval_ms",
            100..=86_400_000,
            &mut errs,
        );
        errs.into_result()
    }

    /// Every configuration of the space that fits `quota`, in a fixed order.
    pub fn candidates(&self, quota: &Quota) -> Vec<JobConfig> {
        let mut out = Vec::new();
        for p in self.parallelism.values() {
            for s in self.task_slots.values() {
                if self.full_taskmanagers_only && p % s != 0 {
                    continue;
                }
                for c in self.tm_cpu_milli.values() {
                    for m in self.tm_memory_mb.values() {
                        for k in self.checkpoint_interval_ms.values() {
                            let cfg = JobConfig {
                                parallelism: p as u32,
                                task_slots: s as u32,
                                tm_cpu_milli: c as u32,
                                tm_memory_mb: m as u32,
                                checkpoint_interval_ms: k,
                            };
                            if quota.admits(&cfg) {
                                out.push(cfg);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    pub fn contains(&self, cfg: &JobConfig) -> bool {
        cfg.validate_in(self).is_ok()
    }
}

/// Upper bounds on the resources of one job.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub max_total_cpu: f64,
    pub max_total_memory_mb: u64,
}

impl Default for Quota {
    /// No more than the static default configuration: 24 cores and 96 GiB.
    fn default() -> Self {
        Quota {
            max_total_cpu: JobConfig::STATIC_DEFAULT.total_cpu(),
            max_total_memory_mb: JobConfig::STATIC_DEFAULT.total_memory_mb(),
        }
    }
}

impl Quota {
    pub fn admits(&self, cfg: &JobConfig) -> bool {
        cfg.total_cpu() <= self.max_total_cpu + 1e-9 && cfg.total_memory_mb() <= self.max_total_memory_mb
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if !(self.max_total_cpu.is_finite() && self.max_total_cpu > 0.0 && self.max_total_cpu <= 100_000.0) {
            errs.push("quota.max_total_cpu", self.max_total_cpu, "0 < cores <= 100000");
        }
        if !(1..=1_000_000_000).contains(&self.max_total_memory_mb) {
            errs.push("quota.max_total_memory_mb", self.max_total_memory_mb, "1..=1000000000");
        }
        errs.into_result()
    }
}

/// Quality bounds a configuration must keep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Bound on the job's p95 end-to-end latency in milliseconds.
    pub latency_p95_ms: f64,
    /// Bound on the time to recover from a failure, in seconds (upstream: 180 s).
    pub recovery_time_s: f64,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints { latency_p95_ms: 2_500.0, recovery_time_s: 180.0 }
    }
}

impl Constraints {
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if !(self.latency_p95_ms.is_finite() && (10.0..=3_600_000.0).contains(&self.latency_p95_ms)) {
            errs.push("constraints.latency_p95_ms", self.latency_p95_ms, "10..=3600000");
        }
        if !(self.recovery_time_s.is_finite() && (1.0..=86_400.0).contains(&self.recovery_time_s)) {
            errs.push("constraints.recovery_time_s", self.recovery_time_s, "1..=86400");
        }
        errs.into_result()
    }
}

/// One invalid setting: which key, what value, what would have been allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid value {} for `{}`: allowed {}", self.value, self.key, self.allowed)
    }
}

/// Every invalid setting found in one validation pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn push(&mut self, key: impl Into<String>, value: impl fmt::Display, allowed: impl Into<String>) {
        self.0.push(ValidationError { key: key.into(), value: value.to_string(), allowed: allowed.into() });
    }

    pub fn extend(&mut self, r: Result<(), ValidationErrors>) {
        if let Err(e) = r {
            self.0.extend(e.0);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_space_has_upstreams_840_candidates() {
        let c = SearchSpace::default().candidates(&Quota::default());
        assert_eq!(c.len(), 840);
        assert!(c.contains(&JobConfig::STATIC_DEFAULT));
        let q = Quota::default();
        assert!(c.iter().all(|x| q.admits(x) && x.parallelism % x.task_slots == 0));
    }

    #[test]
    fn resources_follow_from_full_taskmanagers() {
        let c = JobConfig {
            parallelism: 10,
            task_slots: 4,
            tm_cpu_milli: 2000,
            tm_memory_mb: 2048,
            checkpoint_interval_ms: 30_000,
        };
        assert_eq!(c.taskmanagers(), 3);
        assert_eq!(c.total_cpu(), 6.0);
        assert_eq!(c.total_memory_mb(), 6144);
        assert_eq!(JobConfig::STATIC_DEFAULT.total_cpu(), 24.0);
    }

    #[test]
    fn errors_name_key_value_and_range() {
        let mut s = SearchSpace::default();
        s.parallelism.min = 0;
        s.task_slots.step = 0;
        let e = s.validate().unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert_eq!(
            e.0[0].to_string(),
            "invalid value 0 for `search_space.parallelism.min`: allowed 1..=100000"
        );
        assert_eq!(e.0[1].key, "search_space.task_slots.step");

        let cfg = JobConfig { parallelism: 10, ..JobConfig::STATIC_DEFAULT };
        let e = cfg.validate_in(&SearchSpace::default()).unwrap_err();
        assert_eq!(e.to_string(), "invalid value 10 for `parallelism`: allowed 8..=24 in steps of 4");

        let e = Constraints { latency_p95_ms: f64::NAN, recovery_time_s: 0.0 }.validate().unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert!(e.to_string().contains("constraints.recovery_time_s"));
    }

    #[test]
    fn search_space_toml_is_strict() {
        let s: SearchSpace = serde_json::from_str(r#"{"parallelism":{"min":2,"max":8,"step":2}}"#).unwrap();
        assert_eq!(s.parallelism.values().collect::<Vec<_>>(), vec![2, 4, 6, 8]);
        assert_eq!(s.task_slots, SearchSpace::default().task_slots);
        assert!(serde_json::from_str::<SearchSpace>(r#"{"paralelism":{"min":2,"max":8,"step":2}}"#).is_err());
    }

    proptest! {
        #[test]
        fn every_candidate_is_inside_the_space_and_quota(
            pmax in 1u64..40, smax in 1u64..6, cpu in 1u64..4, qcpu in 1.0f64..60.0, qmem in 1024u64..200_000
        ) {
            let space = SearchSpace {
                parallelism: Steps::new(1, pmax, 1),
                task_slots: Steps::new(1, smax, 1),
                tm_cpu_milli: Steps::new(1000, cpu * 1000, 1000),
                ..SearchSpace::default()
            };
            let quota = Quota { max_total_cpu: qcpu, max_total_memory_mb: qmem };
            for c in space.candidates(&quota) {
                prop_assert!(space.contains(&c));
                prop_assert!(c.total_cpu() <= qcpu + 1e-9);
                prop_assert!(c.total_memory_mb() <= qmem);
            }
        }
    }
}

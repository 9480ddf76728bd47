//! What the core observes: one aggregated second of a job, and performance samples of a
//! configuration (from profiling runs or from the production job itself).

use demeter_common::{JobConfig, UnixMillis};
use serde::{Deserialize, Serialize};

/// One second of one job, aggregated over its TaskManagers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobObservation {
    pub at: UnixMillis,
    /// Offered input rate (records/s): what the sources read plus the growth of their backlog.
    pub offered_rate: f64,
    /// Records/s the sources emitted.
    pub throughput: f64,
    /// Source backlog (pendingRecords or records-lag-max, summed over source subtasks).
    pub lag: f64,
    /// p95 latency in ms, from the job's latency histogram or a documented proxy.
    pub p95_latency_ms: Option<f64>,
    /// Busy ratio (0..=1) of the busiest vertex (mean over its subtasks).
    pub busy_ratio: f64,
    /// Back-pressured ratio (0..=1) of the most back-pressured vertex.
    pub backpressure_ratio: f64,
    /// CPU cores used by all TaskManagers.
    pub cpu_cores_used: f64,
    /// Memory used (heap + managed, MiB) by all TaskManagers.
    pub memory_used_mb: f64,
    /// TaskManagers that reported in this second.
    pub taskmanagers: u32,
}

/// Recovery time after an injected failure; a run that never recovered is right-censored.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "seconds")]
pub enum RecoveryTime {
    Measured(f64),
    /// Did not recover within the given number of seconds.
    NotRecovered(f64),
}

impl RecoveryTime {
    /// The value used for training: the measurement, or the censoring bound.
    pub fn seconds(&self) -> f64 {
        match *self {
            RecoveryTime::Measured(s) | RecoveryTime::NotRecovered(s) => s,
        }
    }
}

/// Where a performance sample came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleOrigin {
    Profiling,
    Production,
}

/// How one configuration behaved at one offered rate, averaged over a window (typically 60 s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerfSample {
    pub config: JobConfig,
    pub at: UnixMillis,
    pub origin: SampleOrigin,
    pub offered_rate: f64,
    pub throughput: f64,
    pub p95_latency_ms: f64,
    /// Busy ratio of the busiest vertex, when known: with it, capacity ≈ throughput / busy.
    pub busy_ratio: Option<f64>,
    pub recovery: Option<RecoveryTime>,
}

impl PerfSample {
    /// Whether all values are finite and in range, so that the sample may train a model.
    pub fn is_valid(&self) -> bool {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        ok(self.offered_rate)
            && ok(self.throughput)
            && ok(self.p95_latency_ms)
            && self.busy_ratio.is_none_or(|b| b.is_finite() && (0.0..=1.0).contains(&b))
            && self.recovery.is_none_or(|r| ok(r.seconds()))
    }
}

//! The simulator's parameters: what is fitted on the upstream measurements (per workload) and what
//! is fixed by the experiment's protocol (heartbeat timeout, failure schedule, censoring).
//!
//! Parameters are data. The committed set lives in `sim/calibration/default.toml`, is embedded in
//! the binary and is reproduced by `calibrate::fit` on the upstream runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The committed parameter file, fitted on both upstream runs of both workloads.
pub const DEFAULT_TOML: &str = include_str!("../calibration/default.toml");

/// Why a parameter file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid parameter file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid parameter `{key}` = {value}: {allowed}")]
    Invalid { key: String, value: f64, allowed: &'static str },
    #[error("no parameters for workload `{0}` (known: {1})")]
    UnknownWorkload(String, String),
}

/// All parameters: the protocol shared by every workload, and one fitted set per workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimParams {
    pub common: CommonParams,
    /// Keyed by lower-case workload name (`ads`, `cars`).
    pub workloads: BTreeMap<String, WorkloadParams>,
}

/// The experiment's protocol and the parts of Flink's behaviour that the data do not pin down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonParams {
    /// Workload generators replaying the trace; the offered rate is `generators × value`.
    pub generators: u32,
    /// Each generator adds uniform noise of up to this fraction, independently every second.
    pub noise_max: f64,
    /// Seconds between injected failures (upstream: every 2700 s).
    pub failure_interval_s: u64,
    /// Length of the injected network delay (upstream: Chaos Mesh, 30 s).
    pub failure_duration_s: f64,
    /// A failure is injected this long before the next checkpoint (upstream: 5 s).
    pub failure_before_checkpoint_s: f64,
    /// `heartbeat.timeout`: a stalled TaskManager is declared lost after this long.
    pub heartbeat_timeout_s: f64,
    /// Recovery times above this are censored (upstream stores 360 s).
    pub recovery_censor_s: f64,
    /// The search for recovery gives up this long after detection (upstream: 340 s).
    pub recovery_search_s: f64,
    /// Downtime of a stop-with-savepoint redeploy with new pods (not in the calibration data;
    /// upstream's optimizer waits 60 s after replacing the deployment).
    pub redeploy_downtime_s: f64,
    /// Time for a new TaskManager pod to start and register (reactive scale-up).
    pub pod_start_s: f64,
    /// Time from deploying a profiling job to its sources reading (it starts at latest offsets).
    pub profile_startup_s: f64,
    /// Length of the measurement window of a profiling run (upstream: the last 60 s).
    pub profile_window_s: u64,
    /// Seconds a profiling run lasts before its failure is injected (upstream: 120 + 60 s).
    pub profile_measure_after_s: u32,
}

/// Everything fitted for one workload (job + input).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadParams {
    /// Measured throughput of a healthy job divided by `generators × trace value` (the
    /// generators' noise is not centred).
    pub rate_scale: f64,
    pub capacity: CapacityParams,
    pub recovery: RecoveryParams,
    pub latency: LatencyParams,
    pub cpu: CpuParams,
    /// Records a healthy source is behind by, in seconds of input (Kafka fetch/poll delay).
    pub fetch_delay_s: f64,
    /// Where and how the numbers were fitted.
    #[serde(default)]
    pub provenance: Provenance,
}

/// `capacity = μ · p^β · clamp(c/s − o, ε, s_max) · (1 − d·e^{−(m/s)/m₀}) / (1 + τ/k)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityParams {
    /// μ: records/s per effective core per slot at parallelism 1.
    pub records_per_core_s: f64,
    /// β: scaling exponent of parallelism (1 = linear).
    pub parallelism_exponent: f64,
    /// o: cores per slot lost to JVM, network and state-backend threads.
    pub slot_overhead_cores: f64,
    /// s_max: effective CPU share per slot beyond which a slot gets no faster.
    pub cpu_share_saturation: f64,
    /// m₀: memory per slot (MB) at which RocksDB's penalty has decayed by e.
    pub memory_knee_mb: f64,
    /// d: throughput lost with (almost) no memory per slot, 0..=1.
    pub memory_penalty: f64,
    /// τ: seconds of processing lost per checkpoint (overhead τ/k).
    pub checkpoint_overhead_s: f64,
}

/// After a failure: the job stalls until the heartbeat timeout, restarts, and replays the input
/// since its last checkpoint faster than steady overload would let it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryParams {
    /// Restart (failover to processing again) after detection.
    pub restart_s: f64,
    /// Catch-up speed after a restore, relative to the steady-state capacity.
    pub catchup_factor: f64,
    /// Delay of upstream's anomaly detector in declaring recovery once the backlog is gone.
    pub detector_margin_s: f64,
}

/// `p95 = base + queueing · u/(1−u) + 1000 · (head age beyond the fetch delay)`, observed
/// through the latency histogram's smoothing when it falls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyParams {
    pub base_ms: f64,
    pub queueing_ms: f64,
    /// Fraction of the gap to the true value that the observed p95 closes per second when it
    /// falls (the histogram window and the mean over subtasks smooth it).
    pub decay_per_s: f64,
}

/// CPU used by one TaskManager: `min(cpu, idle + growth·age/TMs + records/s per TM ÷ rate)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuParams {
    pub idle_cores_per_tm: f64,
    pub records_per_core_s: f64,
    /// Cores the whole job adds per hour of its age as its state grows (compaction,
    /// checkpointing); CARS keeps one window per car ever seen, ADS's state is bounded.
    pub state_growth_cores_per_h: f64,
}

/// What the fit saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Provenance {
    pub profile_files: Vec<String>,
    pub profile_rows: usize,
    pub static_files: Vec<String>,
    /// Static-series seconds (from the start) used for the failure dynamics.
    pub static_fit_until_s: u64,
}

impl Default for SimParams {
    /// The committed, embedded parameters.
    fn default() -> Self {
        SimParams::from_toml(DEFAULT_TOML).expect("the embedded default.toml is valid")
    }
}

impl SimParams {
    pub fn from_toml(s: &str) -> Result<Self, ParamsError> {
        let p: SimParams = toml::from_str(s)?;
        p.validate()?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Self, ParamsError> {
        let s = std::fs::read_to_string(path)
            .map_err(|source| ParamsError::Io { path: path.display().to_string(), source })?;
        Self::from_toml(&s)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("parameters serialise")
    }

    /// The parameters of `workload` (case-insensitive).
    pub fn workload(&self, workload: &str) -> Result<&WorkloadParams, ParamsError> {
        self.workloads.get(&workload.to_ascii_lowercase()).ok_or_else(|| {
            ParamsError::UnknownWorkload(
                workload.to_string(),
                self.workloads.keys().cloned().collect::<Vec<_>>().join(", "),
            )
        })
    }

    /// Checks every value against its physical range.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let c = &self.common;
        let mut checks: Vec<(String, f64, f64, f64, &'static str)> = vec![
            ("common.generators".into(), c.generators as f64, 1.0, 1000.0, "1..=1000"),
            ("common.noise_max".into(), c.noise_max, 0.0, 0.9, "0..=0.9"),
            ("common.failure_interval_s".into(), c.failure_interval_s as f64, 60.0, 1e9, ">= 60"),
            ("common.failure_duration_s".into(), c.failure_duration_s, 0.0, 3600.0, "0..=3600"),
            ("common.failure_before_checkpoint_s".into(), c.failure_before_checkpoint_s, 0.0, 60.0, "0..=60"),
            ("common.heartbeat_timeout_s".into(), c.heartbeat_timeout_s, 0.0, 600.0, "0..=600"),
            ("common.recovery_censor_s".into(), c.recovery_censor_s, 1.0, 86400.0, "1..=86400"),
            ("common.recovery_search_s".into(), c.recovery_search_s, 1.0, 86400.0, "1..=86400"),
            ("common.redeploy_downtime_s".into(), c.redeploy_downtime_s, 0.0, 3600.0, "0..=3600"),
            ("common.pod_start_s".into(), c.pod_start_s, 0.0, 3600.0, "0..=3600"),
            ("common.profile_startup_s".into(), c.profile_startup_s, 0.0, 3600.0, "0..=3600"),
            ("common.profile_window_s".into(), c.profile_window_s as f64, 1.0, 3600.0, "1..=3600"),
            (
                "common.profile_measure_after_s".into(),
                c.profile_measure_after_s as f64,
                c.profile_window_s as f64,
                86400.0,
                ">= profile_window_s",
            ),
        ];
        for (name, w) in &self.workloads {
            let k = |f: &str| format!("workloads.{name}.{f}");
            let cap = &w.capacity;
            checks.extend([
                (k("rate_scale"), w.rate_scale, 0.5, 2.0, "0.5..=2"),
                (k("capacity.records_per_core_s"), cap.records_per_core_s, 1.0, 1e9, "1..=1e9"),
                (k("capacity.parallelism_exponent"), cap.parallelism_exponent, 0.3, 1.5, "0.3..=1.5"),
                (k("capacity.slot_overhead_cores"), cap.slot_overhead_cores, 0.0, 1.0, "0..=1"),
                (k("capacity.cpu_share_saturation"), cap.cpu_share_saturation, 0.05, 64.0, "0.05..=64"),
                (k("capacity.memory_knee_mb"), cap.memory_knee_mb, 1.0, 1e6, "1..=1e6"),
                (k("capacity.memory_penalty"), cap.memory_penalty, 0.0, 1.0, "0..=1"),
                (k("capacity.checkpoint_overhead_s"), cap.checkpoint_overhead_s, 0.0, 600.0, "0..=600"),
                (k("recovery.restart_s"), w.recovery.restart_s, 0.0, 3600.0, "0..=3600"),
                (k("recovery.catchup_factor"), w.recovery.catchup_factor, 1.0, 10.0, "1..=10"),
                (k("recovery.detector_margin_s"), w.recovery.detector_margin_s, 0.0, 3600.0, "0..=3600"),
                (k("latency.base_ms"), w.latency.base_ms, 1.0, 1e6, "1..=1e6"),
                (k("latency.queueing_ms"), w.latency.queueing_ms, 0.0, 1e6, "0..=1e6"),
                (k("latency.decay_per_s"), w.latency.decay_per_s, 0.001, 1.0, "0.001..=1"),
                (k("cpu.idle_cores_per_tm"), w.cpu.idle_cores_per_tm, 0.0, 64.0, "0..=64"),
                (k("cpu.records_per_core_s"), w.cpu.records_per_core_s, 1.0, 1e9, "1..=1e9"),
                (k("cpu.state_growth_cores_per_h"), w.cpu.state_growth_cores_per_h, 0.0, 100.0, "0..=100"),
                (k("fetch_delay_s"), w.fetch_delay_s, 0.0, 60.0, "0..=60"),
            ]);
        }
        for (key, value, lo, hi, allowed) in checks {
            if !(value.is_finite() && value >= lo && value <= hi) {
                return Err(ParamsError::Invalid { key, value, allowed });
            }
        }
        Ok(())
    }
}

//! What a run produces: per-strategy summary figures (as the CLI writes them), the per-second
//! series, and the reconfigurations, profiling runs and failures behind them.

use crate::job::JobState;
use crate::strategy::ReconfigKind;
use demeter_common::JobConfig;
use serde::Serialize;
use std::io::Write;

/// All strategies of one run over one trace.
#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub trace: String,
    pub workload: String,
    pub seed: u64,
    pub duration_s: u64,
    pub strategies: Vec<StrategyRun>,
}

impl SimReport {
    pub fn summaries(&self) -> Vec<&Summary> {
        self.strategies.iter().map(|s| &s.summary).collect()
    }

    pub fn get(&self, name: &str) -> Option<&StrategyRun> {
        self.strategies.iter().find(|s| s.summary.strategy == name)
    }
}

/// One strategy's run.
#[derive(Clone, Debug, Serialize)]
pub struct StrategyRun {
    pub summary: Summary,
    /// One row per simulated second (empty when `SimOptions::record_series` is off).
    #[serde(skip)]
    pub series: Vec<SeriesRow>,
    pub reconfigurations: Vec<ReconfigRecord>,
    pub profiles: Vec<ProfileRecord>,
    pub failures: Vec<FailureRecord>,
}

impl StrategyRun {
    /// Writes the per-second series as CSV with a header (empty cells for missing values).
    pub fn write_series_csv<W: Write>(&self, out: W) -> Result<(), csv::Error> {
        let mut w = csv::Writer::from_writer(out);
        for r in &self.series {
            w.serialize(r)?;
        }
        w.flush()?;
        Ok(())
    }
}

/// The figures of one strategy. Resources are what the configurations request (cores, MB), not
/// what they use, as in upstream's accounting; ratios are relative to the static configuration
/// (24 × 1 CPU × 4096 MB) over the same duration, profiling included.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub strategy: String,
    /// (production + profiling) core-hours ÷ static core-hours.
    pub cpu_ratio: f64,
    /// (production + profiling) GB-hours ÷ static GB-hours.
    pub memory_ratio: f64,
    /// Mean of the per-second p95 metric over the seconds it was published (as upstream's
    /// Prometheus series: seconds while the job is down have no value).
    pub mean_p95_latency_ms: f64,
    /// Percent of those seconds with p95 ≥ 5 s.
    pub pct_seconds_latency_over_5s: f64,
    /// Mean source backlog (records, summed over source subtasks).
    pub mean_lag: f64,
    /// Completed reconfigurations.
    pub reconfigurations: u64,
    /// Profiling core-hours ÷ production core-hours.
    pub profiling_cpu_overhead: f64,
    /// Profiling GB-hours ÷ production GB-hours.
    pub profiling_memory_overhead: f64,
    // Further figures.
    pub cpu_core_hours: f64,
    pub memory_gb_hours: f64,
    pub profiling_core_hours: f64,
    pub profiling_gb_hours: f64,
    /// Mean lag per source subtask: comparable to upstream's `records_lag_max` averaged over readers.
    pub mean_lag_per_subtask: f64,
    /// Seconds in which the job processed nothing (failures, restarts, redeploys).
    pub downtime_s: f64,
    /// Seconds with a p95 value (the denominator of the latency figures).
    pub latency_seconds: u64,
    pub failures_injected: u64,
    /// Mean recovery time of the injected failures (censored ones at the censoring bound).
    pub mean_recovery_s: f64,
    pub profiling_runs: u64,
    pub mean_parallelism: f64,
    pub mean_taskmanagers: f64,
    /// Records processed ÷ records offered over the run (1.0 when nothing is left behind).
    pub processed_fraction: f64,
    pub duration_s: u64,
}

/// One simulated second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesRow {
    pub t: u64,
    pub offered_rate: f64,
    pub throughput: f64,
    /// Capacity of the configuration running (records/s).
    pub capacity: f64,
    pub lag: f64,
    pub p95_latency_ms: Option<f64>,
    pub parallelism: u32,
    pub task_slots: u32,
    pub tm_cpu: f64,
    pub tm_memory_mb: u32,
    pub checkpoint_interval_s: f64,
    pub taskmanagers: u32,
    /// Cores allocated to the production job.
    pub cpu: f64,
    /// MB allocated to the production job.
    pub memory_mb: f64,
    pub cpu_used: f64,
    pub profiling_cpu: f64,
    pub profiling_memory_mb: f64,
    pub forecast: Option<f64>,
    pub state: JobState,
}

/// A completed reconfiguration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReconfigRecord {
    pub started_s: f64,
    pub finished_s: f64,
    pub downtime_s: f64,
    pub kind: ReconfigKind,
    pub from: JobConfig,
    pub to: JobConfig,
}

/// A finished profiling run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileRecord {
    pub id: u64,
    pub started_s: f64,
    pub finished_s: f64,
    pub config: JobConfig,
    pub offered_rate: f64,
    pub throughput: f64,
    pub p95_latency_ms: f64,
    pub recovery_s: Option<f64>,
}

/// An injected failure of the production job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureRecord {
    pub at_s: f64,
    pub recovery_s: f64,
    pub recovered: bool,
}

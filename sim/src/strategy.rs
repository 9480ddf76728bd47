//! The interface between the simulated job and the strategies that size it.
//!
//! A strategy sees what a real controller would see: the metric batches the job's agents publish,
//! their per-second aggregate, the outcomes of its own reconfigurations and profiling runs. It never
//! reads the simulator's parameters or the future of the trace; only the oracle, built with
//! [`OracleView`], does, and it exists to give a lower bound.

use demeter_common::{JobConfig, MetricBatch, UnixMillis};
use demeter_core::obs::{JobObservation, PerfSample};

/// Identifies one profiling run of one strategy.
pub type ProfileId = u64;

pub use demeter_core::controller::ReconfigKind;

/// What the strategy asks the simulator to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Reconfigure {
        to: JobConfig,
        kind: ReconfigKind,
    },
    /// Start a short-lived copy of the job with `config` on the same input. With
    /// `inject_failure_after_s`, a 30 s network failure is injected at that age and the recovery
    /// time is measured.
    StartProfile {
        id: ProfileId,
        config: JobConfig,
        duration_s: u32,
        inject_failure_after_s: Option<u32>,
    },
    StopProfile {
        id: ProfileId,
    },
}

/// The end of a reconfiguration.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconfigOutcome {
    pub from: JobConfig,
    pub to: JobConfig,
    pub kind: ReconfigKind,
    pub started: UnixMillis,
    pub finished: UnixMillis,
    /// Seconds the job processed nothing.
    pub downtime_s: f64,
}

/// The end of a profiling run, as measured from its own metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileOutcome {
    pub id: ProfileId,
    /// Averages over the run's measurement window, and the recovery time if a failure was injected.
    pub sample: PerfSample,
}

/// One simulated second as a strategy sees it.
#[derive(Debug)]
pub struct StepContext<'a> {
    pub now: UnixMillis,
    /// What the production job's agents published during this second (empty while it is down).
    pub batches: &'a [MetricBatch],
    /// The same second aggregated as a metrics system would (offered rate, throughput, lag, p95…).
    pub observation: &'a JobObservation,
    /// The configuration the job runs (or is being moved to, while `reconfiguring`).
    pub current: JobConfig,
    pub reconfiguring: bool,
    pub reconfig_outcomes: &'a [ReconfigOutcome],
    pub profile_outcomes: &'a [ProfileOutcome],
    /// Commands issued during this step, executed by the simulator after the step.
    pub commands: Vec<Command>,
}

impl StepContext<'_> {
    pub fn reconfigure(&mut self, to: JobConfig, kind: ReconfigKind) {
        self.commands.push(Command::Reconfigure { to, kind });
    }
}

/// A sizing strategy under test.
pub trait Strategy {
    /// The name used in tables, files and plots (`static`, `hpa`, `demeter`, …).
    fn name(&self) -> &str;
    /// The configuration the job starts with.
    fn initial_config(&self) -> JobConfig;
    /// Whether the strategy reads the agents' metric batches. The simulator builds them (one per
    /// TaskManager per second) only for strategies that do, to keep runs fast.
    fn wants_batches(&self) -> bool {
        false
    }
    /// Called once per simulated second, after the job advanced by that second.
    fn step(&mut self, ctx: &mut StepContext<'_>);
    /// What the strategy currently predicts for the input rate (for plots), if it forecasts.
    fn forecast_rate(&self) -> Option<f64> {
        None
    }
    /// `pipeline.max-parallelism` (number of key groups) the strategy deploys the job with;
    /// `None` for Flink's default (at least 128). Few key groups spread unevenly over subtasks
    /// (e.g. 24 groups over 20 subtasks: some get 2, most 1), and the busiest subtask bounds the
    /// job's capacity.
    fn max_parallelism(&self) -> Option<u32> {
        None
    }
}

/// What only the oracle may see: the future offered rate and the true capacity of any
/// configuration. Built by the simulator for the oracle strategy alone.
pub trait OracleView {
    /// Offered rate (records/s) at second `t` of the run, noise included.
    fn offered_rate_at(&self, t: u64) -> f64;
    /// True sustainable throughput of `config`.
    fn true_capacity(&self, config: &JobConfig) -> f64;
    /// True recovery time of `config` after a failure at offered rate `rate`.
    fn true_recovery_s(&self, config: &JobConfig, rate: f64) -> f64;
    fn len_s(&self) -> u64;
}

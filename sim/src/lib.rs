//! A simulated Flink job calibrated on real measurements, and the strategies compared on it.
//!
//! - [`trace`]: workload traces and the offered rate a run replays.
//! - [`params`]: the fitted parameters (`sim/calibration/default.toml`, embedded).
//! - [`model`]: capacity, CPU, latency and recovery time in closed form.
//! - [`job`]: one Flink job advanced second by second (backlog, failures, restarts, checkpoints).
//! - [`engine`]: the run loop ([`run`], [`run_one`]), profiling jobs and the accounting.
//! - [`batches`]: the metric batches the job's agents publish.
//! - [`calibrate`]: loading upstream's measurements, fitting the parameters, evaluating them.
//! - [`strategies`]: `static`, `hpa`, `operator`, `operator-defaults` and `oracle`.

pub mod batches;
pub mod calibrate;
pub mod engine;
pub mod job;
pub mod model;
pub mod params;
pub mod report;
pub mod strategies;
pub mod strategy;
pub mod trace;

pub use engine::{Prepared, SimError, SimOptions, prepare, report, run, run_one};
pub use params::SimParams;
pub use report::{SeriesRow, SimReport, StrategyRun, Summary};
pub use strategy::{OracleView, Strategy};
pub use trace::Trace;

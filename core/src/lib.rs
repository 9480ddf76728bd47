//! Demeter's decision core.
//!
//! Everything in this crate is deterministic and free of I/O: no tokio, no sockets, no files and
//! no wall clock. Time comes in as [`demeter_common::UnixMillis`] arguments, randomness from seeded
//! generators. Adapters (the coordinator's NATS/Kubernetes/Flink REST runtime, the simulator)
//! feed observations in and carry the returned actions out.
//!
//! - [`obs`]: the observation types the core consumes.
//! - [`aggregate`]: per-job, per-second aggregation of agents' metric batches.
//! - [`forecast`]: workload forecasting with calibrated upper bands.
//! - [`gp`]: Gaussian-process regression.
//! - [`perf`]: performance models of a job (capacity, latency, recovery time).
//! - [`mobo`]: multi-objective acquisition for profiling and its stopping rule.
//! - [`decide`]: scoring candidate configurations and choosing one, with an explanation.
//! - [`controller`]: the per-job state machine that ties them together.

pub mod aggregate;
pub mod controller;
pub mod decide;
pub mod forecast;
pub mod gp;
pub mod mobo;
pub mod obs;
pub mod perf;

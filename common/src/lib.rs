//! Shared types of Demeter: the versioned MessagePack wire schema that agents publish, the NATS
//! subjects they publish on, the job configuration and search-space types, and their validation.
//!
//! This crate does no I/O. Everything here is plain data with `serde` derives, so that the agent,
//! the coordinator and the simulator agree on one definition of every message and knob.

pub mod config;
pub mod subject;
pub mod time;
pub mod wire;

pub use config::{Constraints, JobConfig, Quota, SearchSpace, ValidationError, ValidationErrors};
pub use time::UnixMillis;
pub use wire::{AgentHeartbeat, AgentState, MetricBatch, SCHEMA_VERSION, Sample, Source, WireError};

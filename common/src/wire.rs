//! The wire schema: what an agent publishes on NATS, encoded as MessagePack.
//!
//! Every message is a MessagePack *map* (field names included, `rmp_serde::to_vec_named`), so a
//! reader can skip fields it does not know and a missing optional field decodes as `None`. Samples
//! are internally tagged (`"kind": "task"`), and a sample kind that this build does not know
//! decodes as [`Sample::Unknown`] instead of failing the whole batch.
//!
//! Compatibility rules (see `docs/wire-schema.md`):
//! - Adding an optional field or a new sample kind keeps [`SCHEMA_VERSION`].
//! - Renaming or removing a field, or changing its meaning or unit, bumps it.
//! - A reader accepts versions `MIN_SUPPORTED_VERSION..=SCHEMA_VERSION` and rejects any other with
//!   [`WireError::UnsupportedVersion`], naming the version it found and the range it accepts.

use crate::time::UnixMillis;
use serde::{Deserialize, Serialize};

/// Version written by this build.
pub const SCHEMA_VERSION: u16 = 1;
/// Oldest version this build still decodes.
pub const MIN_SUPPORTED_VERSION: u16 = 1;
/// Upper bound on samples in one batch; a larger batch is rejected as hostile or corrupt.
pub const MAX_SAMPLES_PER_BATCH: usize = 100_000;
/// Upper bound on an encoded message; NATS' default max payload is 1 MiB.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How far a timestamp may lie in the future of the receiver's clock before it is rejected.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Why a message could not be decoded or was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum WireError {
    #[error("message is {size} bytes, more than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported schema version {found}: this build reads versions {min}..={max}")]
    UnsupportedVersion { found: u16, min: u16, max: u16 },
    #[error("malformed MessagePack: {0}")]
    Malformed(String),
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl WireError {
    /// A bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "too_large",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::Malformed(_) => "malformed",
            WireError::Invalid { .. } => "invalid",
        }
    }
}

/// Who collected a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// Kubernetes namespace, or a free-form group name outside Kubernetes.
    pub namespace: String,
    /// The Flink deployment (FlinkDeployment name, or cluster name outside Kubernetes).
    pub deployment: String,
    /// The Flink job id when the TaskManager runs exactly one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The TaskManager's id (`tm_id` label of Flink's metrics, or the pod name).
    pub taskmanager_id: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub host: String,
}

/// One scrape of one TaskManager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    pub schema_version: u16,
    pub source: Source,
    /// Random id of this agent process; a new id means the agent restarted and `agent_seq`
    /// starts again at 0.
    pub agent_run_id: String,
    /// Monotonic per agent run, without gaps: a receiver that sees a gap lost batches.
    pub agent_seq: u64,
    /// When the scrape finished.
    pub collected_at: UnixMillis,
    pub samples: Vec<Sample>,
}

/// A typed measurement. Rates are per second, times in milliseconds, sizes in bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sample {
    Jvm(JvmSample),
    FlinkMemory(FlinkMemorySample),
    Task(TaskSample),
    Operator(OperatorSample),
    Checkpoint(CheckpointSample),
    Latency(LatencySample),
    Container(ContainerSample),
    /// A sample kind written by a newer agent; kept so that counts stay honest, otherwise ignored.
    #[serde(other)]
    Unknown,
}

/// `flink_taskmanager_Status_JVM_*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JvmSample {
    /// JVM process CPU load, 0..=1 of the machine (Flink's `Status.JVM.CPU.Load`).
    #[serde(default)]
    pub cpu_load: Option<f64>,
    #[serde(default)]
    pub heap_used_bytes: Option<f64>,
    #[serde(default)]
    pub heap_max_bytes: Option<f64>,
    #[serde(default)]
    pub non_heap_used_bytes: Option<f64>,
    /// Sum over collectors of GC time per second (ms/s).
    #[serde(default)]
    pub gc_time_ms_per_s: Option<f64>,
    #[serde(default)]
    pub threads: Option<f64>,
}

/// `flink_taskmanager_Status_Flink_Memory_*` and `..._Shuffle_Netty_*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlinkMemorySample {
    #[serde(default)]
    pub managed_used_bytes: Option<f64>,
    #[serde(default)]
    pub managed_total_bytes: Option<f64>,
    #[serde(default)]
    pub network_used_segments: Option<f64>,
    #[serde(default)]
    pub network_total_segments: Option<f64>,
}

/// Identifies one subtask of one job vertex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubtaskId {
    pub job_id: String,
    /// Flink's `task_id` label: the job vertex id.
    pub vertex_id: String,
    /// Flink's `task_name` label.
    pub vertex_name: String,
    pub subtask_index: u32,
}

/// `flink_taskmanager_job_task_*`: one subtask.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSample {
    #[serde(flatten)]
    pub id: SubtaskId,
    #[serde(default)]
    pub records_in_per_s: Option<f64>,
    #[serde(default)]
    pub records_out_per_s: Option<f64>,
    #[serde(default)]
    pub busy_ms_per_s: Option<f64>,
    #[serde(default)]
    pub backpressured_ms_per_s: Option<f64>,
    #[serde(default)]
    pub idle_ms_per_s: Option<f64>,
    /// Cumulative records in since the task started (exact counts survive missed scrapes).
    #[serde(default)]
    pub records_in_total: Option<f64>,
    #[serde(default)]
    pub records_out_total: Option<f64>,
}

/// `flink_taskmanager_job_task_operator_*`: one operator of one subtask.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OperatorSample {
    #[serde(flatten)]
    pub id: SubtaskId,
    pub operator_name: String,
    #[serde(default)]
    pub records_in_per_s: Option<f64>,
    #[serde(default)]
    pub records_out_per_s: Option<f64>,
    /// FLIP-33 `pendingRecords` of a source reader.
    #[serde(default)]
    pub pending_records: Option<f64>,
    /// Kafka's `records-lag-max` of a source reader.
    #[serde(default)]
    pub records_lag_max: Option<f64>,
    /// FLIP-33 `currentEmitEventTimeLag` (ms) of a source.
    #[serde(default)]
    pub current_emit_event_time_lag_ms: Option<f64>,
    #[serde(default)]
    pub records_in_total: Option<f64>,
    #[serde(default)]
    pub records_out_total: Option<f64>,
}

/// Checkpoint figures that a TaskManager (or JobManager) exposes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSample {
    pub job_id: String,
    #[serde(default)]
    pub last_duration_ms: Option<f64>,
    #[serde(default)]
    pub last_size_bytes: Option<f64>,
    #[serde(default)]
    pub completed_total: Option<f64>,
    #[serde(default)]
    pub failed_total: Option<f64>,
    /// Max over subtasks of `checkpointStartDelayNanos`, converted to ms.
    #[serde(default)]
    pub start_delay_ms: Option<f64>,
    /// Max over subtasks of `checkpointAlignmentTime`, converted to ms.
    #[serde(default)]
    pub alignment_ms: Option<f64>,
}

/// Quantiles of a latency histogram that the job registers (ms).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySample {
    #[serde(flatten)]
    pub id: SubtaskId,
    #[serde(default)]
    pub operator_name: String,
    /// The metric's name, e.g. `latencyHistogram`.
    pub metric: String,
    #[serde(default)]
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p95_ms: Option<f64>,
    #[serde(default)]
    pub p99_ms: Option<f64>,
    #[serde(default)]
    pub max_ms: Option<f64>,
    #[serde(default)]
    pub count: Option<f64>,
}

/// The container's own usage, from cgroup v2 (or the host when no cgroup is visible).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSample {
    /// CPU used over the last interval, in cores.
    #[serde(default)]
    pub cpu_usage_cores: Option<f64>,
    #[serde(default)]
    pub cpu_limit_cores: Option<f64>,
    #[serde(default)]
    pub memory_working_set_bytes: Option<f64>,
    #[serde(default)]
    pub memory_limit_bytes: Option<f64>,
    /// `cgroup` or `host`: where the figures came from.
    #[serde(default)]
    pub origin: String,
}

/// What an agent says about itself every few seconds on `demeter.agents.….heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentHeartbeat {
    pub schema_version: u16,
    pub source: Source,
    pub agent_run_id: String,
    pub agent_version: String,
    pub sent_at: UnixMillis,
    pub state: AgentState,
    /// Last `agent_seq` assigned.
    pub last_seq: u64,
    /// Batches waiting in the outage buffer.
    pub buffered: u64,
    pub dropped_total: u64,
    pub scrape_errors_total: u64,
    /// Last error talking to the TaskManager, if it is currently failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrape_error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Scraping and publishing.
    Healthy,
    /// The TaskManager's metrics endpoint does not answer (it may be restarting).
    TaskManagerUnreachable,
    /// NATS is unreachable; batches go to the outage buffer.
    Buffering,
    /// Flushing the buffer before exit.
    Draining,
}

#[derive(Deserialize)]
struct VersionProbe {
    schema_version: u16,
}

fn check_size(bytes: &[u8]) -> Result<(), WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge { size: bytes.len(), max: MAX_MESSAGE_BYTES });
    }
    Ok(())
}

fn check_version(bytes: &[u8]) -> Result<(), WireError> {
    let probe: VersionProbe =
        rmp_serde::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !(MIN_SUPPORTED_VERSION..=SCHEMA_VERSION).contains(&probe.schema_version) {
        return Err(WireError::UnsupportedVersion {
            found: probe.schema_version,
            min: MIN_SUPPORTED_VERSION,
            max: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn finite_non_negative(field: &'static str, v: Option<f64>) -> Result<(), WireError> {
    match v {
        Some(x) if !x.is_finite() => {
            Err(WireError::Invalid { field, reason: format!("{x} is not a finite number") })
        }
        Some(x) if x < 0.0 => Err(WireError::Invalid { field, reason: format!("{x} is negative") }),
        _ => Ok(()),
    }
}

impl MetricBatch {
    /// Encodes as a MessagePack map.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail: every type here is a map, string,
        // number or sequence that MessagePack can represent.
        rmp_serde::to_vec_named(self).expect("MetricBatch is always serialisable")
    }

    /// Decodes and checks the version, sizes and values. It never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_size(bytes)?;
        check_version(bytes)?;
        let batch: MetricBatch =
            rmp_serde::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        batch.validate()?;
        Ok(batch)
    }

    /// Rejects values that must never reach a model: NaN, infinities, negative rates or sizes,
    /// empty identities and oversized batches. Timestamps are checked against the receiver's clock
    /// with [`MetricBatch::check_timestamp`].
    pub fn validate(&self) -> Result<(), WireError> {
        if self.samples.len() > MAX_SAMPLES_PER_BATCH {
            return Err(WireError::Invalid {
                field: "samples",
                reason: format!("{} samples, more than {MAX_SAMPLES_PER_BATCH}", self.samples.len()),
            });
        }
        if self.source.namespace.is_empty()
            || self.source.deployment.is_empty()
            || self.source.taskmanager_id.is_empty()
        {
            return Err(WireError::Invalid {
                field: "source",
                reason: "namespace, deployment and taskmanager_id must be non-empty".into(),
            });
        }
        if self.collected_at.0 <= 0 {
            return Err(WireError::Invalid {
                field: "collected_at",
                reason: format!("{} is not after the Unix epoch", self.collected_at.0),
            });
        }
        for s in &self.samples {
            s.validate()?;
        }
        Ok(())
    }

    /// Rejects a batch stamped more than [`MAX_CLOCK_SKEW_MS`] in the future of `now`, or older
    /// than `max_age_ms`.
    pub fn check_timestamp(&self, now: UnixMillis, max_age_ms: i64) -> Result<(), WireError> {
        let t = self.collected_at.0;
        if t > now.0.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(WireError::Invalid {
                field: "collected_at",
                reason: format!("{} is {} ms in the future", self.collected_at, t - now.0),
            });
        }
        if t < now.0.saturating_sub(max_age_ms) {
            return Err(WireError::Invalid {
                field: "collected_at",
                reason: format!("{} is older than {max_age_ms} ms", self.collected_at),
            });
        }
        Ok(())
    }
}

impl Sample {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Sample::Jvm(_) => "jvm",
            Sample::FlinkMemory(_) => "flink_memory",
            Sample::Task(_) => "task",
            Sample::Operator(_) => "operator",
            Sample::Checkpoint(_) => "checkpoint",
            Sample::Latency(_) => "latency",
            Sample::Container(_) => "container",
            Sample::Unknown => "unknown",
        }
    }

    fn validate(&self) -> Result<(), WireError> {
        let f = finite_non_negative;
        match self {
            Sample::Jvm(s) => {
                f("jvm.cpu_load", s.cpu_load)?;
                f("jvm.heap_used_bytes", s.heap_used_bytes)?;
                f("jvm.heap_max_bytes", s.heap_max_bytes)?;
                f("jvm.non_heap_used_bytes", s.non_heap_used_bytes)?;
                f("jvm.gc_time_ms_per_s", s.gc_time_ms_per_s)?;
                f("jvm.threads", s.threads)
            }
            Sample::FlinkMemory(s) => {
                f("flink_memory.managed_used_bytes", s.managed_used_bytes)?;
                f("flink_memory.managed_total_bytes", s.managed_total_bytes)?;
                f("flink_memory.network_used_segments", s.network_used_segments)?;
                f("flink_memory.network_total_segments", s.network_total_segments)
            }
            Sample::Task(s) => {
                f("task.records_in_per_s", s.records_in_per_s)?;
                f("task.records_out_per_s", s.records_out_per_s)?;
                f("task.busy_ms_per_s", s.busy_ms_per_s)?;
                f("task.backpressured_ms_per_s", s.backpressured_ms_per_s)?;
                f("task.idle_ms_per_s", s.idle_ms_per_s)?;
                f("task.records_in_total", s.records_in_total)?;
                f("task.records_out_total", s.records_out_total)
            }
            Sample::Operator(s) => {
                f("operator.records_in_per_s", s.records_in_per_s)?;
                f("operator.records_out_per_s", s.records_out_per_s)?;
                f("operator.pending_records", s.pending_records)?;
                f("operator.records_lag_max", s.records_lag_max)?;
                f("operator.current_emit_event_time_lag_ms", s.current_emit_event_time_lag_ms)?;
                f("operator.records_in_total", s.records_in_total)?;
                f("operator.records_out_total", s.records_out_total)
            }
            Sample::Checkpoint(s) => {
                f("checkpoint.last_duration_ms", s.last_duration_ms)?;
                f("checkpoint.last_size_bytes", s.last_size_bytes)?;
                f("checkpoint.completed_total", s.completed_total)?;
                f("checkpoint.failed_total", s.failed_total)?;
                f("checkpoint.start_delay_ms", s.start_delay_ms)?;
                f("checkpoint.alignment_ms", s.alignment_ms)
            }
            Sample::Latency(s) => {
                f("latency.p50_ms", s.p50_ms)?;
                f("latency.p95_ms", s.p95_ms)?;
                f("latency.p99_ms", s.p99_ms)?;
                f("latency.max_ms", s.max_ms)?;
                f("latency.count", s.count)
            }
            Sample::Container(s) => {
                f("container.cpu_usage_cores", s.cpu_usage_cores)?;
                f("container.cpu_limit_cores", s.cpu_limit_cores)?;
                f("container.memory_working_set_bytes", s.memory_working_set_bytes)?;
                f("container.memory_limit_bytes", s.memory_limit_bytes)
            }
            Sample::Unknown => Ok(()),
        }
    }
}

impl AgentHeartbeat {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("AgentHeartbeat is always serialisable")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_size(bytes)?;
        check_version(bytes)?;
        rmp_serde::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_batch() -> MetricBatch {
        let id = SubtaskId {
            job_id: "a1b2".into(),
            vertex_id: "cbc357ccb763df2852fee8c4fc7d55f2".into(),
            vertex_name: "work".into(),
            subtask_index: 1,
        };
        MetricBatch {
            schema_version: SCHEMA_VERSION,
            source: Source {
                namespace: "flink".into(),
                deployment: "cars".into(),
                job_id: Some("a1b2".into()),
                taskmanager_id: "cars-taskmanager-1-1".into(),
                pod: "cars-taskmanager-1-1".into(),
                host: "node-3".into(),
            },
            agent_run_id: "9f86d081884c7d65".into(),
            agent_seq: 42,
            collected_at: UnixMillis(1_700_000_000_000),
            samples: vec![
                Sample::Jvm(JvmSample {
                    cpu_load: Some(0.31),
                    heap_used_bytes: Some(5.1e7),
                    heap_max_bytes: Some(5.3e8),
                    non_heap_used_bytes: Some(8.0e7),
                    gc_time_ms_per_s: Some(3.0),
                    threads: Some(61.0),
                }),
                Sample::Task(TaskSample {
                    id: id.clone(),
                    records_in_per_s: Some(2000.0),
                    records_out_per_s: Some(2000.0),
                    busy_ms_per_s: Some(310.0),
                    backpressured_ms_per_s: Some(0.0),
                    idle_ms_per_s: Some(690.0),
                    records_in_total: Some(1.2e6),
                    records_out_total: Some(1.2e6),
                }),
                Sample::Operator(OperatorSample {
                    id: id.clone(),
                    operator_name: "Source: rate-source".into(),
                    pending_records: Some(12.0),
                    current_emit_event_time_lag_ms: Some(40.0),
                    ..Default::default()
                }),
                Sample::Latency(LatencySample {
                    id,
                    operator_name: "work".into(),
                    metric: "latencyHistogram".into(),
                    p95_ms: Some(830.0),
                    ..Default::default()
                }),
                Sample::Container(ContainerSample {
                    cpu_usage_cores: Some(0.8),
                    memory_working_set_bytes: Some(9.0e8),
                    memory_limit_bytes: Some(2.0e9),
                    origin: "cgroup".into(),
                    ..Default::default()
                }),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let b = sample_batch();
        let bytes = b.encode();
        assert_eq!(MetricBatch::decode(&bytes).unwrap(), b);
    }

    #[test]
    fn unsupported_versions_fail_with_a_clear_error() {
        for v in [0u16, SCHEMA_VERSION + 1, 999] {
            let mut b = sample_batch();
            b.schema_version = v;
            let err = MetricBatch::decode(&b.encode()).unwrap_err();
            assert_eq!(
                err,
                WireError::UnsupportedVersion { found: v, min: MIN_SUPPORTED_VERSION, max: SCHEMA_VERSION }
            );
            assert!(err.to_string().contains(&format!("unsupported schema version {v}")));
        }
    }

    /// A version-1 batch as an older agent wrote it: without the optional fields added later
    /// (`job_id`, totals, origin) and with a sample kind this build does not know.
    #[test]
    fn older_and_newer_writers_decode() {
        #[derive(Serialize)]
        struct OldSource<'a> {
            namespace: &'a str,
            deployment: &'a str,
            taskmanager_id: &'a str,
        }
        #[derive(Serialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum OldSample {
            Task {
                job_id: String,
                vertex_id: String,
                vertex_name: String,
                subtask_index: u32,
                busy_ms_per_s: f64,
            },
            GpuUtilisation {
                value: f64,
            },
        }
        #[derive(Serialize)]
        struct OldBatch<'a> {
            schema_version: u16,
            source: OldSource<'a>,
            agent_run_id: &'a str,
            agent_seq: u64,
            collected_at: i64,
            samples: Vec<OldSample>,
        }
        let old = OldBatch {
            schema_version: 1,
            source: OldSource { namespace: "ns", deployment: "d", taskmanager_id: "tm" },
            agent_run_id: "r",
            agent_seq: 7,
            collected_at: 1_700_000_000_000,
            samples: vec![
                OldSample::Task {
                    job_id: "j".into(),
                    vertex_id: "v".into(),
                    vertex_name: "work".into(),
                    subtask_index: 0,
                    busy_ms_per_s: 500.0,
                },
                OldSample::GpuUtilisation { value: 0.5 },
            ],
        };
        let bytes = rmp_serde::to_vec_named(&old).unwrap();
        let b = MetricBatch::decode(&bytes).unwrap();
        assert_eq!(b.source.job_id, None);
        assert_eq!(b.samples.len(), 2);
        match &b.samples[0] {
            Sample::Task(t) => {
                assert_eq!(t.busy_ms_per_s, Some(500.0));
                assert_eq!(t.records_in_total, None);
            }
            other => panic!("expected a task sample, got {other:?}"),
        }
        assert_eq!(b.samples[1], Sample::Unknown);
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let mut b = sample_batch();
        if let Sample::Task(t) = &mut b.samples[1] {
            t.records_in_per_s = Some(f64::NAN);
        }
        let err = MetricBatch::decode(&b.encode()).unwrap_err();
        assert!(matches!(err, WireError::Invalid { field: "task.records_in_per_s", .. }), "{err}");

        let mut b = sample_batch();
        if let Sample::Jvm(j) = &mut b.samples[0] {
            j.heap_used_bytes = Some(-1.0);
        }
        assert!(MetricBatch::decode(&b.encode()).unwrap_err().to_string().contains("negative"));

        let mut b = sample_batch();
        b.source.deployment.clear();
        assert!(matches!(MetricBatch::decode(&b.encode()), Err(WireError::Invalid { field: "source", .. })));
    }

    #[test]
    fn timestamps_far_from_now_are_rejected() {
        let b = sample_batch();
        let now = b.collected_at;
        assert!(b.check_timestamp(now, 3_600_000).is_ok());
        assert!(b.check_timestamp(UnixMillis(now.0 - MAX_CLOCK_SKEW_MS - 1), 3_600_000).is_err());
        assert!(b.check_timestamp(UnixMillis(now.0 + 3_600_001), 3_600_000).is_err());
    }

    #[test]
    fn heartbeat_round_trip() {
        let h = AgentHeartbeat {
            schema_version: SCHEMA_VERSION,
            source: sample_batch().source,
            agent_run_id: "r".into(),
            agent_version: "0.1.0".into(),
            sent_at: UnixMillis(1_700_000_000_000),
            state: AgentState::TaskManagerUnreachable,
            last_seq: 9,
            buffered: 3,
            dropped_total: 0,
            scrape_errors_total: 4,
            last_scrape_error: Some("connection refused".into()),
        };
        assert_eq!(AgentHeartbeat::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn truncated_messages_fail_cleanly() {
        let bytes = sample_batch().encode();
        for n in 0..bytes.len() {
            assert!(MetricBatch::decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = MetricBatch::decode(&bytes);
            let _ = AgentHeartbeat::decode(&bytes);
        }

        #[test]
        fn mutated_batches_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = sample_batch().encode();
            let n = bytes.len();
            for (i, v) in flips {
                bytes[i % n] = v;
            }
            if let Ok(b) = MetricBatch::decode(&bytes) {
                // Whatever decoded must have passed validation.
                prop_assert!(b.validate().is_ok());
            }
        }
    }
}

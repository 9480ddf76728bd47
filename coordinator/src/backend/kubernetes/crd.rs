//! The part of the Flink Kubernetes Operator's `FlinkDeployment` (`flink.apache.org/v1beta1`,
//! operator 1.15) that Demeter reads and writes, plus the names of Demeter's own labels and
//! annotations.
//!
//! The vendored CRD (`tests/k8s/crds/`) is the authority; these types only name the fields we
//! use. Every struct keeps the fields it does not name in `extra`, so that an object read and
//! copied (a profiling deployment is a copy of its target) loses nothing, whatever operator
//! version wrote it. The schema is not generated from these types (`schema = "disabled"`): the
//! operator owns the CRD.

use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Label that opts a FlinkDeployment in (value `"true"`).
pub const LABEL_MANAGED: &str = "demeter.dev/managed";
/// Label on profiling deployments: the name of the deployment they profile.
pub const LABEL_PROFILING_OF: &str = "demeter.dev/profiling-of";
/// Label on profiling deployments: the profiling run id.
pub const LABEL_PROFILING_RUN: &str = "demeter.dev/profiling-run";
/// Label on the pods the injected sidecar runs in (set by the chart's `sidecar.yaml`).
pub const LABEL_AGENT: &str = "demeter.dev/agent";

/// `apply` or `recommend-only` for this job.
pub const ANN_MODE: &str = "demeter.dev/mode";
/// Upper bound of the TaskManagers' total CPU cores.
pub const ANN_MAX_CPU: &str = "demeter.dev/max-cpu";
/// Upper bound of the TaskManagers' total memory in MiB.
pub const ANN_MAX_MEMORY_MB: &str = "demeter.dev/max-memory-mb";
/// p95 end-to-end latency bound in milliseconds.
pub const ANN_LATENCY_BOUND_MS: &str = "demeter.dev/latency-bound-ms";
/// Recovery-time bound in seconds.
pub const ANN_RECOVERY_BOUND_S: &str = "demeter.dev/recovery-bound-s";
/// Written by Demeter: JSON status (current and recommended configuration, reason, last action).
pub const ANN_STATUS: &str = "demeter.dev/status";
/// Written by Demeter on profiling deployments: RFC 3339 time after which any coordinator deletes
/// the deployment.
pub const ANN_EXPIRES_AT: &str = "demeter.dev/expires-at";
/// Written by Demeter when it injected the agent: a hash of what was injected.
pub const ANN_INJECTED: &str = "demeter.dev/agent-injected";

/// Flink configuration keys Demeter reads and writes.
pub mod conf {
    pub const TASK_SLOTS: &str = "taskmanager.numberOfTaskSlots";
    pub const CHECKPOINT_INTERVAL: &str = "execution.checkpointing.interval";
    pub const PARALLELISM_OVERRIDES: &str = "pipeline.jobvertex-parallelism-overrides";
    pub const SCHEDULER: &str = "jobmanager.scheduler";
    pub const INPLACE_SCALING: &str = "kubernetes.operator.job.upgrade.inplace-scaling.enabled";
    /// Set on profiling deployments so that the job (its sources) can tell it is a copy.
    pub const PROFILING_RUN: &str = "demeter.profiling.run-id";
}

/// `spec` of a FlinkDeployment.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "flink.apache.org",
    version = "v1beta1",
    kind = "FlinkDeployment",
    plural = "flinkdeployments",
    shortname = "flinkdep",
    namespaced,
    status = "FlinkDeploymentStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct FlinkDeploymentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// `native` (default) or `standalone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Values are usually strings; operator 1.15 also accepts nested objects (see
    /// [`super::convert::flat_flink_conf`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flink_configuration: Option<BTreeMap<String, Value>>,
    /// Pod template shared by the JobManager and the TaskManagers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_manager: Option<TaskManagerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `spec.taskManager`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskManagerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
    /// When set, the operator runs `replicas × slots` parallelism and ignores `job.parallelism`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `spec.taskManager.resource`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// Cores. Kept as the JSON number it was (`1` stays `1`, not `1.0`), so that a rollback
    /// restores exactly what was there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<serde_json::Number>,
    /// A Flink memory size (`2048m`, `2g`) or a Kubernetes quantity (`4096Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `spec.job`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    #[serde(default, rename = "jarURI", skip_serializing_if = "Option::is_none")]
    pub jar_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `running` or `suspended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `savepoint`, `last-state` or `stateless`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_trigger_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_redeploy_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_non_restored_state: Option<bool>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `status` of a FlinkDeployment (written by the operator only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlinkDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_status: Option<JobStatus>,
    /// `CREATED`, `SUSPENDED`, `UPGRADING`, `DEPLOYED`, `STABLE`, `ROLLING_BACK`, `ROLLED_BACK`,
    /// `FAILED`, `DELETING`, `DELETED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_status: Option<ReconciliationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_manager_deployment_status: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `status.jobStatus`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Flink's job state: `RUNNING`, `RESTARTING`, `FAILED`, `RECONCILING`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_savepoint_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_info: Option<Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `status.reconciliationStatus`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconciliationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconciled_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_spec: Option<String>,
    /// `DEPLOYED`, `UPGRADING`, `ROLLING_BACK`, `ROLLED_BACK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl FlinkDeployment {
    /// Whether the label [`LABEL_MANAGED`] is `"true"`.
    pub fn is_managed(&self) -> bool {
        self.metadata.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED)).is_some_and(|v| v == "true")
    }

    /// Whether this is a profiling copy made by Demeter.
    pub fn is_profiling_copy(&self) -> bool {
        self.metadata.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_PROFILING_OF))
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
    }
}

//! What the coordinator needs from the system that runs the Flink jobs.
//!
//! The decision core never talks to Kubernetes or Flink; the job driver
//! ([`crate::runtime::driver`]) carries the core's actions out through a [`Backend`]:
//!
//! - [`Backend::current_config`]: the configuration a job runs now (read on start, after a restart
//!   to reconcile an interrupted reconfiguration, and periodically to notice external changes);
//! - [`Backend::reconfigure`]: apply a [`Reconfiguration`] and wait until the job runs it;
//! - [`Backend::start_profiling`] / [`Backend::stop_profiling`]: short-lived copies of a job;
//! - [`Backend::list_jobs`]: jobs to manage before their first metrics arrive.
//!
//! Methods return boxed futures so that the runtime can pick a backend from configuration and
//! hold it as `Arc<dyn Backend>`.
//!
//! **Contract for implementations.** `reconfigure` is called at most once per reconfiguration id:
//! the driver persists an intent before the call and the outcome after it, and after a crash it
//! asks `current_config` instead of calling `reconfigure` again. `current_config` must therefore
//! report what the job is really running (or has been asked to run, once the request is accepted),
//! not what the coordinator last asked for. Errors carry a bounded [`BackendError::kind`] label.
//!
//! Implementations: [`NoBackend`] (`--backend none`, recommend-only from metrics) and
//! [`file::FileBackend`] (`--backend file`: the configuration of each job is a JSON file, for
//! GitOps-style hand-off and for tests). `flink-rest` and `kubernetes` are added by [`build`]'s
//! match arms when they exist.

pub mod file;
pub mod flink_rest;
pub mod kubernetes;

use demeter_common::JobConfig;
use demeter_core::controller::{Mode, ProfilingRun, Reconfiguration};
use demeter_core::obs::PerfSample;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

use crate::runtime::config::{BackendKind, CoordinatorConfig};

/// Identifies a managed job: the Kubernetes namespace and the Flink deployment's name (the
/// `namespace` and `deployment` of the agents' [`demeter_common::wire::Source`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobKey {
    pub namespace: String,
    pub name: String,
}

impl JobKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        JobKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A job a backend knows about, with the per-job mode it carries (for example a
/// `demeter.dev/mode` annotation), if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendJob {
    pub key: JobKey,
    pub mode: Option<Mode>,
}

/// What a finished reconfiguration cost.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReconfigReport {
    /// How long the job processed nothing, in seconds.
    pub downtime_s: f64,
}

impl ReconfigReport {
    pub fn new(downtime_s: f64) -> Self {
        ReconfigReport { downtime_s }
    }
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend cannot do this at all (for example `none` applying a configuration).
    #[error("backend `{backend}` does not support {operation}")]
    Unsupported { backend: &'static str, operation: &'static str },
    /// The job does not exist for the backend.
    #[error("job {0} not found")]
    NotFound(String),
    /// A failure that may go away on retry (timeouts, connection errors, conflicts).
    #[error("transient backend error: {0}")]
    Transient(String),
    /// The backend tried and failed; the job runs the configuration it reports.
    #[error("backend error: {0}")]
    Failed(String),
}

impl BackendError {
    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Unsupported { .. } => "unsupported",
            BackendError::NotFound(_) => "not_found",
            BackendError::Transient(_) => "transient",
            BackendError::Failed(_) => "failed",
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// The system that runs the jobs. See the module documentation for the contract.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Short name for logs and the API (`none`, `file`, `kubernetes`, ...).
    fn name(&self) -> &'static str;

    /// Whether [`Backend::reconfigure`] can succeed at all. A backend that cannot apply forces
    /// every job into recommend-only mode.
    fn can_apply(&self) -> bool;

    /// Whether [`Backend::start_profiling`] can succeed at all.
    fn can_profile(&self) -> bool;

    /// Jobs to manage even before their metrics arrive.
    fn list_jobs(&self) -> BoxFuture<'_, BackendResult<Vec<BackendJob>>>;

    /// The configuration the job runs now.
    fn current_config<'a>(&'a self, job: &'a JobKey) -> BoxFuture<'a, BackendResult<JobConfig>>;

    /// Applies `r.to` and resolves when the job runs it (or failed to).
    fn reconfigure<'a>(
        &'a self,
        job: &'a JobKey,
        r: &'a Reconfiguration,
    ) -> BoxFuture<'a, BackendResult<ReconfigReport>>;

    /// Runs a profiling copy of the job for `run.duration_s` and resolves with what it measured.
    /// Dropping the future does not stop the run; [`Backend::stop_profiling`] does.
    fn start_profiling<'a>(
        &'a self,
        job: &'a JobKey,
        run: &'a ProfilingRun,
    ) -> BoxFuture<'a, BackendResult<PerfSample>>;

    /// Tears a profiling run down. Succeeds when the run does not exist (any more).
    fn stop_profiling<'a>(&'a self, job: &'a JobKey, run_id: u64) -> BoxFuture<'a, BackendResult<()>>;

    /// With several replicas, whether this one leads (`true`) on a channel; `None` (the
    /// default) when the backend elects no leader and this replica always acts. The runtime
    /// consumes metrics and runs controllers only while leading, and exits when it stops leading
    /// so that it comes back as a standby.
    fn leadership(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

/// `--backend none`: recommend only, from metrics. It knows no jobs, reads no configuration and
/// refuses every change.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBackend;

impl NoBackend {
    const NAME: &'static str = "none";

    fn unsupported<T: Send + 'static>(operation: &'static str) -> BoxFuture<'static, BackendResult<T>> {
        Box::pin(async move { Err(BackendError::Unsupported { backend: Self::NAME, operation }) })
    }
}

impl Backend for NoBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_apply(&self) -> bool {
        false
    }

    fn can_profile(&self) -> bool {
        false
    }

    fn list_jobs(&self) -> BoxFuture<'_, BackendResult<Vec<BackendJob>>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn current_config<'a>(&'a self, _job: &'a JobKey) -> BoxFuture<'a, BackendResult<JobConfig>> {
        Self::unsupported("reading the current configuration")
    }

    fn reconfigure<'a>(
        &'a self,
        _job: &'a JobKey,
        _r: &'a Reconfiguration,
    ) -> BoxFuture<'a, BackendResult<ReconfigReport>> {
        Self::unsupported("applying a configuration")
    }

    fn start_profiling<'a>(
        &'a self,
        _job: &'a JobKey,
        _run: &'a ProfilingRun,
    ) -> BoxFuture<'a, BackendResult<PerfSample>> {
        Self::unsupported("profiling")
    }

    fn stop_profiling<'a>(&'a self, _job: &'a JobKey, _run_id: u64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// Builds the backend that the configuration selects.
pub fn build(cfg: &CoordinatorConfig) -> anyhow::Result<Arc<dyn Backend>> {
    match cfg.backend {
        BackendKind::None => Ok(Arc::new(NoBackend)),
        BackendKind::File => Ok(Arc::new(
            file::FileBackend::new(cfg.file_backend_dir())?.with_apply_delay(cfg.file_backend.apply_delay),
        )),
        BackendKind::Kubernetes => Ok(Arc::new(kubernetes::KubernetesBackend::build(cfg)?)),
        BackendKind::FlinkRest => Ok(Arc::new(flink_rest::FlinkRestBackend::new(
            flink_rest::FlinkRestConfig::locate(&cfg.data_dir)?,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_backend_refuses_to_apply_and_knows_no_job() {
        let b = NoBackend;
        let job = JobKey::new("ns", "j");
        assert!(!b.can_apply());
        assert!(b.list_jobs().await.unwrap().is_empty());
        let err = b.current_config(&job).await.unwrap_err();
        assert_eq!(err.kind(), "unsupported");
        assert_eq!(err.to_string(), "backend `none` does not support reading the current configuration");
        assert!(b.stop_profiling(&job, 3).await.is_ok());
    }
}

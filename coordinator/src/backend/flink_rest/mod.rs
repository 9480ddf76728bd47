//! `--backend flink-rest`: drives jobs on a Flink session cluster (standalone, adaptive scheduler)
//! through Flink's REST API, and adds or removes TaskManagers through configurable commands.
//!
//! # What it can change, and how
//!
//! | Knob | How | Downtime |
//! |---|---|---|
//! | parallelism | in place: `PUT /jobs/{id}/resource-requirements` (upper bound of every vertex); TaskManagers are added first when the cluster lacks slots and idle ones removed after a scale-down | the adaptive scheduler's restart from the latest checkpoint (measured ~0.5–2 s) |
//! | checkpoint interval | redeploy: stop-with-savepoint, then `POST /jars/{id}/run` with `savepointPath`, the new parallelism and `flinkConfiguration: {execution.checkpointing.interval}` | stop request → new job's tasks all RUNNING |
//! | task slots, TaskManager memory | redeploy, and every TaskManager is replaced while the job is stopped: `taskmanager_remove_command` for each, then `taskmanager_add_command` with `{slots}` and `{memory_mb}` filled in. Only when the add command contains both placeholders (otherwise refused as unsupported) | as above, plus the TaskManagers' start |
//! | CPU per TaskManager | **not at all**: standalone TaskManagers have no CPU limit. A change is refused as unsupported before anything is touched | — |
//!
//! Jobs are found by name: the job key `namespace/name` is the Flink job named `name`, and every
//! job of the cluster has the configured `namespace`. The agents of the job must publish with the
//! same namespace and deployment name.
//!
//! # Reading the configuration
//! [`Backend::current_config`] reports what the cluster runs: the largest vertex upper bound of
//! the job's resource requirements (what was asked and accepted), the checkpoint interval of
//! `/jobs/{id}/checkpoints/config`, the slots and process memory of the registered TaskManagers
//! (the JobManager's `taskmanager.*` configuration when none is registered) and, for CPU, the
//! configured `tm_cpu_milli` or else Flink's declared `cpuCores` of a TaskManager (by default the
//! number of slots).
//!
//! # Waiting, rollback and downtime
//! Every change waits until the job is RUNNING with every subtask RUNNING at the target
//! parallelism. If that does not happen within `running_timeout`, the change is rolled back (the
//! old requirements, or a resubmission of the old configuration from the same savepoint), and the
//! call fails with the job running what [`Backend::current_config`] then reports.
//!
//! The downtime is measured from the JobManager's own timestamps, polling `/jobs/{id}` every
//! `poll_interval`: for an in-place change, from the old execution graph's `RESTARTING` timestamp
//! (or, when no poll caught that state, the last poll that saw every task of the old graph
//! RUNNING: an upper bound) until the last subtask of the new graph switched to RUNNING
//! (`/jobs/{id}/vertices/{vid}/subtasktimes`); for a redeploy, from the stop request until the
//! new job's last subtask switched to RUNNING.
//!
//! # TaskManagers
//! `taskmanager_add_command` starts one TaskManager and should return once it is registered (the
//! backend waits for the registration anyway). `taskmanager_remove_command` must contain `{tm_id}`
//! (the TaskManager's resource id as `/taskmanagers` shows it) and stop exactly that one: the
//! backend only removes TaskManagers that run no task of any job, so that removing them disturbs
//! nothing. For a scale-down to leave whole TaskManagers idle, the cluster should run with
//! `jobmanager.adaptive-scheduler.prefer-minimal-taskmanagers: true` and
//! `execution.target: embedded` (the adaptive scheduler applies the preference only to jobs whose
//! execution target is `embedded`, which is what REST submissions are); otherwise the subtasks may
//! stay spread over every TaskManager and surplus ones are kept (and logged).
//!
//! # Configuration
//! [`FlinkRestConfig`], read from the TOML file named by `DEMETER_FLINK_REST_CONFIG`, else
//! `<data_dir>/flink-rest.toml`, else the defaults (in-place rescaling only). Program arguments
//! of a resubmission may contain `{parallelism}`, `{checkpoint_interval_ms}` and `{job_name}`.
//! Each reconfiguration is appended as a JSON line ([`JournalEntry`]) to `journal` when set.

mod apply;
pub mod client;
pub mod command;

use super::{Backend, BackendError, BackendJob, BackendResult, JobKey, ReconfigReport};
use client::{FlinkClient, JobDetails, JobSummary, TaskManagerInfo};
use demeter_common::{JobConfig, UnixMillis};
use demeter_core::controller::{ProfilingRun, Reconfiguration};
use demeter_core::obs::PerfSample;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the backend's TOML configuration file.
pub const CONFIG_ENV: &str = "DEMETER_FLINK_REST_CONFIG";
/// File looked for in the coordinator's data directory when [`CONFIG_ENV`] is not set.
pub const CONFIG_FILE: &str = "flink-rest.toml";

/// How to (re)submit one job; fields left out inherit the top-level ones.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitConfig {
    /// The job's jar, uploaded once when first needed.
    pub jar: Option<PathBuf>,
    /// An already uploaded jar (`/jars`), instead of `jar`.
    pub jar_id: Option<String>,
    pub entry_class: Option<String>,
    /// Program arguments; `{parallelism}`, `{checkpoint_interval_ms}` and `{job_name}` are filled.
    pub program_args: Option<Vec<String>>,
    pub allow_non_restored_state: Option<bool>,
}

/// Settings of the Flink REST backend (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlinkRestConfig {
    /// The JobManager's REST endpoint.
    pub rest_url: String,
    /// Namespace of every job of this cluster in the coordinator's job keys.
    pub namespace: String,
    /// Default submission settings of every job.
    pub jar: Option<PathBuf>,
    pub jar_id: Option<String>,
    pub entry_class: Option<String>,
    pub program_args: Vec<String>,
    pub allow_non_restored_state: bool,
    /// Per job name: submission settings that differ from the defaults.
    pub jobs: BTreeMap<String, SubmitConfig>,
    /// Where stop-with-savepoint writes (default: the cluster's
    /// `execution.checkpointing.savepoint-dir`).
    pub savepoint_dir: Option<String>,
    /// Starts one TaskManager; may contain `{slots}` and `{memory_mb}`. Empty: never add.
    pub taskmanager_add_command: Vec<String>,
    /// Stops the TaskManager `{tm_id}`. Empty: never remove.
    pub taskmanager_remove_command: Vec<String>,
    /// Slots per TaskManager when none is registered to ask (default: the JobManager's
    /// `taskmanager.numberOfTaskSlots`).
    pub taskmanager_slots: Option<u32>,
    /// TaskManagers never removed below this number.
    pub min_taskmanagers: u32,
    /// TaskManagers never added beyond this number.
    pub max_taskmanagers: u32,
    /// CPU per TaskManager reported as the current configuration (standalone TaskManagers have
    /// no limit); default: Flink's declared `cpuCores` × 1000.
    pub tm_cpu_milli: Option<u32>,
    /// Appends one JSON line per reconfiguration here.
    pub journal: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often the job is polled while it changes (bounds the downtime's resolution).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a change may take until every task runs at the target.
    #[serde(with = "humantime_serde")]
    pub running_timeout: Duration,
    /// How long a stop-with-savepoint may take.
    #[serde(with = "humantime_serde")]
    pub savepoint_timeout: Duration,
    /// How long a TaskManager command may take, and a TaskManager to (de)register.
    #[serde(with = "humantime_serde")]
    pub taskmanager_timeout: Duration,
    /// How long a rollback may take until the old configuration runs again.
    #[serde(with = "humantime_serde")]
    pub rollback_timeout: Duration,
}

impl Default for FlinkRestConfig {
    fn default() -> Self {
        FlinkRestConfig {
            rest_url: "http://127.0.0.1:8081".into(),
            namespace: "default".into(),
            jar: None,
            jar_id: None,
            entry_class: None,
            program_args: Vec::new(),
            allow_non_restored_state: false,
            jobs: BTreeMap::new(),
            savepoint_dir: None,
            taskmanager_add_command: Vec::new(),
            taskmanager_remove_command: Vec::new(),
            taskmanager_slots: None,
            min_taskmanagers: 1,
            max_taskmanagers: 64,
            tm_cpu_milli: None,
            journal: None,
            request_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            running_timeout: Duration::from_secs(120),
            savepoint_timeout: Duration::from_secs(120),
            taskmanager_timeout: Duration::from_secs(120),
            rollback_timeout: Duration::from_secs(180),
        }
    }
}

impl FlinkRestConfig {
    /// Reads a TOML file with the fields of [`FlinkRestConfig`] at the top level.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read the flink-rest configuration {}: {e}", path.display())
        })?;
        let cfg: FlinkRestConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid flink-rest configuration {}: {e}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file named by [`CONFIG_ENV`], else `<data_dir>/flink-rest.toml` if it exists, else
    /// the defaults.
    pub fn locate(data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            return Self::from_file(Path::new(&path));
        }
        let path = data_dir.join(CONFIG_FILE);
        if path.is_file() {
            return Self::from_file(&path);
        }
        let cfg = FlinkRestConfig::default();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut errs = Vec::new();
        if !(self.rest_url.starts_with("http://") || self.rest_url.starts_with("https://")) {
            errs.push(format!("rest_url {:?}: an http:// or https:// URL", self.rest_url));
        }
        if self.namespace.is_empty() {
            errs.push("namespace \"\": a non-empty name".into());
        }
        if !self.taskmanager_remove_command.is_empty()
            && !command::mentions(&self.taskmanager_remove_command, "{tm_id}")
        {
            errs.push(format!(
                "taskmanager_remove_command {:?}: a command containing {{tm_id}} (the TaskManager to stop)",
                self.taskmanager_remove_command
            ));
        }
        if self.min_taskmanagers > self.max_taskmanagers {
            errs.push(format!(
                "max_taskmanagers {}: >= min_taskmanagers ({})",
                self.max_taskmanagers, self.min_taskmanagers
            ));
        }
        if self.taskmanager_slots == Some(0) {
            errs.push("taskmanager_slots 0: at least 1".into());
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&self.poll_interval) {
            errs.push(format!(
                "poll_interval {}: 10ms..=10s",
                humantime::format_duration(self.poll_interval)
            ));
        }
        for (key, d) in [
            ("request_timeout", self.request_timeout),
            ("running_timeout", self.running_timeout),
            ("savepoint_timeout", self.savepoint_timeout),
            ("taskmanager_timeout", self.taskmanager_timeout),
            ("rollback_timeout", self.rollback_timeout),
        ] {
            if d < Duration::from_secs(1) {
                errs.push(format!("{key} {}: at least 1s", humantime::format_duration(d)));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid flink-rest configuration: {}", errs.join("; "))
        }
    }

    /// The submission settings of job `name`: its `[jobs.<name>]` entry over the defaults.
    pub fn submit_for(&self, name: &str) -> SubmitConfig {
        let own = self.jobs.get(name).cloned().unwrap_or_default();
        SubmitConfig {
            jar: own.jar.or_else(|| self.jar.clone()),
            jar_id: own.jar_id.or_else(|| self.jar_id.clone()),
            entry_class: own.entry_class.or_else(|| self.entry_class.clone()),
            program_args: Some(own.program_args.unwrap_or_else(|| self.program_args.clone())),
            allow_non_restored_state: Some(
                own.allow_non_restored_state.unwrap_or(self.allow_non_restored_state),
            ),
        }
    }

    /// Whether TaskManagers can be replaced with other slots and memory.
    pub fn can_replace_taskmanagers(&self) -> bool {
        command::mentions(&self.taskmanager_add_command, "{slots}")
            && command::mentions(&self.taskmanager_add_command, "{memory_mb}")
            && !self.taskmanager_remove_command.is_empty()
    }
}

/// One line of the journal: a finished (or failed) reconfiguration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub id: u64,
    pub job: String,
    pub started_at: UnixMillis,
    pub finished_at: UnixMillis,
    /// `in_place`, `redeploy` or `none` (already running the target).
    pub kind: String,
    pub from: JobConfig,
    pub to: JobConfig,
    pub ok: bool,
    /// Measured downtime, when the change was applied.
    pub downtime_s: Option<f64>,
    pub rolled_back: bool,
    pub taskmanagers_added: u32,
    pub taskmanagers_removed: u32,
    /// Entries added to the job's exception history while it changed (failures, not rescales).
    pub failures: usize,
    pub job_id_before: String,
    pub job_id_after: Option<String>,
    pub error: Option<String>,
}

/// What the TaskManagers of the cluster look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmShape {
    pub count: u32,
    pub slots: u32,
    pub memory_mb: u32,
    pub cpu_milli: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FlinkRestBackend {
    cfg: FlinkRestConfig,
    client: FlinkClient,
    /// Jar path → uploaded jar id.
    jar_ids: std::sync::Mutex<HashMap<PathBuf, String>>,
    /// One reconfiguration at a time: they share the cluster's TaskManagers.
    apply_lock: tokio::sync::Mutex<()>,
}

impl FlinkRestBackend {
    const NAME: &'static str = "flink-rest";

    pub fn new(cfg: FlinkRestConfig) -> anyhow::Result<Self> {
        cfg.validate()?;
        let client = FlinkClient::new(&cfg.rest_url, cfg.request_timeout)?;
        Ok(FlinkRestBackend {
            cfg,
            client,
            jar_ids: std::sync::Mutex::new(HashMap::new()),
            apply_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn config(&self) -> &FlinkRestConfig {
        &self.cfg
    }

    pub fn client(&self) -> &FlinkClient {
        &self.client
    }

    /// The newest job named `key.name` that is not terminal.
    pub async fn find_job(&self, key: &JobKey) -> BackendResult<JobSummary> {
        if key.namespace != self.cfg.namespace {
            return Err(BackendError::NotFound(format!(
                "{key}: the Flink cluster at {} holds namespace `{}` only",
                self.cfg.rest_url, self.cfg.namespace
            )));
        }
        let jobs = self.client.jobs().await?;
        jobs.into_iter()
            .filter(|j| j.name == key.name && !j.is_terminal())
            .max_by_key(|j| j.start_time)
            .ok_or_else(|| {
                BackendError::NotFound(format!("{key}: no running Flink job named `{}`", key.name))
            })
    }

    /// The shape of the cluster's TaskManagers.
    pub async fn tm_shape(&self) -> BackendResult<TmShape> {
        let tms = self.client.taskmanagers().await?;
        self.shape_of(&tms).await
    }

    async fn shape_of(&self, tms: &[TaskManagerInfo]) -> BackendResult<TmShape> {
        let count = tms.len() as u32;
        if let Some(tm) = most_common(tms) {
            let memory_mb = tm
                .memory_configuration
                .as_ref()
                .map(|m| (m.total_process_memory as f64 / (1024.0 * 1024.0)).round() as u32)
                .unwrap_or(0);
            let declared =
                tm.total_resource.as_ref().map(|r| (r.cpu_cores * 1000.0).round() as u32).unwrap_or(0);
            return Ok(TmShape {
                count,
                slots: tm.slots_number.max(1),
                memory_mb,
                cpu_milli: self.cfg.tm_cpu_milli.unwrap_or(declared),
            });
        }
        let conf = self.client.jobmanager_config().await?;
        let slots = self
            .cfg
            .taskmanager_slots
            .or_else(|| conf.get("taskmanager.numberOfTaskSlots").and_then(|s| s.trim().parse().ok()))
            .unwrap_or(1)
            .max(1);
        let memory_mb =
            conf.get("taskmanager.memory.process.size").and_then(|s| parse_memory_mb(s)).unwrap_or(0);
        let declared = conf
            .get("taskmanager.cpu.cores")
            .and_then(|s| s.trim().parse::<f64>().ok())
            .map(|c| (c * 1000.0).round() as u32)
            .unwrap_or(slots * 1000);
        Ok(TmShape { count, slots, memory_mb, cpu_milli: self.cfg.tm_cpu_milli.unwrap_or(declared) })
    }

    /// The configuration job `jid` runs (see the module documentation), with its details.
    pub async fn read_config(&self, jid: &str) -> BackendResult<(JobConfig, JobDetails)> {
        let details = self.client.job(jid).await?;
        let requirements = self.client.resource_requirements(jid).await.unwrap_or_default();
        let parallelism = requirements
            .values()
            .map(|r| r.parallelism.upper_bound)
            .max()
            .unwrap_or_else(|| details.max_parallelism())
            .max(1);
        let interval = self.client.checkpoint_interval_ms(jid).await?.unwrap_or(0);
        let shape = self.tm_shape().await?;
        let cfg = JobConfig {
            parallelism,
            task_slots: shape.slots,
            tm_cpu_milli: shape.cpu_milli,
            tm_memory_mb: shape.memory_mb,
            checkpoint_interval_ms: interval,
        };
        Ok((cfg, details))
    }

    fn append_journal(&self, entry: &JournalEntry) {
        let Some(path) = &self.cfg.journal else { return };
        let mut line = serde_json::to_vec(entry).expect("journal entries serialise");
        line.push(b'\n');
        let result = (|| -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            f.write_all(&line)?;
            f.sync_data()
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot append to the flink-rest journal");
        }
    }
}

/// The TaskManager whose slots and memory most TaskManagers share.
fn most_common(tms: &[TaskManagerInfo]) -> Option<&TaskManagerInfo> {
    let key = |t: &TaskManagerInfo| {
        (t.slots_number, t.memory_configuration.as_ref().map(|m| m.total_process_memory))
    };
    tms.iter()
        .max_by_key(|t| (tms.iter().filter(|u| key(u) == key(t)).count(), std::cmp::Reverse(t.id.clone())))
}

/// Flink's memory size syntax (`1g`, `1024m`, `1728 mb`, `1073741824`, `512kb`) in MiB.
pub fn parse_memory_mb(s: &str) -> Option<u32> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let bytes = match unit.trim() {
        "" | "b" | "bytes" => n,
        "k" | "kb" | "kibibytes" => n << 10,
        "m" | "mb" | "mebibytes" => n << 20,
        "g" | "gb" | "gibibytes" => n << 30,
        "t" | "tb" | "tebibytes" => n << 40,
        _ => return None,
    };
    u32::try_from(bytes >> 20).ok()
}

impl Backend for FlinkRestBackend {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn can_apply(&self) -> bool {
        // Parallelism changes in place always work; what else works depends on the commands and
        // the jar (see `reconfigure`'s checks).
        true
    }

    fn can_profile(&self) -> bool {
        false
    }

    fn list_jobs(&self) -> BoxFuture<'_, BackendResult<Vec<BackendJob>>> {
        Box::pin(async move {
            let mut names: Vec<String> =
                self.client.jobs().await?.into_iter().filter(|j| !j.is_terminal()).map(|j| j.name).collect();
            names.sort();
            names.dedup();
            Ok(names
                .into_iter()
                .map(|name| BackendJob { key: JobKey::new(&self.cfg.namespace, name), mode: None })
                .collect())
        })
    }

    fn current_config<'a>(&'a self, job: &'a JobKey) -> BoxFuture<'a, BackendResult<JobConfig>> {
        Box::pin(async move {
            let j = self.find_job(job).await?;
            Ok(self.read_config(&j.jid).await?.0)
        })
    }

    fn reconfigure<'a>(
        &'a self,
        job: &'a JobKey,
        r: &'a Reconfiguration,
    ) -> BoxFuture<'a, BackendResult<ReconfigReport>> {
        Box::pin(async move {
            let _guard = self.apply_lock.lock().await;
            let (entry, result) = self.apply(job, r).await;
            if let Some(entry) = &entry {
                self.append_journal(entry);
            }
            match &result {
                Ok(rep) => tracing::info!(job = %job, id = r.id, to = %r.to, downtime_s = rep.downtime_s,
                    kind = entry.as_ref().map(|e| e.kind.as_str()).unwrap_or(""), "flink-rest: reconfiguration applied"),
                Err(e) => {
                    tracing::warn!(job = %job, id = r.id, to = %r.to, error = %e, "flink-rest: reconfiguration failed")
                }
            }
            result
        })
    }

    fn start_profiling<'a>(
        &'a self,
        _job: &'a JobKey,
        _run: &'a ProfilingRun,
    ) -> BoxFuture<'a, BackendResult<PerfSample>> {
        Box::pin(async {
            Err(BackendError::Unsupported {
                backend: Self::NAME,
                operation: "profiling (a session cluster has no room for profiling copies of a job)",
            })
        })
    }

    fn stop_profiling<'a>(&'a self, _job: &'a JobKey, _run_id: u64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_like_flinks() {
        assert_eq!(parse_memory_mb("1g"), Some(1024));
        assert_eq!(parse_memory_mb("1728m"), Some(1728));
        assert_eq!(parse_memory_mb("1728 mb"), Some(1728));
        assert_eq!(parse_memory_mb("1073741824"), Some(1024));
        assert_eq!(parse_memory_mb("1073741824b"), Some(1024));
        assert_eq!(parse_memory_mb("2GB"), Some(2048));
        assert_eq!(parse_memory_mb("lots"), None);
        assert_eq!(parse_memory_mb("3 parsecs"), None);
    }

    #[test]
    fn configuration_is_checked_and_merged_per_job() {
        let mut c = FlinkRestConfig::default();
        assert!(c.validate().is_ok());
        c.rest_url = "localhost:8081".into();
        c.taskmanager_remove_command =
            vec!["scripts/flink-cluster.sh".into(), "remove-tm".into(), "/w".into()];
        c.poll_interval = Duration::from_secs(60);
        c.min_taskmanagers = 5;
        c.max_taskmanagers = 2;
        let e = c.validate().unwrap_err().to_string();
        for key in ["rest_url", "taskmanager_remove_command", "poll_interval", "max_taskmanagers"] {
            assert!(e.contains(key), "{key} missing in {e}");
        }

        let text = r#"
            rest_url = "http://127.0.0.1:18081"
            jar = "/jobs/ratejob.jar"
            program_args = ["--parallelism", "{parallelism}"]
            taskmanager_add_command = ["tm.sh", "add", "--slots", "{slots}", "--memory-mb", "{memory_mb}"]
            taskmanager_remove_command = ["tm.sh", "remove", "{tm_id}"]
            running_timeout = "90s"
            [jobs.cars]
            program_args = ["--name", "cars"]
            entry_class = "demeter.testjob.RateJob"
        "#;
        let c: FlinkRestConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.running_timeout, Duration::from_secs(90));
        assert!(c.can_replace_taskmanagers());
        let cars = c.submit_for("cars");
        assert_eq!(cars.jar.as_deref(), Some(Path::new("/jobs/ratejob.jar")));
        assert_eq!(cars.program_args.unwrap(), vec!["--name", "cars"]);
        assert_eq!(cars.entry_class.as_deref(), Some("demeter.testjob.RateJob"));
        assert_eq!(c.submit_for("other").program_args.unwrap(), vec!["--parallelism", "{parallelism}"]);
        assert!(toml::from_str::<FlinkRestConfig>("rest_ulr = \"x\"").is_err());
    }

    #[test]
    fn a_config_file_is_found_through_the_environment_or_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        // No file: the defaults.
        if std::env::var_os(CONFIG_ENV).is_none() {
            assert_eq!(FlinkRestConfig::locate(dir.path()).unwrap(), FlinkRestConfig::default());
            std::fs::write(dir.path().join(CONFIG_FILE), "namespace = \"flink\"\n").unwrap();
            assert_eq!(FlinkRestConfig::locate(dir.path()).unwrap().namespace, "flink");
        }
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "poll_interval = \"1h\"\n").unwrap();
        assert!(FlinkRestConfig::from_file(&bad).unwrap_err().to_string().contains("poll_interval"));
    }
}

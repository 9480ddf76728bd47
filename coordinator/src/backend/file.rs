//! `--backend file`: each job's configuration is a JSON file that something else deploys.
//!
//! Layout under the backend's directory (default `<data_dir>/file-backend`, key `file_backend.dir`):
//!
//! - `<namespace>/<name>.json`: the job's [`JobConfig`] as JSON. The coordinator reads it as the
//!   current configuration and replaces it (atomically: temporary file, fsync, rename) to apply a
//!   reconfiguration. A GitOps pipeline or a script can pick it up from there.
//! - `<namespace>/<name>.journal.jsonl`: one JSON line per [`Backend::reconfigure`] call
//!   (`id`, `at`, `from`, `to`, `kind`), appended and fsynced *before* the configuration file is
//!   replaced, so that every request that may have taken effect is on record.
//!
//! `apply_delay` makes `reconfigure` wait after writing the file, like a real rollout that takes
//! time to finish; the reported downtime is that delay. Profiling is not supported.

use super::{Backend, BackendError, BackendJob, BackendResult, JobKey, ReconfigReport};
use demeter_common::{JobConfig, UnixMillis};
use demeter_core::controller::{ProfilingRun, Reconfiguration};
use demeter_core::obs::PerfSample;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One line of a job's journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub id: u64,
    pub at: UnixMillis,
    pub from: JobConfig,
    pub to: JobConfig,
    pub kind: demeter_core::controller::ReconfigKind,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
    apply_delay: Duration,
}

impl FileBackend {
    /// Uses (and creates) `dir`.
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| {
            anyhow::anyhow!("cannot create the file backend's directory {}: {e}", dir.display())
        })?;
        Ok(FileBackend { dir, apply_delay: Duration::ZERO })
    }

    pub fn with_apply_delay(mut self, d: Duration) -> Self {
        self.apply_delay = d;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<namespace>/<name>.json`; names that could escape the directory are refused.
    pub fn config_path(&self, job: &JobKey) -> BackendResult<PathBuf> {
        Ok(self
            .dir
            .join(safe_component(&job.namespace)?)
            .join(format!("{}.json", safe_component(&job.name)?)))
    }

    pub fn journal_path(&self, job: &JobKey) -> BackendResult<PathBuf> {
        Ok(self
            .dir
            .join(safe_component(&job.namespace)?)
            .join(format!("{}.journal.jsonl", safe_component(&job.name)?)))
    }

    /// Writes a job's configuration file, as an operator or a deployment pipeline would.
    pub fn write_config(&self, job: &JobKey, cfg: &JobConfig) -> BackendResult<()> {
        let path = self.config_path(job)?;
        write_atomically(&path, &serde_json::to_vec_pretty(cfg).expect("JobConfig serialises"))
            .map_err(|e| BackendError::Failed(format!("writing {}: {e}", path.display())))
    }

    /// Every journal line of a job, oldest first.
    pub fn journal(&self, job: &JobKey) -> BackendResult<Vec<JournalEntry>> {
        let path = self.journal_path(job)?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BackendError::Failed(format!("reading {}: {e}", path.display()))),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| BackendError::Failed(format!("corrupt line in {}: {e}", path.display())))
            })
            .collect()
    }

    fn read_config(&self, job: &JobKey) -> BackendResult<JobConfig> {
        let path = self.config_path(job)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackendError::NotFound(format!("{job} (no file {})", path.display())));
            }
            Err(e) => return Err(BackendError::Transient(format!("reading {}: {e}", path.display()))),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::Failed(format!("{} is not a job configuration: {e}", path.display())))
    }

    fn apply(&self, job: &JobKey, r: &Reconfiguration) -> BackendResult<()> {
        let journal = self.journal_path(job)?;
        if let Some(parent) = journal.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| BackendError::Failed(format!("creating {}: {e}", parent.display())))?;
        }
        let entry = JournalEntry { id: r.id, at: UnixMillis::now(), from: r.from, to: r.to, kind: r.kind };
        let mut line = serde_json::to_vec(&entry).expect("journal entries serialise");
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(|e| BackendError::Failed(format!("opening {}: {e}", journal.display())))?;
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|e| BackendError::Failed(format!("appending to {}: {e}", journal.display())))?;
        self.write_config(job, &r.to)
    }

    fn scan(&self) -> BackendResult<Vec<BackendJob>> {
        let mut jobs = Vec::new();
        let namespaces = match fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) => return Err(BackendError::Transient(format!("listing {}: {e}", self.dir.display()))),
        };
        for ns in namespaces.flatten() {
            if !ns.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(ns.path()) else { continue };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(job) = name.strip_suffix(".json") {
                    let key = JobKey::new(ns.file_name().to_string_lossy(), job);
                    jobs.push(BackendJob { key, mode: None });
                }
            }
        }
        jobs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(jobs)
    }
}

/// Accepts Kubernetes-style names (letters, digits, `-`, `_`, `.`), refusing `.` and `..`.
fn safe_component(s: &str) -> BackendResult<&str> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(s) } else { Err(BackendError::Failed(format!("`{s}` cannot be used as a file name"))) }
}

/// Temporary file in the same directory, fsync, rename over the target, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> BackendResult<T> + Send + 'static,
) -> BackendResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Transient(format!("file backend task failed: {e}")))?
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    fn can_apply(&self) -> bool {
        true
    }

    fn can_profile(&self) -> bool {
        false
    }

    fn list_jobs(&self) -> BoxFuture<'_, BackendResult<Vec<BackendJob>>> {
        let this = self.clone();
        Box::pin(blocking(move || this.scan()))
    }

    fn current_config<'a>(&'a self, job: &'a JobKey) -> BoxFuture<'a, BackendResult<JobConfig>> {
        let (this, job) = (self.clone(), job.clone());
        Box::pin(blocking(move || this.read_config(&job)))
    }

    fn reconfigure<'a>(
        &'a self,
        job: &'a JobKey,
        r: &'a Reconfiguration,
    ) -> BoxFuture<'a, BackendResult<ReconfigReport>> {
        let (this, job, r) = (self.clone(), job.clone(), r.clone());
        Box::pin(async move {
            let delay = this.apply_delay;
            blocking(move || this.apply(&job, &r)).await?;
            tokio::time::sleep(delay).await;
            Ok(ReconfigReport::new(delay.as_secs_f64()))
        })
    }

    fn start_profiling<'a>(
        &'a self,
        _job: &'a JobKey,
        _run: &'a ProfilingRun,
    ) -> BoxFuture<'a, BackendResult<PerfSample>> {
        Box::pin(async { Err(BackendError::Unsupported { backend: "file", operation: "profiling" }) })
    }

    fn stop_profiling<'a>(&'a self, _job: &'a JobKey, _run_id: u64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_writes_and_lists_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::new(dir.path().join("fb")).unwrap();
        let job = JobKey::new("flink", "cars");
        assert_eq!(b.current_config(&job).await.unwrap_err().kind(), "not_found");
        b.write_config(&job, &JobConfig::STATIC_DEFAULT).unwrap();
        assert_eq!(b.current_config(&job).await.unwrap(), JobConfig::STATIC_DEFAULT);
        let jobs = b.list_jobs().await.unwrap();
        assert_eq!(jobs, vec![BackendJob { key: job.clone(), mode: None }]);
        assert!(b.journal(&job).unwrap().is_empty());
    }

    #[test]
    fn names_that_escape_the_directory_are_refused() {
        let b = FileBackend::new(tempfile::tempdir().unwrap().path().join("x")).unwrap();
        for bad in ["..", ".", "a/b", "", "x\0"] {
            assert!(b.config_path(&JobKey::new(bad, "j")).is_err(), "{bad:?}");
            assert!(b.config_path(&JobKey::new("ns", bad)).is_err(), "{bad:?}");
        }
        assert!(b.config_path(&JobKey::new("my-ns", "job.v2")).is_ok());
    }
}

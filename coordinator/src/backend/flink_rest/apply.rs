//! Carrying a reconfiguration out: in place through the adaptive scheduler, or by
//! stop-with-savepoint and resubmission; TaskManagers added before and removed after; rollback
//! on failure; downtime from the JobManager's timestamps.

use super::client::{JobDetails, ResourceRequirements, RunRequest, SavepointStatus};
use super::{FlinkRestBackend, JournalEntry, SubmitConfig, TmShape, command};
use crate::backend::{BackendError, BackendResult, JobKey, ReconfigReport};
use demeter_common::{JobConfig, UnixMillis};
use demeter_core::controller::Reconfiguration;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Job states in which the job's tasks are being stopped.
const STOPPING_STATES: &[&str] = &["RESTARTING", "CANCELLING", "FAILING"];

/// What watching a job change saw.
#[derive(Debug)]
struct Watched {
    details: JobDetails,
    /// The old graph's RESTARTING/CANCELLING/FAILING timestamp, when a poll saw that state.
    stop_ts: Option<i64>,
    /// The last poll that saw every task of the old graph RUNNING (JobManager clock).
    last_running: Option<i64>,
}

/// An error's message without the variant's prefix, for nesting in another error.
fn detail(e: &BackendError) -> String {
    match e {
        BackendError::NotFound(m) | BackendError::Transient(m) | BackendError::Failed(m) => m.clone(),
        other => other.to_string(),
    }
}

fn secs(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

fn fmt_d(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl FlinkRestBackend {
    /// Applies `r` and returns the journal entry (when the job was found) and the result.
    pub(super) async fn apply(
        &self,
        job: &JobKey,
        r: &Reconfiguration,
    ) -> (Option<JournalEntry>, BackendResult<ReconfigReport>) {
        let started_at = UnixMillis::now();
        let summary = match self.find_job(job).await {
            Ok(j) => j,
            Err(e) => return (None, Err(e)),
        };
        let (cur, details) = match self.read_config(&summary.jid).await {
            Ok(x) => x,
            Err(e) => return (None, Err(e)),
        };
        let mut entry = JournalEntry {
            id: r.id,
            job: job.to_string(),
            started_at,
            finished_at: started_at,
            kind: "none".into(),
            from: cur,
            to: r.to,
            ok: false,
            downtime_s: None,
            rolled_back: false,
            taskmanagers_added: 0,
            taskmanagers_removed: 0,
            failures: 0,
            job_id_before: summary.jid.clone(),
            job_id_after: Some(summary.jid.clone()),
            error: None,
        };
        let result = if cur == r.to {
            Ok(0.0)
        } else if let Err(e) = self.check_supported(&job.name, &cur, &r.to) {
            Err(e)
        } else if cur.parallelism_only_change(&r.to) {
            entry.kind = "in_place".into();
            self.in_place(&summary.jid, &details, &cur, &r.to, &mut entry).await
        } else {
            entry.kind = "redeploy".into();
            self.redeploy(job, &summary.jid, &cur, &r.to, &mut entry).await
        };
        entry.finished_at = UnixMillis::now();
        entry.ok = result.is_ok();
        match &result {
            Ok(d) => entry.downtime_s = Some(*d),
            Err(e) => entry.error = Some(e.to_string()),
        }
        (Some(entry), result.map(ReconfigReport::new))
    }

    /// Refuses, before touching anything, what this backend cannot do.
    fn check_supported(&self, name: &str, cur: &JobConfig, to: &JobConfig) -> BackendResult<()> {
        let unsupported = |operation| Err(BackendError::Unsupported { backend: Self::NAME, operation });
        if cur.tm_cpu_milli != to.tm_cpu_milli {
            return unsupported("changing tm_cpu_milli (standalone TaskManagers have no CPU limit)");
        }
        if (cur.task_slots != to.task_slots || cur.tm_memory_mb != to.tm_memory_mb)
            && !self.cfg.can_replace_taskmanagers()
        {
            return unsupported(
                "changing task_slots or tm_memory_mb without a taskmanager_add_command with {slots} and {memory_mb} \
                 and a taskmanager_remove_command",
            );
        }
        if !cur.parallelism_only_change(to) {
            let submit = self.cfg.submit_for(name);
            if submit.jar.is_none() && submit.jar_id.is_none() {
                return unsupported("redeploying a job without `jar` or `jar_id` to resubmit it from");
            }
        }
        let tms = to.taskmanagers();
        if tms > self.cfg.max_taskmanagers {
            return Err(BackendError::Failed(format!(
                "{to} needs {tms} TaskManagers, more than max_taskmanagers ({})",
                self.cfg.max_taskmanagers
            )));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // In place

    async fn in_place(
        &self,
        jid: &str,
        details: &JobDetails,
        cur: &JobConfig,
        to: &JobConfig,
        entry: &mut JournalEntry,
    ) -> BackendResult<f64> {
        let shape = self.tm_shape().await?;
        let others = self.slots_of_other_jobs(jid).await?;
        let needed = (to.parallelism + others).div_ceil(shape.slots).max(self.cfg.min_taskmanagers);
        if let Err(e) = self.ensure_taskmanagers(needed, shape.slots, shape.memory_mb, entry).await {
            self.remove_idle_taskmanagers(shape.count, entry).await;
            return Err(e);
        }
        let old_req = self.client.resource_requirements(jid).await?;
        let targets = targets_for(details, to.parallelism);
        let new_req = with_upper_bounds(&old_req, &targets);
        let exceptions_before = self.client.exception_count(jid).await.unwrap_or(0);
        let before = self.client.job(jid).await?;
        if let Err(e) = self.client.put_resource_requirements(jid, &new_req).await {
            self.remove_idle_taskmanagers(shape.count, entry).await;
            return Err(e);
        }
        tracing::info!(
            job = jid,
            from = cur.parallelism,
            to = to.parallelism,
            "flink-rest: resource requirements set"
        );
        let watched = match self
            .watch(jid, &before, |d| at_targets(d, &targets), self.cfg.running_timeout)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                entry.rolled_back = true;
                let back = targets_for(details, cur.parallelism);
                let rollback = async {
                    self.client.put_resource_requirements(jid, &old_req).await?;
                    self.watch(jid, &before, |d| at_targets(d, &back), self.cfg.rollback_timeout).await
                }
                .await;
                self.remove_idle_taskmanagers(needed.min(shape.count).max(self.cfg.min_taskmanagers), entry)
                    .await;
                return Err(BackendError::Failed(match rollback {
                    Ok(_) => format!("{}; rolled back to parallelism {}", detail(&e), cur.parallelism),
                    Err(r) => {
                        format!(
                            "{}; rolling back to parallelism {} failed too: {}",
                            detail(&e),
                            cur.parallelism,
                            detail(&r)
                        )
                    }
                }));
            }
        };
        let changed = !at_targets(&before, &targets);
        let downtime = if changed { self.downtime_since(jid, &watched, None).await? } else { 0.0 };
        entry.failures = self
            .client
            .exception_count(jid)
            .await
            .unwrap_or(exceptions_before)
            .saturating_sub(exceptions_before);
        self.remove_idle_taskmanagers(needed, entry).await;
        Ok(downtime)
    }

    /// Polls the job until `done` holds and every task runs, or until `timeout`.
    async fn watch(
        &self,
        jid: &str,
        before: &JobDetails,
        done: impl Fn(&JobDetails) -> bool,
        timeout: Duration,
    ) -> BackendResult<Watched> {
        let deadline = Instant::now() + timeout;
        let mut w = Watched {
            details: before.clone(),
            stop_ts: None,
            last_running: before.all_running().then_some(before.now),
        };
        if done(before) && before.all_running() {
            return Ok(w);
        }
        let mut last_err = None;
        loop {
            tokio::time::sleep(self.cfg.poll_interval).await;
            match self.client.job(jid).await {
                Ok(d) => {
                    if d.is_terminal() {
                        return Err(BackendError::Failed(format!("job {jid} became {}", d.state)));
                    }
                    let target = done(&d);
                    if STOPPING_STATES.contains(&d.state.as_str()) {
                        if w.stop_ts.is_none() {
                            w.stop_ts = Some(d.timestamp(&d.state).unwrap_or(d.now));
                        }
                    } else if !target && d.all_running() && w.stop_ts.is_none() {
                        w.last_running = Some(d.now);
                    }
                    let finished = target && d.all_running();
                    w.details = d;
                    if finished {
                        return Ok(w);
                    }
                }
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                let d = &w.details;
                let shape: Vec<String> = d
                    .vertices
                    .iter()
                    .map(|v| format!("{}: {} × {}", v.name, v.parallelism, v.status))
                    .collect();
                return Err(BackendError::Failed(format!(
                    "job {jid} did not run the target within {} (last seen {} [{}]{})",
                    fmt_d(timeout),
                    d.state,
                    shape.join(", "),
                    last_err.map(|e| format!("; last error: {}", detail(&e))).unwrap_or_default()
                )));
            }
        }
    }

    /// Seconds from the stop (the old graph's stop timestamp, else the last poll that saw it all
    /// RUNNING, else `fallback_start`) until the last subtask of the job switched to RUNNING.
    async fn downtime_since(
        &self,
        jid: &str,
        w: &Watched,
        fallback_start: Option<i64>,
    ) -> BackendResult<f64> {
        let mut end = None::<i64>;
        for v in &w.details.vertices {
            let t = self.client.last_subtask_running(jid, &v.id).await?.unwrap_or(w.details.now);
            end = Some(end.map_or(t, |e| e.max(t)));
        }
        let end = end.unwrap_or(w.details.now);
        let start = fallback_start
            .or(w.stop_ts)
            .or(w.last_running)
            .or_else(|| w.details.timestamp("CREATED"))
            .unwrap_or(end);
        Ok(secs(end - start))
    }

    // -----------------------------------------------------------------------------------------
    // Redeploy

    async fn redeploy(
        &self,
        job: &JobKey,
        jid: &str,
        cur: &JobConfig,
        to: &JobConfig,
        entry: &mut JournalEntry,
    ) -> BackendResult<f64> {
        let submit = self.cfg.submit_for(&job.name);
        // Fail before stopping anything when the jar cannot be had.
        let jar_id = self.jar_id(&submit, false).await?;
        let replace = cur.task_slots != to.task_slots || cur.tm_memory_mb != to.tm_memory_mb;
        let others = self.slots_of_other_jobs(jid).await?;
        if replace && others > 0 {
            return Err(BackendError::Failed(
                "changing task_slots or tm_memory_mb replaces every TaskManager, but other jobs run on the cluster".into(),
            ));
        }
        let shape = self.tm_shape().await?;
        // The local clock; the end is the JobManager's (the same clock on one machine).
        let stop_requested = UnixMillis::now().0;
        let savepoint = match self.stop_with_savepoint(jid).await {
            Ok(s) => s,
            Err(e) => {
                return Err(BackendError::Failed(format!(
                    "stop-with-savepoint failed, the job keeps running: {}",
                    detail(&e)
                )));
            }
        };
        tracing::info!(job = jid, %savepoint, "flink-rest: job stopped with a savepoint");
        self.wait_terminal(jid, self.cfg.savepoint_timeout).await?;
        entry.job_id_after = None;

        let mut new_jid = None;
        let attempt = async {
            let target = TmShape { slots: to.task_slots, memory_mb: to.tm_memory_mb, ..shape };
            let needed = (to.parallelism + others).div_ceil(target.slots).max(self.cfg.min_taskmanagers);
            if replace {
                self.replace_taskmanagers(needed, target, entry).await?;
            } else {
                self.ensure_taskmanagers(needed, shape.slots, shape.memory_mb, entry).await?;
            }
            let id = self.submit(&job.name, &submit, &jar_id, to, &savepoint).await?;
            new_jid = Some(id.clone());
            let w = self.wait_new_job(&id, to.parallelism, self.cfg.running_timeout).await?;
            Ok::<_, BackendError>((id, w, needed))
        }
        .await;
        match attempt {
            Ok((id, w, needed)) => {
                let downtime = self.downtime_since(&id, &w, Some(stop_requested)).await?;
                entry.failures = self.client.exception_count(&id).await.unwrap_or(0);
                entry.job_id_after = Some(id);
                self.remove_idle_taskmanagers(needed, entry).await;
                Ok(downtime)
            }
            Err(e) => {
                entry.rolled_back = true;
                let rollback = self
                    .rollback_redeploy(job, &submit, &jar_id, cur, shape, replace, &savepoint, new_jid, entry)
                    .await;
                Err(BackendError::Failed(match rollback {
                    Ok(id) => {
                        entry.job_id_after = Some(id);
                        format!("{}; rolled back to {cur} from savepoint {savepoint}", detail(&e))
                    }
                    Err(r) => format!(
                        "{}; rolling back to {cur} from savepoint {savepoint} failed too: {}",
                        detail(&e),
                        detail(&r)
                    ),
                }))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn rollback_redeploy(
        &self,
        job: &JobKey,
        submit: &SubmitConfig,
        jar_id: &str,
        cur: &JobConfig,
        shape: TmShape,
        replaced: bool,
        savepoint: &str,
        new_jid: Option<String>,
        entry: &mut JournalEntry,
    ) -> BackendResult<String> {
        if let Some(id) = new_jid {
            if let Err(e) = self.client.cancel(&id).await {
                tracing::warn!(job = %id, error = %e, "flink-rest: cannot cancel the failed new job");
            }
            let _ = self.wait_terminal(&id, self.cfg.rollback_timeout).await;
        }
        let needed = cur.parallelism.div_ceil(shape.slots).max(self.cfg.min_taskmanagers);
        if replaced {
            self.replace_taskmanagers(needed, shape, entry).await?;
        } else {
            self.ensure_taskmanagers(needed, shape.slots, shape.memory_mb, entry).await?;
        }
        let id = self.submit(&job.name, submit, jar_id, cur, savepoint).await?;
        self.wait_new_job(&id, cur.parallelism, self.cfg.rollback_timeout).await?;
        Ok(id)
    }

    /// Stops the job with a savepoint and returns its location.
    async fn stop_with_savepoint(&self, jid: &str) -> BackendResult<String> {
        let rid = self.client.stop_with_savepoint(jid, self.cfg.savepoint_dir.as_deref()).await?;
        let deadline = Instant::now() + self.cfg.savepoint_timeout;
        loop {
            tokio::time::sleep(self.cfg.poll_interval.max(Duration::from_millis(100))).await;
            match self.client.savepoint_status(jid, &rid).await {
                Ok(SavepointStatus::Completed(location)) => return Ok(location),
                Ok(SavepointStatus::Failed(why)) => return Err(BackendError::Failed(why)),
                Ok(SavepointStatus::InProgress) | Err(BackendError::Transient(_)) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Failed(format!(
                    "the savepoint did not complete within {}",
                    fmt_d(self.cfg.savepoint_timeout)
                )));
            }
        }
    }

    async fn wait_terminal(&self, jid: &str, timeout: Duration) -> BackendResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.client.job(jid).await {
                Ok(d) if d.is_terminal() => return Ok(()),
                Ok(_) | Err(BackendError::Transient(_)) => {}
                Err(BackendError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(BackendError::Failed(format!(
                    "job {jid} did not stop within {}",
                    fmt_d(timeout)
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    /// Waits until a freshly submitted job runs every task at `parallelism` (or its vertices'
    /// maximum, if lower).
    async fn wait_new_job(&self, jid: &str, parallelism: u32, timeout: Duration) -> BackendResult<Watched> {
        let deadline = Instant::now() + timeout;
        let first = loop {
            match self.client.job(jid).await {
                Ok(d) => break d,
                Err(BackendError::NotFound(_) | BackendError::Transient(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(self.cfg.poll_interval).await;
                }
                Err(e) => return Err(e),
            }
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        self.watch(
            jid,
            &first,
            |d| {
                let cap =
                    d.vertices.iter().map(|v| v.max_parallelism).filter(|m| *m > 0).min().unwrap_or(i64::MAX);
                !d.vertices.is_empty() && i64::from(d.max_parallelism()) == i64::from(parallelism).min(cap)
            },
            left,
        )
        .await
    }

    /// Submits the job from `savepoint` with configuration `to`; returns the new job id.
    async fn submit(
        &self,
        name: &str,
        submit: &SubmitConfig,
        jar_id: &str,
        to: &JobConfig,
        savepoint: &str,
    ) -> BackendResult<String> {
        let vars = [
            ("{parallelism}", to.parallelism.to_string()),
            ("{checkpoint_interval_ms}", to.checkpoint_interval_ms.to_string()),
            ("{job_name}", name.to_string()),
        ];
        let mut flink_configuration = BTreeMap::new();
        if to.checkpoint_interval_ms > 0 {
            flink_configuration.insert(
                "execution.checkpointing.interval".to_string(),
                format!("{} ms", to.checkpoint_interval_ms),
            );
        }
        let req = RunRequest {
            entry_class: submit.entry_class.clone(),
            program_args: command::fill(submit.program_args.as_deref().unwrap_or_default(), &vars),
            parallelism: to.parallelism,
            savepoint_path: Some(savepoint.to_string()),
            allow_non_restored_state: submit.allow_non_restored_state.unwrap_or(false),
            flink_configuration,
        };
        match self.client.run_jar(jar_id, &req).await {
            // The jar is gone (a JobManager restart empties /jars): upload it again, once.
            Err(BackendError::NotFound(_)) if submit.jar.is_some() => {
                let jar_id = self.jar_id(submit, true).await?;
                self.client.run_jar(&jar_id, &req).await
            }
            r => r,
        }
    }

    /// The id of the job's jar on the cluster, uploading it when needed.
    async fn jar_id(&self, submit: &SubmitConfig, force_upload: bool) -> BackendResult<String> {
        if let Some(id) = &submit.jar_id
            && !force_upload
        {
            return Ok(id.clone());
        }
        let Some(path) = &submit.jar else {
            return Err(BackendError::Unsupported {
                backend: Self::NAME,
                operation: "resubmitting a job without `jar` (the uploaded jar_id is gone)",
            });
        };
        if !force_upload && let Some(id) = self.jar_ids.lock().expect("jar id cache").get(path) {
            return Ok(id.clone());
        }
        let id = self.client.upload_jar(path).await?;
        tracing::info!(jar = %path.display(), id = %id, "flink-rest: job jar uploaded");
        self.jar_ids.lock().expect("jar id cache").insert(path.clone(), id.clone());
        Ok(id)
    }

    // -----------------------------------------------------------------------------------------
    // TaskManagers

    /// Slots the cluster's other unfinished jobs occupy (their largest vertex parallelism each).
    async fn slots_of_other_jobs(&self, jid: &str) -> BackendResult<u32> {
        let mut sum = 0;
        for j in self.client.jobs().await? {
            if j.jid != jid && !j.is_terminal() {
                sum += self.client.job(&j.jid).await.map(|d| d.max_parallelism()).unwrap_or(0);
            }
        }
        Ok(sum)
    }

    /// TaskManagers that host a subtask of an unfinished job.
    async fn busy_taskmanagers(&self) -> BackendResult<BTreeSet<String>> {
        let mut busy = BTreeSet::new();
        for j in self.client.jobs().await? {
            if j.is_terminal() {
                continue;
            }
            let d = self.client.job(&j.jid).await?;
            for v in &d.vertices {
                for s in self.client.subtasks(&j.jid, &v.id).await? {
                    if let Some(tm) = s.taskmanager_id {
                        busy.insert(tm);
                    }
                }
            }
        }
        Ok(busy)
    }

    async fn registered_taskmanagers(&self) -> BackendResult<u32> {
        Ok(self.client.overview().await?.taskmanagers)
    }

    /// Waits until `ok(registered TaskManagers)` holds.
    async fn wait_registered(&self, what: &str, ok: impl Fn(u32) -> bool) -> BackendResult<()> {
        let deadline = Instant::now() + self.cfg.taskmanager_timeout;
        loop {
            match self.registered_taskmanagers().await {
                Ok(n) if ok(n) => return Ok(()),
                Ok(n) if Instant::now() >= deadline => {
                    return Err(BackendError::Failed(format!(
                        "{what}: {n} TaskManager(s) registered after {}",
                        fmt_d(self.cfg.taskmanager_timeout)
                    )));
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Starts TaskManagers (with `slots` and `memory_mb` for the placeholders) until `needed`
    /// are registered.
    async fn ensure_taskmanagers(
        &self,
        needed: u32,
        slots: u32,
        memory_mb: u32,
        entry: &mut JournalEntry,
    ) -> BackendResult<()> {
        let have = self.registered_taskmanagers().await?;
        if have >= needed {
            return Ok(());
        }
        if needed > self.cfg.max_taskmanagers {
            return Err(BackendError::Failed(format!(
                "{needed} TaskManagers needed, more than max_taskmanagers ({})",
                self.cfg.max_taskmanagers
            )));
        }
        if self.cfg.taskmanager_add_command.is_empty() {
            return Err(BackendError::Failed(format!(
                "{needed} TaskManagers needed, {have} registered, and no taskmanager_add_command to start more"
            )));
        }
        let vars = [("{slots}", slots.to_string()), ("{memory_mb}", memory_mb.to_string())];
        let args = command::fill(&self.cfg.taskmanager_add_command, &vars);
        for i in have..needed {
            tracing::info!(command = %args.join(" "), "flink-rest: starting TaskManager {} of {needed}", i + 1);
            command::run(&args, self.cfg.taskmanager_timeout).await?;
            entry.taskmanagers_added += 1;
        }
        self.wait_registered("adding TaskManagers", |n| n >= needed).await
    }

    /// Stops idle TaskManagers beyond `keep` (never below `min_taskmanagers`); returns how many.
    /// Failures are logged: the job runs the target either way.
    async fn remove_idle_taskmanagers(&self, keep: u32, entry: &mut JournalEntry) -> u32 {
        if self.cfg.taskmanager_remove_command.is_empty() {
            return 0;
        }
        let keep = keep.max(self.cfg.min_taskmanagers);
        let result = async {
            let tms = self.client.taskmanagers().await?;
            let surplus = (tms.len() as u32).saturating_sub(keep);
            if surplus == 0 {
                return Ok(0);
            }
            let busy = self.busy_taskmanagers().await?;
            let mut idle: Vec<&str> =
                tms.iter().map(|t| t.id.as_str()).filter(|id| !busy.contains(*id)).collect();
            idle.sort_unstable();
            idle.reverse();
            if (idle.len() as u32) < surplus {
                tracing::warn!(
                    surplus,
                    idle = idle.len(),
                    "flink-rest: keeping TaskManagers that still run tasks"
                );
            }
            let mut removed = 0;
            for id in idle.into_iter().take(surplus as usize) {
                let args =
                    command::fill(&self.cfg.taskmanager_remove_command, &[("{tm_id}", id.to_string())]);
                tracing::info!(command = %args.join(" "), "flink-rest: stopping idle TaskManager {id}");
                command::run(&args, self.cfg.taskmanager_timeout).await?;
                removed += 1;
            }
            let expected = tms.len() as u32 - removed;
            self.wait_registered("removing TaskManagers", |n| n <= expected).await?;
            Ok::<u32, BackendError>(removed)
        }
        .await;
        match result {
            Ok(n) => {
                entry.taskmanagers_removed += n;
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "flink-rest: could not remove surplus TaskManagers");
                0
            }
        }
    }

    /// Stops every TaskManager (the job is stopped) and starts `needed` with `shape`.
    async fn replace_taskmanagers(
        &self,
        needed: u32,
        shape: TmShape,
        entry: &mut JournalEntry,
    ) -> BackendResult<()> {
        for tm in self.client.taskmanagers().await? {
            let args = command::fill(&self.cfg.taskmanager_remove_command, &[("{tm_id}", tm.id.clone())]);
            command::run(&args, self.cfg.taskmanager_timeout).await?;
            entry.taskmanagers_removed += 1;
        }
        self.wait_registered("stopping every TaskManager", |n| n == 0).await?;
        self.ensure_taskmanagers(needed, shape.slots, shape.memory_mb, entry).await
    }
}

/// Per vertex: `parallelism`, capped at the vertex's maximum parallelism.
fn targets_for(details: &JobDetails, parallelism: u32) -> HashMap<String, u32> {
    details
        .vertices
        .iter()
        .map(|v| {
            let cap =
                if v.max_parallelism > 0 { v.max_parallelism.min(u32::MAX as i64) as u32 } else { u32::MAX };
            (v.id.clone(), parallelism.min(cap))
        })
        .collect()
}

fn at_targets(d: &JobDetails, targets: &HashMap<String, u32>) -> bool {
    !d.vertices.is_empty()
        && d.vertices.iter().all(|v| targets.get(&v.id).is_none_or(|t| v.parallelism == *t))
}

/// `req` with every listed vertex's upper bound set to its target (lower bounds kept, but never
/// above the upper bound).
fn with_upper_bounds(req: &ResourceRequirements, targets: &HashMap<String, u32>) -> ResourceRequirements {
    let mut out = req.clone();
    for (vid, r) in out.iter_mut() {
        if let Some(t) = targets.get(vid) {
            r.parallelism.upper_bound = *t;
            r.parallelism.lower_bound = r.parallelism.lower_bound.min(*t).max(1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::client::{Bounds, VertexRequirements};
    use super::*;

    fn details(vertices: &[(&str, u32, i64)]) -> JobDetails {
        serde_json::from_value(serde_json::json!({
            "jid": "j", "name": "cars", "state": "RUNNING", "now": 1,
            "vertices": vertices.iter().map(|(id, p, max)| serde_json::json!({
                "id": id, "name": id, "parallelism": p, "maxParallelism": max, "status": "RUNNING",
                "tasks": {"RUNNING": p}
            })).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    #[test]
    fn targets_respect_each_vertex_maximum() {
        let d = details(&[("a", 2, 128), ("b", 2, 4), ("c", 2, -1)]);
        let t = targets_for(&d, 6);
        assert_eq!((t["a"], t["b"], t["c"]), (6, 4, 6));
        assert!(!at_targets(&d, &t));
        assert!(at_targets(&details(&[("a", 6, 128), ("b", 4, 4), ("c", 6, -1)]), &t));
    }

    #[test]
    fn upper_bounds_change_and_lower_bounds_stay_below_them() {
        let mut req = ResourceRequirements::new();
        req.insert("a".into(), VertexRequirements { parallelism: Bounds { lower_bound: 1, upper_bound: 2 } });
        req.insert("b".into(), VertexRequirements { parallelism: Bounds { lower_bound: 4, upper_bound: 4 } });
        let t: HashMap<String, u32> = [("a".to_string(), 6), ("b".to_string(), 2)].into();
        let out = with_upper_bounds(&req, &t);
        assert_eq!(out["a"].parallelism, Bounds { lower_bound: 1, upper_bound: 6 });
        assert_eq!(out["b"].parallelism, Bounds { lower_bound: 2, upper_bound: 2 });
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(json["a"]["parallelism"]["upperBound"], 6);
    }
}

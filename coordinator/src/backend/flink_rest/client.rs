//! A small client for the parts of Flink's REST API (2.x) that the backend uses, with the
//! responses' fields it reads.
//!
//! Errors map onto [`BackendError`]: connection problems and timeouts are transient, 404 is "not
//! found", any other non-success status is a failure carrying Flink's `errors` text.

use super::super::{BackendError, BackendResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// Job states after which a job never runs again.
pub const TERMINAL_STATES: &[&str] = &["FINISHED", "CANCELED", "FAILED"];

/// One entry of `GET /jobs/overview`.
#[derive(Clone, Debug, Deserialize)]
pub struct JobSummary {
    pub jid: String,
    pub name: String,
    pub state: String,
    #[serde(rename = "start-time", default)]
    pub start_time: i64,
}

impl JobSummary {
    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATES.contains(&self.state.as_str())
    }
}

#[derive(Debug, Deserialize)]
struct JobsOverview {
    jobs: Vec<JobSummary>,
}

/// `GET /overview`.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterOverview {
    pub taskmanagers: u32,
    #[serde(rename = "slots-total")]
    pub slots_total: u32,
    #[serde(rename = "slots-available")]
    pub slots_available: u32,
}

/// One vertex of `GET /jobs/{id}`.
#[derive(Clone, Debug, Deserialize)]
pub struct VertexSummary {
    pub id: String,
    pub name: String,
    pub parallelism: u32,
    #[serde(rename = "maxParallelism", default)]
    pub max_parallelism: i64,
    pub status: String,
    /// Subtasks per execution state.
    #[serde(default)]
    pub tasks: HashMap<String, u32>,
}

impl VertexSummary {
    /// Every subtask is RUNNING (not merely the vertex).
    pub fn all_running(&self) -> bool {
        self.status == "RUNNING" && self.tasks.get("RUNNING").copied().unwrap_or(0) == self.parallelism
    }
}

/// `GET /jobs/{id}`. `now` is the JobManager's clock when the (cached) graph was read.
#[derive(Clone, Debug, Deserialize)]
pub struct JobDetails {
    pub jid: String,
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub now: i64,
    #[serde(default)]
    pub timestamps: HashMap<String, i64>,
    #[serde(default)]
    pub vertices: Vec<VertexSummary>,
}

impl JobDetails {
    /// The job and every subtask of every vertex are RUNNING.
    pub fn all_running(&self) -> bool {
        self.state == "RUNNING"
            && !self.vertices.is_empty()
            && self.vertices.iter().all(VertexSummary::all_running)
    }

    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATES.contains(&self.state.as_str())
    }

    /// The largest vertex parallelism (what a job with one slot-sharing group occupies in slots).
    pub fn max_parallelism(&self) -> u32 {
        self.vertices.iter().map(|v| v.parallelism).max().unwrap_or(0)
    }

    pub fn timestamp(&self, state: &str) -> Option<i64> {
        self.timestamps.get(state).copied().filter(|t| *t > 0)
    }
}

/// One subtask of `GET /jobs/{id}/vertices/{vid}`.
#[derive(Clone, Debug, Deserialize)]
pub struct SubtaskInfo {
    pub subtask: u32,
    pub status: String,
    #[serde(rename = "taskmanager-id", default)]
    pub taskmanager_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct VertexDetails {
    subtasks: Vec<SubtaskInfo>,
}

#[derive(Debug, Deserialize)]
struct SubtaskTimes {
    subtasks: Vec<SubtaskTimestamps>,
}

#[derive(Debug, Deserialize)]
struct SubtaskTimestamps {
    #[serde(default)]
    timestamps: HashMap<String, i64>,
}

/// Parallelism bounds of one vertex (`/jobs/{id}/resource-requirements`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    #[serde(rename = "lowerBound")]
    pub lower_bound: u32,
    #[serde(rename = "upperBound")]
    pub upper_bound: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexRequirements {
    pub parallelism: Bounds,
}

/// Vertex id → requirements.
pub type ResourceRequirements = BTreeMap<String, VertexRequirements>;

/// One entry of `GET /taskmanagers`.
#[derive(Clone, Debug, Deserialize)]
pub struct TaskManagerInfo {
    pub id: String,
    #[serde(rename = "slotsNumber")]
    pub slots_number: u32,
    #[serde(rename = "freeSlots", default)]
    pub free_slots: u32,
    #[serde(rename = "totalResource", default)]
    pub total_resource: Option<TaskManagerResource>,
    #[serde(rename = "memoryConfiguration", default)]
    pub memory_configuration: Option<TaskManagerMemory>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TaskManagerResource {
    #[serde(rename = "cpuCores", default)]
    pub cpu_cores: f64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TaskManagerMemory {
    #[serde(rename = "totalProcessMemory", default)]
    pub total_process_memory: u64,
}

#[derive(Debug, Deserialize)]
struct TaskManagers {
    taskmanagers: Vec<TaskManagerInfo>,
}

#[derive(Debug, Deserialize)]
struct ConfigEntry {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct CheckpointConfig {
    interval: i64,
}

#[derive(Debug, Deserialize)]
struct TriggerResponse {
    #[serde(rename = "request-id")]
    request_id: String,
}

#[derive(Debug, Deserialize)]
struct AsyncStatus {
    id: String,
}

#[derive(Debug, Deserialize)]
struct SavepointResponse {
    status: AsyncStatus,
    #[serde(default)]
    operation: Option<SavepointOperation>,
}

#[derive(Debug, Deserialize)]
struct SavepointOperation {
    #[serde(default)]
    location: Option<String>,
    #[serde(rename = "failure-cause", default)]
    failure_cause: Option<serde_json::Value>,
}

/// Where a stop-with-savepoint stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavepointStatus {
    InProgress,
    Completed(String),
    Failed(String),
}

/// `POST /jars/{id}/run`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunRequest {
    #[serde(rename = "entryClass", skip_serializing_if = "Option::is_none")]
    pub entry_class: Option<String>,
    #[serde(rename = "programArgsList")]
    pub program_args: Vec<String>,
    pub parallelism: u32,
    #[serde(rename = "savepointPath", skip_serializing_if = "Option::is_none")]
    pub savepoint_path: Option<String>,
    #[serde(rename = "allowNonRestoredState")]
    pub allow_non_restored_state: bool,
    /// Configuration for this job only, on top of the cluster's.
    #[serde(rename = "flinkConfiguration", skip_serializing_if = "BTreeMap::is_empty")]
    pub flink_configuration: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RunResponse {
    jobid: String,
}

#[derive(Debug, Deserialize)]
struct UploadResponse {
    filename: String,
}

#[derive(Debug, Deserialize)]
struct ExceptionHistory {
    #[serde(rename = "exceptionHistory")]
    history: ExceptionEntries,
}

#[derive(Debug, Deserialize)]
struct ExceptionEntries {
    entries: Vec<serde_json::Value>,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct FlinkClient {
    http: reqwest::Client,
    base: String,
}

impl FlinkClient {
    pub fn new(rest_url: &str, request_timeout: Duration) -> anyhow::Result<Self> {
        let base = rest_url.trim_end_matches('/').to_string();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "the Flink REST URL must start with http:// or https://, got {rest_url:?}"
        );
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(5)))
            .build()?;
        Ok(FlinkClient { http, base })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> BackendResult<bytes::Bytes> {
        let resp = req.send().await.map_err(|e| BackendError::Transient(format!("{what}: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| BackendError::Transient(format!("{what}: reading the body: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let text = flink_errors(&body);
        Err(match status.as_u16() {
            404 => BackendError::NotFound(format!("{what}: {text}")),
            // The JobManager is busy or (re)starting.
            429 | 502..=504 => BackendError::Transient(format!("{what}: HTTP {status}: {text}")),
            _ => BackendError::Failed(format!("{what}: HTTP {status}: {text}")),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> BackendResult<T> {
        let what = format!("GET {path}");
        let body = self.send(&what, self.http.get(self.url(path))).await?;
        serde_json::from_slice(&body)
            .map_err(|e| BackendError::Failed(format!("{what}: unexpected answer: {e}")))
    }

    pub async fn overview(&self) -> BackendResult<ClusterOverview> {
        self.get("/overview").await
    }

    pub async fn jobs(&self) -> BackendResult<Vec<JobSummary>> {
        Ok(self.get::<JobsOverview>("/jobs/overview").await?.jobs)
    }

    pub async fn job(&self, jid: &str) -> BackendResult<JobDetails> {
        self.get(&format!("/jobs/{jid}")).await
    }

    pub async fn subtasks(&self, jid: &str, vid: &str) -> BackendResult<Vec<SubtaskInfo>> {
        Ok(self.get::<VertexDetails>(&format!("/jobs/{jid}/vertices/{vid}")).await?.subtasks)
    }

    /// The latest time any subtask of the vertex switched to RUNNING (JobManager clock, ms).
    pub async fn last_subtask_running(&self, jid: &str, vid: &str) -> BackendResult<Option<i64>> {
        let t: SubtaskTimes = self.get(&format!("/jobs/{jid}/vertices/{vid}/subtasktimes")).await?;
        let running: Vec<i64> =
            t.subtasks.iter().map(|s| s.timestamps.get("RUNNING").copied().unwrap_or(0)).collect();
        if running.is_empty() || running.contains(&0) {
            return Ok(None);
        }
        Ok(running.into_iter().max())
    }

    pub async fn resource_requirements(&self, jid: &str) -> BackendResult<ResourceRequirements> {
        self.get(&format!("/jobs/{jid}/resource-requirements")).await
    }

    pub async fn put_resource_requirements(
        &self,
        jid: &str,
        req: &ResourceRequirements,
    ) -> BackendResult<()> {
        let path = format!("/jobs/{jid}/resource-requirements");
        self.send(&format!("PUT {path}"), self.http.put(self.url(&path)).json(req)).await.map(drop)
    }

    /// The checkpoint interval in ms (`None` when checkpointing is off).
    pub async fn checkpoint_interval_ms(&self, jid: &str) -> BackendResult<Option<u64>> {
        match self.get::<CheckpointConfig>(&format!("/jobs/{jid}/checkpoints/config")).await {
            Ok(c) if c.interval > 0 && c.interval < i64::MAX => Ok(Some(c.interval as u64)),
            Ok(_) => Ok(None),
            // Flink answers 404 for a job without checkpointing.
            Err(BackendError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn taskmanagers(&self) -> BackendResult<Vec<TaskManagerInfo>> {
        Ok(self.get::<TaskManagers>("/taskmanagers").await?.taskmanagers)
    }

    /// The JobManager's configuration as key → value.
    pub async fn jobmanager_config(&self) -> BackendResult<HashMap<String, String>> {
        let entries: Vec<ConfigEntry> = self.get("/jobmanager/config").await?;
        Ok(entries.into_iter().map(|e| (e.key, e.value)).collect())
    }

    /// Entries in the job's exception history (failures, not rescales).
    pub async fn exception_count(&self, jid: &str) -> BackendResult<usize> {
        Ok(self.get::<ExceptionHistory>(&format!("/jobs/{jid}/exceptions")).await?.history.entries.len())
    }

    /// `POST /jobs/{id}/stop`: stop with a savepoint (no drain); returns the request id.
    pub async fn stop_with_savepoint(
        &self,
        jid: &str,
        target_directory: Option<&str>,
    ) -> BackendResult<String> {
        let path = format!("/jobs/{jid}/stop");
        let mut body = serde_json::json!({"drain": false});
        if let Some(dir) = target_directory {
            body["targetDirectory"] = dir.into();
        }
        let what = format!("POST {path}");
        let bytes = self.send(&what, self.http.post(self.url(&path)).json(&body)).await?;
        let r: TriggerResponse = serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::Failed(format!("{what}: unexpected answer: {e}")))?;
        Ok(r.request_id)
    }

    pub async fn savepoint_status(&self, jid: &str, request_id: &str) -> BackendResult<SavepointStatus> {
        let r: SavepointResponse = self.get(&format!("/jobs/{jid}/savepoints/{request_id}")).await?;
        if r.status.id != "COMPLETED" {
            return Ok(SavepointStatus::InProgress);
        }
        let op = r.operation.unwrap_or(SavepointOperation { location: None, failure_cause: None });
        Ok(match (op.location, op.failure_cause) {
            (Some(location), None) => SavepointStatus::Completed(location),
            (_, Some(cause)) => SavepointStatus::Failed(failure_text(&cause)),
            (None, None) => SavepointStatus::Failed("completed without a location".into()),
        })
    }

    /// `PATCH /jobs/{id}?mode=cancel`.
    pub async fn cancel(&self, jid: &str) -> BackendResult<()> {
        let path = format!("/jobs/{jid}?mode=cancel");
        self.send(&format!("PATCH {path}"), self.http.patch(self.url(&path))).await.map(drop)
    }

    /// Uploads a jar (multipart form field `jarfile`) and returns its id.
    pub async fn upload_jar(&self, jar: &Path) -> BackendResult<String> {
        let data = tokio::fs::read(jar)
            .await
            .map_err(|e| BackendError::Failed(format!("reading the job jar {}: {e}", jar.display())))?;
        let name =
            jar.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "job.jar".into());
        let name: String = name.chars().filter(|c| *c != '"' && *c != '\r' && *c != '\n').collect();
        let boundary = format!("demeter-{:016x}", data.len() as u64 ^ 0x5eed_d3e7_0000_0000);
        let mut body = Vec::with_capacity(data.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"jarfile\"; filename=\"{name}\"\r\n\
                 Content-Type: application/x-java-archive\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let what = "POST /jars/upload";
        let req = self
            .http
            .post(self.url("/jars/upload"))
            .header("Content-Type", format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        let bytes = self.send(what, req).await?;
        let r: UploadResponse = serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::Failed(format!("{what}: unexpected answer: {e}")))?;
        // "filename" is the stored path; the jar id is its last component.
        Ok(r.filename.rsplit('/').next().unwrap_or(&r.filename).to_string())
    }

    /// `POST /jars/{id}/run`; returns the new job's id.
    pub async fn run_jar(&self, jar_id: &str, req: &RunRequest) -> BackendResult<String> {
        let path = format!("/jars/{jar_id}/run");
        let what = format!("POST {path}");
        let bytes = self.send(&what, self.http.post(self.url(&path)).json(req)).await?;
        let r: RunResponse = serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::Failed(format!("{what}: unexpected answer: {e}")))?;
        Ok(r.jobid)
    }
}

/// The `errors` of a Flink error response, shortened; the raw body otherwise.
fn flink_errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<String>,
    }
    let text = match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e.errors.iter().map(|t| root_cause(t)).collect::<Vec<_>>().join("; "),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    shorten(&text, 600)
}

/// A Java stack trace reduced to its first line and its innermost `Caused by:` line, which
/// carries the message that explains it (for example why the job's `main` failed).
fn root_cause(trace: &str) -> String {
    let first = trace.lines().next().unwrap_or("").trim();
    match trace.lines().rev().find_map(|l| l.trim().strip_prefix("Caused by:")) {
        Some(cause) => format!("{first} (caused by: {})", cause.trim()),
        None => first.to_string(),
    }
}

fn failure_text(cause: &serde_json::Value) -> String {
    let text = cause
        .get("serialized-throwable")
        .or_else(|| cause.get("class"))
        .map(|v| v.to_string())
        .unwrap_or_else(|| cause.to_string());
    shorten(&text, 600)
}

/// At most `max` characters (plus an ellipsis), cut on a character boundary; the first line of a
/// stack trace carries the message.
pub fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flink_error_bodies_are_reduced_to_their_messages() {
        assert_eq!(flink_errors(br#"{"errors":["Job not found","x"]}"#), "Job not found; x");
        assert_eq!(flink_errors(b"plain"), "plain");
        let trace = "org.apache.flink.runtime.rest.handler.RestHandlerException: Could not execute application.\n\
                     \tat org.apache.flink.X.y(X.java:1)\n\
                     Caused by: java.util.concurrent.CompletionException: wrapped\n\
                     \t... 5 more\n\
                     Caused by: java.lang.IllegalArgumentException: Checkpoint interval must be larger than or equal to 10 ms\n\
                     \t... 7 more";
        let body = serde_json::to_vec(&serde_json::json!({"errors": [trace]})).unwrap();
        assert_eq!(
            flink_errors(&body),
            "org.apache.flink.runtime.rest.handler.RestHandlerException: Could not execute application. (caused by: \
             java.lang.IllegalArgumentException: Checkpoint interval must be larger than or equal to 10 ms)"
        );
        let long = "é".repeat(700);
        assert_eq!(shorten(&long, 600).chars().count(), 601);
    }

    #[test]
    fn job_details_know_when_every_subtask_runs() {
        let d: JobDetails = serde_json::from_value(serde_json::json!({
            "jid": "j", "name": "cars", "state": "RUNNING", "now": 10,
            "timestamps": {"RUNNING": 5, "RESTARTING": 0},
            "vertices": [
                {"id": "a", "name": "Source: s", "parallelism": 2, "maxParallelism": 128, "status": "RUNNING",
                 "tasks": {"RUNNING": 2, "INITIALIZING": 0}},
                {"id": "b", "name": "work", "parallelism": 3, "maxParallelism": 128, "status": "RUNNING",
                 "tasks": {"RUNNING": 2, "INITIALIZING": 1}}
            ]
        }))
        .unwrap();
        assert!(!d.all_running());
        assert_eq!(d.max_parallelism(), 3);
        assert_eq!(d.timestamp("RUNNING"), Some(5));
        assert_eq!(d.timestamp("RESTARTING"), None);
    }

    #[test]
    fn run_requests_use_flinks_field_names() {
        let mut r = RunRequest { program_args: vec!["--a".into()], parallelism: 3, ..Default::default() };
        r.flink_configuration.insert("execution.checkpointing.interval".into(), "5000 ms".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["programArgsList"][0], "--a");
        assert_eq!(v["parallelism"], 3);
        assert_eq!(v["flinkConfiguration"]["execution.checkpointing.interval"], "5000 ms");
        assert!(v.get("savepointPath").is_none() && v.get("entryClass").is_none());
    }
}

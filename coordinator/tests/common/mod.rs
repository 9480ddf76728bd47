//! Helpers of the coordinator's integration tests: a coordinator process, batches to publish,
//! and read-only looks into its SQLite store and its durable consumer.

#![allow(dead_code)]

use async_nats::jetstream;
use demeter_common::wire::{
    ContainerSample, JvmSample, LatencySample, OperatorSample, Source, SubtaskId, TaskSample,
};
use demeter_common::{MetricBatch, SCHEMA_VERSION, Sample, UnixMillis};
use demeter_testkit::{free_port, http_get, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `demeter-coordinator run` process; SIGKILLed on drop.
pub struct Coordinator {
    pub child: Option<Child>,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Coordinator {
    pub fn start(config: &Path, port: u16, log: &Path) -> Coordinator {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_demeter-coordinator"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,demeter_coordinator=debug")
            .env_remove("DEMETER_COORDINATOR_NATS_URL")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start demeter-coordinator");
        let mut c =
            Coordinator { child: Some(child), port, config: config.to_path_buf(), log: log.to_path_buf() };
        let up = wait_until(Duration::from_secs(30), || {
            if let Some(st) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                panic!("coordinator exited with {st}:\n{}", c.log_tail(60));
            }
            matches!(http_get(port, "/healthz"), Some((200, _)))
        });
        assert!(up, "coordinator did not answer /healthz:\n{}", c.log_tail(60));
        c
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let ready = wait_until(timeout, || matches!(http_get(self.port, "/readyz"), Some((200, _))));
        assert!(ready, "coordinator not ready: {:?}\n{}", http_get(self.port, "/readyz"), self.log_tail(60));
    }

    /// SIGKILL: no checkpoint, no ack, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        demeter_testkit::sigterm(c.id());
        demeter_testkit::wait_child(&mut c, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = c.kill();
            panic!("coordinator did not stop within 30 s:\n{}", self.log_tail(60))
        })
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = http_get(self.port, path).unwrap_or_else(|| panic!("GET {path}: no answer"));
        let v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        (code, v)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn api_port() -> u16 {
    free_port()
}

#[allow(clippy::too_many_arguments)]
/// One TaskManager's batch for one second of a job that reads `rate` records/s. `overloaded`
/// makes it busy, back-pressured, lagging and far above the latency bound.
pub fn batch(
    ns: &str,
    job: &str,
    tm: &str,
    run: &str,
    seq: u64,
    at: UnixMillis,
    rate: f64,
    overloaded: bool,
) -> MetricBatch {
    let id = |vid: &str, name: &str| SubtaskId {
        job_id: "0123".into(),
        vertex_id: vid.into(),
        vertex_name: name.into(),
        subtask_index: 0,
    };
    let busy = if overloaded { 990.0 } else { 300.0 };
    let pending = if overloaded { 5_000.0 * seq as f64 } else { 10.0 };
    let p95 = if overloaded { 9_000.0 } else { 200.0 };
    MetricBatch {
        schema_version: SCHEMA_VERSION,
        source: Source {
            namespace: ns.into(),
            deployment: job.into(),
            job_id: Some("0123".into()),
            taskmanager_id: tm.into(),
            pod: tm.into(),
            host: "node-1".into(),
        },
        agent_run_id: run.into(),
        agent_seq: seq,
        collected_at: at,
        samples: vec![
            Sample::Task(TaskSample {
                id: id("src", "Source: in"),
                records_out_per_s: Some(rate),
                busy_ms_per_s: Some(200.0),
                backpressured_ms_per_s: Some(if overloaded { 800.0 } else { 0.0 }),
                ..Default::default()
            }),
            Sample::Operator(OperatorSample {
                id: id("src", "Source: in"),
                operator_name: "Source: in".into(),
                pending_records: Some(pending),
                ..Default::default()
            }),
            Sample::Task(TaskSample {
                id: id("work", "work"),
                records_in_per_s: Some(rate),
                records_out_per_s: Some(rate),
                busy_ms_per_s: Some(busy),
                backpressured_ms_per_s: Some(0.0),
                ..Default::default()
            }),
            Sample::Latency(LatencySample {
                id: id("work", "work"),
                operator_name: "work".into(),
                metric: "latencyHistogram".into(),
                p95_ms: Some(p95),
                ..Default::default()
            }),
            Sample::Jvm(JvmSample { cpu_load: Some(0.4), heap_used_bytes: Some(3e8), ..Default::default() }),
            Sample::Container(ContainerSample {
                cpu_usage_cores: Some(0.9),
                memory_working_set_bytes: Some(1.5e9),
                origin: "cgroup".into(),
                ..Default::default()
            }),
        ],
    }
}

/// Publishes through JetStream and waits for the stream's acknowledgement.
pub async fn publish(js: &jetstream::Context, b: &MetricBatch) {
    let subject =
        demeter_common::subject::metrics(&b.source.namespace, &b.source.deployment, &b.source.taskmanager_id);
    let id = format!("{}-{}", b.agent_run_id, b.agent_seq);
    let msg = jetstream::message::PublishMessage::build().payload(b.encode().into()).message_id(id);
    js.send_publish(subject, msg).await.expect("publish").await.expect("stream ack");
}

/// The durable consumer's (pending, ack pending, redelivered).
pub async fn consumer_state(js: &jetstream::Context) -> (u64, usize, usize) {
    let stream = js.get_stream("DEMETER_METRICS").await.expect("stream");
    let info = stream.consumer_info("demeter-coordinator").await.expect("consumer info");
    (info.num_pending, info.num_ack_pending, info.num_redelivered)
}

/// A read-only look at the coordinator's store.
pub fn db(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data_dir.join("demeter.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store read-only")
}

pub fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A minimal HTTP/1.0 POST on loopback: (status, body).
pub fn http_post(port: u16, path: &str, bearer: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status");
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The TOML of a coordinator configuration for tests; `extra_top` holds more top-level keys.
pub fn config_toml(
    nats_url: &str,
    port: u16,
    data: &Path,
    mode: &str,
    backend_dir: &Path,
    apply_delay: &str,
    extra_top: &str,
) -> String {
    format!(
        r#"
nats_url = "{nats_url}"
listen = "127.0.0.1:{port}"
data_dir = "{data}"
mode = "{mode}"
backend = "file"
backend_poll_interval = "5s"
{extra_top}

[store]
snapshot_interval = "500ms"

[ingest]
ack_wait = "10s"
replay_window = "15m"
max_backoff = "1s"

[file_backend]
dir = "{fb}"
apply_delay = "{apply_delay}"

[controller]
loop_interval = "30s"
overload_grace = "3s"
settle_time = "5s"
sample_window = "10s"
min_reconfig_spacing = "10s"
max_reconfigs_per_hour = 10

[controller.search_space]
parallelism = {{ min = 2, max = 8, step = 2 }}
task_slots = {{ min = 1, max = 2, step = 1 }}
tm_cpu_milli = {{ min = 1000, max = 2000, step = 1000 }}
tm_memory_mb = {{ min = 1024, max = 2048, step = 1024 }}
checkpoint_interval_ms = {{ min = 10000, max = 10000, step = 1 }}

[controller.quota]
max_total_cpu = 16.0
max_total_memory_mb = 32768

[[jobs]]
namespace = "flink"
name = "cars"
current = {{ parallelism = 2, task_slots = 1, tm_cpu_milli = 1000, tm_memory_mb = 1024, checkpoint_interval_ms = 10000 }}
"#,
        data = data.display(),
        fb = backend_dir.display(),
    )
}

pub fn small_config() -> demeter_common::JobConfig {
    demeter_common::JobConfig {
        parallelism: 2,
        task_slots: 1,
        tm_cpu_milli: 1000,
        tm_memory_mb: 1024,
        checkpoint_interval_ms: 10_000,
    }
}

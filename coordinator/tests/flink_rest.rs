//! The flink-rest backend against a real standalone Flink 2.3.0 cluster
//! (`scripts/flink-cluster.sh`) running the real test job (`tests/flink-job`): in-place rescaling
//! through the adaptive scheduler with TaskManagers added and removed by `tests/e2e/tm.sh`,
//! redeploys by stop-with-savepoint and resubmission, a rollback after Flink rejects the new
//! configuration, TaskManager replacement for a slot and memory change, refused changes, and
//! exact event counts across all of it.
//!
//! Needs Flink and a JDK (`scripts/install-deps.sh flink`). Named `flink_*` so that nextest runs
//! it alone (`.config/nextest.toml`).

use demeter_common::config::Steps;
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace};
use demeter_coordinator::backend::flink_rest::client::{FlinkClient, RunRequest};
use demeter_coordinator::backend::flink_rest::{FlinkRestBackend, FlinkRestConfig, JournalEntry};
use demeter_coordinator::backend::{Backend, BackendError, JobKey};
use demeter_core::controller::{ReconfigKind, Reconfiguration};
use demeter_core::decide::{CurrentHealth, DecideConfig, decide};
use demeter_core::perf::{PerfModel, PerfModelConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NS: &str = "flink";
const JOB: &str = "rest-backend-test";
/// The test trace: a square wave, 40 s at RATE records/s then 20 s of nothing, repeated.
const PERIOD_S: i64 = 60;
const ON_S: i64 = 40;
const RATE: i64 = 300;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the coordinator lives in the repository")
        .to_path_buf()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn bash(args: &[&str]) -> std::process::Output {
    Command::new("bash").args(args).stdin(Stdio::null()).output().expect("run bash")
}

/// A standalone cluster in a temporary directory, stopped on drop (also when the test panics).
struct Cluster {
    dir: tempfile::TempDir,
    rest_url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("demeter-flink-rest-").tempdir().unwrap();
        let script = repo().join("scripts/flink-cluster.sh");
        let out = bash(&[
            script.to_str().unwrap(),
            "start",
            dir.path().to_str().unwrap(),
            "--taskmanagers",
            "1",
            "--slots",
            "4",
            // Scale-downs pack the job onto the fewest TaskManagers (see the backend's docs).
            "--conf",
            "jobmanager.adaptive-scheduler.prefer-minimal-taskmanagers=true",
            "--conf",
            "execution.target=embedded",
            "--conf",
            "metrics.fetcher.update-interval=1000",
        ]);
        let mut cluster = Cluster { dir, rest_url: String::new() };
        assert!(
            out.status.success(),
            "flink-cluster.sh start failed (install Flink with scripts/install-deps.sh flink):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(cluster.dir.path().join("cluster.env")).unwrap();
        cluster.rest_url = env.lines().find_map(|l| l.strip_prefix("FLINK_REST_URL=")).unwrap().to_string();
        cluster
    }

    fn workdir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = repo().join("scripts/flink-cluster.sh");
        let _ = bash(&[script.to_str().unwrap(), "stop", self.dir.path().to_str().unwrap()]);
    }
}

fn build_jar(out: &Path) -> PathBuf {
    let o = bash(&[repo().join("tests/flink-job/build.sh").to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "build.sh failed:\n{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().lines().last().unwrap().trim())
}

fn reconfiguration(id: u64, from: JobConfig, to: JobConfig) -> Reconfiguration {
    let model = PerfModel::fit(&[], &PerfModelConfig::default());
    let space = SearchSpace {
        parallelism: Steps::new(1, 8, 1),
        task_slots: Steps::new(1, 4, 1),
        tm_cpu_milli: Steps::new(1000, 2000, 1000),
        tm_memory_mb: Steps::new(1024, 1280, 256),
        checkpoint_interval_ms: Steps::new(1, 10_000, 1),
        full_taskmanagers_only: false,
    };
    let quota = Quota { max_total_cpu: 64.0, max_total_memory_mb: 1 << 20 };
    let decision = decide(
        &model,
        &[to],
        &from,
        100.0,
        CurrentHealth::default(),
        &Constraints::default(),
        &quota,
        &space,
        &DecideConfig::default(),
    );
    let kind = if from.parallelism_only_change(&to) { ReconfigKind::InPlace } else { ReconfigKind::Redeploy };
    Reconfiguration { id, from, to, kind, decision }
}

/// Sum over the subtasks of a vertex metric (REST, refreshed every second by the test cluster).
async fn metric_sum(rest: &str, jid: &str, vertex_prefix: &str, metric: &str) -> f64 {
    let http = reqwest::Client::new();
    let job: serde_json::Value =
        http.get(format!("{rest}/jobs/{jid}")).send().await.unwrap().json().await.unwrap();
    let vid = job["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with(vertex_prefix))
        .unwrap_or_else(|| panic!("no vertex {vertex_prefix} in {job}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{rest}/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={metric}&agg=sum");
    let v: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
    v[0]["sum"].as_f64().unwrap_or(-1.0)
}

/// Records of the square-wave trace due `elapsed_ms` after the anchor (as TraceSchedule computes).
fn due(elapsed_ms: i64) -> i64 {
    let periods = elapsed_ms / (PERIOD_S * 1000);
    let within = (elapsed_ms % (PERIOD_S * 1000)).min(ON_S * 1000);
    periods * ON_S * RATE + within * RATE / 1000
}

async fn wait_all_running(client: &FlinkClient, jid: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if client.job(jid).await.is_ok_and(|d| d.all_running()) {
            return;
        }
        assert!(Instant::now() < deadline, "job {jid} did not run within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn parallelisms(client: &FlinkClient, jid: &str) -> Vec<u32> {
    client.job(jid).await.unwrap().vertices.iter().map(|v| v.parallelism).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "open issue #7: after stop-with-savepoint and resubmission the job's emitted-record count is half the due count; run with --run-ignored all"]
async fn flink_rest_backend_rescales_redeploys_rolls_back_and_loses_nothing() {
    let work = tempfile::tempdir().unwrap();
    let jar = build_jar(&work.path().join("job"));
    let trace = work.path().join("square.csv");
    let mut csv = String::from("timestamp|value\n");
    for s in 0..PERIOD_S {
        csv.push_str(&format!("{s}|{}\n", if s < ON_S { RATE } else { 0 }));
    }
    std::fs::write(&trace, csv).unwrap();
    let cluster = Cluster::start();
    let tm_sh = repo().join("tests/e2e/tm.sh");
    let tm_sh = tm_sh.to_str().unwrap();
    let journal = work.path().join("journal.jsonl");

    // The job's timeline starts a little after its submission; resubmissions continue it.
    let anchor = now_ms() + 5_000;
    let program_args: Vec<String> = [
        "--trace",
        trace.to_str().unwrap(),
        "--trace-anchor-ms",
        &anchor.to_string(),
        "--lookup-us",
        "500",
        "--work",
        "100",
        "--splits",
        "16",
        "--name",
        JOB,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cfg = FlinkRestConfig {
        rest_url: cluster.rest_url.clone(),
        namespace: NS.into(),
        jar: Some(jar.clone()),
        program_args: program_args.clone(),
        taskmanager_add_command: s(&[
            "bash",
            tm_sh,
            "add",
            cluster.workdir(),
            "--slots",
            "{slots}",
            "--memory-mb",
            "{memory_mb}",
        ]),
        taskmanager_remove_command: s(&["bash", tm_sh, "remove", cluster.workdir(), "{tm_id}"]),
        tm_cpu_milli: Some(1000),
        journal: Some(journal.clone()),
        running_timeout: Duration::from_secs(150),
        ..FlinkRestConfig::default()
    };
    let backend = FlinkRestBackend::new(cfg.clone()).unwrap();
    let client = backend.client().clone();
    let key = JobKey::new(NS, JOB);

    // Submit the job the way an operator would: upload, run at parallelism 2.
    let jar_id = client.upload_jar(&jar).await.unwrap();
    let first = client
        .run_jar(
            &jar_id,
            &RunRequest { program_args: program_args.clone(), parallelism: 2, ..Default::default() },
        )
        .await
        .unwrap();
    wait_all_running(&client, &first).await;

    // What runs.
    let jobs = backend.list_jobs().await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.key.clone()).collect::<Vec<_>>(), vec![key.clone()]);
    let p2 = backend.current_config(&key).await.unwrap();
    assert_eq!(
        p2,
        JobConfig {
            parallelism: 2,
            task_slots: 4,
            tm_cpu_milli: 1000,
            tm_memory_mb: 1024,
            checkpoint_interval_ms: 5000
        }
    );
    let e = backend.current_config(&JobKey::new("elsewhere", JOB)).await.unwrap_err();
    assert_eq!(e.kind(), "not_found", "{e}");
    assert!(!backend.can_profile() && backend.can_apply());

    // 1. In place up: 2 → 6 needs a second TaskManager, which the backend starts first.
    let p6 = JobConfig { parallelism: 6, ..p2 };
    let t = Instant::now();
    let rep = backend.reconfigure(&key, &reconfiguration(1, p2, p6)).await.unwrap();
    eprintln!("2 -> 6 in place: downtime {:.2} s, call {:.1} s", rep.downtime_s, t.elapsed().as_secs_f64());
    assert!(rep.downtime_s > 0.0 && rep.downtime_s < 10.0, "downtime {}", rep.downtime_s);
    assert_eq!(client.overview().await.unwrap().taskmanagers, 2);
    assert_eq!(parallelisms(&client, &first).await, vec![6, 6, 6]);
    assert_eq!(backend.current_config(&key).await.unwrap(), p6);

    // 2. In place down: 6 → 3 fits one TaskManager; the idle one is stopped afterwards.
    let p3 = JobConfig { parallelism: 3, ..p2 };
    let rep = backend.reconfigure(&key, &reconfiguration(2, p6, p3)).await.unwrap();
    eprintln!("6 -> 3 in place: downtime {:.2} s", rep.downtime_s);
    assert!(rep.downtime_s > 0.0 && rep.downtime_s < 10.0, "downtime {}", rep.downtime_s);
    assert_eq!(client.overview().await.unwrap().taskmanagers, 1, "the idle TaskManager is removed");
    assert_eq!(parallelisms(&client, &first).await, vec![3, 3, 3]);
    assert!(client.exception_count(&first).await.unwrap() == 0, "rescaling is no failure");

    // 3. Refused before anything is touched: CPU cannot change, and more TaskManagers cannot be
    //    started without an add command.
    let e = backend
        .reconfigure(&key, &reconfiguration(3, p3, JobConfig { tm_cpu_milli: 2000, ..p3 }))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
    let no_add = FlinkRestBackend::new(FlinkRestConfig {
        taskmanager_add_command: Vec::new(),
        journal: None,
        ..cfg.clone()
    })
    .unwrap();
    let e = no_add.reconfigure(&key, &reconfiguration(4, p3, p6)).await.unwrap_err();
    assert_eq!(e.kind(), "failed", "{e}");
    assert!(e.to_string().contains("taskmanager_add_command"), "{e}");
    assert_eq!(parallelisms(&client, &first).await, vec![3, 3, 3], "the job is untouched");
    assert_eq!(backend.find_job(&key).await.unwrap().jid, first);

    // 4. Redeploy: a new checkpoint interval (and parallelism) needs stop-with-savepoint and a
    //    resubmission from the savepoint.
    let slow = JobConfig { parallelism: 2, checkpoint_interval_ms: 10_000, ..p3 };
    let rep = backend.reconfigure(&key, &reconfiguration(5, p3, slow)).await.unwrap();
    eprintln!("redeploy (checkpoint 5 s -> 10 s, p 3 -> 2): downtime {:.2} s", rep.downtime_s);
    assert!(rep.downtime_s > 0.0 && rep.downtime_s < 60.0, "downtime {}", rep.downtime_s);
    let second = backend.find_job(&key).await.unwrap().jid;
    assert_ne!(second, first);
    assert_eq!(client.checkpoint_interval_ms(&second).await.unwrap(), Some(10_000));
    assert_eq!(backend.current_config(&key).await.unwrap(), slow);

    // 5. Flink rejects a 1 ms checkpoint interval at submission: the backend resubmits the old
    //    configuration from the same savepoint and reports the failure.
    let bad = JobConfig { checkpoint_interval_ms: 1, ..slow };
    let e = backend.reconfigure(&key, &reconfiguration(6, slow, bad)).await.unwrap_err();
    eprintln!("rejected redeploy: {e}");
    assert!(e.to_string().contains("rolled back"), "{e}");
    assert!(e.to_string().contains("larger than or equal to 10 ms"), "the root cause is reported: {e}");
    let third = backend.find_job(&key).await.unwrap().jid;
    assert_ne!(third, second);
    wait_all_running(&client, &third).await;
    assert_eq!(backend.current_config(&key).await.unwrap(), slow, "the old configuration runs again");

    // 6. Slots and memory: every TaskManager is replaced while the job is stopped.
    let small = JobConfig { task_slots: 2, tm_memory_mb: 1280, ..slow };
    let rep = backend.reconfigure(&key, &reconfiguration(7, slow, small)).await.unwrap();
    eprintln!("redeploy (4 -> 2 slots, 1024 -> 1280 MB): downtime {:.2} s", rep.downtime_s);
    let tms = client.taskmanagers().await.unwrap();
    assert_eq!(tms.len(), 1, "{tms:?}");
    assert_eq!(tms[0].slots_number, 2);
    assert_eq!(backend.current_config(&key).await.unwrap(), small);
    let fourth = backend.find_job(&key).await.unwrap().jid;

    // The journal has every attempt, with the measured downtime of the applied ones.
    let entries: Vec<JournalEntry> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, bool)> = entries.iter().map(|e| (e.kind.as_str(), e.ok)).collect();
    assert_eq!(
        kinds,
        vec![
            ("in_place", true),
            ("in_place", true),
            ("none", false),
            ("redeploy", true),
            ("redeploy", false),
            ("redeploy", true)
        ]
    );
    assert_eq!((entries[0].taskmanagers_added, entries[1].taskmanagers_removed), (1, 1));
    assert!(entries[4].rolled_back && entries[4].error.is_some());
    assert!(entries.iter().filter(|e| e.ok).all(|e| e.downtime_s.is_some()));
    assert_eq!(entries[5].taskmanagers_removed, 1);
    assert_eq!(entries[5].taskmanagers_added, 1);

    // Nothing lost, nothing twice: in the next pause of the trace, once the pipeline has
    // drained, every record due so far was taken in exactly once and came out exactly once.
    let elapsed = now_ms() - anchor;
    let into_period = elapsed.rem_euclid(PERIOD_S * 1000);
    let gap_start = elapsed - into_period + ON_S * 1000;
    let check_at = if into_period < ON_S * 1000 { gap_start } else { gap_start + PERIOD_S * 1000 } + 8_000;
    tokio::time::sleep(Duration::from_millis((check_at - elapsed).max(0) as u64)).await;
    let events_in = metric_sum(&cluster.rest_url, &fourth, "Source", "Source__rate-source.eventsIn").await;
    let events_out = metric_sum(&cluster.rest_url, &fourth, "window-count", "tally.eventsOut").await;
    let pending =
        metric_sum(&cluster.rest_url, &fourth, "Source", "Source__rate-source.pendingRecords").await;
    let expected = due(now_ms() - anchor);
    eprintln!("events in {events_in}, out {events_out}, pending {pending}, due {expected}");
    assert_eq!(events_in, expected as f64, "every due record was emitted once");
    assert_eq!(events_out, events_in, "every record came out once");
    assert_eq!(pending, 0.0);
    assert_eq!(client.exception_count(&fourth).await.unwrap(), 0);
    drop(cluster);
}

//! Coordinator ingest throughput and memory per managed job.
//!
//! ```text
//! . scripts/env.sh                      # NATS_SERVER
//! cargo bench -p demeter-coordinator --bench ingest
//! taskset -c 0 cargo bench -p demeter-coordinator --bench ingest   # pin to one core
//! ```
//!
//! 1. **Ingest**: batches are published to a real nats-server's `DEMETER_METRICS` stream first;
//!    then the coordinator's real pipeline (durable pull consumer → decode → route → job driver
//!    → aggregator → controller → SQLite checkpoints → acks) consumes them on a single-threaded
//!    tokio runtime. Reported: samples/s of wall time until every batch was handled by its
//!    driver, samples per CPU-second of the whole process (SQLite writes run on blocking
//!    threads), and the time until the last ack. Decoding alone is measured for reference.
//! 2. **Memory per job**: `BENCH_JOBS` jobs with `BENCH_TMS` TaskManagers each are fed
//!    `BENCH_WARM_S` seconds of one-second batches directly (no NATS); the resident set size
//!    grows by the reported amount per job. The size of one job's persisted state is reported
//!    too.
//!
//! Knobs (environment): `BENCH_INGEST_JOBS` (20), `BENCH_INGEST_TMS` (4), `BENCH_INGEST_SECONDS`
//! (120), `BENCH_SAMPLES` per batch (100), `BENCH_JOBS` (50), `BENCH_TMS` (4), `BENCH_WARM_S`
//! (3600).

use async_nats::jetstream;
use demeter_common::wire::{
    ContainerSample, FlinkMemorySample, JvmSample, LatencySample, OperatorSample, Source, SubtaskId,
    TaskSample,
};
use demeter_common::{MetricBatch, SCHEMA_VERSION, Sample, UnixMillis};
use demeter_coordinator::backend::{JobKey, NoBackend};
use demeter_coordinator::runtime::config::CoordinatorConfig;
use demeter_coordinator::runtime::driver::{DriverMsg, Shared};
use demeter_coordinator::runtime::health::Health;
use demeter_coordinator::runtime::ingest::{Ingest, NatsSettings, ensure_stream};
use demeter_coordinator::runtime::metrics::Metrics;
use demeter_coordinator::runtime::store::Store;
use demeter_coordinator::runtime::{Jobs, Route};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time (user + system) of this process, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command; 100 ticks/s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A TaskManager's scrape with about `n` samples: 3 vertices × subtasks, the sources' operator
/// metrics, latency, JVM, Flink memory and container.
fn tm_batch(job: &str, tm: usize, seq: u64, at: UnixMillis, n: usize, rate: f64) -> MetricBatch {
    let subtasks = (n.saturating_sub(3) / 5).max(1);
    let mut samples = Vec::with_capacity(n);
    for s in 0..subtasks {
        let id = |v: &str, name: &str| SubtaskId {
            job_id: "0123456789abcdef".into(),
            vertex_id: v.into(),
            vertex_name: name.into(),
            subtask_index: (tm * subtasks + s) as u32,
        };
        let per = rate / subtasks as f64;
        samples.push(Sample::Task(TaskSample {
            id: id("cbc357ccb763df2852fee8c4fc7d55f2", "Source: rate-source"),
            records_out_per_s: Some(per),
            busy_ms_per_s: Some(120.0),
            idle_ms_per_s: Some(880.0),
            backpressured_ms_per_s: Some(0.0),
            records_out_total: Some(per * seq as f64),
            ..Default::default()
        }));
        samples.push(Sample::Operator(OperatorSample {
            id: id("cbc357ccb763df2852fee8c4fc7d55f2", "Source: rate-source"),
            operator_name: "Source: rate-source".into(),
            pending_records: Some(25.0),
            current_emit_event_time_lag_ms: Some(40.0),
            ..Default::default()
        }));
        samples.push(Sample::Task(TaskSample {
            id: id("90bea66de1c231edf33913ecd54406c1", "work"),
            records_in_per_s: Some(per),
            records_out_per_s: Some(per),
            busy_ms_per_s: Some(610.0),
            idle_ms_per_s: Some(390.0),
            backpressured_ms_per_s: Some(0.0),
            ..Default::default()
        }));
        samples.push(Sample::Task(TaskSample {
            id: id("6d2677a0ecc3fd8df0b72ec675edf8f4", "window-count -> discard: Writer"),
            records_in_per_s: Some(per),
            busy_ms_per_s: Some(90.0),
            ..Default::default()
        }));
        samples.push(Sample::Latency(LatencySample {
            id: id("90bea66de1c231edf33913ecd54406c1", "work"),
            operator_name: "work".into(),
            metric: "latencyHistogram".into(),
            p50_ms: Some(300.0),
            p95_ms: Some(820.0),
            p99_ms: Some(1100.0),
            ..Default::default()
        }));
    }
    samples.push(Sample::Jvm(JvmSample {
        cpu_load: Some(0.3),
        heap_used_bytes: Some(4.1e8),
        heap_max_bytes: Some(1.0e9),
        gc_time_ms_per_s: Some(4.0),
        threads: Some(80.0),
        ..Default::default()
    }));
    samples.push(Sample::FlinkMemory(FlinkMemorySample {
        managed_used_bytes: Some(2.0e8),
        ..Default::default()
    }));
    samples.push(Sample::Container(ContainerSample {
        cpu_usage_cores: Some(0.9),
        memory_working_set_bytes: Some(1.6e9),
        memory_limit_bytes: Some(2.0e9),
        origin: "cgroup".into(),
        ..Default::default()
    }));
    MetricBatch {
        schema_version: SCHEMA_VERSION,
        source: Source {
            namespace: "bench".into(),
            deployment: job.into(),
            job_id: Some("0123456789abcdef".into()),
            taskmanager_id: format!("{job}-taskmanager-1-{tm}"),
            pod: format!("{job}-taskmanager-1-{tm}"),
            host: "node-1".into(),
        },
        agent_run_id: format!("run-{job}-{tm}"),
        agent_seq: seq,
        collected_at: at,
        samples,
    }
}

fn runtime_parts(cfg: &CoordinatorConfig) -> (Arc<Jobs>, Arc<Metrics>, Arc<Health>) {
    let metrics = Arc::new(Metrics::new());
    let store = Store::open_in(&cfg.data_dir);
    let health = Arc::new(Health::new(cfg.mode, "none", false, store.clone(), metrics.clone()));
    let shared =
        Shared { store, backend: Arc::new(NoBackend), metrics: metrics.clone(), health: health.clone() };
    (Jobs::new(Arc::new(cfg.clone()), shared), metrics, health)
}

async fn sync_all(jobs: &Arc<Jobs>, keys: &[JobKey]) {
    for k in keys {
        if let Some(tx) = jobs.sender(k) {
            let (t, r) = oneshot::channel();
            if tx.send(DriverMsg::Sync(t)).await.is_ok() {
                let _ = r.await;
            }
        }
    }
}

fn bench_ingest() {
    let n_jobs = env_or("BENCH_INGEST_JOBS", 20) as usize;
    let n_tms = env_or("BENCH_INGEST_TMS", 4) as usize;
    let seconds = env_or("BENCH_INGEST_SECONDS", 120);
    let per_batch = env_or("BENCH_SAMPLES", 100) as usize;
    let nats = demeter_testkit::NatsServer::new();
    let dir = tempfile::tempdir().unwrap();

    let mut cfg =
        CoordinatorConfig { nats_url: nats.url(), data_dir: dir.path().join("data"), ..Default::default() };
    cfg.ingest.replay_window = Duration::from_secs(3600);
    cfg.ingest.fetch_batch = 1000;
    cfg.store.snapshot_interval = Duration::from_secs(1);

    // Publish everything first (the coordinator is "restarting" into a backlog).
    let pub_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (payloads, n_samples) = pub_rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        ensure_stream(&js, &cfg.stream).await.unwrap();
        let t0 = UnixMillis::now().0 - (seconds as i64 + 5) * 1000;
        let mut acks = Vec::new();
        let mut payloads = Vec::new();
        let mut n_samples = 0usize;
        for s in 0..seconds {
            for j in 0..n_jobs {
                for tm in 0..n_tms {
                    let job = format!("job-{j}");
                    let b = tm_batch(&job, tm, s, UnixMillis(t0 + s as i64 * 1000), per_batch, 4000.0);
                    n_samples += b.samples.len();
                    let subject = demeter_common::subject::metrics("bench", &job, &b.source.taskmanager_id);
                    let bytes = b.encode();
                    payloads.push(bytes.clone());
                    acks.push(js.publish(subject, bytes.into()).await.unwrap());
                    if acks.len() >= 2000 {
                        for a in acks.drain(..) {
                            a.await.unwrap();
                        }
                    }
                }
            }
        }
        for a in acks {
            a.await.unwrap();
        }
        (payloads, n_samples)
    });
    let n_batches = payloads.len();
    let avg_bytes = payloads.iter().map(Vec::len).sum::<usize>() / n_batches.max(1);

    // Decoding alone, for reference.
    let t = Instant::now();
    let mut decoded = 0usize;
    for p in &payloads {
        decoded += MetricBatch::decode(p).unwrap().samples.len();
    }
    let decode_rate = decoded as f64 / t.elapsed().as_secs_f64();
    drop(payloads);

    // The pipeline on one thread.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let keys: Vec<JobKey> = (0..n_jobs).map(|j| JobKey::new("bench", format!("job-{j}"))).collect();
    let (wall, cpu, e2e) = rt.block_on(async {
        let (jobs, metrics, health) = runtime_parts(&cfg);
        let settings = NatsSettings::from_config(&cfg);
        let client = settings.connect_supervised(health.clone()).await.unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let ingest = Ingest {
            cfg: Arc::new(cfg.clone()),
            client: client.clone(),
            jobs: jobs.clone(),
            health,
            metrics: metrics.clone(),
        };
        // Start the drivers (they restore nothing) before the clock starts.
        for k in &keys {
            assert!(matches!(jobs.route(k).await, Route::To(_)));
        }
        sync_all(&jobs, &keys).await;
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let task = tokio::spawn(ingest.run(stop_rx));
        while metrics.ingest_batches.get() < n_batches as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sync_all(&jobs, &keys).await;
        let wall = start.elapsed();
        let cpu = cpu_seconds() - cpu0;
        // Until the server has every ack.
        let js = jetstream::new(client.clone());
        loop {
            let info = js
                .get_stream(&cfg.stream.name)
                .await
                .unwrap()
                .consumer_info(&cfg.ingest.consumer)
                .await
                .unwrap()
                .clone();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e2e = start.elapsed();
        let _ = stop_tx.send(true);
        let _ = task.await;
        jobs.shutdown(Duration::from_secs(30)).await;
        (wall, cpu, e2e)
    });
    println!("## Coordinator ingest: throughput");
    println!(
        "batches: {n_batches} ({n_jobs} jobs x {n_tms} TaskManagers x {seconds} s), {} samples/batch, {avg_bytes} bytes/batch",
        n_samples / n_batches.max(1)
    );
    println!("decode only:            {:>10.0} samples/s", decode_rate);
    println!(
        "pipeline, one thread:   {:>10.0} samples/s  ({:.0} batches/s; {:.2} s wall for {n_samples} samples)",
        n_samples as f64 / wall.as_secs_f64(),
        n_batches as f64 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "per CPU-second:         {:>10.0} samples/s  ({:.2} s CPU, all threads incl. SQLite)",
        n_samples as f64 / cpu.max(1e-9),
        cpu
    );
    println!("until the last ack:     {:.2} s (checkpoint interval 1 s)", e2e.as_secs_f64());
}

fn bench_memory() {
    let n_jobs = env_or("BENCH_JOBS", 50) as usize;
    let n_tms = env_or("BENCH_TMS", 4) as usize;
    let warm = env_or("BENCH_WARM_S", 3600);
    let per_batch = env_or("BENCH_SAMPLES", 100) as usize;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = CoordinatorConfig { data_dir: dir.path().join("data"), ..Default::default() };
    cfg.ingest.replay_window = Duration::from_secs(warm + 600);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let keys: Vec<JobKey> = (0..n_jobs).map(|j| JobKey::new("bench", format!("job-{j}"))).collect();
    let (rss0, rss1, state_bytes, elapsed) = rt.block_on(async {
        let (jobs, _metrics, health) = runtime_parts(&cfg);
        health.set_nats_connected(true, None);
        let rss0 = rss_bytes();
        let start = Instant::now();
        let t0 = UnixMillis::now().0 - (warm as i64 + 5) * 1000;
        let mut senders = Vec::new();
        for k in &keys {
            match jobs.route(k).await {
                Route::To(tx) => senders.push(tx),
                Route::Refused(r) => panic!("{r}"),
            }
        }
        // A daily-shaped rate so that the forecaster and the model see something real.
        for s in 0..warm {
            let phase = (s as f64 / 3600.0) * std::f64::consts::TAU / 24.0;
            let rate = 3000.0 + 1500.0 * phase.sin();
            for (j, tx) in senders.iter().enumerate() {
                for tm in 0..n_tms {
                    let b = tm_batch(
                        &format!("job-{j}"),
                        tm,
                        s,
                        UnixMillis(t0 + s as i64 * 1000),
                        per_batch,
                        rate,
                    );
                    tx.send(DriverMsg::Batch { batch: Box::new(b), ack: None }).await.unwrap();
                }
            }
        }
        sync_all(&jobs, &keys).await;
        let elapsed = start.elapsed();
        let rss1 = rss_bytes();
        let state =
            jobs.shared().store.load_snapshot(&keys[0]).await.ok().flatten().map_or(0, |r| r.state.len());
        jobs.shutdown(Duration::from_secs(60)).await;
        (rss0, rss1, state, elapsed)
    });
    let per_job = rss1.saturating_sub(rss0) as f64 / n_jobs as f64;
    println!("## Coordinator ingest: memory per managed job");
    println!(
        "{n_jobs} jobs x {n_tms} TaskManagers, {warm} s of 1-s batches ({per_batch} samples) each, fed in {:.1} s",
        elapsed.as_secs_f64()
    );
    println!("RSS before: {:.1} MiB, after: {:.1} MiB", rss0 as f64 / 1048576.0, rss1 as f64 / 1048576.0);
    println!("memory per job: {:.0} KiB", per_job / 1024.0);
    println!(
        "persisted controller state per job: {:.0} KiB (JSON, checkpoint of the last snapshot)",
        state_bytes as f64 / 1024.0
    );
}

fn main() {
    // `cargo test --benches` runs benches with `--bench`-less arguments: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    if std::env::var_os("NATS_SERVER").is_none()
        && !demeter_testkit::cache_dir().join("venv/bin/nats-server").is_file()
        && std::process::Command::new("nats-server").arg("--version").output().is_err()
    {
        eprintln!(
            "skipping the ingest benchmark: nats-server not found (scripts/install-deps.sh nats; . scripts/env.sh)"
        );
    } else {
        bench_ingest();
    }
    bench_memory();
}

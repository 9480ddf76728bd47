//! The API, the metrics, the degraded mode and recommend-only, against a real nats-server.

mod common;

use async_nats::jetstream;
use common::*;
use demeter_common::UnixMillis;
use demeter_coordinator::backend::JobKey;
use demeter_coordinator::backend::file::FileBackend;
use demeter_coordinator::runtime::config::StreamConfig;
use demeter_coordinator::runtime::ingest::ensure_stream;
use demeter_testkit::{NatsServer, http_get, wait_until};
use std::time::Duration;

const TOKEN: &str = "test-token-0123456789";

fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_metrics_auth_degradation_and_recommend_only() {
    let mut nats = NatsServer::new();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fb_dir = dir.path().join("fb");
    let fb = FileBackend::new(fb_dir.clone()).unwrap();
    let job = JobKey::new("flink", "cars");
    fb.write_config(&job, &small_config()).unwrap();
    let port = api_port();
    let cfg = dir.path().join("coordinator.toml");
    let top = format!("api_token = \"{TOKEN}\"\nnamespaces = [\"flink\"]");
    std::fs::write(&cfg, config_toml(&nats.url(), port, &data, "recommend-only", &fb_dir, "0s", &top))
        .unwrap();
    let coord = Coordinator::start(&cfg, port, &dir.path().join("coordinator.log"));
    coord.wait_ready(Duration::from_secs(20));

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_stream(&js, &StreamConfig::default()).await.unwrap();

    // 60 s of an overloaded job, 90 s in the past, plus a batch of an unwatched namespace and
    // two messages that are not batches.
    let t0 = UnixMillis::now().0 - 90_000;
    for i in 0..60u64 {
        let b =
            batch("flink", "cars", "cars-tm-1", "r1", i, UnixMillis(t0 + i as i64 * 1000), 1500.0, i >= 10);
        publish(&js, &b).await;
    }
    publish(&js, &batch("other", "x", "tm", "r", 0, UnixMillis(t0), 1.0, false)).await;
    js.publish("demeter.metrics.flink.cars.junk", "not msgpack".into()).await.unwrap().await.unwrap();
    let mut bad = batch("flink", "cars", "cars-tm-1", "r1", 999, UnixMillis(t0), 1.0, false);
    bad.schema_version = 42;
    js.publish("demeter.metrics.flink.cars.cars-tm-1", bad.encode().into()).await.unwrap().await.unwrap();

    let absorbed = wait_until(Duration::from_secs(30), || {
        coord.get("/api/v1/jobs/flink/cars").1["observations"].as_u64() == Some(60)
    });
    let v = coord.get("/api/v1/jobs/flink/cars").1;
    assert!(
        absorbed,
        "observations {} batches {} aggregator {}",
        v["observations"], v["batches"], v["aggregator"]
    );

    // GET /api/v1/jobs
    let (code, list) = coord.get("/api/v1/jobs");
    assert_eq!(code, 200);
    let jobs = list["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "only the watched namespace is managed: {list}");
    assert_eq!(jobs[0]["name"], "cars");
    assert_eq!(jobs[0]["mode"], "recommend-only");
    assert_eq!(jobs[0]["current"]["parallelism"], 2);

    // GET /api/v1/jobs/{ns}/{name}: configuration, model, decisions with explanations.
    let (code, v) = coord.get("/api/v1/jobs/flink/cars?decisions=50&observations_minutes=10");
    assert_eq!(code, 200);
    assert_eq!(v["status"]["current"]["parallelism"], 2);
    assert!(v["status"]["model"]["samples"].is_u64(), "{}", v["status"]["model"]);
    assert_eq!(v["taskmanagers"].as_u64(), Some(1));
    let decisions = v["status"]["recent_decisions"].as_array().unwrap();
    assert!(!decisions.is_empty(), "the overload led to a decision: {v}");
    let switch = decisions.iter().find(|d| d["decision"]["switch"] == true).expect("a decision to scale up");
    assert_eq!(switch["acted"], false);
    assert_eq!(switch["held_by"], "recommend-only mode");
    assert!(!switch["decision"]["explanation"]["text"].as_str().unwrap().is_empty());
    assert!(!v["history"].as_array().unwrap().is_empty(), "stored observations are served");
    let (code, _) = coord.get("/api/v1/jobs/flink/nope");
    assert_eq!(code, 404);

    // POST .../recommend needs the token; it is a dry run.
    let decided_before = v["status"]["stats"]["decisions"].as_u64().unwrap();
    assert_eq!(http_post(port, "/api/v1/jobs/flink/cars/recommend", None).0, 401);
    assert_eq!(http_post(port, "/api/v1/jobs/flink/cars/recommend", Some("wrong-token-0123456789")).0, 401);
    let (code, body) = http_post(port, "/api/v1/jobs/flink/cars/recommend", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    let rec: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rec["dry_run"], true);
    assert_eq!(rec["record"]["acted"], false);
    assert!(rec["record"]["decision"]["reason"]["kind"].is_string(), "{rec}");
    let (_, v) = coord.get("/api/v1/jobs/flink/cars");
    assert_eq!(
        v["status"]["stats"]["decisions"].as_u64().unwrap(),
        decided_before,
        "a dry run is not a decision"
    );
    // Recommend-only: nothing reached the backend.
    assert!(fb.journal(&job).unwrap().is_empty());

    // Metrics with the contract's names.
    let (code, text) = http_get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "demeter_job_input_rate{namespace=\"flink\",job=\"cars\"}",
        "demeter_job_current_cpu_cores{namespace=\"flink\",job=\"cars\"} 2.0",
        "demeter_job_recommended_cpu_cores{namespace=\"flink\",job=\"cars\"}",
        "demeter_job_current_memory_mb{namespace=\"flink\",job=\"cars\"}",
        "demeter_job_recommended_memory_mb{namespace=\"flink\",job=\"cars\"}",
        "demeter_job_latency_p95_ms{namespace=\"flink\",job=\"cars\"}",
        "demeter_decisions_total{namespace=\"flink\",job=\"cars\",reason=",
        "demeter_model_fit_seconds_bucket{",
        "demeter_ingest_lag_seconds",
        "demeter_nats_connected 1",
        "demeter_store_healthy 1",
        "demeter_ingest_rejected_total{error_type=\"malformed\"} 1",
        "demeter_ingest_rejected_total{error_type=\"unsupported_version\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    // The other namespace's batch never reaches the coordinator: the consumer filters by subject.
    assert_eq!(metric_value(&text, "demeter_ingest_batches_total"), Some(62.0));
    // The rejected messages were terminated, the rest acknowledged: nothing stays pending.
    let settled = {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = consumer_state(&js).await;
            if s.0 == 0 && s.1 == 0 {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(settled, "{:?}", consumer_state(&js).await);

    // NATS goes away: not ready, recommend-only, said in the body; back when it returns.
    let (code, ready) = coord.get("/readyz");
    assert_eq!(code, 200, "{ready}");
    nats.stop();
    let down = wait_until(Duration::from_secs(15), || matches!(http_get(port, "/readyz"), Some((503, _))));
    assert!(down, "readyz stayed ready without NATS");
    let (_, ready) = coord.get("/readyz");
    assert_eq!(ready["effective_mode"], "recommend-only");
    assert!(ready["reasons"][0].as_str().unwrap().contains("NATS"), "{ready}");
    let (_, text) = http_get(port, "/metrics").unwrap();
    assert!(text.contains("demeter_nats_connected 0"));
    nats.start();
    let up = wait_until(Duration::from_secs(30), || matches!(http_get(port, "/readyz"), Some((200, _))));
    assert!(up, "not ready after NATS returned: {:?}\n{}", http_get(port, "/readyz"), coord.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_only_a_nats_url_uses_the_defaults_and_bad_config_is_explained() {
    // Bad configuration: exit code 2 and one line per problem, naming key, value and range.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demeter-coordinator"))
        .args(["run", "--nats-url", "nats://127.0.0.1:4222", "--listen", "nowhere", "--mode", "apply"])
        .env("DEMETER_COORDINATOR_INGEST__ACK_WAIT", "1s")
        .env("DEMETER_COORDINATOR_API_TOKEN", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value \"nowhere\" for `listen`"), "{err}");
    assert!(err.contains("invalid value 1s for `ingest.ack_wait`: allowed 10s..=1h"), "{err}");
    assert!(err.contains("`api_token`") && !err.contains("short\n"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demeter-coordinator"))
        .args(["run", "--mode", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: recommend-only, apply"));

    // `run --nats-url` alone: defaults for everything else (data dir ./demeter-data in the
    // working directory, API on 0.0.0.0:8080 is replaced here by the env to avoid clashes).
    let nats = NatsServer::new();
    let dir = tempfile::tempdir().unwrap();
    let port = api_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_demeter-coordinator"))
        .args(["run", "--nats-url", &nats.url()])
        .env("DEMETER_COORDINATOR_LISTEN", format!("127.0.0.1:{port}"))
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(20), || matches!(http_get(port, "/readyz"), Some((200, _))));
    let (_, body) = http_get(port, "/readyz").unwrap_or_default();
    demeter_testkit::sigterm(child.id());
    let st = demeter_testkit::wait_child(&mut child, Duration::from_secs(20));
    assert!(ready, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["mode"], "recommend-only");
    assert_eq!(v["backend"], "none");
    assert!(dir.path().join("demeter-data/demeter.db").is_file());
    assert!(st.is_some_and(|s| s.success()), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_batches_as_json_lines() {
    let nats = NatsServer::new();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_stream(&js, &StreamConfig::default()).await.unwrap();
    let t0 = UnixMillis::now().0 - 10_000;
    for i in 0..5u64 {
        publish(&js, &batch("flink", "cars", "tm-1", "r", i, UnixMillis(t0 + i as i64 * 1000), 10.0, false))
            .await;
    }
    // From the stream: the five stored batches, in order, then exit.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demeter-coordinator"))
        .args(["tail", "--nats-url", &nats.url(), "--from-stream", "--count", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["agent_seq"], i as u64);
        assert_eq!(l["source"]["deployment"], "cars");
        assert_eq!(l["samples"][0]["kind"], "task");
    }

    // Live: a junk message is reported on stderr and not counted.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_demeter-coordinator"))
        .args(["tail", "--nats-url", &nats.url(), "--count", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut done = None;
    for seq in 100..200 {
        client.publish("demeter.metrics.flink.cars.tm-1", "junk".into()).await.unwrap();
        let b = batch("flink", "cars", "tm-1", "r", seq, UnixMillis::now(), 10.0, false);
        client.publish("demeter.metrics.flink.cars.tm-1", b.encode().into()).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(Some(st)) = child.try_wait() {
            done = Some(st);
            break;
        }
    }
    let st = done.expect("tail --count 2 exits");
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    for l in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["agent_seq"].as_u64().unwrap() >= 100);
    }
}

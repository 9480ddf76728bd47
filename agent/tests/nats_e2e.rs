//! The agent binary against a real `nats-server` (JetStream): delivery without gaps, a 30 s NATS
//! outage, SIGTERM with a spool directory, a dead and a malformed TaskManager endpoint.
//!
//! The TaskManager is stood in for by a small HTTP server that serves the exposition captured
//! from a real Flink 2.3 TaskManager (`tests/fixtures/flink-2.3-taskmanager.prom`); the test
//! against a live Flink cluster is `flink_e2e.rs`.

mod support;

use demeter_common::wire::{AgentHeartbeat, AgentState, Sample};
use demeter_testkit::{NatsServer, http_get, wait_until};
use futures::StreamExt;
use std::time::{Duration, Instant};
use support::{Agent, ExpositionServer, FIXTURE, assert_contiguous, read_stream};

fn base_args<'a>(nats: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "--metrics-url",
        url,
        "--nats-url",
        nats,
        "--namespace",
        "flink",
        "--deployment",
        "ratejob",
        "--taskmanager",
        "tm-1",
        "--interval",
        "200ms",
        "--heartbeat-interval",
        "1s",
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_batch_arrives_in_order_without_gaps() {
    let nats = NatsServer::new();
    let tm = ExpositionServer::start(FIXTURE);
    let url = tm.url();
    let nats_url = nats.url();

    let client = async_nats::connect(&nats_url).await.unwrap();
    let mut live = client.subscribe("demeter.metrics.>").await.unwrap();
    let mut heartbeats = client.subscribe("demeter.agents.>").await.unwrap();

    let mut agent = Agent::spawn(&base_args(&nats_url, &url));
    assert!(
        wait_until(Duration::from_secs(15), || agent.metric("demeter_agent_published_batches_total") >= 20.0),
        "20 batches not published:\n{}",
        agent.log_text()
    );
    let (code, body) = http_get(agent.listen_port, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");

    let hb = tokio::time::timeout(Duration::from_secs(5), heartbeats.next()).await.unwrap().unwrap();
    assert_eq!(hb.subject.as_str(), "demeter.agents.flink.ratejob.tm-1.heartbeat");
    let hb = AgentHeartbeat::decode(&hb.payload).unwrap();
    assert_eq!(hb.source.taskmanager_id, "tm-1");

    assert!(agent.terminate(Duration::from_secs(15)), "clean exit on SIGTERM:\n{}", agent.log_text());

    // The live subscriber saw the same batches, in order.
    let mut seen = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), live.next()).await {
        assert_eq!(m.subject.as_str(), "demeter.metrics.flink.ratejob.tm-1");
        seen.push(demeter_common::MetricBatch::decode(&m.payload).unwrap().agent_seq);
    }
    let stored = read_stream(&nats_url).await;
    let n = assert_contiguous(&stored);
    assert!(n >= 20, "{n} batches");
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "core subscriber saw every batch in order");

    // What arrived is the mapped fixture.
    let b = &stored[0].1;
    assert_eq!(b.source.namespace, "flink");
    let job = FIXTURE.split("job_id=\"").nth(1).unwrap().split('"').next().unwrap();
    assert_eq!(b.source.job_id.as_deref(), Some(job));
    let kinds: Vec<&str> = b.samples.iter().map(|s| s.kind()).collect();
    for k in ["jvm", "flink_memory", "task", "operator", "checkpoint", "latency", "container"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(b.samples.iter().any(|s| matches!(s, Sample::Jvm(j) if j.cpu_load.is_some_and(|v| v > 0.0))));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_second_nats_outage_loses_no_batch_and_keeps_the_order() {
    let mut nats = NatsServer::new();
    let tm = ExpositionServer::start(FIXTURE);
    let (url, nats_url) = (tm.url(), nats.url());
    let mut agent = Agent::spawn(&base_args(&nats_url, &url));
    assert!(
        wait_until(Duration::from_secs(15), || agent.metric("demeter_agent_published_batches_total") >= 10.0)
    );

    nats.stop();
    let outage = Instant::now();
    // Batches pile up while NATS is gone; the scrape loop goes on.
    assert!(wait_until(Duration::from_secs(10), || agent.metric("demeter_agent_buffer_depth") >= 20.0));
    let (code, _) = http_get(agent.listen_port, "/readyz").unwrap();
    assert_eq!(code, 503, "not ready while NATS is down");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    let buffered = agent.metric("demeter_agent_buffer_depth");
    let scrapes_during = agent.metric("demeter_agent_scrapes_total");
    assert!(buffered >= 100.0, "30 s at 200 ms should buffer ~150 batches, got {buffered}");
    assert!(agent.metric("demeter_agent_publish_errors_total") >= 1.0);
    nats.start();

    assert!(
        wait_until(Duration::from_secs(30), || agent.metric("demeter_agent_buffer_depth") == 0.0),
        "buffer not drained after the reconnect:\n{}",
        agent.log_text()
    );
    assert!(agent.metric("demeter_agent_scrapes_total") > scrapes_during);
    assert_eq!(agent.metric("demeter_agent_dropped_batches_total"), 0.0);
    assert!(agent.terminate(Duration::from_secs(15)));
    assert_eq!(agent.dropped_total_at_exit(), 0.0);

    let stored = read_stream(&nats_url).await;
    let n = assert_contiguous(&stored);
    assert!(n as f64 >= 10.0 + buffered, "{n} stored, {buffered} were buffered");
    // Timestamps too are in scrape order.
    assert!(stored.windows(2).all(|w| w[0].1.collected_at <= w[1].1.collected_at));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_keeps_unsent_batches_in_the_spool_for_the_next_run() {
    let mut nats = NatsServer::new();
    let tm = ExpositionServer::start(FIXTURE);
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let (url, nats_url) = (tm.url(), nats.url());
    let mut args = base_args(&nats_url, &url);
    args.extend(["--spool-dir", &spool_dir, "--buffer-size", "5", "--drain-timeout", "1s"]);

    let mut first = Agent::spawn(&args);
    assert!(
        wait_until(Duration::from_secs(15), || first.metric("demeter_agent_published_batches_total") >= 5.0)
    );
    nats.stop();
    assert!(wait_until(Duration::from_secs(15), || first.metric("demeter_agent_buffer_depth") >= 20.0));
    assert!(first.terminate(Duration::from_secs(15)), "{}", first.log_text());
    assert_eq!(first.dropped_total_at_exit(), 0.0);
    let files = std::fs::read_dir(spool.path()).unwrap().count();
    assert!(files >= 20, "{files} spool files");

    nats.start();
    let mut second = Agent::spawn(&args);
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_dir(spool.path()).unwrap().count() == 0),
        "spool not replayed:\n{}",
        second.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || second.metric("demeter_agent_published_batches_total") >= 3.0)
    );
    assert!(second.terminate(Duration::from_secs(15)));

    // The first run's batches, all of them and in order, then the second run's.
    let stored = read_stream(&nats_url).await;
    let first_run = stored[0].1.agent_run_id.clone();
    let split = stored.iter().position(|(_, b)| b.agent_run_id != first_run).expect("a second run");
    let n1 = assert_contiguous(&stored[..split]);
    assert!(n1 >= 25, "{n1}");
    assert_contiguous(&stored[split..]);
    assert!(second.log_text().contains("recovered spooled batches"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_lines_unknown_families_and_a_dead_taskmanager_are_counted() {
    let nats = NatsServer::new();
    let broken = format!(
        "{FIXTURE}flink_taskmanager_Status_JVM_Brand_New_Metric{{tm_id=\"t\",}} 1\n\
         flink_taskmanager_job_task_busyTimeMsPerSecond{{job_id=\"j\" 12\n\
         this line is garbage\n"
    );
    let mut tm = ExpositionServer::start(&broken);
    let (url, nats_url) = (tm.url(), nats.url());
    let client = async_nats::connect(&nats_url).await.unwrap();
    let mut heartbeats = client.subscribe("demeter.agents.flink.ratejob.tm-1.heartbeat").await.unwrap();
    let mut args = base_args(&nats_url, &url);
    args.extend(["--scrape-backoff-max", "1s"]);
    let mut agent = Agent::spawn(&args);

    assert!(
        wait_until(Duration::from_secs(15), || agent.metric("demeter_agent_published_batches_total") >= 5.0)
    );
    let m = agent.metrics();
    assert!(support::metric_sum(&m, "demeter_agent_parse_errors_total") >= 10.0, "{m}");
    assert!(m.contains("demeter_agent_parse_errors_total{error_type=\"invalid_label_separator\"}"), "{m}");
    assert!(support::metric_sum(&m, "demeter_agent_unknown_families_total") >= 5.0, "{m}");

    // The TaskManager goes away (as during a rescale).
    tm.halt();
    assert!(wait_until(Duration::from_secs(10), || {
        support::metric_sum(&agent.metrics(), "demeter_agent_scrape_errors_total{error_type=\"connect\"}")
            >= 3.0
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut said_unreachable = None;
    while Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), heartbeats.next()).await else {
            continue;
        };
        let hb = AgentHeartbeat::decode(&msg.payload).unwrap();
        if hb.state == AgentState::TaskManagerUnreachable {
            said_unreachable = Some(hb);
            break;
        }
    }
    let hb = said_unreachable.expect("a heartbeat saying the TaskManager is unreachable");
    assert!(hb.scrape_errors_total >= 1);
    assert!(hb.last_scrape_error.as_deref().unwrap_or("").contains("connect"), "{hb:?}");
    assert!(agent.is_running());
    assert_eq!(http_get(agent.listen_port, "/healthz").unwrap().0, 200);
    let (_, ready) = http_get(agent.listen_port, "/readyz").unwrap();
    assert!(ready.contains("\"taskmanager\":\"unreachable\""), "{ready}");

    // Back again: batches flow again, without a gap in agent_seq.
    let before = agent.metric("demeter_agent_published_batches_total");
    tm.set_body(FIXTURE);
    tm.resume();
    assert!(wait_until(Duration::from_secs(10), || agent.metric("demeter_agent_published_batches_total")
        >= before + 5.0));
    assert!(agent.terminate(Duration::from_secs(15)));
    assert_contiguous(&read_stream(&nats_url).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_nats_without_its_store_gets_the_stream_again() {
    let mut nats = NatsServer::new();
    let tm = ExpositionServer::start(FIXTURE);
    let (url, nats_url) = (tm.url(), nats.url());
    let mut args = base_args(&nats_url, &url);
    args.extend(["--stream-max-age", "10m"]);
    let mut agent = Agent::spawn(&args);
    assert!(
        wait_until(Duration::from_secs(15), || agent.metric("demeter_agent_published_batches_total") >= 3.0)
    );
    nats.restart_without_store();
    let before = agent.metric("demeter_agent_published_batches_total");
    assert!(
        wait_until(Duration::from_secs(20), || agent.metric("demeter_agent_published_batches_total")
            >= before + 5.0),
        "{}",
        agent.log_text()
    );
    assert!(agent.terminate(Duration::from_secs(15)));
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("DEMETER_METRICS").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(600));
    assert_eq!(info.config.subjects, vec!["demeter.metrics.>".to_string()]);
    assert!(info.state.messages >= 5);
}

trait ExitFigures {
    /// The `dropped_total` of the agent's last log line ("demeter-agent stopped").
    fn dropped_total_at_exit(&self) -> f64;
}

impl ExitFigures for Agent {
    fn dropped_total_at_exit(&self) -> f64 {
        let log = self.log_text();
        log.lines()
            .filter(|l| l.contains("demeter-agent stopped"))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("dropped_total").and_then(|d| d.as_f64()))
            .next_back()
            .unwrap_or_else(|| panic!("no final log line:\n{log}"))
    }
}

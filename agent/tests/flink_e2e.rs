//! The agent beside a real Flink 2.3 TaskManager: a standalone cluster with the Prometheus
//! reporter (scripts/flink-cluster.sh), the Java test job (tests/flink-job), a real nats-server.
//! Busy time, record rates and JVM CPU load must arrive on NATS.

mod support;

use demeter_common::MetricBatch;
use demeter_common::wire::Sample;
use demeter_testkit::{FlinkCluster, NatsServer, build_test_job};
use futures::StreamExt;
use std::time::{Duration, Instant};
use support::Agent;

/// What the test waits for in one batch.
#[derive(Debug, Default)]
struct Seen {
    cpu_load: bool,
    busy: bool,
    work_rate_in: bool,
    source_rate_out: bool,
    latency: bool,
}

impl Seen {
    fn update(&mut self, b: &MetricBatch) {
        for s in &b.samples {
            match s {
                Sample::Jvm(j) => self.cpu_load |= j.cpu_load.is_some_and(|v| v > 0.0),
                Sample::Task(t) if t.id.vertex_name == "work" => {
                    self.busy |= t.busy_ms_per_s.is_some_and(|v| v > 0.0);
                    self.work_rate_in |= t.records_in_per_s.is_some_and(|v| v > 0.0);
                }
                Sample::Operator(o) if o.operator_name.starts_with("Source") => {
                    self.source_rate_out |= o.records_out_per_s.is_some_and(|v| v > 0.0);
                }
                Sample::Latency(l) => self.latency |= l.metric == "latencyHistogram" && l.p95_ms.is_some(),
                _ => {}
            }
        }
    }

    fn done(&self) -> bool {
        self.cpu_load && self.busy && self.work_rate_in && self.source_rate_out && self.latency
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flink_taskmanager_busy_time_record_rates_and_jvm_cpu_load_arrive_on_nats() {
    let nats = NatsServer::new();
    let build = tempfile::tempdir().unwrap();
    let jar = build_test_job(build.path());
    // Stopped on drop, also when an assertion below fails.
    let cluster = FlinkCluster::start(&["--taskmanagers", "1", "--slots", "4"]);
    let job_id = cluster.submit(&jar, &["--rate", "2000", "--work", "2000", "--parallelism", "2"]);
    let ports = cluster.taskmanager_prom_ports();
    assert_eq!(ports.len(), 1, "one TaskManager reporter: {ports:?}");
    let metrics_url = format!("http://127.0.0.1:{}/metrics", ports[0]);

    let nats_url = nats.url();
    let client = async_nats::connect(&nats_url).await.unwrap();
    let mut sub = client.subscribe("demeter.metrics.flink.ratejob.>").await.unwrap();
    let mut agent = Agent::spawn(&[
        "--metrics-url",
        &metrics_url,
        "--nats-url",
        &nats_url,
        "--namespace",
        "flink",
        "--deployment",
        "ratejob",
        "--taskmanager",
        "tm-1",
        "--interval",
        "1s",
    ]);

    let mut seen = Seen::default();
    let mut last: Option<MetricBatch> = None;
    let deadline = Instant::now() + Duration::from_secs(150);
    while !seen.done() && Instant::now() < deadline {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), sub.next()).await else { continue };
        let b = MetricBatch::decode(&msg.payload).expect("a valid batch");
        seen.update(&b);
        last = Some(b);
    }
    let log = agent.log_text();
    assert!(seen.done(), "after 150 s: {seen:?}\nlast batch: {last:#?}\nagent log:\n{log}");
    let last = last.unwrap();
    assert_eq!(last.source.job_id.as_deref(), Some(job_id.as_str()));
    assert_eq!(agent.metric("demeter_agent_parse_errors_total"), 0.0, "the live exposition parses cleanly");
    assert_eq!(agent.metric("demeter_agent_unknown_families_total"), 0.0, "{}", agent.metrics());
    assert!(agent.terminate(Duration::from_secs(15)));
    drop(cluster);
}

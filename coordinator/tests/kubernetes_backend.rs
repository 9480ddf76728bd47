//! The Kubernetes backend with the real `kube::Client` against an in-process fake API server
//! and a simulated Flink operator (`demeter_testkit::kube_api`).

use axum::http::Method;
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace, UnixMillis};
use demeter_coordinator::backend::kubernetes::crd::{self, FlinkDeployment};
use demeter_coordinator::backend::kubernetes::inject::AgentInjection;
use demeter_coordinator::backend::kubernetes::leader::LeaseTiming;
use demeter_coordinator::backend::kubernetes::profiling::ObservationSource;
use demeter_coordinator::backend::kubernetes::{
    KubernetesBackend, KubernetesOptions, LeaseConfig, ProfilingOptions, convert,
};
use demeter_coordinator::backend::{Backend, BackendError, JobKey};
use demeter_coordinator::runtime::config::CoordinatorConfig;
use demeter_core::controller::{Mode, ProfilingRun, ReconfigKind, Reconfiguration};
use demeter_core::decide::{CurrentHealth, DecideConfig, decide};
use demeter_core::obs::{JobObservation, RecoveryTime};
use demeter_core::perf::{PerfModel, PerfModelConfig};
use demeter_testkit::kube_api::operator::{OperatorSim, Verdict};
use demeter_testkit::kube_api::{
    self as fake_apiserver, FakeApiServer, Fault, FaultAction, Recorded, flinkdeployments, leases,
    networkchaos, pods,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Fixtures

const NS: &str = "flink";

fn stable_status(generation: i64) -> Value {
    json!({
        "lifecycleState": "STABLE",
        "observedGeneration": generation,
        "reconciliationStatus": {"state": "DEPLOYED"},
        "jobStatus": {"state": "RUNNING", "jobId": "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5"},
        "jobManagerDeploymentStatus": "READY"
    })
}

fn deployment(ns: &str, name: &str, managed: bool, annotations: Value) -> Value {
    let labels =
        if managed { json!({(crd::LABEL_MANAGED): "true", "team": "ads"}) } else { json!({"team": "ads"}) };
    json!({
        "apiVersion": "flink.apache.org/v1beta1",
        "kind": "FlinkDeployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {
            "image": "flink:2.1-java17",
            "flinkVersion": "v2_1",
            "serviceAccount": "flink",
            "flinkConfiguration": {
                "jobmanager.scheduler": "adaptive",
                "taskmanager.numberOfTaskSlots": "2",
                "execution.checkpointing.interval": "10s",
                "execution.checkpointing.savepoint-dir": "s3://bucket/sp"
            },
            "jobManager": {"replicas": 1, "resource": {"cpu": 1, "memory": "2048m"}},
            "taskManager": {"resource": {"cpu": 1, "memory": "2048m"}},
            "job": {"jarURI": "local:///opt/flink/examples/streaming/StateMachineExample.jar", "parallelism": 8,
                    "upgradeMode": "savepoint", "state": "running"}
        },
        "status": stable_status(1)
    })
}

const FROM: JobConfig = JobConfig {
    parallelism: 8,
    task_slots: 2,
    tm_cpu_milli: 1000,
    tm_memory_mb: 2048,
    checkpoint_interval_ms: 10_000,
};

fn reconfiguration(id: u64, to: JobConfig, kind: ReconfigKind) -> Reconfiguration {
    let model = PerfModel::fit(&[], &PerfModelConfig::default());
    let decision = decide(
        &model,
        &[to],
        &FROM,
        1000.0,
        CurrentHealth::default(),
        &Constraints::default(),
        &Quota::default(),
        &SearchSpace::default(),
        &DecideConfig::default(),
    );
    Reconfiguration { id, from: FROM, to, kind, decision }
}

fn config(namespaces: &[&str]) -> CoordinatorConfig {
    let mut c = CoordinatorConfig {
        mode: Mode::Apply,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        ..CoordinatorConfig::default()
    };
    c.controller.quota = Quota { max_total_cpu: 64.0, max_total_memory_mb: 1 << 20 };
    c
}

fn options(identity: &str) -> KubernetesOptions {
    KubernetesOptions {
        identity: identity.into(),
        settle_timeout: Duration::from_secs(4),
        busy_wait: Duration::from_millis(600),
        poll_interval: Duration::from_millis(40),
        api_timeout: Duration::from_secs(2),
        janitor_interval: Duration::from_millis(100),
        profiling: ProfilingOptions {
            max_concurrent: 1,
            sample_window: Duration::from_secs(2),
            warmup: Duration::ZERO,
            chaos_duration: Duration::from_secs(1),
            ..ProfilingOptions::default()
        },
        ..KubernetesOptions::default()
    }
}

fn key(name: &str) -> JobKey {
    JobKey::new(NS, name)
}

/// The FlinkDeployment CRD's schema (vendored, operator 1.15.0), as a validator.
fn crd_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        schema_of(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/k8s/crds/flinkdeployments.flink.apache.org-v1.yml")
                .as_path(),
        )
    })
}

fn chaos_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        schema_of(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/k8s/crds/chaos-mesh.org_networkchaos.yaml")
                .as_path(),
        )
    })
}

fn schema_of(path: &Path) -> jsonschema::Validator {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
    let schema = crd.pointer("/spec/versions/0/schema/openAPIV3Schema").expect("openAPIV3Schema").clone();
    jsonschema::validator_for(&schema).expect("a valid JSON schema")
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> =
        v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{what} does not validate against the CRD schema: {errors:#?}\n{instance:#}");
}

/// A patch as a partial object: `null`s (deletions) dropped, so that what it sets is checked.
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(_, x)| !x.is_null()).map(|(k, x)| (k.clone(), without_nulls(x))).collect(),
        ),
        other => other.clone(),
    }
}

fn fd_patches(server: &FakeApiServer, name: &str) -> Vec<Recorded> {
    let path = format!("/apis/flink.apache.org/v1beta1/namespaces/{NS}/flinkdeployments/{name}");
    server.requests().into_iter().filter(|r| r.method == Method::PATCH && r.path == path).collect()
}

fn spec_patches(server: &FakeApiServer, name: &str) -> Vec<Recorded> {
    fd_patches(server, name)
        .into_iter()
        .filter(|r| r.body.as_ref().is_some_and(|b| b.get("spec").is_some()))
        .collect()
}

fn events(server: &FakeApiServer, reason: &str) -> Vec<Value> {
    server
        .list(&fake_apiserver::events_v1(), None)
        .into_iter()
        .filter(|e| e.get("reason").and_then(Value::as_str) == Some(reason))
        .collect()
}

fn status_annotation(server: &FakeApiServer, name: &str) -> Value {
    let fd = server.get(&flinkdeployments(), NS, name).expect("exists");
    let text = fd
        .pointer(&format!("/metadata/annotations/{}", crd::ANN_STATUS.replace('/', "~1")))
        .and_then(Value::as_str)
        .expect("status annotation");
    serde_json::from_str(text).expect("JSON")
}

async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    server: FakeApiServer,
    sim: OperatorSim,
    backend: KubernetesBackend,
}

async fn setup(opts: KubernetesOptions, cfg: CoordinatorConfig, jobs: Vec<Value>) -> Setup {
    let server = FakeApiServer::start().await;
    for j in jobs {
        server.put(&flinkdeployments(), j);
    }
    let sim = OperatorSim::start(&server, Duration::from_millis(150));
    let backend = KubernetesBackend::start(server.client(), &cfg, opts, None);
    Setup { server, sim, backend }
}

// ---------------------------------------------------------------------------------------------
// Discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opted_in_jobs_are_discovered_in_the_configured_namespaces_and_the_watch_recovers() {
    let server = FakeApiServer::start().await;
    server
        .put(&flinkdeployments(), deployment("a", "cars", true, json!({(crd::ANN_MODE): "recommend-only"})));
    server.put(&flinkdeployments(), deployment("b", "ads", true, json!({})));
    server.put(&flinkdeployments(), deployment("a", "manual", false, json!({})));
    server.put(&flinkdeployments(), deployment("c", "elsewhere", true, json!({})));
    let mut copy = deployment("a", "cars-p3", false, json!({}));
    copy["metadata"]["labels"][crd::LABEL_PROFILING_OF] = json!("cars");
    server.put(&flinkdeployments(), copy);

    let backend = KubernetesBackend::start(server.client(), &config(&["a", "b"]), options("x"), None);
    let jobs = backend.list_jobs().await.unwrap();
    let listed: Vec<(String, Option<Mode>)> = jobs.iter().map(|j| (j.key.to_string(), j.mode)).collect();
    assert_eq!(listed, vec![("a/cars".to_string(), Some(Mode::RecommendOnly)), ("b/ads".to_string(), None)]);
    // Lists and watches use the opt-in label selector, per namespace.
    eventually("a watch of namespace a with the opt-in selector", Duration::from_secs(5), || {
        server.requests().iter().any(|r| {
            r.path.contains("/namespaces/a/")
                && r.query.contains("watch=true")
                && r.query.contains("labelSelector=demeter.dev%2Fmanaged%3Dtrue")
        })
    })
    .await;
    assert!(!server.requests().iter().any(|r| r.path.contains("/namespaces/c/")));

    assert_eq!(backend.current_config(&JobKey::new("b", "ads")).await.unwrap(), FROM);
    assert_eq!(backend.current_config(&JobKey::new("b", "nope")).await.unwrap_err().kind(), "not_found");

    // Streams dropped and a watch that fails once: the reflector re-watches and sees new jobs.
    server.inject(Fault {
        query_contains: "watch=true".into(),
        ..Fault::new(Some(Method::GET), "/namespaces/b/", 1, FaultAction::Status(500))
    });
    server.drop_watches();
    server.put(&flinkdeployments(), deployment("b", "late", true, json!({})));
    let b = backend.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = b.list_jobs().await.unwrap();
        if jobs.iter().any(|j| j.key == JobKey::new("b", "late")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new job was not discovered after the watch dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reconfiguration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_sends_exactly_the_documented_patch_and_waits_for_stable() {
    let s = setup(options("x"), config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    let to = JobConfig {
        parallelism: 12,
        task_slots: 4,
        tm_cpu_milli: 2500,
        tm_memory_mb: 3072,
        checkpoint_interval_ms: 30_000,
    };
    let rep =
        s.backend.reconfigure(&key("cars"), &reconfiguration(1, to, ReconfigKind::Redeploy)).await.unwrap();
    assert!(rep.downtime_s >= 0.0);

    let patches = spec_patches(&s.server, "cars");
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let p = &patches[0];
    assert_eq!(p.content_type, "application/merge-patch+json");
    assert!(p.query.contains("fieldManager=demeter"), "{}", p.query);
    assert_eq!(
        p.body.as_ref().unwrap(),
        &json!({
            "metadata": {"resourceVersion": "101"},
            "spec": {
                "job": {"parallelism": 12, "upgradeMode": "savepoint"},
                "taskManager": {"resource": {"cpu": 2.5, "memory": "3072m"}},
                "flinkConfiguration": {"taskmanager.numberOfTaskSlots": "4", "execution.checkpointing.interval": "30s"}
            }
        })
    );
    assert_valid(crd_validator(), &without_nulls(p.body.as_ref().unwrap()), "the redeploy patch");
    let after = s.server.get(&flinkdeployments(), NS, "cars").unwrap();
    assert_valid(crd_validator(), &after, "the patched FlinkDeployment");
    assert_eq!(after["metadata"]["generation"], 2);
    assert_eq!(
        after["spec"]["job"]["jarURI"],
        "local:///opt/flink/examples/streaming/StateMachineExample.jar"
    );
    assert_eq!(s.backend.current_config(&key("cars")).await.unwrap(), to);

    assert_eq!(events(&s.server, "Reconfigured").len(), 1);
    let st = status_annotation(&s.server, "cars");
    assert_eq!(st["lastAction"], "Reconfigured");
    assert_eq!(st["current"]["parallelism"], 12);
    drop(s.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_server_errors_are_retried_without_applying_twice() {
    let s = setup(options("x"), config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    let path = format!("/namespaces/{NS}/flinkdeployments/cars");
    s.server.inject(Fault::new(Some(Method::PATCH), &path, 1, FaultAction::Status(409)));
    s.server.inject(Fault::new(Some(Method::PATCH), &path, 1, FaultAction::Status(500)));
    let to = JobConfig { parallelism: 16, ..FROM };
    s.backend.reconfigure(&key("cars"), &reconfiguration(2, to, ReconfigKind::Redeploy)).await.unwrap();
    let patches = spec_patches(&s.server, "cars");
    let statuses: Vec<u16> = patches.iter().map(|p| p.status).collect();
    assert_eq!(statuses, vec![409, 500, 200]);
    assert!(patches.iter().all(|p| p.body == patches[0].body), "every attempt sends the same patch");
    // One change of the spec: generation 1 → 2, one rollout.
    assert_eq!(s.server.get(&flinkdeployments(), NS, "cars").unwrap()["metadata"]["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_whose_answer_is_lost_is_recognised_and_not_sent_again() {
    let s = setup(options("x"), config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    let path = format!("/namespaces/{NS}/flinkdeployments/cars");
    // The server applies the patch and answers after the client gave up (api_timeout 2 s).
    s.server.inject(Fault::new(
        Some(Method::PATCH),
        &path,
        1,
        FaultAction::ApplyThenDelay(Duration::from_secs(6)),
    ));
    let to = JobConfig { parallelism: 16, tm_memory_mb: 4096, ..FROM };
    s.backend.reconfigure(&key("cars"), &reconfiguration(3, to, ReconfigKind::Redeploy)).await.unwrap();
    assert_eq!(spec_patches(&s.server, "cars").len(), 1, "the spec was patched once");
    let fd = s.server.get(&flinkdeployments(), NS, "cars").unwrap();
    assert_eq!(fd["metadata"]["generation"], 2);
    assert_eq!(fd["spec"]["taskManager"]["resource"]["memory"], "4096m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_is_rolled_back_to_the_previous_spec() {
    let s = setup(options("x"), config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    let before = s.server.get(&flinkdeployments(), NS, "cars").unwrap()["spec"].clone();
    s.sim.judge(|spec| {
        if spec.pointer("/job/parallelism") == Some(&json!(20)) {
            Verdict::Fail("could not acquire the requested resources".into())
        } else {
            Verdict::Stable
        }
    });
    let to = JobConfig { parallelism: 20, tm_cpu_milli: 2000, ..FROM };
    let err = s
        .backend
        .reconfigure(&key("cars"), &reconfiguration(4, to, ReconfigKind::Redeploy))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Failed(_)), "{err}");
    assert!(
        err.to_string().contains("could not acquire") && err.to_string().contains("rolled back"),
        "{err}"
    );

    let patches = spec_patches(&s.server, "cars");
    assert_eq!(patches.len(), 2, "the change and its rollback");
    assert_eq!(
        patches[1].body.as_ref().unwrap()["spec"],
        json!({
            "job": {"parallelism": 8, "upgradeMode": "savepoint"},
            "taskManager": {"resource": {"cpu": 1, "memory": "2048m"}},
            "flinkConfiguration": {"taskmanager.numberOfTaskSlots": "2", "execution.checkpointing.interval": "10s"}
        })
    );
    assert!(patches[1].body.as_ref().unwrap()["metadata"]["resourceVersion"].is_string());
    assert_valid(crd_validator(), &without_nulls(patches[0].body.as_ref().unwrap()), "the failed patch");
    assert_valid(crd_validator(), &without_nulls(patches[1].body.as_ref().unwrap()), "the rollback patch");
    let after = s.server.get(&flinkdeployments(), NS, "cars").unwrap();
    assert_eq!(after["spec"], before);
    assert_eq!(after["status"]["lifecycleState"], "STABLE");
    assert_eq!(s.backend.current_config(&key("cars")).await.unwrap(), FROM);
    assert_eq!(events(&s.server, "RolledBack").len(), 1);
    assert_eq!(status_annotation(&s.server, "cars")["lastAction"], "RolledBack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_never_settles_is_rolled_back_after_the_settle_timeout() {
    let mut o = options("x");
    o.settle_timeout = Duration::from_millis(1500);
    let s = setup(o, config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    s.sim.judge(|spec| {
        if spec.pointer("/job/parallelism") == Some(&json!(24)) { Verdict::Hang } else { Verdict::Stable }
    });
    let to = JobConfig { parallelism: 24, ..FROM };
    let started = std::time::Instant::now();
    let err = s
        .backend
        .reconfigure(&key("cars"), &reconfiguration(5, to, ReconfigKind::Redeploy))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not RUNNING and STABLE within"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(s.backend.current_config(&key("cars")).await.unwrap(), FROM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_is_being_upgraded_is_not_touched() {
    let mut job = deployment(NS, "cars", true, json!({}));
    job["status"]["lifecycleState"] = json!("UPGRADING");
    job["status"]["reconciliationStatus"]["state"] = json!("UPGRADING");
    let s = setup(options("x"), config(&[NS]), vec![job]).await;
    let err = s
        .backend
        .reconfigure(
            &key("cars"),
            &reconfiguration(6, JobConfig { parallelism: 12, ..FROM }, ReconfigKind::Redeploy),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "transient");
    assert!(err.to_string().contains("being upgraded"), "{err}");
    assert!(spec_patches(&s.server, "cars").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_and_recommend_only_are_never_overridden() {
    let jobs = vec![
        deployment(NS, "small", true, json!({(crd::ANN_MAX_CPU): "4", (crd::ANN_MAX_MEMORY_MB): "65536"})),
        deployment(NS, "watched", true, json!({(crd::ANN_MODE): "recommend-only"})),
    ];
    let s = setup(options("x"), config(&[NS]), jobs).await;
    // 12 / 2 slots = 6 TaskManagers × 1 core = 6 cores > 4.
    let err = s
        .backend
        .reconfigure(
            &key("small"),
            &reconfiguration(7, JobConfig { parallelism: 12, ..FROM }, ReconfigKind::Redeploy),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over the quota of 4 cores"), "{err}");
    s.backend.list_jobs().await.unwrap();
    let (mode, quota, _) = s.backend.job_settings(&key("small")).expect("cached");
    assert_eq!((mode, quota.max_total_cpu, quota.max_total_memory_mb), (Mode::Apply, 4.0, 65_536));

    let err = s
        .backend
        .reconfigure(
            &key("watched"),
            &reconfiguration(8, JobConfig { parallelism: 12, ..FROM }, ReconfigKind::Redeploy),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("recommend-only"), "{err}");
    assert!(spec_patches(&s.server, "small").is_empty() && spec_patches(&s.server, "watched").is_empty());

    // Recommend-only writes an Event and the status annotation, nothing else.
    let rec = JobConfig { parallelism: 4, ..FROM };
    s.backend
        .recommend(&key("watched"), &FROM, &rec, "the forecast peak needs half the capacity")
        .await
        .unwrap();
    let fd = s.server.get(&flinkdeployments(), NS, "watched").unwrap();
    assert_eq!(fd["metadata"]["generation"], 1, "the spec is untouched");
    let st = status_annotation(&s.server, "watched");
    assert_eq!(
        (st["mode"].as_str(), st["lastAction"].as_str()),
        (Some("recommend-only"), Some("Recommendation"))
    );
    assert_eq!(st["recommended"]["parallelism"], 4);
    let ev = events(&s.server, "Recommendation");
    assert_eq!(ev.len(), 1);
    assert!(ev[0]["note"].as_str().unwrap().contains("the forecast peak needs half the capacity"));
    assert_eq!(ev[0]["regarding"]["name"], "watched");
    assert_eq!(ev[0]["reportingController"], "demeter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallelism_change_goes_in_place_through_the_operator() {
    // The JobManager's REST API: the job's vertices.
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest_addr = rest.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jobs/{id}/resource-requirements",
        axum::routing::get(|| async {
            axum::Json(json!({
                "cbc357ccb763df2852fee8c4fc7d55f2": {"parallelism": {"lowerBound": 1, "upperBound": 8}},
                "0a448493b4782967b150582570326227": {"parallelism": {"lowerBound": 1, "upperBound": 8}}
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(rest, app).await.unwrap() });
    let mut o = options("x");
    o.flink_rest_url = format!("http://{rest_addr}");
    let s = setup(o, config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    let to = JobConfig { parallelism: 12, ..FROM };
    s.backend.reconfigure(&key("cars"), &reconfiguration(9, to, ReconfigKind::InPlace)).await.unwrap();
    let patches = spec_patches(&s.server, "cars");
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].body.as_ref().unwrap(),
        &json!({"metadata": {"resourceVersion": "101"}, "spec": {"flinkConfiguration": {
            "pipeline.jobvertex-parallelism-overrides": "0a448493b4782967b150582570326227:12,cbc357ccb763df2852fee8c4fc7d55f2:12"
        }}})
    );
    assert_valid(
        crd_validator(),
        &s.server.get(&flinkdeployments(), NS, "cars").unwrap(),
        "the scaled FlinkDeployment",
    );
    assert_eq!(s.backend.current_config(&key("cars")).await.unwrap(), to);

    // A later redeploy drops the overrides, which would otherwise win over job.parallelism.
    let to2 = JobConfig { parallelism: 8, tm_memory_mb: 4096, ..FROM };
    let mut r = reconfiguration(10, to2, ReconfigKind::Redeploy);
    r.from = to;
    s.backend.reconfigure(&key("cars"), &r).await.unwrap();
    let last = spec_patches(&s.server, "cars").pop().unwrap();
    assert_eq!(
        last.body.unwrap()["spec"]["flinkConfiguration"]["pipeline.jobvertex-parallelism-overrides"],
        Value::Null
    );
    assert_eq!(s.backend.current_config(&key("cars")).await.unwrap(), to2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_rest_api_an_in_place_change_falls_back_to_a_redeploy() {
    let mut o = options("x");
    o.flink_rest_url = "http://127.0.0.1:9".into();
    let s = setup(o, config(&[NS]), vec![deployment(NS, "cars", true, json!({}))]).await;
    let to = JobConfig { parallelism: 12, ..FROM };
    s.backend.reconfigure(&key("cars"), &reconfiguration(11, to, ReconfigKind::InPlace)).await.unwrap();
    let p = spec_patches(&s.server, "cars").pop().unwrap().body.unwrap();
    assert_eq!(p["spec"]["job"]["parallelism"], 12);
    let ev = events(&s.server, "Reconfigured");
    assert!(ev[0]["note"].as_str().unwrap().contains("redeployed: the job's vertices are unknown"), "{ev:?}");
}

// ---------------------------------------------------------------------------------------------
// Leader election

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_leads_and_a_standby_takes_over() {
    let server = FakeApiServer::start().await;
    server.put(&flinkdeployments(), deployment(NS, "cars", true, json!({})));
    let lease = |id: &str| {
        let mut o = options(id);
        o.leader_election = Some(LeaseConfig {
            namespace: "demeter".into(),
            name: "demeter-leader".into(),
            timing: LeaseTiming {
                lease_duration: Duration::from_secs(3),
                renew_deadline: Duration::from_secs(2),
                retry_period: Duration::from_millis(200),
            },
        });
        o
    };
    let a = KubernetesBackend::start(server.client(), &config(&[NS]), lease("replica-a"), None);
    let b = KubernetesBackend::start(server.client(), &config(&[NS]), lease("replica-b"), None);
    let (ra, rb) = (a.leadership(), b.leadership());
    // Samples every replica's view every 5 ms: never two leaders at once.
    let both = Arc::new(Mutex::new(false));
    let replicas = Arc::new(Mutex::new(vec![ra.clone(), rb.clone()]));
    let (replicas2, both2) = (replicas.clone(), both.clone());
    let monitor = tokio::spawn(async move {
        loop {
            let leaders = replicas2.lock().unwrap().iter().filter(|r| *r.borrow()).count();
            if leaders > 1 {
                *both2.lock().unwrap() = true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    eventually("a leader", Duration::from_secs(5), || *ra.borrow() || *rb.borrow()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (leader, follower) = if *ra.borrow() { (a, b) } else { (b, a) };
    assert!(leader.is_leader() && !follower.is_leader());
    let holder =
        server.get(&leases(), "demeter", "demeter-leader").unwrap()["spec"]["holderIdentity"].clone();
    assert!(holder.as_str().unwrap().starts_with("replica-"));

    // The follower refuses to act.
    let err = follower
        .reconfigure(
            &key("cars"),
            &reconfiguration(12, JobConfig { parallelism: 12, ..FROM }, ReconfigKind::Redeploy),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not the leader"), "{err}");
    assert!(spec_patches(&server, "cars").is_empty());

    // The leader renews with updates carrying the resourceVersion (no patch verb needed).
    let lease_writes: Vec<Recorded> =
        server.requests().into_iter().filter(|r| r.path.contains("/leases")).collect();
    assert!(lease_writes.iter().any(|r| r.method == Method::PUT && r.status == 200));
    assert!(lease_writes.iter().all(|r| r.method != Method::PATCH));

    // Shutting down releases the lease: the standby leads within a few retry periods.
    leader.shutdown().await;
    assert!(!leader.is_leader());
    eventually("the standby takes over", Duration::from_secs(5), || follower.is_leader()).await;

    // A leader cut off from the API steps down within its renew deadline, before anyone may
    // take over; when the API is back, one replica leads again.
    let c = KubernetesBackend::start(server.client(), &config(&[NS]), lease("replica-c"), None);
    replicas.lock().unwrap().push(c.leadership());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!c.is_leader());
    server.inject(Fault::new(None, "/leases/demeter-leader", usize::MAX, FaultAction::Status(503)));
    eventually("the cut-off leader steps down", Duration::from_secs(6), || !follower.is_leader()).await;
    assert!(!c.is_leader(), "nobody can renew or take over while the API fails");
    server.clear_faults();
    eventually("a leader again", Duration::from_secs(10), || follower.is_leader() || c.is_leader()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.abort();
    assert!(!*both.lock().unwrap(), "two replicas led at the same time");
}

// ---------------------------------------------------------------------------------------------
// Agent injection

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agent").join(name))
        .unwrap()
}

fn injection() -> AgentInjection {
    AgentInjection::from_yaml(&fixture("sidecar.yaml"), &fixture("flink-conf.yaml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_injected_once_into_opted_in_jobs_in_apply_mode_only() {
    let mut o = options("x");
    o.injection = Some(injection());
    let jobs = vec![
        deployment(NS, "cars", true, json!({})),
        deployment(NS, "watched", true, json!({(crd::ANN_MODE): "recommend-only"})),
        deployment(NS, "manual", false, json!({})),
    ];
    let s = setup(o, config(&[NS]), jobs).await;
    eventually("the sidecar is injected", Duration::from_secs(5), || {
        s.server
            .get(&flinkdeployments(), NS, "cars")
            .unwrap()
            .pointer("/spec/taskManager/podTemplate/spec/containers/0/name")
            == Some(&json!("demeter-agent"))
    })
    .await;
    eventually("the operator rolls it out", Duration::from_secs(5), || {
        s.server.get(&flinkdeployments(), NS, "cars").unwrap().pointer("/status/observedGeneration")
            == Some(&json!(2))
    })
    .await;
    // Status updates and re-listing after a dropped watch change nothing more.
    s.server.drop_watches();
    s.server.update(&flinkdeployments(), NS, "cars", |o| o["status"]["jobStatus"]["updateTime"] = json!("1"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let injected = spec_patches(&s.server, "cars");
    assert_eq!(injected.len(), 1, "injected exactly once");
    let fd = s.server.get(&flinkdeployments(), NS, "cars").unwrap();
    assert_eq!(fd["metadata"]["generation"], 2);
    assert_eq!(fd["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"], "9249");
    assert_eq!(fd["spec"]["taskManager"]["podTemplate"]["metadata"]["labels"][crd::LABEL_AGENT], "true");
    assert_valid(crd_validator(), &without_nulls(injected[0].body.as_ref().unwrap()), "the injection patch");
    assert_valid(crd_validator(), &fd, "the FlinkDeployment with the agent");
    assert_eq!(events(&s.server, "AgentInjected").len(), 1);

    // Recommend-only: a Warning, no change; not opted in: nothing at all.
    assert!(spec_patches(&s.server, "watched").is_empty() && spec_patches(&s.server, "manual").is_empty());
    let missing = events(&s.server, "AgentMissing");
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0]["regarding"]["name"], "watched");
}

#[test]
fn the_example_deployment_is_what_injection_makes_of_the_bare_job_and_validates() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flinkdeployment-with-agent.yaml"),
    )
    .unwrap();
    let example: Value = serde_saphyr::from_str(&text).unwrap();
    assert_valid(crd_validator(), &example, "examples/flinkdeployment-with-agent.yaml");
    // The job as a user would write it without Demeter's agent.
    let mut bare = example.clone();
    let pt = bare.pointer_mut("/spec/taskManager/podTemplate").unwrap();
    pt["metadata"]["labels"].as_object_mut().unwrap().remove(crd::LABEL_AGENT);
    pt["spec"]["containers"].as_array_mut().unwrap().retain(|c| c["name"] != "demeter-agent");
    pt["spec"].as_object_mut().unwrap().remove("volumes");
    let conf = bare.pointer_mut("/spec/flinkConfiguration").unwrap().as_object_mut().unwrap();
    conf.remove("metrics.reporter.prom.factory.class");
    conf.remove("metrics.reporter.prom.port");

    let inj = injection();
    let mut fd: FlinkDeployment = serde_json::from_value(bare).unwrap();
    let patch = inj.patch_for(&fd).expect("the bare job lacks the agent");
    let mut obj = serde_json::to_value(&fd).unwrap();
    convert::merge_patch(&mut obj, &patch);
    obj["metadata"].as_object_mut().unwrap().remove("annotations");
    obj["metadata"]["annotations"] = example["metadata"]["annotations"].clone();
    assert_valid(crd_validator(), &obj, "the injected example");
    assert_eq!(obj["spec"], example["spec"], "injection reproduces the documented example");
    fd = serde_json::from_value(obj).unwrap();
    assert_eq!(inj.patch_for(&fd), None, "re-applying changes nothing");
}

// ---------------------------------------------------------------------------------------------
// Profiling

/// Synthetic observations of every copy: steady until a failure, which stalls it for 3 s.
#[derive(Debug, Default)]
struct Observations {
    failed_at: Mutex<Option<i64>>,
}

impl ObservationSource for Observations {
    fn observations<'a>(&'a self, _job: &'a JobKey, since: UnixMillis) -> BoxFuture<'a, Vec<JobObservation>> {
        Box::pin(async move {
            let now = UnixMillis::now().0;
            let failed = *self.failed_at.lock().unwrap();
            (since.0 / 1000..=now / 1000)
                .map(|s| {
                    let t = s * 1000;
                    let stalled = failed.is_some_and(|f| t >= f && t < f + 3000);
                    JobObservation {
                        at: UnixMillis(t),
                        offered_rate: 1000.0,
                        throughput: if stalled { 0.0 } else { 1000.0 },
                        lag: if stalled { 5000.0 + (t - failed.unwrap()) as f64 * 10.0 } else { 100.0 },
                        p95_latency_ms: Some(250.0),
                        busy_ratio: 0.4,
                        ..Default::default()
                    }
                })
                .collect()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiling_runs_a_copy_injects_a_failure_measures_and_always_cleans_up() {
    let server = FakeApiServer::start().await;
    server.put(&flinkdeployments(), deployment(NS, "cars", true, json!({})));
    let _sim = OperatorSim::start(&server, Duration::from_millis(100));
    let obs = Arc::new(Observations::default());
    let mut o = options("x");
    o.injection = Some(injection());
    let backend = KubernetesBackend::start(server.client(), &config(&[NS]), o, Some(obs.clone()));
    assert!(backend.can_profile());
    let candidate = JobConfig { parallelism: 4, ..FROM };
    let run = ProfilingRun { run_id: 21, config: candidate, duration_s: 6, inject_failure_after_s: Some(1) };

    // Record the failure time as the pod deletion happens.
    let srv = server.clone();
    let obs2 = obs.clone();
    let watcher = tokio::spawn(async move {
        loop {
            let deleted =
                srv.requests().iter().any(|r| r.method == Method::DELETE && r.path.contains("/pods/"));
            if deleted {
                *obs2.failed_at.lock().unwrap() = Some(UnixMillis::now().0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let b2 = backend.clone();
    let run2 = run.clone();
    let profiling = tokio::spawn(async move { b2.start_profiling(&key("cars"), &run2).await });

    eventually("the copy exists", Duration::from_secs(3), || {
        server.get(&flinkdeployments(), NS, "cars-p21").is_some()
    })
    .await;
    let copy = server.get(&flinkdeployments(), NS, "cars-p21").unwrap();
    assert_valid(crd_validator(), &copy, "the profiling copy");
    assert_eq!(copy["metadata"]["labels"][crd::LABEL_PROFILING_OF], "cars");
    assert_eq!(copy["metadata"]["ownerReferences"][0]["name"], "cars");
    assert!(copy["metadata"]["labels"].get(crd::LABEL_MANAGED).is_none());
    assert_eq!(copy["spec"]["taskManager"]["podTemplate"]["spec"]["containers"][0]["name"], "demeter-agent");
    assert_eq!(copy["spec"]["job"]["parallelism"], 4);

    // The runtime can tell the copy's metrics from a job's.
    assert_eq!(backend.profiling_copy_of(&key("cars-p21")), Some((key("cars"), 21)));
    assert_eq!(backend.profiling_copy_of(&key("cars")), None);

    // The budget (one run at a time) is respected.
    let other = ProfilingRun { run_id: 22, ..run.clone() };
    let err = backend.start_profiling(&key("cars"), &other).await.unwrap_err();
    assert!(err.to_string().contains("profiling budget exhausted"), "{err}");

    let sample = profiling.await.unwrap().unwrap();
    watcher.abort();
    assert_eq!(sample.config, candidate);
    assert_eq!((sample.offered_rate, sample.throughput, sample.p95_latency_ms), (1000.0, 1000.0, 250.0));
    match sample.recovery {
        Some(RecoveryTime::Measured(s)) => assert!((1.0..=5.0).contains(&s), "{s}"),
        other => panic!("no recovery measured: {other:?}"),
    }
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.method == Method::DELETE && r.path.contains("/pods/cars-p21-taskmanager"))
    );
    assert!(server.get(&flinkdeployments(), NS, "cars-p21").is_none(), "the copy is deleted");
    // The operator removes the copy's cluster, and with it its pods.
    eventually("the copy's pods are gone", Duration::from_secs(3), || {
        server.list(&pods(), Some(NS)).iter().all(|p| p["metadata"]["labels"]["app"] != "cars-p21")
    })
    .await;
    assert_eq!(events(&server, "ProfilingStarted").len(), 1);
    assert_eq!(events(&server, "ProfilingFinished").len(), 1);
    // The budget is free again.
    let b3 = backend.clone();
    let next = tokio::spawn(async move {
        b3.start_profiling(
            &key("cars"),
            &ProfilingRun { run_id: 23, duration_s: 1, inject_failure_after_s: None, ..run },
        )
        .await
    });
    assert!(next.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_chaos_mesh_installed_a_network_chaos_is_injected_and_removed() {
    let server = FakeApiServer::start().await;
    server.install_chaos_mesh();
    server.put(&flinkdeployments(), deployment(NS, "cars", true, json!({})));
    let _sim = OperatorSim::start(&server, Duration::from_millis(100));
    let mut o = options("x");
    o.chaos_mesh = true;
    let backend =
        KubernetesBackend::start(server.client(), &config(&[NS]), o, Some(Arc::new(Observations::default())));
    let run = ProfilingRun {
        run_id: 31,
        config: JobConfig { parallelism: 4, ..FROM },
        duration_s: 3,
        inject_failure_after_s: Some(1),
    };
    let b = backend.clone();
    let r = run.clone();
    let task = tokio::spawn(async move { b.start_profiling(&key("cars"), &r).await });
    eventually("the NetworkChaos exists", Duration::from_secs(5), || {
        !server.list(&networkchaos(), Some(NS)).is_empty()
    })
    .await;
    let chaos = server.list(&networkchaos(), Some(NS)).pop().unwrap();
    assert_valid(chaos_validator(), &chaos, "the NetworkChaos");
    assert_eq!(
        chaos["spec"]["selector"]["labelSelectors"],
        json!({"app": "cars-p31", "component": "taskmanager"})
    );
    assert_eq!(chaos["spec"]["duration"], "1s");
    task.await.unwrap().unwrap();
    assert!(server.list(&networkchaos(), Some(NS)).is_empty(), "the NetworkChaos is deleted");
    assert!(server.get(&flinkdeployments(), NS, "cars-p31").is_none());
    assert!(!server.requests().iter().any(|r| r.method == Method::DELETE && r.path.contains("/pods/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_left_behind_are_cleaned_up_by_stop_profiling_and_the_janitor() {
    let server = FakeApiServer::start().await;
    let target = server.put(&flinkdeployments(), deployment(NS, "cars", true, json!({})));
    let leftover = |name: &str, run: u64, expires: &str| {
        let mut c = deployment(NS, name, false, json!({(crd::ANN_EXPIRES_AT): expires}));
        c["metadata"]["labels"][crd::LABEL_PROFILING_OF] = json!("cars");
        c["metadata"]["labels"][crd::LABEL_PROFILING_RUN] = json!(run.to_string());
        c["metadata"]["ownerReferences"] = json!([{"apiVersion": "flink.apache.org/v1beta1", "kind": "FlinkDeployment",
            "name": "cars", "uid": target["metadata"]["uid"], "controller": false, "blockOwnerDeletion": false}]);
        c
    };
    // A crashed coordinator's runs: one expired, one still within its time.
    server.put(&flinkdeployments(), leftover("cars-p1", 1, "2020-01-01T00:00:00Z"));
    server.put(&flinkdeployments(), leftover("cars-p2", 2, "2999-01-01T00:00:00Z"));
    server.put(&flinkdeployments(), leftover("cars-p3", 3, "2999-01-01T00:00:00Z"));
    let backend = KubernetesBackend::start(server.client(), &config(&[NS]), options("x"), None);
    eventually("the janitor deletes the expired copy", Duration::from_secs(3), || {
        server.get(&flinkdeployments(), NS, "cars-p1").is_none()
    })
    .await;
    assert!(server.get(&flinkdeployments(), NS, "cars-p2").is_some(), "an unexpired copy is kept");
    backend.stop_profiling(&key("cars"), 2).await.unwrap();
    assert!(server.get(&flinkdeployments(), NS, "cars-p2").is_none());
    backend.stop_profiling(&key("cars"), 2).await.unwrap();
    // Deleting the target takes its copies with it (owner references).
    server.delete(&flinkdeployments(), NS, "cars");
    assert!(server.get(&flinkdeployments(), NS, "cars-p3").is_none());
    assert!(!backend.can_profile(), "no observation source: no profiling");
    let err = backend
        .start_profiling(
            &key("cars"),
            &ProfilingRun { run_id: 9, config: FROM, duration_s: 1, inject_failure_after_s: None },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unsupported");
}

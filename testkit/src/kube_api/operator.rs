//! A simulated Flink Kubernetes Operator for tests: it watches the fake API server's
//! FlinkDeployments and moves their status the way the operator does, through
//! `UPGRADING` to `DEPLOYED`/`STABLE` with the job `RUNNING` (or to a failure), and keeps one
//! TaskManager pod per TaskManager (`app=<name>, component=taskmanager`).

use super::{FakeApiServer, flinkdeployments, pods};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the simulated operator makes of a spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Deploys it: `STABLE`, `RUNNING`.
    Stable,
    /// The upgrade fails: `FAILED` with this error.
    Fail(String),
    /// Never finishes upgrading.
    Hang,
}

type Judge = Arc<dyn Fn(&Value) -> Verdict + Send + Sync>;

#[derive(Clone)]
pub struct OperatorSim {
    judge: Arc<Mutex<Judge>>,
    delay: Duration,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for OperatorSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorSim").field("delay", &self.delay).finish()
    }
}

impl Drop for OperatorSim {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

fn parallelism(spec: &Value) -> i64 {
    let conf = spec.get("flinkConfiguration");
    let slots = conf
        .and_then(|c| c.get("taskmanager.numberOfTaskSlots"))
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or(v.as_i64()))
        .unwrap_or(1);
    let overrides = conf
        .and_then(|c| c.get("pipeline.jobvertex-parallelism-overrides"))
        .and_then(Value::as_str)
        .map(|s| s.split(',').filter_map(|p| p.split_once(':')?.1.parse::<i64>().ok()).max().unwrap_or(0))
        .unwrap_or(0);
    let p = if overrides > 0 {
        overrides
    } else {
        spec.pointer("/job/parallelism").and_then(Value::as_i64).unwrap_or(1)
    };
    (p + slots - 1) / slots
}

impl OperatorSim {
    /// Starts reconciling every FlinkDeployment; a change takes `delay` to roll out.
    pub fn start(server: &FakeApiServer, delay: Duration) -> Self {
        let judge: Arc<Mutex<Judge>> = Arc::new(Mutex::new(Arc::new(|_: &Value| Verdict::Stable)));
        let j = judge.clone();
        let srv = server.clone();
        let task = tokio::spawn(async move {
            // (namespace, name) → (generation being rolled out, since)
            let mut rolling: HashMap<(String, String), (i64, tokio::time::Instant)> = HashMap::new();
            loop {
                // Pods of deleted deployments go with them (the operator deletes the cluster).
                let live: Vec<(String, String)> = srv
                    .list(&flinkdeployments(), None)
                    .iter()
                    .map(|f| {
                        (
                            f["metadata"]["namespace"].as_str().unwrap_or("").into(),
                            f["metadata"]["name"].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect();
                for p in srv.list(&pods(), None) {
                    let ns = p["metadata"]["namespace"].as_str().unwrap_or("").to_string();
                    let app =
                        p.pointer("/metadata/labels/app").and_then(Value::as_str).unwrap_or("").to_string();
                    if !live.contains(&(ns.clone(), app)) {
                        srv.delete(&pods(), &ns, p["metadata"]["name"].as_str().unwrap_or(""));
                    }
                }
                for fd in srv.list(&flinkdeployments(), None) {
                    let ns = fd["metadata"]["namespace"].as_str().unwrap_or("").to_string();
                    let name = fd["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let generation = fd["metadata"]["generation"].as_i64().unwrap_or(1);
                    let observed =
                        fd.pointer("/status/observedGeneration").and_then(Value::as_i64).unwrap_or(0);
                    let key = (ns.clone(), name.clone());
                    if observed >= generation {
                        rolling.remove(&key);
                        continue;
                    }
                    let entry = rolling.entry(key.clone()).or_insert((0, tokio::time::Instant::now()));
                    if entry.0 != generation {
                        *entry = (generation, tokio::time::Instant::now());
                        srv.update(&flinkdeployments(), &ns, &name, |o| {
                            let job_id = o.pointer("/status/jobStatus/jobId").cloned().unwrap_or(json!(""));
                            o["status"]["lifecycleState"] = json!("UPGRADING");
                            o["status"]["reconciliationStatus"] = json!({"state": "UPGRADING"});
                            o["status"]["jobStatus"] = json!({"state": "RECONCILING", "jobId": job_id});
                        });
                        continue;
                    }
                    if entry.1.elapsed() < delay {
                        continue;
                    }
                    let verdict = (j.lock().unwrap())(&fd["spec"]);
                    match verdict {
                        Verdict::Hang => {}
                        Verdict::Stable => {
                            let spec = fd["spec"].clone();
                            srv.update(&flinkdeployments(), &ns, &name, |o| {
                                o["status"] = json!({
                                    "lifecycleState": "STABLE",
                                    "observedGeneration": generation,
                                    "reconciliationStatus": {"state": "DEPLOYED", "lastReconciledSpec": spec.to_string()},
                                    "jobStatus": {"state": "RUNNING", "jobId": format!("{:032x}", generation)},
                                    "jobManagerDeploymentStatus": "READY"
                                });
                            });
                            let tms = parallelism(&fd["spec"]);
                            for p in srv.list(&pods(), Some(&ns)) {
                                if p.pointer("/metadata/labels/app").and_then(Value::as_str)
                                    == Some(name.as_str())
                                {
                                    let pn = p["metadata"]["name"].as_str().unwrap().to_string();
                                    srv.delete(&pods(), &ns, &pn);
                                }
                            }
                            for i in 0..tms {
                                srv.put(&pods(), json!({
                                    "apiVersion": "v1", "kind": "Pod",
                                    "metadata": {"name": format!("{name}-taskmanager-{generation}-{i}"), "namespace": ns,
                                                 "labels": {"app": name, "component": "taskmanager"}},
                                    "spec": {"containers": [{"name": "flink-main-container", "image": "flink"}]}
                                }));
                            }
                        }
                        Verdict::Fail(why) => {
                            srv.update(&flinkdeployments(), &ns, &name, |o| {
                                o["status"] = json!({
                                    "lifecycleState": "FAILED",
                                    "observedGeneration": generation,
                                    "error": why,
                                    "reconciliationStatus": {"state": "DEPLOYED"},
                                    "jobStatus": {"state": "FAILED"}
                                });
                            });
                        }
                    }
                    rolling.remove(&key);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        OperatorSim { judge, delay, task: Arc::new(task) }
    }

    /// Decides what happens to each spec from now on.
    pub fn judge(&self, f: impl Fn(&Value) -> Verdict + Send + Sync + 'static) {
        *self.judge.lock().unwrap() = Arc::new(f);
    }
}

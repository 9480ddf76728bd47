//! Profiling runs: short-lived copies of a managed FlinkDeployment with a candidate
//! configuration, their failure injection, and how their measurements become a [`PerfSample`].
//!
//! A copy is named `<target>-p<run id>` (cut to the operator's 45-character limit), owned by its
//! target (an owner reference: deleting the target deletes its copies), labelled
//! `demeter.dev/profiling-of: <target>` and `demeter.dev/profiling-run: <id>`, and annotated
//! `demeter.dev/expires-at: <RFC 3339>`. It is not labelled `demeter.dev/managed`, so it is never
//! managed itself. Every coordinator replica deletes copies whose time is up (the janitor), so
//! a run that lost its coordinator (crash, restart, lost leadership) is cleaned up all the same.
//!
//! The copy runs the target's job (same image, jar, arguments and so the same input), starts
//! from the target's latest savepoint when the operator reports one, and carries
//! `demeter.profiling.run-id` in its Flink configuration, so that a job can tell it is a copy
//! (for example to use its own Kafka consumer group). Its agents report like any other, under the
//! copy's name; the runtime hands their per-second observations back through
//! [`ObservationSource`].

use demeter_common::{JobConfig, UnixMillis};
use demeter_core::obs::{JobObservation, PerfSample, RecoveryTime, SampleOrigin};
use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;

use super::convert::{ApplyPath, merge_patch, reconfig_patch};
use super::crd::{self, FlinkDeployment, conf};
use super::inject::AgentInjection;
use crate::backend::JobKey;

/// The operator derives Service names from a deployment's name; it keeps them ≤ 45 characters.
pub const MAX_NAME: usize = 45;

/// Where the per-second observations of a profiling copy come from: the runtime aggregates the
/// copy's agents like any job's and answers here.
pub trait ObservationSource: Send + Sync + fmt::Debug + 'static {
    /// Observations of `job` (a copy's namespace and name) at or after `since`, oldest first.
    fn observations<'a>(&'a self, job: &'a JobKey, since: UnixMillis) -> BoxFuture<'a, Vec<JobObservation>>;
}

/// `<target>-p<run id>`, with the target's name cut so that the whole fits [`MAX_NAME`] and does
/// not end in `-`.
pub fn copy_name(target: &str, run_id: u64) -> String {
    let suffix = format!("-p{run_id}");
    let keep = MAX_NAME.saturating_sub(suffix.len());
    let base: String = target.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// Everything a copy needs besides its target.
#[derive(Clone, Debug)]
pub struct CopyPlan<'a> {
    pub run_id: u64,
    pub config: JobConfig,
    /// RFC 3339 time after which the copy may be deleted by anyone.
    pub expires_at: String,
    pub injection: Option<&'a AgentInjection>,
    pub field_manager: &'a str,
}

/// The profiling copy of `target` (see the module documentation).
pub fn profiling_copy(target: &FlinkDeployment, plan: &CopyPlan<'_>) -> Result<FlinkDeployment, String> {
    let name = target.metadata.name.clone().ok_or("the target has no name")?;
    let uid = target.metadata.uid.clone().ok_or("the target has no uid (not read from the API server)")?;
    let mut spec = serde_json::to_value(&target.spec).map_err(|e| e.to_string())?;
    // The candidate configuration, written the way a redeploy would write it.
    let patch =
        reconfig_patch(target, &plan.config, &ApplyPath::Redeploy { upgrade_mode: "stateless".into() });
    merge_patch(&mut spec, &patch["spec"]);
    let mut copy_spec: crd::FlinkDeploymentSpec = serde_json::from_value(spec).map_err(|e| e.to_string())?;
    copy_spec.restart_nonce = None;
    let job = copy_spec.job.get_or_insert_with(Default::default);
    job.state = Some("running".into());
    job.savepoint_trigger_nonce = None;
    job.checkpoint_trigger_nonce = None;
    job.savepoint_redeploy_nonce = None;
    job.extra.remove("autoscalerResetNonce");
    job.initial_savepoint_path = latest_savepoint(target);
    if job.initial_savepoint_path.is_some() {
        // The copy's job graph is the target's, but a candidate may drop operators' state.
        job.allow_non_restored_state = Some(true);
    }
    copy_spec
        .flink_configuration
        .get_or_insert_with(Default::default)
        .insert(conf::PROFILING_RUN.into(), json!(plan.run_id.to_string()));
    let mut labels: BTreeMap<String, String> = target.metadata.labels.clone().unwrap_or_default();
    labels.remove(crd::LABEL_MANAGED);
    labels.insert(crd::LABEL_PROFILING_OF.into(), name.clone());
    labels.insert(crd::LABEL_PROFILING_RUN.into(), plan.run_id.to_string());
    labels.insert("app.kubernetes.io/managed-by".into(), plan.field_manager.to_string());
    let owner = OwnerReference {
        api_version: FlinkDeployment::api_version(&()).into_owned(),
        kind: FlinkDeployment::kind(&()).into_owned(),
        name: name.clone(),
        uid,
        controller: Some(false),
        block_owner_deletion: Some(false),
    };
    let mut copy = FlinkDeployment {
        metadata: ObjectMeta {
            name: Some(copy_name(&name, plan.run_id)),
            namespace: target.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(
                [(crd::ANN_EXPIRES_AT.to_string(), plan.expires_at.clone())].into_iter().collect(),
            ),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: copy_spec,
        status: None,
    };
    if let Some(inj) = plan.injection {
        inj.inject_into(&mut copy);
    }
    Ok(copy)
}

/// The target's latest savepoint location, if the operator reports one.
pub fn latest_savepoint(fd: &FlinkDeployment) -> Option<String> {
    let js = fd.status.as_ref()?.job_status.as_ref()?;
    let from_info = js
        .savepoint_info
        .as_ref()
        .and_then(|i| i.pointer("/lastSavepoint/location"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    from_info.or(js.upgrade_savepoint_path.as_deref().filter(|s| !s.is_empty())).map(str::to_string)
}

/// The Chaos Mesh `NetworkChaos` upstream Demeter injects: a 60 s delay on one TaskManager of the
/// copy for `duration_s`.
pub fn network_chaos(copy: &FlinkDeployment, run_id: u64, duration_s: u32) -> Value {
    let name = copy.metadata.name.clone().unwrap_or_default();
    let ns = copy.metadata.namespace.clone().unwrap_or_default();
    let mut meta = json!({
        "name": format!("{name}-chaos"),
        "namespace": ns,
        "labels": {
            (crd::LABEL_PROFILING_RUN): run_id.to_string(),
            (crd::LABEL_PROFILING_OF): copy.metadata.labels.as_ref()
                .and_then(|l| l.get(crd::LABEL_PROFILING_OF)).cloned().unwrap_or_default()
        },
    });
    if let Some(uid) = &copy.metadata.uid {
        meta["ownerReferences"] = json!([{
            "apiVersion": "flink.apache.org/v1beta1", "kind": "FlinkDeployment", "name": name, "uid": uid,
            "controller": false, "blockOwnerDeletion": false
        }]);
    }
    json!({
        "apiVersion": "chaos-mesh.org/v1alpha1",
        "kind": "NetworkChaos",
        "metadata": meta,
        "spec": {
            "action": "delay",
            "mode": "one",
            "selector": {
                "namespaces": [ns],
                "labelSelectors": { "app": name, "component": "taskmanager" }
            },
            "delay": { "latency": "60000ms", "correlation": "100", "jitter": "0ms" },
            "duration": format!("{duration_s}s")
        }
    })
}

/// When a run's events happened, in wall-clock milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunTimes {
    /// The copy runs its job (RUNNING and STABLE).
    pub running_at: UnixMillis,
    /// The failure was injected.
    pub failure_at: Option<UnixMillis>,
    /// The injected fault stops acting (end of the chaos, or the deleted pod's restart).
    pub fault_ends_at: Option<UnixMillis>,
    pub end: UnixMillis,
}

/// Turns a copy's observations into a sample of `config`:
///
/// - throughput, offered rate, p95 latency and busy ratio are means over the last
///   `window_ms` before the failure (or before the end without one), skipping the first
///   `warmup_ms` after the copy started running;
/// - with a failure, the recovery time is the time from the injection until the first second,
///   after the fault stopped acting or the copy visibly fell behind, in which the copy keeps up
///   again: throughput ≥ 90 % of the offered rate and backlog within 5 s of input of what it was
///   before (the production rule in `demeter_core::controller`). Not recovered by the end: a
///   right-censored [`RecoveryTime::NotRecovered`].
pub fn sample_from(
    config: JobConfig,
    obs: &[JobObservation],
    t: &RunTimes,
    window_ms: i64,
    warmup_ms: i64,
) -> Result<PerfSample, String> {
    let measure_end = t.failure_at.unwrap_or(t.end);
    let start = (t.running_at.0 + warmup_ms).max(measure_end.0 - window_ms);
    let before: Vec<&JobObservation> =
        obs.iter().filter(|o| o.at.0 >= start && o.at.0 < measure_end.0).collect();
    if before.is_empty() {
        return Err(format!(
            "no observations of the copy between {} and {} (is the agent injected, and does the runtime route the copy's metrics?)",
            start, measure_end.0
        ));
    }
    let n = before.len() as f64;
    let mean = |f: fn(&JobObservation) -> f64| before.iter().map(|o| f(o)).sum::<f64>() / n;
    let offered = mean(|o| o.offered_rate);
    let throughput = mean(|o| o.throughput);
    let busy = mean(|o| o.busy_ratio).clamp(0.0, 1.0);
    let lats: Vec<f64> = before.iter().filter_map(|o| o.p95_latency_ms).collect();
    let p95 = if lats.is_empty() {
        // Documented proxy: the time the backlog represents at the current throughput.
        let lag = mean(|o| o.lag);
        if throughput > 0.0 {
            lag / throughput * 1000.0
        } else {
            return Err("the copy processed nothing".into());
        }
    } else {
        lats.iter().sum::<f64>() / lats.len() as f64
    };
    let recovery = t.failure_at.map(|f| {
        let last = before.last().expect("non-empty");
        let lag_before = last.lag;
        let tolerance = 5.0 * last.offered_rate.max(offered).max(100.0);
        let keeps_up =
            |o: &JobObservation| o.throughput >= 0.9 * o.offered_rate && o.lag <= lag_before + tolerance;
        let after: Vec<&JobObservation> = obs.iter().filter(|o| o.at.0 >= f.0).collect();
        let fell_behind = after.iter().find(|o| !keeps_up(o)).map(|o| o.at.0);
        let search_from = match (t.fault_ends_at, fell_behind) {
            (Some(e), Some(b)) => e.0.min(b),
            (Some(e), None) => e.0,
            (None, Some(b)) => b,
            (None, None) => f.0,
        };
        match after.iter().find(|o| o.at.0 >= search_from && keeps_up(o)) {
            Some(o) => RecoveryTime::Measured((o.at.0 - f.0).max(0) as f64 / 1000.0),
            None => RecoveryTime::NotRecovered((t.end.0 - f.0).max(0) as f64 / 1000.0),
        }
    });
    let sample = PerfSample {
        config,
        at: measure_end,
        origin: SampleOrigin::Profiling,
        offered_rate: offered,
        throughput,
        p95_latency_ms: p95,
        busy_ratio: Some(busy),
        recovery,
    };
    if sample.is_valid() { Ok(sample) } else { Err(format!("the measured sample is not valid: {sample:?}")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kubernetes::crd::{FlinkDeploymentSpec, JobSpec, Resource, TaskManagerSpec};

    fn target() -> FlinkDeployment {
        let mut f = FlinkDeployment::new(
            "a-rather-long-flink-deployment-name-for-cars",
            FlinkDeploymentSpec {
                image: Some("flink:2.1".into()),
                flink_configuration: Some(
                    [("execution.checkpointing.interval".to_string(), json!("10s"))].into_iter().collect(),
                ),
                task_manager: Some(TaskManagerSpec {
                    resource: Some(Resource {
                        cpu: Some(1.into()),
                        memory: Some("2048m".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                job: Some(JobSpec {
                    jar_uri: Some("local:///job.jar".into()),
                    parallelism: Some(4),
                    upgrade_mode: Some("savepoint".into()),
                    savepoint_trigger_nonce: Some(3),
                    ..Default::default()
                }),
                restart_nonce: Some(9),
                ..Default::default()
            },
        );
        f.metadata.namespace = Some("flink".into());
        f.metadata.uid = Some("uid-1".into());
        f.metadata.labels =
            Some([(crd::LABEL_MANAGED.to_string(), "true".to_string())].into_iter().collect());
        f.status = Some(crd::FlinkDeploymentStatus {
            job_status: Some(crd::JobStatus {
                savepoint_info: Some(json!({"lastSavepoint": {"location": "s3://sp/1"}})),
                ..Default::default()
            }),
            ..Default::default()
        });
        f
    }

    #[test]
    fn names_fit_the_operators_limit() {
        assert_eq!(copy_name("cars", 7), "cars-p7");
        let n = copy_name(&"x".repeat(60), u64::MAX);
        assert!(n.len() <= MAX_NAME && n.ends_with(&format!("-p{}", u64::MAX)), "{n}");
        assert_eq!(copy_name(&format!("{}-y", "a".repeat(41)), 1), format!("{}-p1", "a".repeat(41)));
    }

    #[test]
    fn the_copy_runs_the_candidate_and_is_owned_labelled_and_expiring() {
        let t = target();
        let config = JobConfig {
            parallelism: 6,
            task_slots: 2,
            tm_cpu_milli: 2000,
            tm_memory_mb: 4096,
            checkpoint_interval_ms: 30_000,
        };
        let plan = CopyPlan {
            run_id: 12,
            config,
            expires_at: "2030-01-01T00:00:00Z".into(),
            injection: None,
            field_manager: "demeter",
        };
        let c = profiling_copy(&t, &plan).unwrap();
        assert_eq!(crate::backend::kubernetes::convert::job_config_of(&c), Ok(config));
        assert!(!c.is_managed() && c.is_profiling_copy());
        let labels = c.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[crd::LABEL_PROFILING_OF], "a-rather-long-flink-deployment-name-for-cars");
        assert_eq!(labels[crd::LABEL_PROFILING_RUN], "12");
        assert_eq!(c.annotation(crd::ANN_EXPIRES_AT), Some("2030-01-01T00:00:00Z"));
        let owner = &c.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("FlinkDeployment", "uid-1"));
        let job = c.spec.job.as_ref().unwrap();
        assert_eq!(job.upgrade_mode.as_deref(), Some("stateless"));
        assert_eq!(job.initial_savepoint_path.as_deref(), Some("s3://sp/1"));
        assert_eq!((job.savepoint_trigger_nonce, c.spec.restart_nonce), (None, None));
        assert_eq!(c.spec.flink_configuration.as_ref().unwrap()[conf::PROFILING_RUN], "12");
        assert!(c.metadata.name.as_ref().unwrap().len() <= MAX_NAME);
    }

    fn obs(at_s: i64, offered: f64, thr: f64, lag: f64) -> JobObservation {
        JobObservation {
            at: UnixMillis(at_s * 1000),
            offered_rate: offered,
            throughput: thr,
            lag,
            p95_latency_ms: Some(200.0),
            busy_ratio: 0.5,
            ..Default::default()
        }
    }

    #[test]
    fn a_sample_averages_the_window_and_times_the_recovery() {
        let mut o: Vec<JobObservation> = (0..100).map(|s| obs(s, 1000.0, 1000.0, 50.0)).collect();
        // Failure at 100 s: stalls for 30 s, catches up by 150 s.
        for s in 100..130 {
            o.push(obs(s, 1000.0, 0.0, 50.0 + 1000.0 * (s - 99) as f64));
        }
        for s in 130..150 {
            o.push(obs(s, 1000.0, 2500.0, 30_000.0 - 1500.0 * (s - 129) as f64));
        }
        for s in 150..200 {
            o.push(obs(s, 1000.0, 1000.0, 50.0));
        }
        let t = RunTimes {
            running_at: UnixMillis(0),
            failure_at: Some(UnixMillis(100_000)),
            fault_ends_at: Some(UnixMillis(130_000)),
            end: UnixMillis(200_000),
        };
        let s = sample_from(JobConfig::STATIC_DEFAULT, &o, &t, 60_000, 20_000).unwrap();
        assert_eq!((s.offered_rate, s.throughput, s.p95_latency_ms), (1000.0, 1000.0, 200.0));
        assert_eq!(s.origin, SampleOrigin::Profiling);
        // Backlog within 5 s of input (5000) of the 50 before: 30000 - 1500k <= 5050 → k = 17 → 146 s.
        assert_eq!(s.recovery, Some(RecoveryTime::Measured(46.0)));

        let stuck: Vec<JobObservation> = o
            .iter()
            .cloned()
            .map(|mut x| {
                if x.at.0 >= 100_000 {
                    x.throughput = 0.0;
                }
                x
            })
            .collect();
        let s = sample_from(JobConfig::STATIC_DEFAULT, &stuck, &t, 60_000, 20_000).unwrap();
        assert_eq!(s.recovery, Some(RecoveryTime::NotRecovered(100.0)));

        let none = RunTimes { failure_at: None, fault_ends_at: None, end: UnixMillis(100_000), ..t };
        let s = sample_from(JobConfig::STATIC_DEFAULT, &o[..100], &none, 60_000, 20_000).unwrap();
        assert_eq!(s.recovery, None);
        assert!(
            sample_from(JobConfig::STATIC_DEFAULT, &[], &none, 60_000, 0)
                .unwrap_err()
                .contains("no observations")
        );
    }
}

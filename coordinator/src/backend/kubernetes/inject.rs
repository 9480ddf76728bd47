//! Agent sidecar injection: the chart's `sidecar.yaml` (a pod-template fragment) merged into
//! `spec.taskManager.podTemplate`, and its `flink-conf.yaml` (a flat string map) merged into
//! `spec.flinkConfiguration`.
//!
//! The merge follows the chart's contract (`charts/demeter/README.md`), like a strategic merge
//! patch: maps are merged key by key, `containers`, `initContainers` and `volumes` by `name`
//! (an entry of the fragment replaces the job's entry of the same name, or is appended), other
//! lists and scalars are replaced. Merging twice gives the same result as merging once, so
//! [`AgentInjection::patch_for`] returns `None` for a job that already has the agent.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;

use super::convert::flat_flink_conf;
use super::crd::{ANN_INJECTED, FlinkDeployment};

/// Lists merged by the `name` of their entries.
const NAMED_LISTS: &[&str] = &["containers", "initContainers", "volumes", "ephemeralContainers"];

/// What the coordinator injects, loaded once at start.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInjection {
    fragment: Value,
    flink_conf: BTreeMap<String, String>,
    digest: String,
}

impl AgentInjection {
    /// Reads the two files the chart mounts (`[agent_injection] sidecar_file`, `flink_conf_file`).
    pub fn load(sidecar_file: &Path, flink_conf_file: &Path) -> anyhow::Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        Self::from_yaml(&read(sidecar_file)?, &read(flink_conf_file)?)
            .map_err(|e| anyhow::anyhow!("{} / {}: {e}", sidecar_file.display(), flink_conf_file.display()))
    }

    /// Parses the two documents. The fragment must be a mapping with at most `metadata` and
    /// `spec`; the Flink configuration a flat mapping of scalars (kept as strings).
    pub fn from_yaml(sidecar: &str, flink_conf: &str) -> Result<Self, String> {
        let fragment: Value =
            serde_saphyr::from_str(sidecar).map_err(|e| format!("the sidecar fragment is not YAML: {e}"))?;
        let Value::Object(m) = &fragment else { return Err("the sidecar fragment must be a mapping".into()) };
        if let Some(k) = m.keys().find(|k| !matches!(k.as_str(), "metadata" | "spec")) {
            return Err(format!("unexpected key `{k}` in the sidecar fragment (allowed: metadata, spec)"));
        }
        let containers = fragment.pointer("/spec/containers").and_then(Value::as_array);
        if containers.is_none_or(|c| c.iter().any(|x| x.get("name").and_then(Value::as_str).is_none())) {
            return Err("the sidecar fragment needs spec.containers, each with a name".into());
        }
        let conf: Value = if flink_conf.trim().is_empty() {
            json!({})
        } else {
            serde_saphyr::from_str(flink_conf).map_err(|e| format!("flink-conf is not YAML: {e}"))?
        };
        let Value::Object(cm) = conf else { return Err("flink-conf must be a mapping".into()) };
        let mut flat = BTreeMap::new();
        for (k, v) in cm {
            let s = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return Err(format!("flink-conf `{k}` must be a scalar, not {other}")),
            };
            flat.insert(k, s);
        }
        let digest = fnv_hex(&format!("{}\n{}", fragment, serde_json::to_string(&flat).expect("strings")));
        Ok(AgentInjection { fragment, flink_conf: flat, digest })
    }

    /// A short hash of what is injected (recorded in the annotation `demeter.dev/agent-injected`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn flink_conf(&self) -> &BTreeMap<String, String> {
        &self.flink_conf
    }

    /// `existing` (a pod template, or none) with the fragment merged in.
    pub fn merged_pod_template(&self, existing: Option<&Value>) -> Value {
        let mut out = existing.cloned().filter(Value::is_object).unwrap_or_else(|| json!({}));
        merge_strategic(&mut out, &self.fragment);
        out
    }

    /// The merge patch that injects the agent into `fd`, or `None` when it is already there.
    /// It carries `fd`'s resourceVersion as a precondition.
    pub fn patch_for(&self, fd: &FlinkDeployment) -> Option<Value> {
        let current = fd.spec.task_manager.as_ref().and_then(|t| t.pod_template.as_ref());
        let merged = self.merged_pod_template(current);
        let flat = flat_flink_conf(fd);
        let conf: Map<String, Value> = self
            .flink_conf
            .iter()
            .filter(|(k, v)| flat.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        if current == Some(&merged) && conf.is_empty() {
            return None;
        }
        let mut spec = Map::new();
        if current != Some(&merged) {
            spec.insert("taskManager".into(), json!({ "podTemplate": merged }));
        }
        if !conf.is_empty() {
            spec.insert("flinkConfiguration".into(), Value::Object(conf));
        }
        let mut metadata = json!({ "annotations": { (ANN_INJECTED): self.digest } });
        if let Some(rv) = &fd.metadata.resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        Some(json!({ "metadata": metadata, "spec": Value::Object(spec) }))
    }

    /// `fd` with the agent injected (for objects Demeter creates itself: profiling deployments).
    pub fn inject_into(&self, fd: &mut FlinkDeployment) {
        let tm = fd.spec.task_manager.get_or_insert_with(Default::default);
        tm.pod_template = Some(self.merged_pod_template(tm.pod_template.as_ref()));
        let conf = fd.spec.flink_configuration.get_or_insert_with(Default::default);
        for (k, v) in &self.flink_conf {
            conf.insert(k.clone(), json!(v));
        }
    }
}

/// Merges `patch` into `target`: objects key by key, [`NAMED_LISTS`] by entry name, anything
/// else replaced.
pub fn merge_strategic(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch) {
        (Some(t), Value::Object(p)) => {
            for (k, pv) in p {
                match t.get_mut(k) {
                    Some(tv) if NAMED_LISTS.contains(&k.as_str()) && tv.is_array() && pv.is_array() => {
                        merge_named_list(tv, pv);
                    }
                    Some(tv) if tv.is_object() && pv.is_object() => merge_strategic(tv, pv),
                    _ => {
                        t.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn merge_named_list(target: &mut Value, patch: &Value) {
    let (Some(t), Some(p)) = (target.as_array_mut(), patch.as_array()) else { return };
    for entry in p {
        let name = entry.get("name").and_then(Value::as_str);
        match name.and_then(|n| t.iter().position(|x| x.get("name").and_then(Value::as_str) == Some(n))) {
            Some(i) => t[i] = entry.clone(),
            None => t.push(entry.clone()),
        }
    }
}

/// FNV-1a 64, hex: a stable, dependency-free digest (not a security property).
fn fnv_hex(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kubernetes::convert::merge_patch;
    use crate::backend::kubernetes::crd::{FlinkDeploymentSpec, TaskManagerSpec};

    const SIDECAR: &str = r#"
metadata:
  labels:
    demeter.dev/agent: "true"
spec:
  containers:
    - name: demeter-agent
      image: "ghcr.io/demeter-autoscaler/demeter-agent:0.1.0"
      ports:
        - name: agent-metrics
          containerPort: 9464
  volumes:
    - name: demeter-agent-spool
      emptyDir:
        sizeLimit: 256Mi
"#;
    const CONF: &str = "metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.PrometheusReporterFactory\nmetrics.reporter.prom.port: \"9249\"\n";

    fn job(pod_template: Option<Value>) -> FlinkDeployment {
        let mut f = FlinkDeployment::new(
            "cars",
            FlinkDeploymentSpec {
                flink_configuration: Some([("a".to_string(), json!("b"))].into_iter().collect()),
                task_manager: Some(TaskManagerSpec { pod_template, ..Default::default() }),
                ..Default::default()
            },
        );
        f.metadata.resource_version = Some("7".into());
        f
    }

    #[test]
    fn merges_by_name_keeps_the_jobs_own_entries_and_is_idempotent() {
        let inj = AgentInjection::from_yaml(SIDECAR, CONF).unwrap();
        let own = json!({
            "metadata": {"labels": {"team": "ads"}},
            "spec": {
                "containers": [
                    {"name": "flink-main-container", "env": [{"name": "TZ", "value": "UTC"}]},
                    {"name": "demeter-agent", "image": "old"}
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "nodeSelector": {"pool": "flink"}
            }
        });
        let merged = inj.merged_pod_template(Some(&own));
        assert_eq!(merged["metadata"]["labels"], json!({"team": "ads", "demeter.dev/agent": "true"}));
        let names: Vec<&str> = merged["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["flink-main-container", "demeter-agent"]);
        assert_eq!(
            merged["spec"]["containers"][1]["image"],
            "ghcr.io/demeter-autoscaler/demeter-agent:0.1.0"
        );
        assert_eq!(merged["spec"]["containers"][0]["env"][0]["name"], "TZ");
        assert_eq!(merged["spec"]["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(merged["spec"]["nodeSelector"], json!({"pool": "flink"}));
        assert_eq!(inj.merged_pod_template(Some(&merged)), merged);

        // The patch, applied, leaves nothing more to inject.
        let f = job(Some(own));
        let p = inj.patch_for(&f).expect("needs injection");
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        assert_eq!(p["metadata"]["annotations"][ANN_INJECTED], inj.digest());
        assert_eq!(p["spec"]["flinkConfiguration"]["metrics.reporter.prom.port"], "9249");
        let mut obj = serde_json::to_value(&f).unwrap();
        merge_patch(&mut obj, &p);
        let after: FlinkDeployment = serde_json::from_value(obj).unwrap();
        assert_eq!(after.spec.flink_configuration.as_ref().unwrap()["a"], "b");
        assert_eq!(inj.patch_for(&after), None);
    }

    #[test]
    fn a_job_without_pod_template_gets_the_fragment() {
        let inj = AgentInjection::from_yaml(SIDECAR, CONF).unwrap();
        let mut f = job(None);
        inj.inject_into(&mut f);
        let pt = f.spec.task_manager.as_ref().unwrap().pod_template.as_ref().unwrap();
        assert_eq!(pt["spec"]["containers"][0]["name"], "demeter-agent");
        assert_eq!(inj.patch_for(&f), None);
    }

    #[test]
    fn bad_files_are_rejected_with_the_reason() {
        assert!(AgentInjection::from_yaml("- a\n", CONF).unwrap_err().contains("mapping"));
        assert!(AgentInjection::from_yaml("kind: Pod\nspec: {}\n", CONF).unwrap_err().contains("`kind`"));
        assert!(AgentInjection::from_yaml("spec: {}\n", CONF).unwrap_err().contains("spec.containers"));
        assert!(AgentInjection::from_yaml(SIDECAR, "a: [1]\n").unwrap_err().contains("scalar"));
        let ok = AgentInjection::from_yaml(SIDECAR, "port: 9249\nflag: true\n").unwrap();
        assert_eq!(ok.flink_conf()["port"], "9249");
        assert_eq!(ok.flink_conf()["flag"], "true");
    }
}

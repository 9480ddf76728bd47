//! Pure translations between a [`FlinkDeployment`] and a [`JobConfig`], and the merge patches
//! that carry a decision out. Nothing here does I/O, so every rule is unit-tested.
//!
//! **Reading** ([`job_config_of`]):
//!
//! | knob | source, first that exists |
//! |---|---|
//! | parallelism | the largest value of `pipeline.jobvertex-parallelism-overrides` (written by in-place scaling), `spec.taskManager.replicas × slots` (the operator ignores `job.parallelism` then), `spec.job.parallelism`, `parallelism.default` |
//! | task slots | `taskmanager.numberOfTaskSlots` (Flink's default 1) |
//! | CPU | `spec.taskManager.resource.cpu` × 1000 |
//! | memory | `spec.taskManager.resource.memory`: a Flink memory size first (`2048m`, `2g`, `512 mb`; `m` is MiB), then a Kubernetes quantity (`4096Mi`, `1.5Gi`, `2G`) — the operator's own order |
//! | checkpoint interval | `execution.checkpointing.interval` (the key in Flink 1.x and 2.x), flat or nested (`execution: {checkpointing: {interval: 10s}}`, which operator 1.15 flattens); Flink durations (`10s`, `10000 ms`, `1 min`, a bare number is milliseconds) |
//!
//! **Writing** ([`reconfig_patch`]): a JSON merge patch with a `metadata.resourceVersion`
//! precondition. See `docs/kubernetes.md` for the exact format.

use demeter_common::{Constraints, JobConfig, Quota};
use demeter_core::controller::Mode;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use super::crd::{self, FlinkDeployment, conf};

/// Why a FlinkDeployment cannot be read as a [`JobConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("`{0}` is not set")]
    Missing(&'static str),
    #[error("`{field}` = {value:?} is not valid: {why}")]
    Invalid { field: &'static str, value: String, why: String },
}

fn invalid(field: &'static str, value: impl Into<String>, why: impl Into<String>) -> ConvertError {
    ConvertError::Invalid { field, value: value.into(), why: why.into() }
}

/// `flinkConfiguration` as the operator sees it: nested objects flattened with `.`, arrays joined
/// with `;`, scalars as text. A flat key wins over the same key spelled nested.
pub fn flat_flink_conf(fd: &FlinkDeployment) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(c) = &fd.spec.flink_configuration {
        for (k, v) in c {
            if v.is_object() {
                flatten_into(v, k, &mut out, false);
            }
        }
        for (k, v) in c {
            if !v.is_object() {
                flatten_into(v, k, &mut out, true);
            }
        }
    }
    out
}

fn flatten_into(v: &Value, key: &str, out: &mut BTreeMap<String, String>, overwrite: bool) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten_into(x, &format!("{key}.{k}"), out, overwrite);
            }
        }
        Value::Array(a) => {
            let s = a.iter().map(scalar_text).collect::<Vec<_>>().join(";");
            put(out, key, s, overwrite);
        }
        other => put(out, key, scalar_text(other), overwrite),
    }
}

fn put(out: &mut BTreeMap<String, String>, key: &str, v: String, overwrite: bool) {
    if overwrite || !out.contains_key(key) {
        out.insert(key.to_string(), v);
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parses a memory size into MiB, rounding to the nearest MiB: first as Flink's `MemorySize`
/// (integer + `b|k|kb|m|mb|g|gb|t|tb` or the long names, case-insensitive, 1024-based), then as a
/// Kubernetes quantity after the operator's normalisation (upper-cased, a trailing `B` dropped,
/// `I` → `i`: `4096Mi`, `1.5Gi`, `2G` = 2·10⁹ bytes).
pub fn parse_memory_mb(s: &str) -> Result<u32, String> {
    let bytes = parse_flink_memory(s).or_else(|| parse_k8s_memory(s)).ok_or_else(|| {
        "expected a Flink memory size (2048m, 2g) or a Kubernetes quantity (4096Mi)".to_string()
    })?;
    let mb = (bytes / (1024.0 * 1024.0)).round();
    if !(1.0..=u32::MAX as f64).contains(&mb) {
        return Err("out of range".into());
    }
    Ok(mb as u32)
}

fn parse_flink_memory(s: &str) -> Option<f64> {
    let t = s.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = t[..digits].parse().ok()?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kibibytes" => 1 << 10,
        "m" | "mb" | "mebibytes" => 1 << 20,
        "g" | "gb" | "gibibytes" => 1 << 30,
        "t" | "tb" | "tebibytes" => 1 << 40,
        _ => return None,
    };
    Some(n as f64 * mult as f64)
}

fn parse_k8s_memory(s: &str) -> Option<f64> {
    let mut q: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_uppercase();
    if q.ends_with('B') {
        q.pop();
    }
    if q.ends_with('I') {
        q.pop();
        q.push('i');
    }
    let num_len = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let n: f64 = q[..num_len].parse().ok()?;
    let mult = match &q[num_len..] {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then_some(n * mult)
}

/// How Demeter writes a memory size: Flink syntax in MiB (`2048m`), as the operator's examples do.
pub fn format_memory_mb(mb: u32) -> String {
    format!("{mb}m")
}

/// Parses a Flink duration (`TimeUtils.parseDuration`): an integer and an optional unit, with
/// optional blanks between; no unit means milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err("expected a duration such as 10s, 10000 ms or 1 min".into());
    }
    let n: u64 = t[..digits].parse().map_err(|_| "number too large".to_string())?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let (num, den): (u64, u64) = match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => (1, 1),
        "s" | "sec" | "secs" | "second" | "seconds" => (1_000, 1),
        "m" | "min" | "mins" | "minute" | "minutes" => (60_000, 1),
        "h" | "hour" | "hours" => (3_600_000, 1),
        "d" | "day" | "days" => (86_400_000, 1),
        "µs" | "us" | "micro" | "micros" | "microsecond" | "microseconds" => (1, 1_000),
        "ns" | "nano" | "nanos" | "nanosecond" | "nanoseconds" => (1, 1_000_000),
        other => return Err(format!("unknown time unit `{other}`")),
    };
    n.checked_mul(num).map(|x| x / den).ok_or_else(|| "duration too large".to_string())
}

/// How Demeter writes CPU: whole cores as an integer (`2`), otherwise a decimal (`2.5`).
pub fn cpu_json(milli: u32) -> Value {
    if milli.is_multiple_of(1000) { json!(milli / 1000) } else { json!(milli as f64 / 1000.0) }
}

/// How Demeter writes a checkpoint interval: whole seconds as `30s`, otherwise `1500ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) { format!("{}s", ms / 1000) } else { format!("{ms}ms") }
}

/// Parses `pipeline.jobvertex-parallelism-overrides` (`<vertex id>:<parallelism>,...`).
pub fn parse_overrides(s: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once(':').ok_or_else(|| format!("`{part}` is not <vertex>:<parallelism>"))?;
        let p: u32 = v.trim().parse().map_err(|_| format!("`{v}` is not a parallelism"))?;
        out.insert(k.trim().to_string(), p);
    }
    Ok(out)
}

/// Every vertex at `parallelism`, in vertex-id order (deterministic patches).
pub fn format_overrides(vertices: &[String], parallelism: u32) -> String {
    let mut v: Vec<&String> = vertices.iter().collect();
    v.sort();
    v.dedup();
    v.iter().map(|id| format!("{id}:{parallelism}")).collect::<Vec<_>>().join(",")
}

fn positive_u32(field: &'static str, v: i64) -> Result<u32, ConvertError> {
    u32::try_from(v)
        .ok()
        .filter(|x| *x > 0)
        .ok_or_else(|| invalid(field, v.to_string(), "a positive integer"))
}

/// The configuration a FlinkDeployment asks for (see the module documentation).
pub fn job_config_of(fd: &FlinkDeployment) -> Result<JobConfig, ConvertError> {
    let flat = flat_flink_conf(fd);
    let task_slots = match flat.get(conf::TASK_SLOTS) {
        Some(s) => {
            let n: i64 =
                s.trim().parse().map_err(|_| invalid("taskmanager.numberOfTaskSlots", s, "an integer"))?;
            positive_u32("taskmanager.numberOfTaskSlots", n)?
        }
        None => 1,
    };
    let tm = fd.spec.task_manager.as_ref();
    let res = tm.and_then(|t| t.resource.as_ref());
    let cpu = res
        .and_then(|r| r.cpu.as_ref())
        .ok_or(ConvertError::Missing("spec.taskManager.resource.cpu"))?
        .as_f64()
        .unwrap_or(f64::NAN);
    if !(cpu.is_finite() && cpu > 0.0 && cpu * 1000.0 <= u32::MAX as f64) {
        return Err(invalid("spec.taskManager.resource.cpu", cpu.to_string(), "a positive number of cores"));
    }
    let tm_cpu_milli = ((cpu * 1000.0).round() as u32).max(1);
    let mem = res
        .and_then(|r| r.memory.as_deref())
        .ok_or(ConvertError::Missing("spec.taskManager.resource.memory"))?;
    let tm_memory_mb =
        parse_memory_mb(mem).map_err(|e| invalid("spec.taskManager.resource.memory", mem, e))?;
    let interval = flat
        .get(conf::CHECKPOINT_INTERVAL)
        .ok_or(ConvertError::Missing("flinkConfiguration.\"execution.checkpointing.interval\""))?;
    let checkpoint_interval_ms =
        parse_duration_ms(interval).map_err(|e| invalid("execution.checkpointing.interval", interval, e))?;
    if checkpoint_interval_ms == 0 {
        return Err(invalid("execution.checkpointing.interval", interval, "checkpointing must be enabled"));
    }

    let overrides = match flat.get(conf::PARALLELISM_OVERRIDES) {
        Some(s) => {
            parse_overrides(s).map_err(|e| invalid("pipeline.jobvertex-parallelism-overrides", s, e))?
        }
        None => BTreeMap::new(),
    };
    let parallelism = if let Some(max) = overrides.values().copied().max().filter(|m| *m > 0) {
        max
    } else if let Some(r) = tm.and_then(|t| t.replicas) {
        positive_u32("spec.taskManager.replicas", r as i64)?.saturating_mul(task_slots)
    } else if let Some(p) = fd.spec.job.as_ref().and_then(|j| j.parallelism).filter(|p| *p > 0) {
        positive_u32("spec.job.parallelism", p)?
    } else if let Some(s) = flat.get("parallelism.default") {
        let n: i64 = s.trim().parse().map_err(|_| invalid("parallelism.default", s, "an integer"))?;
        positive_u32("parallelism.default", n)?
    } else {
        return Err(ConvertError::Missing("spec.job.parallelism"));
    };
    Ok(JobConfig { parallelism, task_slots, tm_cpu_milli, tm_memory_mb, checkpoint_interval_ms })
}

/// How a reconfiguration reaches the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyPath {
    /// The operator's in-place path: `pipeline.jobvertex-parallelism-overrides` with every vertex
    /// at the new parallelism; the operator sends `PUT /jobs/{id}/resource-requirements`.
    InPlace { vertices: Vec<String> },
    /// A spec change the operator rolls out with the job's upgrade mode.
    Redeploy { upgrade_mode: String },
}

/// Whether the operator can rescale this job in place (its own conditions): a native-mode
/// application deployment on Flink ≥ 1.18 with the adaptive scheduler and in-place scaling not
/// switched off, whose job id is known.
pub fn supports_in_place(fd: &FlinkDeployment) -> Result<(), String> {
    if fd.spec.mode.as_deref().is_some_and(|m| m.eq_ignore_ascii_case("standalone")) {
        return Err("standalone mode".into());
    }
    let version = fd.spec.flink_version.as_deref().unwrap_or("");
    if !flink_version_at_least(version, 1, 18) {
        return Err(format!("flinkVersion {version:?} is older than v1_18"));
    }
    let flat = flat_flink_conf(fd);
    if !flat.get(conf::SCHEDULER).is_some_and(|s| s.trim().eq_ignore_ascii_case("adaptive")) {
        return Err("jobmanager.scheduler is not adaptive".into());
    }
    if flat.get(conf::INPLACE_SCALING).is_some_and(|s| s.trim().eq_ignore_ascii_case("false")) {
        return Err(format!("{} is false", conf::INPLACE_SCALING));
    }
    if job_id(fd).is_none() {
        return Err("the job id is not known yet".into());
    }
    Ok(())
}

/// `v1_18`, `v2_0`, ... compared with `major.minor`.
pub fn flink_version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.trim_start_matches(['v', 'V']).split('_').map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

pub fn job_id(fd: &FlinkDeployment) -> Option<&str> {
    fd.status.as_ref()?.job_status.as_ref()?.job_id.as_deref().filter(|s| !s.is_empty())
}

/// Merge-patch `metadata` with a `resourceVersion` precondition: the API server refuses the
/// patch with 409 Conflict if the object changed since it was read.
fn precondition(fd: &FlinkDeployment) -> Value {
    match &fd.metadata.resource_version {
        Some(rv) => json!({ "resourceVersion": rv }),
        None => json!({}),
    }
}

/// The merge patch that makes `fd` run `to` (see `docs/kubernetes.md` for the exact format).
/// Only the knobs Demeter owns are written; every other field of the object is left alone.
pub fn reconfig_patch(fd: &FlinkDeployment, to: &JobConfig, path: &ApplyPath) -> Value {
    let mut flink_conf = Map::new();
    let mut spec = Map::new();
    match path {
        ApplyPath::InPlace { vertices } => {
            flink_conf.insert(
                conf::PARALLELISM_OVERRIDES.into(),
                json!(format_overrides(vertices, to.parallelism)),
            );
        }
        ApplyPath::Redeploy { upgrade_mode } => {
            let mut job = Map::new();
            job.insert("parallelism".into(), json!(to.parallelism));
            job.insert("upgradeMode".into(), json!(upgrade_mode));
            let mut tm = Map::new();
            tm.insert(
                "resource".into(),
                json!({ "cpu": cpu_json(to.tm_cpu_milli), "memory": format_memory_mb(to.tm_memory_mb) }),
            );
            if fd.spec.task_manager.as_ref().is_some_and(|t| t.replicas.is_some()) {
                // With replicas set the operator runs replicas × slots; keep that exact or drop it.
                let exact = to.parallelism.is_multiple_of(to.task_slots.max(1));
                tm.insert("replicas".into(), if exact { json!(to.taskmanagers()) } else { Value::Null });
            }
            spec.insert("job".into(), Value::Object(job));
            spec.insert("taskManager".into(), Value::Object(tm));
            flink_conf.insert(conf::TASK_SLOTS.into(), json!(to.task_slots.to_string()));
            flink_conf.insert(
                conf::CHECKPOINT_INTERVAL.into(),
                json!(format_duration_ms(to.checkpoint_interval_ms)),
            );
            if flat_flink_conf(fd).contains_key(conf::PARALLELISM_OVERRIDES) {
                // Earlier in-place scaling: the overrides would win over job.parallelism.
                flink_conf.insert(conf::PARALLELISM_OVERRIDES.into(), Value::Null);
            }
        }
    }
    let written: Vec<String> = flink_conf.keys().cloned().collect();
    for key in written {
        clear_nested_spellings(fd, &key, &mut flink_conf);
    }
    spec.insert("flinkConfiguration".into(), Value::Object(flink_conf));
    json!({ "metadata": precondition(fd), "spec": Value::Object(spec) })
}

/// Adds `null`s that remove `key` where it is spelled nested (`execution: {checkpointing: ...}`),
/// so that the flat value Demeter writes is the only one.
fn clear_nested_spellings(fd: &FlinkDeployment, key: &str, patch: &mut Map<String, Value>) {
    let Some(c) = &fd.spec.flink_configuration else { return };
    for (top, v) in c {
        if !v.is_object() || !key.starts_with(&format!("{top}.")) {
            continue;
        }
        let rest: Vec<&str> = key[top.len() + 1..].split('.').collect();
        // Every split of the remaining dotted key into nested object levels.
        for path in nested_paths(v, &rest) {
            let mut node = patch.entry(top.clone()).or_insert_with(|| json!({}));
            for seg in &path[..path.len() - 1] {
                node = node.as_object_mut().expect("object").entry(seg.clone()).or_insert_with(|| json!({}));
            }
            node.as_object_mut().expect("object").insert(path[path.len() - 1].clone(), Value::Null);
        }
    }
}

fn nested_paths(v: &Value, rest: &[&str]) -> Vec<Vec<String>> {
    let Value::Object(m) = v else { return Vec::new() };
    let mut out = Vec::new();
    for (k, child) in m {
        let kparts: Vec<&str> = k.split('.').collect();
        if kparts.len() > rest.len() || kparts[..] != rest[..kparts.len()] {
            continue;
        }
        if kparts.len() == rest.len() {
            if !child.is_object() {
                out.push(vec![k.clone()]);
            }
        } else {
            for mut p in nested_paths(child, &rest[kparts.len()..]) {
                p.insert(0, k.clone());
                out.push(p);
            }
        }
    }
    out
}

/// The merge patch that undoes `patch` on `original`: every leaf `patch` sets gets its value in
/// `original` back, or `null` where `original` had none. `metadata` is not part of it.
pub fn inverse_patch(patch: &Value, original: &Value) -> Value {
    fn inv(p: &Value, o: Option<&Value>) -> Value {
        match p {
            Value::Object(pm) if !pm.is_empty() => {
                let mut out = Map::new();
                for (k, pv) in pm {
                    let ov = o.and_then(|o| o.get(k));
                    out.insert(k.clone(), inv(pv, ov));
                }
                Value::Object(out)
            }
            _ => o.cloned().unwrap_or(Value::Null),
        }
    }
    let spec = patch.get("spec").cloned().unwrap_or_else(|| json!({}));
    json!({ "spec": inv(&spec, original.get("spec")) })
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(pm) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let tm = target.as_object_mut().expect("object");
        for (k, v) in pm {
            if v.is_null() {
                tm.remove(k);
            } else {
                merge_patch(tm.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// Where a FlinkDeployment stands, as far as acting on it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The operator has reconciled the latest spec and the job runs: safe to act.
    Stable,
    /// Deploying, upgrading, rolling back or waiting for the operator: do not touch it.
    Busy(String),
    /// The last change failed (or the job did).
    Failed(String),
}

/// The operator's view of `fd` (`status.observedGeneration`, `reconciliationStatus`,
/// `lifecycleState`, `jobStatus.state`).
pub fn readiness(fd: &FlinkDeployment) -> Readiness {
    let Some(st) = &fd.status else {
        return Readiness::Busy("the operator has not reported a status yet".into());
    };
    let generation = fd.metadata.generation.unwrap_or(0);
    if observed_generation(fd).is_some_and(|g| g < generation) {
        return Readiness::Busy(format!(
            "the operator has not picked up generation {generation} yet (observed {})",
            observed_generation(fd).unwrap_or(0)
        ));
    }
    let lifecycle = st.lifecycle_state.as_deref().unwrap_or("");
    let recon = st.reconciliation_status.as_ref().and_then(|r| r.state.as_deref()).unwrap_or("");
    let job = st.job_status.as_ref().and_then(|j| j.state.as_deref()).unwrap_or("");
    let error = st.error.as_deref().filter(|e| !e.is_empty());
    let with_error = |what: String| match error {
        Some(e) => format!("{what}: {}", truncate(e, 300)),
        None => what,
    };
    if matches!(lifecycle, "FAILED" | "ROLLED_BACK") || recon == "ROLLED_BACK" || matches!(job, "FAILED") {
        return Readiness::Failed(with_error(format!(
            "lifecycle {lifecycle}, reconciliation {recon}, job {job}"
        )));
    }
    if matches!(recon, "UPGRADING" | "ROLLING_BACK") || matches!(lifecycle, "UPGRADING" | "ROLLING_BACK") {
        return Readiness::Busy(format!("being upgraded (lifecycle {lifecycle}, reconciliation {recon})"));
    }
    if lifecycle == "STABLE" && job == "RUNNING" {
        return Readiness::Stable;
    }
    Readiness::Busy(with_error(format!("lifecycle {lifecycle:?}, job {job:?}")))
}

/// `status.observedGeneration`, or the generation recorded in `lastReconciledSpec`.
pub fn observed_generation(fd: &FlinkDeployment) -> Option<i64> {
    let st = fd.status.as_ref()?;
    if let Some(g) = st.observed_generation {
        return Some(g);
    }
    let spec = st.reconciliation_status.as_ref()?.last_reconciled_spec.as_deref()?;
    let v: Value = serde_json::from_str(spec).ok()?;
    v.pointer("/resource_metadata/metadata/generation").and_then(Value::as_i64)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// What a job's annotations say (all optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobAnnotations {
    pub mode: Option<Mode>,
    pub max_cpu: Option<f64>,
    pub max_memory_mb: Option<u64>,
    pub latency_bound_ms: Option<f64>,
    pub recovery_bound_s: Option<f64>,
    /// Annotations that could not be read, as `key=value: why`. They are ignored (and reported
    /// as a Warning event) rather than guessed.
    pub problems: Vec<String>,
}

impl JobAnnotations {
    pub fn of(fd: &FlinkDeployment) -> Self {
        let mut a = JobAnnotations::default();
        let mut num = |key: &str, ok: fn(f64) -> bool| -> Option<f64> {
            let raw = fd.annotation(key)?;
            match raw.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && ok(v) => Some(v),
                _ => {
                    a.problems.push(format!("{key}={raw:?}: not a positive number"));
                    None
                }
            }
        };
        let max_cpu = num(crd::ANN_MAX_CPU, |v| v > 0.0);
        let max_memory_mb = num(crd::ANN_MAX_MEMORY_MB, |v| v >= 1.0).map(|v| v as u64);
        let latency = num(crd::ANN_LATENCY_BOUND_MS, |v| v > 0.0);
        let recovery = num(crd::ANN_RECOVERY_BOUND_S, |v| v > 0.0);
        a.max_cpu = max_cpu;
        a.max_memory_mb = max_memory_mb;
        a.latency_bound_ms = latency;
        a.recovery_bound_s = recovery;
        if let Some(raw) = fd.annotation(crd::ANN_MODE) {
            match raw.trim() {
                "apply" => a.mode = Some(Mode::Apply),
                "recommend-only" => a.mode = Some(Mode::RecommendOnly),
                _ => {
                    // Unknown means hands off: the safe reading of a typo.
                    a.mode = Some(Mode::RecommendOnly);
                    a.problems.push(format!("{}={raw:?}: expected apply or recommend-only", crd::ANN_MODE));
                }
            }
        }
        a
    }

    /// `base` with the annotations' bounds, each only ever lowering it: an annotation cannot
    /// raise the quota the coordinator was configured with.
    pub fn quota(&self, base: Quota) -> Quota {
        Quota {
            max_total_cpu: self.max_cpu.map_or(base.max_total_cpu, |c| c.min(base.max_total_cpu)),
            max_total_memory_mb: self
                .max_memory_mb
                .map_or(base.max_total_memory_mb, |m| m.min(base.max_total_memory_mb)),
        }
    }

    /// `base` with the annotations' quality bounds.
    pub fn constraints(&self, base: Constraints) -> Constraints {
        Constraints {
            latency_p95_ms: self.latency_bound_ms.unwrap_or(base.latency_p95_ms),
            recovery_time_s: self.recovery_bound_s.unwrap_or(base.recovery_time_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kubernetes::crd::{FlinkDeploymentSpec, JobSpec, Resource, TaskManagerSpec};

    fn fd(conf: Value) -> FlinkDeployment {
        let mut f = FlinkDeployment::new(
            "cars",
            FlinkDeploymentSpec {
                flink_version: Some("v2_1".into()),
                flink_configuration: Some(serde_json::from_value(conf).unwrap()),
                task_manager: Some(TaskManagerSpec {
                    resource: Some(Resource {
                        cpu: serde_json::Number::from_f64(1.5),
                        memory: Some("2g".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                job: Some(JobSpec {
                    parallelism: Some(8),
                    upgrade_mode: Some("savepoint".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        f.metadata.namespace = Some("flink".into());
        f.metadata.resource_version = Some("41".into());
        f
    }

    #[test]
    fn memory_sizes_follow_the_operators_parsing_order() {
        for (s, mb) in [
            ("2048m", 2048),
            ("2g", 2048),
            ("2G", 2048),
            ("512 mb", 512),
            ("4096Mi", 4096),
            ("1.5Gi", 1536),
            ("1.5gi", 1536),
            ("4096MiB", 4096),
            ("2097152k", 2048),
            ("1073741824", 1024),
            ("1 gibibytes", 1024),
        ] {
            assert_eq!(parse_memory_mb(s), Ok(mb), "{s}");
        }
        // Kubernetes decimal units where Flink's parser fails.
        assert_eq!(parse_memory_mb("2.5G"), Ok(2384));
        for bad in ["", "lots", "-1g", "2 parsecs", "0"] {
            assert!(parse_memory_mb(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_memory_mb(3072), "3072m");
    }

    #[test]
    fn durations_follow_flinks_time_utils() {
        for (s, ms) in [
            ("10s", 10_000),
            ("10000 ms", 10_000),
            ("1 min", 60_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("30000", 30_000),
            ("90 seconds", 90_000),
            ("1500000us", 1_500),
        ] {
            assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
        }
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("10 fortnights").is_err());
        assert_eq!(format_duration_ms(30_000), "30s");
        assert_eq!(format_duration_ms(1_500), "1500ms");
    }

    #[test]
    fn reads_every_knob() {
        let f = fd(json!({"taskmanager.numberOfTaskSlots": "2", "execution.checkpointing.interval": "30 s"}));
        assert_eq!(
            job_config_of(&f),
            Ok(JobConfig {
                parallelism: 8,
                task_slots: 2,
                tm_cpu_milli: 1500,
                tm_memory_mb: 2048,
                checkpoint_interval_ms: 30_000
            })
        );
    }

    #[test]
    fn parallelism_precedence_overrides_then_replicas_then_job() {
        let mut f = fd(json!({
            "taskmanager.numberOfTaskSlots": 2,
            "execution": {"checkpointing": {"interval": "10s"}},
            "pipeline.jobvertex-parallelism-overrides": "a:6,b:4"
        }));
        assert_eq!(job_config_of(&f).unwrap().parallelism, 6);
        assert_eq!(job_config_of(&f).unwrap().checkpoint_interval_ms, 10_000);
        f.spec.flink_configuration.as_mut().unwrap().remove(conf::PARALLELISM_OVERRIDES);
        f.spec.task_manager.as_mut().unwrap().replicas = Some(3);
        assert_eq!(job_config_of(&f).unwrap().parallelism, 6);
        f.spec.task_manager.as_mut().unwrap().replicas = None;
        assert_eq!(job_config_of(&f).unwrap().parallelism, 8);
        f.spec.job.as_mut().unwrap().parallelism = None;
        assert_eq!(job_config_of(&f), Err(ConvertError::Missing("spec.job.parallelism")));
    }

    #[test]
    fn a_flat_key_wins_over_its_nested_spelling() {
        let f = fd(json!({
            "execution": {"checkpointing": {"interval": "90s"}},
            "execution.checkpointing.interval": "20s",
        }));
        assert_eq!(job_config_of(&f).unwrap().checkpoint_interval_ms, 20_000);
    }

    #[test]
    fn missing_and_invalid_fields_are_named() {
        let f = fd(json!({}));
        assert_eq!(
            job_config_of(&f).unwrap_err().to_string(),
            "`flinkConfiguration.\"execution.checkpointing.interval\"` is not set"
        );
        let f =
            fd(json!({"execution.checkpointing.interval": "10s", "taskmanager.numberOfTaskSlots": "two"}));
        assert!(job_config_of(&f).unwrap_err().to_string().contains("taskmanager.numberOfTaskSlots"));
        let mut f = fd(json!({"execution.checkpointing.interval": "10s"}));
        f.spec.task_manager.as_mut().unwrap().resource.as_mut().unwrap().memory = Some("lots".into());
        assert!(job_config_of(&f).unwrap_err().to_string().contains("spec.taskManager.resource.memory"));
    }

    #[test]
    fn redeploy_patch_writes_exactly_the_owned_knobs() {
        let f = fd(json!({
            "execution": {"checkpointing": {"interval": "10s", "dir": "s3://x"}},
            "pipeline.jobvertex-parallelism-overrides": "a:8",
            "taskmanager.numberOfTaskSlots": "1"
        }));
        let to = JobConfig {
            parallelism: 12,
            task_slots: 4,
            tm_cpu_milli: 2500,
            tm_memory_mb: 3072,
            checkpoint_interval_ms: 30_000,
        };
        let p = reconfig_patch(&f, &to, &ApplyPath::Redeploy { upgrade_mode: "savepoint".into() });
        assert_eq!(
            p,
            json!({
                "metadata": {"resourceVersion": "41"},
                "spec": {
                    "job": {"parallelism": 12, "upgradeMode": "savepoint"},
                    "taskManager": {"resource": {"cpu": 2.5, "memory": "3072m"}},
                    "flinkConfiguration": {
                        "taskmanager.numberOfTaskSlots": "4",
                        "execution.checkpointing.interval": "30s",
                        "pipeline.jobvertex-parallelism-overrides": null,
                        "execution": {"checkpointing": {"interval": null}}
                    }
                }
            })
        );
        // Applying it gives the target configuration, and the nested spelling is gone.
        let mut obj = serde_json::to_value(&f).unwrap();
        merge_patch(&mut obj, &p);
        let after: FlinkDeployment = serde_json::from_value(obj.clone()).unwrap();
        assert_eq!(job_config_of(&after), Ok(to));
        assert_eq!(
            obj.pointer("/spec/flinkConfiguration/execution/checkpointing/dir"),
            Some(&json!("s3://x"))
        );
        // The inverse restores the original spec exactly.
        let mut back = obj.clone();
        merge_patch(&mut back, &inverse_patch(&p, &serde_json::to_value(&f).unwrap()));
        assert_eq!(back["spec"], serde_json::to_value(&f).unwrap()["spec"]);
    }

    #[test]
    fn replicas_stay_consistent_with_parallelism() {
        let mut f = fd(json!({"execution.checkpointing.interval": "10s"}));
        f.spec.task_manager.as_mut().unwrap().replicas = Some(8);
        let to = JobConfig { parallelism: 12, task_slots: 4, ..JobConfig::STATIC_DEFAULT };
        let p = reconfig_patch(&f, &to, &ApplyPath::Redeploy { upgrade_mode: "last-state".into() });
        assert_eq!(p.pointer("/spec/taskManager/replicas"), Some(&json!(3)));
        let to = JobConfig { parallelism: 10, task_slots: 4, ..JobConfig::STATIC_DEFAULT };
        let p = reconfig_patch(&f, &to, &ApplyPath::Redeploy { upgrade_mode: "last-state".into() });
        assert_eq!(p.pointer("/spec/taskManager/replicas"), Some(&Value::Null));
        let mut obj = serde_json::to_value(&f).unwrap();
        merge_patch(&mut obj, &p);
        assert_eq!(job_config_of(&serde_json::from_value(obj).unwrap()).unwrap().parallelism, 10);
    }

    #[test]
    fn in_place_patch_sets_every_vertex() {
        let f = fd(json!({"execution.checkpointing.interval": "10s"}));
        let to = JobConfig { parallelism: 16, ..job_config_of(&f).unwrap() };
        let p = reconfig_patch(&f, &to, &ApplyPath::InPlace { vertices: vec!["bb".into(), "aa".into()] });
        assert_eq!(
            p,
            json!({"metadata": {"resourceVersion": "41"},
                   "spec": {"flinkConfiguration": {"pipeline.jobvertex-parallelism-overrides": "aa:16,bb:16"}}})
        );
    }

    #[test]
    fn in_place_needs_what_the_operator_needs() {
        let mut f =
            fd(json!({"jobmanager.scheduler": "adaptive", "execution.checkpointing.interval": "10s"}));
        assert!(supports_in_place(&f).unwrap_err().contains("job id"));
        f.status = Some(crd::FlinkDeploymentStatus {
            job_status: Some(crd::JobStatus { job_id: Some("abc".into()), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(supports_in_place(&f), Ok(()));
        f.spec.flink_version = Some("v1_17".into());
        assert!(supports_in_place(&f).is_err());
        f.spec.flink_version = Some("v1_18".into());
        f.spec.flink_configuration.as_mut().unwrap().insert(conf::INPLACE_SCALING.into(), json!("false"));
        assert!(supports_in_place(&f).is_err());
        assert!(flink_version_at_least("v2_0", 1, 18) && !flink_version_at_least("v1_9", 1, 18));
    }

    #[test]
    fn readiness_reads_the_operator_status() {
        let mut f = fd(json!({}));
        f.metadata.generation = Some(3);
        assert!(matches!(readiness(&f), Readiness::Busy(_)));
        let mut st = crd::FlinkDeploymentStatus {
            lifecycle_state: Some("STABLE".into()),
            observed_generation: Some(3),
            job_status: Some(crd::JobStatus { state: Some("RUNNING".into()), ..Default::default() }),
            reconciliation_status: Some(crd::ReconciliationStatus {
                state: Some("DEPLOYED".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        f.status = Some(st.clone());
        assert_eq!(readiness(&f), Readiness::Stable);
        f.metadata.generation = Some(4);
        assert!(matches!(readiness(&f), Readiness::Busy(r) if r.contains("generation 4")));
        st.observed_generation = Some(4);
        st.lifecycle_state = Some("UPGRADING".into());
        f.status = Some(st.clone());
        assert!(matches!(readiness(&f), Readiness::Busy(r) if r.contains("upgraded")));
        st.lifecycle_state = Some("FAILED".into());
        st.error = Some("could not allocate".into());
        f.status = Some(st.clone());
        assert!(matches!(readiness(&f), Readiness::Failed(r) if r.contains("could not allocate")));
        // Without observedGeneration, the generation in lastReconciledSpec counts.
        st.observed_generation = None;
        st.lifecycle_state = Some("STABLE".into());
        st.reconciliation_status.as_mut().unwrap().last_reconciled_spec =
            Some(r#"{"spec":{},"resource_metadata":{"metadata":{"generation":4}}}"#.into());
        f.status = Some(st);
        assert_eq!(readiness(&f), Readiness::Stable);
    }

    #[test]
    fn annotations_only_lower_the_quota_and_bad_values_are_reported() {
        let mut f = fd(json!({}));
        f.metadata.annotations = Some(
            [
                (crd::ANN_MODE, "apply"),
                (crd::ANN_MAX_CPU, "8"),
                (crd::ANN_MAX_MEMORY_MB, "999999999"),
                (crd::ANN_LATENCY_BOUND_MS, "500"),
                (crd::ANN_RECOVERY_BOUND_S, "fast"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let a = JobAnnotations::of(&f);
        assert_eq!(a.mode, Some(Mode::Apply));
        let q = a.quota(Quota { max_total_cpu: 24.0, max_total_memory_mb: 65_536 });
        assert_eq!(q, Quota { max_total_cpu: 8.0, max_total_memory_mb: 65_536 });
        let c = a.constraints(Constraints::default());
        assert_eq!(c.latency_p95_ms, 500.0);
        assert_eq!(c.recovery_time_s, Constraints::default().recovery_time_s);
        assert_eq!(
            a.problems,
            vec![format!("{}=\"fast\": not a positive number", crd::ANN_RECOVERY_BOUND_S)]
        );
        f.metadata.annotations.as_mut().unwrap().insert(crd::ANN_MODE.into(), "yolo".into());
        assert_eq!(JobAnnotations::of(&f).mode, Some(Mode::RecommendOnly));
    }
}

//! NATS subjects and stream names.
//!
//! - `demeter.metrics.<namespace>.<deployment>.<taskmanager>`: [`crate::MetricBatch`]es.
//! - `demeter.agents.<namespace>.<deployment>.<taskmanager>.heartbeat`: [`crate::AgentHeartbeat`]s.
//!
//! Each token is sanitised with [`token`], because Kubernetes names may contain `.`, which NATS
//! treats as a separator, and user-supplied names could contain the wildcards `*` and `>`.

/// The JetStream stream that holds metric batches.
pub const METRICS_STREAM: &str = "DEMETER_METRICS";
/// Root of all metric subjects.
pub const METRICS_ROOT: &str = "demeter.metrics";
/// Filter that matches every metric subject.
pub const METRICS_ALL: &str = "demeter.metrics.>";
/// Filter that matches every heartbeat.
pub const HEARTBEATS_ALL: &str = "demeter.agents.>";

/// Makes `s` a single valid NATS subject token: characters other than ASCII letters, digits,
/// `-` and `_` become `_`; an empty string becomes `_`.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// `demeter.metrics.<namespace>.<deployment>.<taskmanager>`.
pub fn metrics(namespace: &str, deployment: &str, taskmanager: &str) -> String {
    format!("{METRICS_ROOT}.{}.{}.{}", token(namespace), token(deployment), token(taskmanager))
}

/// `demeter.metrics.<namespace>.<deployment>.>`: every TaskManager of one deployment.
pub fn metrics_of_deployment(namespace: &str, deployment: &str) -> String {
    format!("{METRICS_ROOT}.{}.{}.>", token(namespace), token(deployment))
}

/// `demeter.agents.<namespace>.<deployment>.<taskmanager>.heartbeat`.
pub fn heartbeat(namespace: &str, deployment: &str, taskmanager: &str) -> String {
    format!("demeter.agents.{}.{}.{}.heartbeat", token(namespace), token(deployment), token(taskmanager))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_from_sanitised_tokens() {
        assert_eq!(
            metrics("flink", "cars", "cars-taskmanager-1-1"),
            "demeter.metrics.flink.cars.cars-taskmanager-1-1"
        );
        assert_eq!(metrics("a.b", "c*", "d>e f"), "demeter.metrics.a_b.c_.d_e_f");
        assert_eq!(heartbeat("ns", "", "tm"), "demeter.agents.ns._.tm.heartbeat");
        assert_eq!(metrics_of_deployment("ns", "d"), "demeter.metrics.ns.d.>");
    }
}

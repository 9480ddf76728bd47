//! The agent's own metrics (Prometheus, `demeter_agent_*`) and the events that update them.
//!
//! Following Vector's instrumentation spec, each event is a struct whose `emit` logs and counts
//! in one place, error counters carry a bounded `error_type` label, and names follow
//! `<namespace>_<name>_<unit>_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// `error_type` label of the error counters; always one of a fixed set of names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error_type: &'static str,
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    pub scrapes: Counter,
    pub scrape_errors: Family<ErrorLabels, Counter>,
    pub scrape_duration: Histogram,
    pub parse_errors: Family<ErrorLabels, Counter>,
    pub unknown_families: Counter,
    pub invalid_values: Counter,
    pub batches: Counter,
    pub batch_bytes: Counter,
    pub exposition_bytes: Counter,
    pub published: Counter,
    pub publish_errors: Family<ErrorLabels, Counter>,
    pub buffer_depth: Gauge,
    pub dropped: Counter,
    pub spool_errors: Counter,
    pub heartbeats: Counter,
    pub taskmanager_up: Gauge,
    pub nats_connected: Gauge,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("demeter_agent");
        let t = Telemetry {
            scrapes: Counter::default(),
            scrape_errors: Family::default(),
            // 1 ms .. ~4 s
            scrape_duration: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            parse_errors: Family::default(),
            unknown_families: Counter::default(),
            invalid_values: Counter::default(),
            batches: Counter::default(),
            batch_bytes: Counter::default(),
            exposition_bytes: Counter::default(),
            published: Counter::default(),
            publish_errors: Family::default(),
            buffer_depth: Gauge::default(),
            dropped: Counter::default(),
            spool_errors: Counter::default(),
            heartbeats: Counter::default(),
            taskmanager_up: Gauge::default(),
            nats_connected: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "scrapes",
            "Scrapes of the TaskManager's metrics endpoint that succeeded",
            t.scrapes.clone(),
        );
        r.register(
            "scrape_errors",
            "Failed scrapes by error_type (connect, timeout, http_status, body)",
            t.scrape_errors.clone(),
        );
        r.register_with_unit(
            "scrape_duration",
            "Time to fetch the TaskManager's exposition",
            Unit::Seconds,
            t.scrape_duration.clone(),
        );
        r.register(
            "parse_errors",
            "Malformed exposition lines and unmappable samples by error_type",
            t.parse_errors.clone(),
        );
        r.register(
            "unknown_families",
            "Metric families that the mapping neither uses nor deliberately ignores (counted once per scrape)",
            t.unknown_families.clone(),
        );
        r.register(
            "invalid_values",
            "Mapped values dropped for being NaN, infinite or negative",
            t.invalid_values.clone(),
        );
        r.register("batches", "Metric batches built", t.batches.clone());
        r.register_with_unit(
            "batch",
            "Encoded size of the batches built",
            Unit::Bytes,
            t.batch_bytes.clone(),
        );
        r.register_with_unit(
            "exposition",
            "Size of the expositions scraped",
            Unit::Bytes,
            t.exposition_bytes.clone(),
        );
        r.register("published_batches", "Batches acknowledged by JetStream", t.published.clone());
        r.register(
            "publish_errors",
            "Failed publishes by error_type (disconnected, timeout, no_stream, rejected, other)",
            t.publish_errors.clone(),
        );
        r.register(
            "buffer_depth",
            "Batches waiting to be published (memory and disk)",
            t.buffer_depth.clone(),
        );
        r.register("dropped_batches", "Batches dropped because the buffer was full", t.dropped.clone());
        r.register("spool_errors", "Failed reads and writes of the spool directory", t.spool_errors.clone());
        r.register("heartbeats", "Heartbeats sent", t.heartbeats.clone());
        r.register("taskmanager_up", "1 when the last scrape succeeded", t.taskmanager_up.clone());
        r.register("nats_connected", "1 while connected to NATS", t.nats_connected.clone());
        Telemetry { registry: r, ..t }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A scrape succeeded and its batch was built.
#[derive(Debug)]
pub struct ScrapeCompleted {
    pub duration: Duration,
    pub exposition_bytes: usize,
    pub batch_bytes: usize,
    pub samples: usize,
    pub seq: u64,
}

impl ScrapeCompleted {
    pub fn emit(&self, t: &Telemetry) {
        tracing::trace!(
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            exposition_bytes = self.exposition_bytes,
            batch_bytes = self.batch_bytes,
            samples = self.samples,
            seq = self.seq,
            "scrape completed"
        );
        t.scrapes.inc();
        t.scrape_duration.observe(self.duration.as_secs_f64());
        t.batches.inc();
        t.batch_bytes.inc_by(self.batch_bytes as u64);
        t.exposition_bytes.inc_by(self.exposition_bytes as u64);
        t.taskmanager_up.set(1);
    }
}

/// A scrape failed.
#[derive(Debug)]
pub struct ScrapeFailed<'a> {
    pub error_type: &'static str,
    pub error: &'a str,
    pub consecutive: u32,
    pub retry_in: Duration,
}

impl ScrapeFailed<'_> {
    pub fn emit(&self, t: &Telemetry) {
        // The first failure and then every tenth: a restarting TaskManager should not flood the log.
        if self.consecutive == 1 || self.consecutive.is_multiple_of(10) {
            tracing::warn!(
                error_type = self.error_type,
                error = self.error,
                consecutive = self.consecutive,
                retry_in_ms = self.retry_in.as_millis() as u64,
                "scrape failed"
            );
        }
        t.scrape_errors.get_or_create(&ErrorLabels { error_type: self.error_type }).inc();
        t.taskmanager_up.set(0);
    }
}

/// Malformed lines, unknown families and invalid values in one exposition.
#[derive(Debug)]
pub struct ExpositionIssues<'a> {
    pub stats: &'a crate::select::SelectStats,
}

impl ExpositionIssues<'_> {
    pub fn emit(&self, t: &Telemetry) {
        let s = self.stats;
        for e in &s.parse_errors {
            tracing::debug!(line = e.line, error_type = e.kind.as_str(), "malformed exposition line");
        }
        for (kind, n) in &s.parse_errors_by_kind {
            t.parse_errors.get_or_create(&ErrorLabels { error_type: kind.as_str() }).inc_by(*n as u64);
        }
        if s.missing_labels > 0 {
            t.parse_errors
                .get_or_create(&ErrorLabels { error_type: "missing_label" })
                .inc_by(s.missing_labels as u64);
        }
        if !s.unknown_families.is_empty() {
            tracing::debug!(families = ?s.unknown_families, "unknown metric families");
            t.unknown_families.inc_by(s.unknown_families.len() as u64);
        }
        t.invalid_values.inc_by(s.invalid_values as u64);
    }
}

/// A batch was acknowledged by JetStream.
#[derive(Debug)]
pub struct BatchPublished {
    pub seq: u64,
    pub duplicate: bool,
}

impl BatchPublished {
    pub fn emit(&self, t: &Telemetry) {
        tracing::trace!(seq = self.seq, duplicate = self.duplicate, "batch published");
        t.published.inc();
    }
}

/// A publish failed; the batch stays buffered.
#[derive(Debug)]
pub struct PublishFailed<'a> {
    pub error_type: &'static str,
    pub error: &'a str,
    pub seq: u64,
    pub consecutive: u32,
}

impl PublishFailed<'_> {
    pub fn emit(&self, t: &Telemetry) {
        if self.consecutive == 1 || self.consecutive.is_multiple_of(10) {
            tracing::warn!(
                error_type = self.error_type,
                error = self.error,
                seq = self.seq,
                consecutive = self.consecutive,
                "publish failed; batch stays buffered"
            );
        }
        t.publish_errors.get_or_create(&ErrorLabels { error_type: self.error_type }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the Helm chart and the dashboards rely on.
    #[test]
    fn exported_names_follow_the_contract() {
        let t = Telemetry::new();
        t.scrape_errors.get_or_create(&ErrorLabels { error_type: "connect" }).inc();
        t.publish_errors.get_or_create(&ErrorLabels { error_type: "timeout" }).inc();
        t.parse_errors.get_or_create(&ErrorLabels { error_type: "invalid_value" }).inc();
        t.scrape_duration.observe(0.002);
        let text = t.encode();
        for name in [
            "demeter_agent_scrapes_total",
            "demeter_agent_scrape_errors_total{error_type=\"connect\"}",
            "demeter_agent_scrape_duration_seconds_bucket",
            "demeter_agent_published_batches_total",
            "demeter_agent_publish_errors_total{error_type=\"timeout\"}",
            "demeter_agent_buffer_depth",
            "demeter_agent_dropped_batches_total",
            "demeter_agent_parse_errors_total{error_type=\"invalid_value\"}",
            "demeter_agent_unknown_families_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        // The agent's own exposition is valid for its own parser.
        assert!(crate::prom_text::parse(&text).all(|l| l.is_ok()));
    }
}

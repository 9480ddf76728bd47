//! The coordinator's Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Per job (labels `namespace`, `job`): `demeter_job_input_rate`, `demeter_job_forecast_rate`,
//! `demeter_job_forecast_upper_rate`, `demeter_job_current_cpu_cores`,
//! `demeter_job_recommended_cpu_cores`, `demeter_job_current_memory_mb`,
//! `demeter_job_recommended_memory_mb`, `demeter_job_latency_p95_ms`,
//! `demeter_decisions_total{reason}`, `demeter_profiling_runs_total`,
//! `demeter_reconfigurations_total{result}`, `demeter_model_fit_seconds` (histogram of the
//! controller calls that refitted the model and decided).
//!
//! Runtime: `demeter_ingest_batches_total`, `demeter_ingest_samples_total`,
//! `demeter_ingest_rejected_total{error_type}`, `demeter_ingest_lag_seconds`,
//! `demeter_nats_connected`, `demeter_store_healthy`, `demeter_store_errors_total{error_type}`,
//! `demeter_apply_enabled`, `demeter_managed_jobs`.
//!
//! Label values are bounded: job labels come from at most `max_jobs` jobs, `reason`,
//! `error_type` and `result` from fixed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::backend::JobKey;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub namespace: String,
    pub job: String,
}

impl From<&JobKey> for JobLabels {
    fn from(k: &JobKey) -> Self {
        JobLabels { namespace: k.namespace.clone(), job: k.name.clone() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub namespace: String,
    pub job: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub namespace: String,
    pub job: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error_type: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

fn fit_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub job_input_rate: Family<JobLabels, GaugeF>,
    pub job_forecast_rate: Family<JobLabels, GaugeF>,
    pub job_forecast_upper_rate: Family<JobLabels, GaugeF>,
    pub job_current_cpu_cores: Family<JobLabels, GaugeF>,
    pub job_recommended_cpu_cores: Family<JobLabels, GaugeF>,
    pub job_current_memory_mb: Family<JobLabels, GaugeF>,
    pub job_recommended_memory_mb: Family<JobLabels, GaugeF>,
    pub job_latency_p95_ms: Family<JobLabels, GaugeF>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub profiling_runs: Family<JobLabels, Counter>,
    pub reconfigurations: Family<ResultLabels, Counter>,
    pub model_fit_seconds: Family<JobLabels, Histogram, fn() -> Histogram>,
    pub ingest_batches: Counter,
    pub ingest_samples: Counter,
    pub ingest_rejected: Family<ErrorLabels, Counter>,
    pub ingest_lag_seconds: GaugeF,
    pub nats_connected: Gauge,
    pub store_healthy: Gauge,
    pub store_errors: Family<ErrorLabels, Counter>,
    pub apply_enabled: Gauge,
    pub managed_jobs: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            job_input_rate: Family::default(),
            job_forecast_rate: Family::default(),
            job_forecast_upper_rate: Family::default(),
            job_current_cpu_cores: Family::default(),
            job_recommended_cpu_cores: Family::default(),
            job_current_memory_mb: Family::default(),
            job_recommended_memory_mb: Family::default(),
            job_latency_p95_ms: Family::default(),
            decisions: Family::default(),
            profiling_runs: Family::default(),
            reconfigurations: Family::default(),
            model_fit_seconds: Family::new_with_constructor(fit_histogram as fn() -> Histogram),
            ingest_batches: Counter::default(),
            ingest_samples: Counter::default(),
            ingest_rejected: Family::default(),
            ingest_lag_seconds: GaugeF::default(),
            nats_connected: Gauge::default(),
            store_healthy: Gauge::default(),
            store_errors: Family::default(),
            apply_enabled: Gauge::default(),
            managed_jobs: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "demeter_job_input_rate",
            "Offered input rate of the job (records/s)",
            m.job_input_rate.clone(),
        );
        r.register(
            "demeter_job_forecast_rate",
            "Forecast input rate over the decision horizon (records/s)",
            m.job_forecast_rate.clone(),
        );
        r.register(
            "demeter_job_forecast_upper_rate",
            "Upper band of the forecast input rate (records/s)",
            m.job_forecast_upper_rate.clone(),
        );
        r.register(
            "demeter_job_current_cpu_cores",
            "CPU cores of the running configuration",
            m.job_current_cpu_cores.clone(),
        );
        r.register(
            "demeter_job_recommended_cpu_cores",
            "CPU cores of the configuration the last decision chose",
            m.job_recommended_cpu_cores.clone(),
        );
        r.register(
            "demeter_job_current_memory_mb",
            "Memory (MiB) of the running configuration",
            m.job_current_memory_mb.clone(),
        );
        r.register(
            "demeter_job_recommended_memory_mb",
            "Memory (MiB) of the configuration the last decision chose",
            m.job_recommended_memory_mb.clone(),
        );
        r.register(
            "demeter_job_latency_p95_ms",
            "Observed p95 latency of the job (ms)",
            m.job_latency_p95_ms.clone(),
        );
        r.register("demeter_decisions", "Decisions taken, by reason", m.decisions.clone());
        r.register("demeter_profiling_runs", "Profiling runs started", m.profiling_runs.clone());
        r.register(
            "demeter_reconfigurations",
            "Reconfigurations finished, by result",
            m.reconfigurations.clone(),
        );
        r.register(
            "demeter_model_fit_seconds",
            "Duration of controller calls that refitted the performance model and decided",
            m.model_fit_seconds.clone(),
        );
        r.register("demeter_ingest_batches", "Metric batches received from NATS", m.ingest_batches.clone());
        r.register(
            "demeter_ingest_samples",
            "Samples in the metric batches received",
            m.ingest_samples.clone(),
        );
        r.register(
            "demeter_ingest_rejected",
            "Metric batches rejected, by error type",
            m.ingest_rejected.clone(),
        );
        r.register(
            "demeter_ingest_lag_seconds",
            "Age of the newest metric batch when it was received",
            m.ingest_lag_seconds.clone(),
        );
        r.register("demeter_nats_connected", "1 while connected to NATS", m.nats_connected.clone());
        r.register(
            "demeter_store_healthy",
            "1 while the SQLite store accepts writes",
            m.store_healthy.clone(),
        );
        r.register("demeter_store_errors", "Failed store writes, by error type", m.store_errors.clone());
        r.register(
            "demeter_apply_enabled",
            "1 while reconfigurations may be applied (mode apply, NATS and store healthy)",
            m.apply_enabled.clone(),
        );
        r.register("demeter_managed_jobs", "Jobs with a running controller", m.managed_jobs.clone());
        Metrics { registry: r, ..m }
    }

    pub fn reject(&self, error_type: &str) {
        self.ingest_rejected.get_or_create(&ErrorLabels { error_type: error_type.to_string() }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let m = Metrics::new();
        let l = JobLabels { namespace: "flink".into(), job: "cars".into() };
        m.job_input_rate.get_or_create(&l).set(1000.0);
        m.job_forecast_rate.get_or_create(&l).set(1100.0);
        m.job_forecast_upper_rate.get_or_create(&l).set(1300.0);
        m.job_recommended_memory_mb.get_or_create(&l).set(8192.0);
        m.job_latency_p95_ms.get_or_create(&l).set(800.0);
        m.decisions
            .get_or_create(&DecisionLabels {
                namespace: "flink".into(),
                job: "cars".into(),
                reason: "keep".into(),
            })
            .inc();
        m.profiling_runs.get_or_create(&l).inc();
        m.model_fit_seconds.get_or_create(&l).observe(0.02);
        m.reject("malformed");
        m.ingest_batches.inc();
        m.nats_connected.set(1);
        let text = m.encode();
        for name in [
            "demeter_job_input_rate{namespace=\"flink\",job=\"cars\"} 1000.0",
            "demeter_decisions_total{namespace=\"flink\",job=\"cars\",reason=\"keep\"} 1",
            "demeter_profiling_runs_total{namespace=\"flink\",job=\"cars\"} 1",
            "demeter_model_fit_seconds_bucket{",
            "demeter_ingest_rejected_total{error_type=\"malformed\"} 1",
            "demeter_ingest_batches_total 1",
            "demeter_ingest_lag_seconds",
            "demeter_nats_connected 1",
            "demeter_store_healthy",
            "demeter_job_forecast_rate{namespace=\"flink\",job=\"cars\"} 1100.0",
            "demeter_job_forecast_upper_rate{namespace=\"flink\",job=\"cars\"} 1300.0",
            "demeter_job_recommended_memory_mb{namespace=\"flink\",job=\"cars\"} 8192.0",
            "demeter_job_latency_p95_ms{namespace=\"flink\",job=\"cars\"} 800.0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}

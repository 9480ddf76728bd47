//! Per-job, per-second aggregation of the agents' metric batches.
//!
//! Each TaskManager's agent publishes one [`MetricBatch`] per scrape. The aggregator keeps the
//! latest batch of every TaskManager, drops duplicates and late batches (by `agent_run_id` and
//! `agent_seq`), forgets TaskManagers that stopped reporting, and turns what it holds into one
//! [`JobObservation`] per second:
//!
//! - **throughput**: records/s emitted by the source vertices (a vertex whose name starts with
//!   `Source`, or that reports `pendingRecords`/`records-lag-max`);
//! - **lag**: the source backlog, Σ `pendingRecords` (or Σ `records-lag-max` when a source only
//!   has Kafka's metric);
//! - **offered rate**: throughput plus the growth of the backlog per second, so that a job that
//!   falls behind still shows what its input really is;
//! - **p95 latency**: the mean over subtasks of the p95 of a latency histogram the job registers
//!   (as upstream Demeter measures it); without one, the documented proxy is the source's
//!   `currentEmitEventTimeLag` (the age of the records being emitted) plus the backlog's drain time
//!   `lag / throughput`;
//! - **busy / back-pressure ratios**: per vertex the mean over its subtasks, then the maximum over
//!   vertices (the bottleneck);
//! - **CPU and memory used**: Σ over TaskManagers of the container's usage (cgroup), or of the
//!   JVM heap plus managed memory when no container figure is available.

use crate::obs::JobObservation;
use demeter_common::UnixMillis;
use demeter_common::wire::{MetricBatch, Sample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Settings of the aggregator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// A TaskManager whose last batch is older than this is left out (it died or was removed).
    pub stale_after_ms: i64,
    /// Batches collected longer ago than this are rejected as late.
    pub max_batch_age_ms: i64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig { stale_after_ms: 5_000, max_batch_age_ms: 120_000 }
    }
}

/// Why a batch was not used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("duplicate batch: seq {seq} of run {run} was already seen")]
    Duplicate { run: String, seq: u64 },
    #[error("late batch: collected at {collected_at}, older than the last one of this TaskManager")]
    OutOfOrder { collected_at: UnixMillis },
    #[error("stale batch: collected at {collected_at}, more than {max_age_ms} ms ago")]
    TooOld { collected_at: UnixMillis, max_age_ms: i64 },
}

impl Rejected {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejected::Duplicate { .. } => "duplicate",
            Rejected::OutOfOrder { .. } => "out_of_order",
            Rejected::TooOld { .. } => "too_old",
        }
    }
}

/// Counters of what the aggregator saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregatorStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub too_old: u64,
    /// Batches that revealed a gap in `agent_seq` (batches lost between agent and coordinator).
    pub seq_gaps: u64,
    pub agent_restarts: u64,
}

#[derive(Clone, Debug)]
struct TmState {
    run_id: String,
    last_seq: u64,
    last: MetricBatch,
}

/// Per-vertex detail of the latest second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VertexDetail {
    pub name: String,
    pub parallelism: u32,
    pub records_in_per_s: f64,
    pub records_out_per_s: f64,
    pub busy_ratio: f64,
    pub backpressure_ratio: f64,
    pub is_source: bool,
}

/// Aggregates the batches of one job.
#[derive(Debug, Default)]
pub struct JobAggregator {
    cfg: AggregatorConfig,
    tms: HashMap<String, TmState>,
    stats: AggregatorStats,
    prev_lag: Option<(UnixMillis, f64)>,
    last_emitted_s: Option<i64>,
    vertices: BTreeMap<String, VertexDetail>,
}

impl JobAggregator {
    pub fn new(cfg: AggregatorConfig) -> Self {
        JobAggregator { cfg, ..Default::default() }
    }

    pub fn stats(&self) -> &AggregatorStats {
        &self.stats
    }

    /// TaskManagers currently reporting.
    pub fn taskmanagers(&self, now: UnixMillis) -> usize {
        self.tms.values().filter(|t| now.0 - t.last.collected_at.0 <= self.cfg.stale_after_ms).count()
    }

    /// Per-vertex detail as of the last observation.
    pub fn vertices(&self) -> &BTreeMap<String, VertexDetail> {
        &self.vertices
    }

    /// Takes one batch. Duplicates (same run, seq already seen), batches older than the
    /// TaskManager's last one, and batches older than `max_batch_age_ms` are rejected and counted.
    pub fn handle_batch(&mut self, now: UnixMillis, b: &MetricBatch) -> Result<(), Rejected> {
        if b.collected_at.0 < now.0 - self.cfg.max_batch_age_ms {
            self.stats.too_old += 1;
            return Err(Rejected::TooOld {
                collected_at: b.collected_at,
                max_age_ms: self.cfg.max_batch_age_ms,
            });
        }
        let key = b.source.taskmanager_id.clone();
        match self.tms.get_mut(&key) {
            Some(tm) if tm.run_id == b.agent_run_id => {
                if b.agent_seq <= tm.last_seq {
                    self.stats.duplicates += 1;
                    return Err(Rejected::Duplicate { run: b.agent_run_id.clone(), seq: b.agent_seq });
                }
                if b.collected_at < tm.last.collected_at {
                    self.stats.out_of_order += 1;
                    return Err(Rejected::OutOfOrder { collected_at: b.collected_at });
                }
                if b.agent_seq > tm.last_seq + 1 {
                    self.stats.seq_gaps += 1;
                }
                tm.last_seq = b.agent_seq;
                tm.last = b.clone();
            }
            Some(tm) => {
                // A new run id: the agent restarted and its sequence starts again.
                self.stats.agent_restarts += 1;
                tm.run_id = b.agent_run_id.clone();
                tm.last_seq = b.agent_seq;
                tm.last = b.clone();
            }
            None => {
                self.tms.insert(
                    key,
                    TmState { run_id: b.agent_run_id.clone(), last_seq: b.agent_seq, last: b.clone() },
                );
            }
        }
        self.stats.accepted += 1;
        Ok(())
    }

    /// One observation per whole second: returns `None` when called again within the same second
    /// or when no TaskManager is reporting.
    pub fn poll_observation(&mut self, now: UnixMillis) -> Option<JobObservation> {
        let sec = now.0.div_euclid(1000);
        if self.last_emitted_s.is_some_and(|s| s >= sec) {
            return None;
        }
        let stale = self.cfg.stale_after_ms;
        self.tms.retain(|_, t| now.0 - t.last.collected_at.0 <= 10 * stale);
        let fresh: Vec<&MetricBatch> =
            self.tms.values().map(|t| &t.last).filter(|b| now.0 - b.collected_at.0 <= stale).collect();
        if fresh.is_empty() {
            return None;
        }
        self.last_emitted_s = Some(sec);
        let obs = aggregate(now, &fresh, &mut self.prev_lag, &mut self.vertices);
        Some(obs)
    }
}

#[derive(Default)]
struct VertexAcc {
    name: String,
    subtasks: u32,
    busy: f64,
    backpressure: f64,
    rec_in: f64,
    rec_out: f64,
    source: bool,
}

fn aggregate(
    now: UnixMillis,
    batches: &[&MetricBatch],
    prev_lag: &mut Option<(UnixMillis, f64)>,
    detail: &mut BTreeMap<String, VertexDetail>,
) -> JobObservation {
    let mut vertices: BTreeMap<&str, VertexAcc> = BTreeMap::new();
    let mut pending = 0.0;
    let mut lag_max = 0.0;
    let mut has_pending = false;
    let mut emit_lag = (0.0, 0u32);
    let mut p95 = (0.0, 0u32);
    let mut cpu = 0.0;
    let mut mem_bytes = 0.0;
    for b in batches {
        let mut container_cpu = None;
        let mut container_mem = None;
        let mut jvm_mem = 0.0;
        for s in &b.samples {
            match s {
                Sample::Task(t) => {
                    let v = vertices.entry(t.id.vertex_id.as_str()).or_default();
                    v.name.clone_from(&t.id.vertex_name);
                    v.subtasks += 1;
                    v.busy += t.busy_ms_per_s.unwrap_or(0.0) / 1000.0;
                    v.backpressure += t.backpressured_ms_per_s.unwrap_or(0.0) / 1000.0;
                    v.rec_in += t.records_in_per_s.unwrap_or(0.0);
                    v.rec_out += t.records_out_per_s.unwrap_or(0.0);
                    if t.id.vertex_name.starts_with("Source") {
                        v.source = true;
                    }
                }
                Sample::Operator(o) => {
                    if let Some(p) = o.pending_records {
                        pending += p;
                        has_pending = true;
                    }
                    if let Some(l) = o.records_lag_max {
                        lag_max += l;
                    }
                    if o.pending_records.is_some() || o.records_lag_max.is_some() {
                        vertices.entry(o.id.vertex_id.as_str()).or_default().source = true;
                    }
                    if let Some(l) = o.current_emit_event_time_lag_ms {
                        emit_lag.0 += l;
                        emit_lag.1 += 1;
                    }
                }
                Sample::Latency(l) => {
                    if let Some(v) = l.p95_ms {
                        p95.0 += v;
                        p95.1 += 1;
                    }
                }
                Sample::Container(c) => {
                    container_cpu = c.cpu_usage_cores;
                    container_mem = c.memory_working_set_bytes;
                }
                Sample::Jvm(j) => jvm_mem += j.heap_used_bytes.unwrap_or(0.0),
                Sample::FlinkMemory(m) => jvm_mem += m.managed_used_bytes.unwrap_or(0.0),
                _ => {}
            }
        }
        cpu += container_cpu.unwrap_or(0.0);
        mem_bytes += container_mem.unwrap_or(jvm_mem);
    }
    let lag = if has_pending { pending } else { lag_max };
    let throughput: f64 = vertices.values().filter(|v| v.source).map(|v| v.rec_out.max(v.rec_in)).sum();
    let growth = match *prev_lag {
        Some((t, l)) if now.0 > t.0 => (lag - l) / ((now.0 - t.0) as f64 / 1000.0),
        _ => 0.0,
    };
    *prev_lag = Some((now, lag));
    let (mut busy, mut bp) = (0.0f64, 0.0f64);
    detail.clear();
    for (id, v) in &vertices {
        let n = v.subtasks.max(1) as f64;
        busy = busy.max(v.busy / n);
        bp = bp.max(v.backpressure / n);
        detail.insert(
            (*id).to_string(),
            VertexDetail {
                name: v.name.clone(),
                parallelism: v.subtasks,
                records_in_per_s: v.rec_in,
                records_out_per_s: v.rec_out,
                busy_ratio: v.busy / n,
                backpressure_ratio: v.backpressure / n,
                is_source: v.source,
            },
        );
    }
    let p95_latency_ms = if p95.1 > 0 {
        Some(p95.0 / p95.1 as f64)
    } else if emit_lag.1 > 0 {
        let drain_ms = if throughput > 0.0 { lag / throughput * 1000.0 } else { 0.0 };
        Some(emit_lag.0 / emit_lag.1 as f64 + drain_ms)
    } else {
        None
    };
    JobObservation {
        at: now,
        offered_rate: (throughput + growth).max(0.0),
        throughput,
        lag,
        p95_latency_ms,
        busy_ratio: busy.clamp(0.0, 1.0),
        backpressure_ratio: bp.clamp(0.0, 1.0),
        cpu_cores_used: cpu,
        memory_used_mb: mem_bytes / (1024.0 * 1024.0),
        taskmanagers: batches.len() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use demeter_common::wire::{
        ContainerSample, LatencySample, OperatorSample, Source, SubtaskId, TaskSample,
    };

    fn batch(tm: &str, run: &str, seq: u64, at: i64, rate: f64, pending: f64) -> MetricBatch {
        let src = SubtaskId {
            job_id: "j".into(),
            vertex_id: "src".into(),
            vertex_name: "Source: in".into(),
            subtask_index: 0,
        };
        let work = SubtaskId {
            job_id: "j".into(),
            vertex_id: "w".into(),
            vertex_name: "work".into(),
            subtask_index: 0,
        };
        MetricBatch {
            schema_version: 1,
            source: Source {
                namespace: "ns".into(),
                deployment: "d".into(),
                job_id: None,
                taskmanager_id: tm.into(),
                pod: tm.into(),
                host: String::new(),
            },
            agent_run_id: run.into(),
            agent_seq: seq,
            collected_at: UnixMillis(at),
            samples: vec![
                Sample::Task(TaskSample {
                    id: src.clone(),
                    records_out_per_s: Some(rate),
                    busy_ms_per_s: Some(100.0),
                    ..Default::default()
                }),
                Sample::Operator(OperatorSample {
                    id: src,
                    operator_name: "in".into(),
                    pending_records: Some(pending),
                    ..Default::default()
                }),
                Sample::Task(TaskSample {
                    id: work.clone(),
                    records_in_per_s: Some(rate),
                    busy_ms_per_s: Some(800.0),
                    backpressured_ms_per_s: Some(0.0),
                    ..Default::default()
                }),
                Sample::Latency(LatencySample {
                    id: work,
                    metric: "latencyHistogram".into(),
                    p95_ms: Some(900.0),
                    ..Default::default()
                }),
                Sample::Container(ContainerSample {
                    cpu_usage_cores: Some(0.5),
                    memory_working_set_bytes: Some(1024.0 * 1024.0 * 1000.0),
                    ..Default::default()
                }),
            ],
        }
    }

    #[test]
    fn sums_taskmanagers_and_derives_offered_rate_from_backlog_growth() {
        let mut a = JobAggregator::new(AggregatorConfig::default());
        a.handle_batch(UnixMillis(1_000_000), &batch("tm1", "r1", 0, 1_000_000, 1000.0, 0.0)).unwrap();
        a.handle_batch(UnixMillis(1_000_000), &batch("tm2", "r2", 0, 1_000_000, 1000.0, 0.0)).unwrap();
        let o = a.poll_observation(UnixMillis(1_000_100)).unwrap();
        assert_eq!(o.throughput, 2000.0);
        assert_eq!(o.offered_rate, 2000.0);
        assert_eq!(o.taskmanagers, 2);
        assert!((o.busy_ratio - 0.8).abs() < 1e-9);
        assert_eq!(o.p95_latency_ms, Some(900.0));
        assert!((o.cpu_cores_used - 1.0).abs() < 1e-9);
        assert!((o.memory_used_mb - 2000.0).abs() < 1e-6);
        assert!(a.poll_observation(UnixMillis(1_000_900)).is_none(), "one observation per second");

        // The backlog grows by 500 records in one second: the input is 500/s above throughput.
        a.handle_batch(UnixMillis(1_001_000), &batch("tm1", "r1", 1, 1_001_000, 1000.0, 250.0)).unwrap();
        a.handle_batch(UnixMillis(1_001_000), &batch("tm2", "r2", 1, 1_001_000, 1000.0, 250.0)).unwrap();
        let o = a.poll_observation(UnixMillis(1_001_100)).unwrap();
        assert_eq!(o.lag, 500.0);
        assert!((o.offered_rate - 2500.0).abs() < 1e-6, "{}", o.offered_rate);
    }

    #[test]
    fn duplicates_late_batches_restarts_and_gaps_are_handled() {
        let mut a = JobAggregator::new(AggregatorConfig::default());
        let now = UnixMillis(2_000_000);
        a.handle_batch(now, &batch("tm1", "r1", 5, 2_000_000, 10.0, 0.0)).unwrap();
        assert!(matches!(
            a.handle_batch(now, &batch("tm1", "r1", 5, 2_000_000, 10.0, 0.0)),
            Err(Rejected::Duplicate { .. })
        ));
        assert!(matches!(
            a.handle_batch(now, &batch("tm1", "r1", 4, 1_999_000, 10.0, 0.0)),
            Err(Rejected::Duplicate { .. })
        ));
        a.handle_batch(now, &batch("tm1", "r1", 8, 2_001_000, 10.0, 0.0)).unwrap();
        assert_eq!(a.stats().seq_gaps, 1);
        // Agent restart: new run id, sequence from 0.
        a.handle_batch(now, &batch("tm1", "r9", 0, 2_002_000, 10.0, 0.0)).unwrap();
        assert_eq!(a.stats().agent_restarts, 1);
        assert!(matches!(
            a.handle_batch(now, &batch("tm2", "r2", 0, 2_000_000 - 121_000, 10.0, 0.0)),
            Err(Rejected::TooOld { .. })
        ));
        assert_eq!(a.stats().accepted, 3);
        assert_eq!(a.stats().duplicates, 2);
    }

    #[test]
    fn silent_taskmanagers_drop_out() {
        let mut a = JobAggregator::new(AggregatorConfig::default());
        a.handle_batch(UnixMillis(3_000_000), &batch("tm1", "r1", 0, 3_000_000, 10.0, 0.0)).unwrap();
        a.handle_batch(UnixMillis(3_000_000), &batch("tm2", "r2", 0, 2_994_000, 10.0, 0.0)).unwrap();
        let o = a.poll_observation(UnixMillis(3_000_000)).unwrap();
        assert_eq!(o.taskmanagers, 1);
        assert!(a.poll_observation(UnixMillis(3_100_000)).is_none(), "nobody reporting");
    }

    #[test]
    fn latency_proxy_without_histogram() {
        let mut b = batch("tm1", "r1", 0, 4_000_000, 1000.0, 2000.0);
        b.samples.retain(|s| !matches!(s, Sample::Latency(_)));
        if let Sample::Operator(o) = &mut b.samples[1] {
            o.current_emit_event_time_lag_ms = Some(300.0);
        }
        let mut a = JobAggregator::new(AggregatorConfig::default());
        a.handle_batch(UnixMillis(4_000_000), &b).unwrap();
        let o = a.poll_observation(UnixMillis(4_000_000)).unwrap();
        // 300 ms event-time lag + 2000 records / 1000 per s of backlog.
        assert_eq!(o.p95_latency_ms, Some(2300.0));
    }
}

//! The metric batches the simulated job's agents publish: one per TaskManager per second, with
//! the same samples a real agent scrapes (JVM, Flink memory, tasks, source operators, latency
//! histogram, checkpoints, container). Built only for strategies that ask for them.
//!
//! The batches of a deployment are built once per configuration (ids, names, sample layout) and
//! then updated in place every second, so that a run does not allocate per batch.

use crate::job::JobSecond;
use demeter_common::JobConfig;
use demeter_common::UnixMillis;
use demeter_common::wire::{
    CheckpointSample, ContainerSample, FlinkMemorySample, JvmSample, LatencySample, OperatorSample,
    SubtaskId, TaskSample,
};
use demeter_common::{MetricBatch, SCHEMA_VERSION, Sample, Source};

/// Vertex ids and names of the simulated job graph: a source chain and the keyed window.
const SOURCE: (&str, &str) = ("bc764cd8ddf7a0cff126f51c16239658", "Source: Kafka");
const WINDOW: (&str, &str) = ("0a448493b4782967b150582570326227", "Window -> Sink");
/// Share of a record's work done in the source chain.
const SOURCE_WORK: f64 = 0.3;
const MB: f64 = 1024.0 * 1024.0;

/// The agents of one simulated deployment: one per TaskManager pod.
#[derive(Debug)]
pub struct Agents {
    namespace: String,
    deployment: String,
    job_id: String,
    /// Pods are replaced by a redeploy: new run ids, sequence numbers start again.
    incarnation: u64,
    checkpoints: f64,
    /// The batches of the current pods, updated in place.
    cache: Vec<MetricBatch>,
    cache_key: Option<(JobConfig, u64)>,
}

impl Agents {
    pub fn new(namespace: &str, deployment: &str) -> Self {
        Agents {
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            job_id: format!("{:032x}", fnv1a(deployment.as_bytes())),
            incarnation: 1,
            checkpoints: 0.0,
            cache: Vec::new(),
            cache_key: None,
        }
    }

    /// New pods (a redeploy): agents restart with new run ids.
    pub fn new_pods(&mut self) {
        self.incarnation += 1;
    }

    pub(crate) fn count_checkpoint(&mut self) {
        self.checkpoints += 1.0;
    }

    fn subtask(&self, vertex: (&str, &str), index: u32) -> SubtaskId {
        SubtaskId {
            job_id: self.job_id.clone(),
            vertex_id: vertex.0.to_string(),
            vertex_name: vertex.1.to_string(),
            subtask_index: index,
        }
    }

    /// Batches with the right ids and sample layout for `cfg`; values are filled by `update`.
    fn build(&mut self, cfg: &JobConfig) {
        let tms = cfg.taskmanagers();
        let p = cfg.parallelism.max(1);
        let slots = cfg.task_slots.max(1);
        // Pods that stay (same incarnation) keep their agents' sequence numbers.
        let kept: Vec<u64> = if self.cache_key.is_some_and(|(_, inc)| inc == self.incarnation) {
            self.cache.iter().map(|b| b.agent_seq).collect()
        } else {
            Vec::new()
        };
        self.cache.clear();
        for i in 0..tms {
            let mut samples = vec![
                Sample::Jvm(JvmSample::default()),
                Sample::FlinkMemory(FlinkMemorySample::default()),
                Sample::Container(ContainerSample {
                    origin: "cgroup".to_string(),
                    ..ContainerSample::default()
                }),
            ];
            if i == 0 {
                samples.push(Sample::Checkpoint(CheckpointSample {
                    job_id: self.job_id.clone(),
                    ..CheckpointSample::default()
                }));
            }
            for sub in i * slots..((i + 1) * slots).min(p) {
                let src = self.subtask(SOURCE, sub);
                samples.push(Sample::Task(TaskSample { id: src.clone(), ..TaskSample::default() }));
                samples.push(Sample::Operator(OperatorSample {
                    id: src,
                    operator_name: "Source__Kafka".to_string(),
                    ..OperatorSample::default()
                }));
                let win = self.subtask(WINDOW, sub);
                samples.push(Sample::Task(TaskSample { id: win.clone(), ..TaskSample::default() }));
                samples.push(Sample::Latency(LatencySample {
                    id: win,
                    operator_name: "Window".to_string(),
                    metric: "myLatencyHistogram".to_string(),
                    ..LatencySample::default()
                }));
            }
            let tm = format!("{}-taskmanager-{}-{}", self.deployment, self.incarnation, i + 1);
            self.cache.push(MetricBatch {
                schema_version: SCHEMA_VERSION,
                source: Source {
                    namespace: self.namespace.clone(),
                    deployment: self.deployment.clone(),
                    job_id: Some(self.job_id.clone()),
                    taskmanager_id: tm.clone(),
                    pod: tm,
                    host: "sim".to_string(),
                },
                agent_run_id: format!("sim-{}-{}", self.incarnation, i),
                // Incremented before each publication: the first batch of an agent run has 0.
                agent_seq: kept.get(i as usize).copied().unwrap_or(u64::MAX),
                collected_at: UnixMillis(0),
                samples,
            });
        }
        self.cache_key = Some((*cfg, self.incarnation));
    }

    /// The batches of one second. The first `silent` TaskManagers (network-delayed) publish
    /// nothing; nothing is published while the job is down.
    pub(crate) fn emit(
        &mut self,
        now: UnixMillis,
        cfg: &JobConfig,
        sec: &JobSecond,
        processed_total: f64,
        silent: u32,
    ) -> &[MetricBatch] {
        if sec.reporting_tms == 0 {
            return &[];
        }
        if self.cache_key != Some((*cfg, self.incarnation)) {
            self.build(cfg);
        }
        let tms = cfg.taskmanagers().max(1) as f64;
        let p = cfg.parallelism.max(1) as f64;
        let per_subtask = sec.processed / p;
        let total_per_subtask = processed_total / p;
        let lag_per_subtask = sec.lag / p;
        let cpu_per_tm = sec.cpu_used / tms;
        let mem_per_tm = sec.memory_used_mb / tms;
        let tm_bytes = cfg.tm_memory_mb as f64 * MB;
        let tm_cpu = cfg.tm_cpu_cores().max(1e-9);
        let checkpoints = self.checkpoints;
        let silent = (silent as usize).min(self.cache.len());
        for b in &mut self.cache[silent..] {
            b.collected_at = now;
            b.agent_seq = b.agent_seq.wrapping_add(1);
            for s in &mut b.samples {
                match s {
                    Sample::Jvm(j) => {
                        j.cpu_load = Some((cpu_per_tm / tm_cpu).clamp(0.0, 1.0));
                        j.heap_used_bytes = Some(mem_per_tm * 0.5 * MB);
                        j.heap_max_bytes = Some(tm_bytes * 0.4);
                        j.non_heap_used_bytes = Some(120.0 * MB);
                        j.gc_time_ms_per_s = Some(5.0 + 20.0 * sec.busy);
                        j.threads = Some(60.0 + 12.0 * cfg.task_slots as f64);
                    }
                    Sample::FlinkMemory(m) => {
                        m.managed_used_bytes = Some(mem_per_tm * 0.5 * MB);
                        m.managed_total_bytes = Some(tm_bytes * 0.4);
                        m.network_used_segments = Some(2048.0 * sec.backpressure);
                        m.network_total_segments = Some(2048.0);
                    }
                    Sample::Container(c) => {
                        c.cpu_usage_cores = Some(cpu_per_tm);
                        c.cpu_limit_cores = Some(cfg.tm_cpu_cores());
                        c.memory_working_set_bytes = Some(mem_per_tm * MB);
                        c.memory_limit_bytes = Some(tm_bytes);
                    }
                    Sample::Checkpoint(c) => {
                        c.last_duration_ms = Some(300.0 + 2000.0 * sec.busy);
                        c.last_size_bytes = Some(64.0 * MB);
                        c.completed_total = Some(checkpoints);
                        c.failed_total = Some(0.0);
                        c.start_delay_ms = Some(10.0 + 1000.0 * sec.backpressure);
                        c.alignment_ms = Some(5.0 + 500.0 * sec.backpressure);
                    }
                    Sample::Task(t) => {
                        let source = t.id.vertex_id == SOURCE.0;
                        let busy = (sec.busy * if source { SOURCE_WORK } else { 1.0 }).clamp(0.0, 1.0);
                        let bp = if source { sec.backpressure.min(1.0 - busy) } else { 0.0 };
                        t.records_in_per_s = Some(per_subtask);
                        t.records_out_per_s = Some(per_subtask);
                        t.busy_ms_per_s = Some(1000.0 * busy);
                        t.backpressured_ms_per_s = Some(1000.0 * bp);
                        t.idle_ms_per_s = Some((1000.0 * (1.0 - busy - bp)).max(0.0));
                        t.records_in_total = Some(total_per_subtask);
                        t.records_out_total = Some(total_per_subtask);
                    }
                    Sample::Operator(o) => {
                        o.records_in_per_s = Some(per_subtask);
                        o.records_out_per_s = Some(per_subtask);
                        o.pending_records = Some(lag_per_subtask);
                        o.records_lag_max = Some(lag_per_subtask);
                        o.current_emit_event_time_lag_ms = sec.p95_ms;
                        o.records_in_total = Some(total_per_subtask);
                        o.records_out_total = Some(total_per_subtask);
                    }
                    Sample::Latency(l) => {
                        l.p50_ms = sec.p95_ms.map(|v| v * 0.85);
                        l.p95_ms = sec.p95_ms;
                        l.p99_ms = sec.p95_ms.map(|v| v * 1.1);
                        l.max_ms = sec.p95_ms.map(|v| v * 1.3);
                        l.count = Some(500.0);
                    }
                    Sample::Unknown => {}
                }
            }
        }
        &self.cache[silent..]
    }
}

/// FNV-1a, a stable hash for ids and seeds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

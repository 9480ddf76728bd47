//! Maps a Flink TaskManager's Prometheus exposition to the wire schema's typed samples.
//!
//! The mapping is pure apart from one piece of state, the previous cumulative GC time, which it
//! needs to derive a GC rate when the TaskManager exposes only the counter. It reads no clock: the
//! caller passes the scrape's time.
//!
//! | Flink family (after `flink_taskmanager_`) | Sample field |
//! |---|---|
//! | `Status_JVM_CPU_Load` | `jvm.cpu_load` |
//! | `Status_JVM_Memory_Heap_Used` / `_Max`, `Status_JVM_Memory_NonHeap_Used` | `jvm.heap_*`, `jvm.non_heap_used_bytes` |
//! | `Status_JVM_GarbageCollector_All_TimeMsPerSecond`, else the sum over collectors of `..._<gc>_TimeMsPerSecond`, else the rate of the summed `..._<gc>_Time` counters | `jvm.gc_time_ms_per_s` |
//! | `Status_JVM_Threads_Count` | `jvm.threads` |
//! | `Status_Flink_Memory_Managed_Used` / `_Total` | `flink_memory.managed_*` |
//! | `Status_Shuffle_Netty_UsedMemorySegments` / `TotalMemorySegments` | `flink_memory.network_*` |
//! | `job_task_numRecordsIn/OutPerSecond`, `numRecordsIn/Out`, `busy/backPressured/idleTimeMsPerSecond` | `task.*` per subtask |
//! | `job_task_checkpointStartDelayNanos`, `checkpointAlignmentTime` (ns) | `checkpoint.start_delay_ms`, `alignment_ms`: max over the job's subtasks |
//! | `job_task_operator_numRecordsIn/OutPerSecond`, `numRecordsIn/Out`, `pendingRecords`, `*records_lag_max`, `currentEmitEventTimeLag` | `operator.*` per operator and subtask |
//! | `job_task_operator_<name>` with `quantile` labels, `<name>` containing "latency" (any case) | `latency.p50/p95/p99/max_ms`, `count` |
//!
//! Values that are NaN, infinite or negative (Flink uses negative sentinels for "undefined")
//! become `None`, so nothing a receiver would reject is ever published.
//!
//! A family is *unknown* when it is in the TaskManager or task scope and neither mapped nor in
//! the list of families deliberately left out ([`IGNORED_STATUS`], [`IGNORED_TASK`]), or outside
//! every Flink TaskManager scope. Operator-scoped families are open-ended (user and connector
//! metrics such as the test job's `eventsIn`), so an unmapped one is not counted as unknown.

use crate::prom_text::{self, Line, MetricKind, ParseError, ParseErrorKind, SampleLine};
use demeter_common::UnixMillis;
use demeter_common::wire::{
    CheckpointSample, FlinkMemorySample, JvmSample, LatencySample, OperatorSample, Sample, SubtaskId,
    TaskSample,
};
use std::borrow::Cow;
use std::collections::BTreeMap;

const STATUS: &str = "flink_taskmanager_Status_";
const TASK: &str = "flink_taskmanager_job_task_";
const OPERATOR: &str = "flink_taskmanager_job_task_operator_";
/// Job-scoped families of the TaskManager: latency tracking (`metrics.latency.interval`).
const JOB_LATENCY: &str = "flink_taskmanager_job_latency_";
const GC: &str = "JVM_GarbageCollector_";

/// TaskManager-scope families (after `flink_taskmanager_Status_`) known and deliberately not
/// mapped. Sorted, for binary search.
pub const IGNORED_STATUS: &[&str] = &[
    "JVM_CPU_Time",
    "JVM_ClassLoader_ClassesLoaded",
    "JVM_ClassLoader_ClassesUnloaded",
    "JVM_FileDescriptor_Max",
    "JVM_FileDescriptor_Open",
    "JVM_Memory_Direct_Count",
    "JVM_Memory_Direct_MemoryUsed",
    "JVM_Memory_Direct_TotalCapacity",
    "JVM_Memory_Heap_Committed",
    "JVM_Memory_Mapped_Count",
    "JVM_Memory_Mapped_MemoryUsed",
    "JVM_Memory_Mapped_TotalCapacity",
    "JVM_Memory_Metaspace_Committed",
    "JVM_Memory_Metaspace_Max",
    "JVM_Memory_Metaspace_Used",
    "JVM_Memory_NonHeap_Committed",
    "JVM_Memory_NonHeap_Max",
    "Shuffle_Netty_AvailableMemory",
    "Shuffle_Netty_AvailableMemorySegments",
    "Shuffle_Netty_RequestedMemoryUsage",
    "Shuffle_Netty_TotalMemory",
    "Shuffle_Netty_UsedMemory",
];

/// Task-scope families (after `flink_taskmanager_job_task_`) known and deliberately not mapped.
/// `Shuffle_*` families (per input gate and partition) are known as a whole. Sorted.
pub const IGNORED_TASK: &[&str] = &[
    "accumulateBackPressuredTimeMs",
    "accumulateBusyTimeMs",
    "accumulateIdleTimeMs",
    "changelogBusyTimeMsPerSecond",
    "currentInputWatermark",
    "hardBackPressuredTimeMsPerSecond",
    "initializationTime",
    "isBackPressured",
    "mailboxLatencyMs",
    "mailboxMailsPerSecond",
    "mailboxQueueSize",
    "maxHardBackPressureTimeMs",
    "maxSoftBackPressureTimeMs",
    "numBuffersInLocal",
    "numBuffersInLocalPerSecond",
    "numBuffersInRemote",
    "numBuffersInRemotePerSecond",
    "numBuffersOut",
    "numBuffersOutPerSecond",
    "numBytesIn",
    "numBytesInLocal",
    "numBytesInLocalPerSecond",
    "numBytesInPerSecond",
    "numBytesInRemote",
    "numBytesInRemotePerSecond",
    "numBytesOut",
    "numBytesOutPerSecond",
    "numFiredTimers",
    "numFiredTimersPerSecond",
    "softBackPressuredTimeMsPerSecond",
];

/// What one exposition yielded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    pub samples: Vec<Sample>,
    /// The job id when every job-scoped sample belongs to one job.
    pub job_id: Option<String>,
    pub stats: SelectStats,
}

/// Counts of what was parsed, skipped and rejected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelectStats {
    pub lines: usize,
    pub sample_lines: usize,
    /// Malformed lines, at most [`MAX_REPORTED_ERRORS`] of them kept (all are counted).
    pub parse_errors: Vec<ParseError>,
    pub parse_error_count: usize,
    /// Every malformed line counted by kind.
    pub parse_errors_by_kind: Vec<(ParseErrorKind, usize)>,
    /// Sample lines of a mapped family that lack a label the mapping needs
    /// (`job_id`, `task_id`, `subtask_index`, `operator_name`).
    pub missing_labels: usize,
    /// Unknown families (see the module doc), each once.
    pub unknown_families: Vec<String>,
    /// Mapped values dropped because they were NaN, infinite or negative.
    pub invalid_values: usize,
}

/// How many parse errors a [`Selection`] keeps for logging.
pub const MAX_REPORTED_ERRORS: usize = 8;

/// Stateful part of the mapping: the previous cumulative GC time.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    prev_gc: Option<(UnixMillis, f64)>,
}

type TaskKey<'a> = (Cow<'a, str>, Cow<'a, str>, u32);
type OperatorKey<'a> = (Cow<'a, str>, Cow<'a, str>, u32, Cow<'a, str>);
type LatencyKey<'a> = (Cow<'a, str>, Cow<'a, str>, u32, Cow<'a, str>, &'a str);

#[derive(Default)]
struct GcAcc {
    all_rate: Option<f64>,
    rate_sum: Option<f64>,
    all_time: Option<f64>,
    time_sum: Option<f64>,
}

/// The labels of a job-scoped sample that the mapping uses.
#[derive(Default)]
struct FlinkLabels<'a> {
    job_id: Option<Cow<'a, str>>,
    task_id: Option<Cow<'a, str>>,
    task_name: Option<Cow<'a, str>>,
    subtask_index: Option<u32>,
    operator_name: Option<Cow<'a, str>>,
    quantile: Option<f64>,
}

impl<'a> FlinkLabels<'a> {
    fn of(s: &SampleLine<'a>) -> Self {
        let mut l = FlinkLabels::default();
        for (k, v) in s.labels() {
            match k {
                "job_id" => l.job_id = Some(v),
                "task_id" => l.task_id = Some(v),
                "task_name" => l.task_name = Some(v),
                "subtask_index" => l.subtask_index = v.parse().ok(),
                "operator_name" => l.operator_name = Some(v),
                "quantile" => l.quantile = v.parse().ok(),
                _ => {}
            }
        }
        l
    }

    fn task_key(&self) -> Option<TaskKey<'a>> {
        Some((self.job_id.clone()?, self.task_id.clone()?, self.subtask_index?))
    }
}

#[derive(Default)]
struct Acc<'a> {
    jvm: JvmSample,
    mem: FlinkMemorySample,
    gc: GcAcc,
    tasks: BTreeMap<TaskKey<'a>, (Cow<'a, str>, TaskSample)>,
    operators: BTreeMap<OperatorKey<'a>, (Cow<'a, str>, OperatorSample)>,
    latencies: BTreeMap<LatencyKey<'a>, (Cow<'a, str>, LatencySample)>,
    checkpoints: BTreeMap<Cow<'a, str>, CheckpointSample>,
    job_ids: Vec<Cow<'a, str>>,
    stats: SelectStats,
}

/// `Some(v)` if `v` may be published: finite and not negative.
fn valid(v: f64, stats: &mut SelectStats) -> Option<f64> {
    if v.is_finite() && v >= 0.0 {
        Some(v)
    } else {
        stats.invalid_values += 1;
        None
    }
}

fn max_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.max(b)))
}

fn add_opt(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.unwrap_or(0.0) + b)
}

impl Selector {
    pub fn new() -> Self {
        Selector::default()
    }

    /// Maps one exposition scraped at `now`.
    pub fn select(&mut self, text: &str, now: UnixMillis) -> Selection {
        let mut acc = Acc::default();
        // The family of the samples that follow a `# TYPE` line.
        let mut family: Option<(&str, MetricKind)> = None;
        let mut last_unknown: Option<&str> = None;
        for line in prom_text::parse(text) {
            acc.stats.lines += 1;
            match line {
                Err(e) => {
                    acc.stats.parse_error_count += 1;
                    match acc.stats.parse_errors_by_kind.iter_mut().find(|(k, _)| *k == e.kind) {
                        Some((_, n)) => *n += 1,
                        None => acc.stats.parse_errors_by_kind.push((e.kind, 1)),
                    }
                    if acc.stats.parse_errors.len() < MAX_REPORTED_ERRORS {
                        acc.stats.parse_errors.push(e);
                    }
                }
                Ok(Line::Type { name, kind }) => family = Some((name, kind)),
                Ok(Line::Sample(s)) => {
                    acc.stats.sample_lines += 1;
                    let fam = family_of(s.name, family);
                    if !acc.sample(&s, fam) && last_unknown != Some(fam) {
                        last_unknown = Some(fam);
                        acc.stats.unknown_families.push(fam.to_string());
                    }
                }
                Ok(_) => {}
            }
        }
        acc.stats.unknown_families.sort_unstable();
        acc.stats.unknown_families.dedup();
        self.finish(acc, now)
    }

    fn finish(&mut self, mut acc: Acc<'_>, now: UnixMillis) -> Selection {
        // GC: Flink's own rate if it exposes one, else the rate of the cumulative counter.
        let gc_total = acc.gc.all_time.or(acc.gc.time_sum);
        let derived = match (gc_total, self.prev_gc) {
            (Some(total), Some((t0, prev))) if now.0 > t0.0 && total >= prev => {
                Some((total - prev) / ((now.0 - t0.0) as f64 / 1000.0))
            }
            _ => None,
        };
        self.prev_gc = gc_total.map(|t| (now, t));
        acc.jvm.gc_time_ms_per_s = acc.gc.all_rate.or(acc.gc.rate_sum).or(derived);

        let mut samples = Vec::with_capacity(
            2 + acc.tasks.len() + acc.operators.len() + acc.latencies.len() + acc.checkpoints.len(),
        );
        if acc.jvm != JvmSample::default() {
            samples.push(Sample::Jvm(acc.jvm));
        }
        if acc.mem != FlinkMemorySample::default() {
            samples.push(Sample::FlinkMemory(acc.mem));
        }
        for ((job, vertex, idx), (name, mut t)) in acc.tasks {
            t.id = subtask_id(job, vertex, name, idx);
            samples.push(Sample::Task(t));
        }
        for ((job, vertex, idx, op), (name, mut o)) in acc.operators {
            o.id = subtask_id(job, vertex, name, idx);
            o.operator_name = op.into_owned();
            samples.push(Sample::Operator(o));
        }
        for (_, c) in acc.checkpoints {
            samples.push(Sample::Checkpoint(c));
        }
        for ((job, vertex, idx, op, metric), (name, mut l)) in acc.latencies {
            l.id = subtask_id(job, vertex, name, idx);
            l.operator_name = op.into_owned();
            l.metric = metric.to_string();
            samples.push(Sample::Latency(l));
        }
        acc.job_ids.sort_unstable();
        acc.job_ids.dedup();
        let job_id = match acc.job_ids.as_slice() {
            [one] => Some(one.to_string()),
            _ => None,
        };
        Selection { samples, job_id, stats: acc.stats }
    }
}

fn subtask_id(job: Cow<'_, str>, vertex: Cow<'_, str>, name: Cow<'_, str>, idx: u32) -> SubtaskId {
    SubtaskId {
        job_id: job.into_owned(),
        vertex_id: vertex.into_owned(),
        vertex_name: name.into_owned(),
        subtask_index: idx,
    }
}

/// The family a sample belongs to: the current `# TYPE` family when the sample is one of its
/// series (`_count`, `_sum`, `_bucket` of a summary or histogram), else its own name.
fn family_of<'a>(name: &'a str, current: Option<(&'a str, MetricKind)>) -> &'a str {
    if let Some((fam, kind)) = current {
        if name == fam {
            return fam;
        }
        if matches!(kind, MetricKind::Summary | MetricKind::Histogram)
            && let Some(suffix) = name.strip_prefix(fam)
            && matches!(suffix, "_count" | "_sum" | "_bucket")
        {
            return fam;
        }
    }
    name
}

impl<'a> Acc<'a> {
    /// Takes one sample; returns false when its family is unknown.
    fn sample(&mut self, s: &SampleLine<'a>, family: &'a str) -> bool {
        if let Some(rest) = family.strip_prefix(STATUS) {
            self.status(rest, s)
        } else if let Some(rest) = family.strip_prefix(OPERATOR) {
            self.operator(rest, family, s);
            true
        } else if let Some(rest) = family.strip_prefix(TASK) {
            self.task(rest, s)
        } else {
            family.starts_with(JOB_LATENCY)
        }
    }

    fn status(&mut self, rest: &str, s: &SampleLine<'a>) -> bool {
        let v = s.value;
        let st = &mut self.stats;
        match rest {
            "JVM_CPU_Load" => self.jvm.cpu_load = valid(v, st),
            "JVM_Memory_Heap_Used" => self.jvm.heap_used_bytes = valid(v, st),
            "JVM_Memory_Heap_Max" => self.jvm.heap_max_bytes = valid(v, st),
            "JVM_Memory_NonHeap_Used" => self.jvm.non_heap_used_bytes = valid(v, st),
            "JVM_Threads_Count" => self.jvm.threads = valid(v, st),
            "Flink_Memory_Managed_Used" => self.mem.managed_used_bytes = valid(v, st),
            "Flink_Memory_Managed_Total" => self.mem.managed_total_bytes = valid(v, st),
            "Shuffle_Netty_UsedMemorySegments" => self.mem.network_used_segments = valid(v, st),
            "Shuffle_Netty_TotalMemorySegments" => self.mem.network_total_segments = valid(v, st),
            _ => {
                if let Some(gc) = rest.strip_prefix(GC) {
                    return self.gc(gc, v);
                }
                return IGNORED_STATUS.binary_search(&rest).is_ok();
            }
        }
        true
    }

    /// `<collector>_Count`, `<collector>_Time`, `<collector>_TimeMsPerSecond`, where the
    /// collector `All` (Flink 1.19+) is the sum of the others.
    fn gc(&mut self, rest: &str, v: f64) -> bool {
        let g = &mut self.gc;
        if let Some(collector) = rest.strip_suffix("_TimeMsPerSecond") {
            match valid(v, &mut self.stats) {
                Some(v) if collector == "All" => g.all_rate = Some(v),
                Some(v) => g.rate_sum = add_opt(g.rate_sum, v),
                None => {}
            }
            true
        } else if let Some(collector) = rest.strip_suffix("_Time") {
            match valid(v, &mut self.stats) {
                Some(v) if collector == "All" => g.all_time = Some(v),
                Some(v) => g.time_sum = add_opt(g.time_sum, v),
                None => {}
            }
            true
        } else {
            rest.ends_with("_Count")
        }
    }

    fn note_job(&mut self, job: Cow<'a, str>) {
        if self.job_ids.last() != Some(&job) {
            self.job_ids.push(job);
        }
    }

    fn task(&mut self, rest: &str, s: &SampleLine<'a>) -> bool {
        enum F {
            InRate,
            OutRate,
            Busy,
            BackPressured,
            Idle,
            InTotal,
            OutTotal,
            StartDelay,
            Alignment,
        }
        let f = match rest {
            "numRecordsInPerSecond" => F::InRate,
            "numRecordsOutPerSecond" => F::OutRate,
            "busyTimeMsPerSecond" => F::Busy,
            "backPressuredTimeMsPerSecond" => F::BackPressured,
            "idleTimeMsPerSecond" => F::Idle,
            "numRecordsIn" => F::InTotal,
            "numRecordsOut" => F::OutTotal,
            "checkpointStartDelayNanos" => F::StartDelay,
            "checkpointAlignmentTime" => F::Alignment,
            _ => return rest.starts_with("Shuffle_") || IGNORED_TASK.binary_search(&rest).is_ok(),
        };
        let labels = FlinkLabels::of(s);
        let Some(key) = labels.task_key() else {
            self.stats.missing_labels += 1;
            return true;
        };
        self.note_job(key.0.clone());
        let v = valid(s.value, &mut self.stats);
        if let F::StartDelay | F::Alignment = f {
            let c = self
                .checkpoints
                .entry(key.0.clone())
                .or_insert_with(|| CheckpointSample { job_id: key.0.to_string(), ..Default::default() });
            if let Some(ns) = v {
                let ms = ns / 1e6;
                match f {
                    F::StartDelay => c.start_delay_ms = max_opt(c.start_delay_ms, ms),
                    _ => c.alignment_ms = max_opt(c.alignment_ms, ms),
                }
            }
            return true;
        }
        let name = labels.task_name.unwrap_or(Cow::Borrowed(""));
        let (_, t) = self.tasks.entry(key).or_insert_with(|| (name, TaskSample::default()));
        match f {
            F::InRate => t.records_in_per_s = v,
            F::OutRate => t.records_out_per_s = v,
            F::Busy => t.busy_ms_per_s = v,
            F::BackPressured => t.backpressured_ms_per_s = v,
            F::Idle => t.idle_ms_per_s = v,
            F::InTotal => t.records_in_total = v,
            F::OutTotal => t.records_out_total = v,
            F::StartDelay | F::Alignment => {}
        }
        true
    }

    fn operator(&mut self, rest: &'a str, family: &'a str, s: &SampleLine<'a>) {
        enum F {
            InRate,
            OutRate,
            InTotal,
            OutTotal,
            Pending,
            LagMax,
            EmitLag,
        }
        let is_latency_series = s.name.len() > family.len() || s.labels().any(|(k, _)| k == "quantile");
        let f = match rest {
            "numRecordsInPerSecond" => F::InRate,
            "numRecordsOutPerSecond" => F::OutRate,
            "numRecordsIn" => F::InTotal,
            "numRecordsOut" => F::OutTotal,
            "pendingRecords" => F::Pending,
            "currentEmitEventTimeLag" => F::EmitLag,
            _ if rest.ends_with("records_lag_max") => F::LagMax,
            _ if is_latency_series && contains_ignore_ascii_case(rest, "latency") => {
                self.latency(rest, family, s);
                return;
            }
            _ => return,
        };
        let labels = FlinkLabels::of(s);
        let (Some((job, vertex, idx)), Some(op)) = (labels.task_key(), labels.operator_name.clone()) else {
            self.stats.missing_labels += 1;
            return;
        };
        self.note_job(job.clone());
        let v = valid(s.value, &mut self.stats);
        let name = labels.task_name.unwrap_or(Cow::Borrowed(""));
        let (_, o) =
            self.operators.entry((job, vertex, idx, op)).or_insert_with(|| (name, Default::default()));
        match f {
            F::InRate => o.records_in_per_s = v,
            F::OutRate => o.records_out_per_s = v,
            F::InTotal => o.records_in_total = v,
            F::OutTotal => o.records_out_total = v,
            F::Pending => o.pending_records = v,
            F::EmitLag => o.current_emit_event_time_lag_ms = v,
            // Several series (one per partition): the largest lag.
            F::LagMax => {
                if let Some(v) = v {
                    o.records_lag_max = max_opt(o.records_lag_max, v);
                }
            }
        }
    }

    /// A series of a latency summary: a quantile, `_count` or `_sum`.
    fn latency(&mut self, metric: &'a str, family: &'a str, s: &SampleLine<'a>) {
        let labels = FlinkLabels::of(s);
        let (Some((job, vertex, idx)), Some(op)) = (labels.task_key(), labels.operator_name.clone()) else {
            self.stats.missing_labels += 1;
            return;
        };
        self.note_job(job.clone());
        let suffix = &s.name[family.len().min(s.name.len())..];
        let v = valid(s.value, &mut self.stats);
        let name = labels.task_name.unwrap_or(Cow::Borrowed(""));
        let (_, l) = self
            .latencies
            .entry((job, vertex, idx, op, metric))
            .or_insert_with(|| (name, Default::default()));
        match (suffix, labels.quantile) {
            ("_count", _) => l.count = v,
            ("", Some(0.5)) => l.p50_ms = v,
            ("", Some(0.95)) => l.p95_ms = v,
            ("", Some(0.99)) => l.p99_ms = v,
            ("", Some(1.0)) => l.max_ms = v,
            _ => {}
        }
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/flink-2.3-taskmanager.prom");
    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn tasks(sel: &Selection) -> Vec<&TaskSample> {
        sel.samples.iter().filter_map(|s| if let Sample::Task(t) = s { Some(t) } else { None }).collect()
    }

    #[test]
    fn ignore_lists_are_sorted() {
        assert!(IGNORED_STATUS.windows(2).all(|w| w[0] < w[1]));
        assert!(IGNORED_TASK.windows(2).all(|w| w[0] < w[1]));
    }

    /// Values of `name` in the fixture, read with plain string operations (independent of the
    /// parser), from the lines that contain every string of `with`.
    fn fixture_values(name: &str, with: &[&str]) -> Vec<f64> {
        FIXTURE
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && with.iter().all(|w| l.contains(w)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .collect()
    }

    fn fixture_value(name: &str) -> f64 {
        let v = fixture_values(name, &[]);
        assert_eq!(v.len(), 1, "{name}");
        v[0]
    }

    #[test]
    fn real_exposition_maps_every_kind_a_taskmanager_exposes() {
        let sel = Selector::new().select(FIXTURE, T0);
        assert_eq!(sel.stats.parse_error_count, 0);
        assert_eq!(sel.stats.unknown_families, Vec::<String>::new());
        assert_eq!(sel.stats.missing_labels, 0);
        let job = FIXTURE.split("job_id=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(sel.job_id.as_deref(), Some(job));

        let st = |m: &str| fixture_value(&format!("flink_taskmanager_Status_{m}"));
        let Sample::Jvm(jvm) = &sel.samples[0] else {
            panic!("first sample is not JVM: {:?}", sel.samples[0])
        };
        assert_eq!(jvm.cpu_load, Some(st("JVM_CPU_Load")));
        assert!(jvm.cpu_load.unwrap() > 0.0);
        assert_eq!(jvm.heap_used_bytes, Some(st("JVM_Memory_Heap_Used")));
        assert_eq!(jvm.heap_max_bytes, Some(st("JVM_Memory_Heap_Max")));
        assert_eq!(jvm.non_heap_used_bytes, Some(st("JVM_Memory_NonHeap_Used")));
        assert_eq!(
            jvm.gc_time_ms_per_s,
            Some(st("JVM_GarbageCollector_All_TimeMsPerSecond")),
            "All_TimeMsPerSecond"
        );
        assert_eq!(jvm.threads, Some(st("JVM_Threads_Count")));

        let Sample::FlinkMemory(mem) = &sel.samples[1] else { panic!("second sample is not memory") };
        assert_eq!(mem.managed_used_bytes, Some(st("Flink_Memory_Managed_Used")));
        assert_eq!(mem.managed_total_bytes, Some(st("Flink_Memory_Managed_Total")));
        assert_eq!(mem.network_used_segments, Some(st("Shuffle_Netty_UsedMemorySegments")));
        assert_eq!(mem.network_total_segments, Some(st("Shuffle_Netty_TotalMemorySegments")));

        // Three vertices with parallelism 2 on this TaskManager.
        let t = tasks(&sel);
        assert_eq!(t.len(), 6);
        let names: Vec<_> = t.iter().map(|t| (t.id.vertex_name.as_str(), t.id.subtask_index)).collect();
        for want in
            [("work", 0), ("work", 1), ("Source:_rate_source", 0), ("window_count____discard:_Writer", 1)]
        {
            assert!(names.contains(&want), "{want:?} missing from {names:?}");
        }
        for task in &t {
            assert!(task.busy_ms_per_s.is_some(), "{:?}", task.id);
            assert!(task.idle_ms_per_s.is_some());
            assert!(task.backpressured_ms_per_s.is_some());
            assert!(task.records_in_per_s.is_some() && task.records_out_per_s.is_some());
            assert!(task.records_in_total.is_some() && task.records_out_total.is_some());
        }
        let work: Vec<_> = t.iter().filter(|t| t.id.vertex_name == "work").collect();
        assert!(work.iter().all(|w| w.records_in_per_s.unwrap() > 0.0), "{work:?}");

        let ops: Vec<&OperatorSample> = sel
            .samples
            .iter()
            .filter_map(|s| if let Sample::Operator(o) = s { Some(o) } else { None })
            .collect();
        let op_names: Vec<_> = ops.iter().map(|o| o.operator_name.as_str()).collect();
        assert!(op_names.contains(&"work"), "{op_names:?}");
        assert!(op_names.contains(&"Source:_rate_source"), "{op_names:?}");
        let src = ops.iter().find(|o| o.operator_name == "Source:_rate_source").unwrap();
        assert_eq!(src.current_emit_event_time_lag_ms, Some(0.0));
        assert!(src.records_out_per_s.unwrap() > 0.0);

        let cps: Vec<&CheckpointSample> = sel
            .samples
            .iter()
            .filter_map(|s| if let Sample::Checkpoint(c) = s { Some(c) } else { None })
            .collect();
        assert_eq!(cps.len(), 1);
        let max = |name: &str| {
            fixture_values(&format!("flink_taskmanager_job_task_{name}"), &[]).into_iter().fold(0.0, f64::max)
                / 1e6
        };
        assert_eq!(cps[0].start_delay_ms, Some(max("checkpointStartDelayNanos")));
        assert_eq!(cps[0].alignment_ms, Some(max("checkpointAlignmentTime")));
        assert!(cps[0].start_delay_ms.unwrap() > 0.0);

        let lat: Vec<&LatencySample> = sel
            .samples
            .iter()
            .filter_map(|s| if let Sample::Latency(l) = s { Some(l) } else { None })
            .collect();
        assert_eq!(lat.len(), 2);
        let l0 = lat.iter().find(|l| l.id.subtask_index == 0).unwrap();
        assert_eq!(l0.metric, "latencyHistogram");
        assert_eq!(l0.operator_name, "work");
        let q = |q: &str| {
            let v = fixture_values(
                "flink_taskmanager_job_task_operator_latencyHistogram",
                &["subtask_index=\"0\"", &format!("quantile=\"{q}\"")],
            );
            Some(v[0])
        };
        assert_eq!((l0.p50_ms, l0.p95_ms, l0.p99_ms), (q("0.5"), q("0.95"), q("0.99")));
        let count = fixture_values(
            "flink_taskmanager_job_task_operator_latencyHistogram_count",
            &["subtask_index=\"0\""],
        );
        assert_eq!(l0.count, Some(count[0]));
        assert_eq!(l0.max_ms, None, "Flink exports no max");

        // Whatever was mapped passes the receiver's validation.
        let batch = demeter_common::MetricBatch {
            schema_version: demeter_common::SCHEMA_VERSION,
            source: demeter_common::Source {
                namespace: "ns".into(),
                deployment: "d".into(),
                job_id: sel.job_id.clone(),
                taskmanager_id: "tm".into(),
                pod: String::new(),
                host: String::new(),
            },
            agent_run_id: "r".into(),
            agent_seq: 0,
            collected_at: T0,
            samples: sel.samples.clone(),
        };
        assert_eq!(demeter_common::MetricBatch::decode(&batch.encode()).unwrap(), batch);
    }

    #[test]
    fn gc_rate_is_derived_from_the_counter_when_flink_exposes_no_rate() {
        let text = |young: f64, old: f64| {
            format!(
                "# TYPE flink_taskmanager_Status_JVM_GarbageCollector_G1_Young_Generation_Time gauge\n\
                 flink_taskmanager_Status_JVM_GarbageCollector_G1_Young_Generation_Time{{tm_id=\"t\",}} {young}\n\
                 flink_taskmanager_Status_JVM_GarbageCollector_G1_Old_Generation_Time{{tm_id=\"t\",}} {old}\n\
                 flink_taskmanager_Status_JVM_GarbageCollector_G1_Young_Generation_Count{{tm_id=\"t\",}} 3\n"
            )
        };
        let gc = |sel: &Selection| match sel.samples.first() {
            Some(Sample::Jvm(j)) => j.gc_time_ms_per_s,
            None => None,
            other => panic!("{other:?}"),
        };
        let mut s = Selector::new();
        assert_eq!(gc(&s.select(&text(100.0, 0.0), T0)), None, "no rate from one point");
        let sel = s.select(&text(130.0, 10.0), UnixMillis(T0.0 + 2000));
        assert_eq!(gc(&sel), Some(20.0), "40 ms of GC over 2 s");
        assert!(sel.stats.unknown_families.is_empty());
        // A restarted TaskManager's counter goes down: no rate, then rates from the new base.
        assert_eq!(gc(&s.select(&text(5.0, 0.0), UnixMillis(T0.0 + 3000))), None);
        assert_eq!(gc(&s.select(&text(10.0, 0.0), UnixMillis(T0.0 + 4000))), Some(5.0));
    }

    #[test]
    fn gc_rates_of_collectors_are_summed_without_an_all_series() {
        let text = "flink_taskmanager_Status_JVM_GarbageCollector_G1_Young_Generation_TimeMsPerSecond 1.5\n\
                    flink_taskmanager_Status_JVM_GarbageCollector_G1_Old_Generation_TimeMsPerSecond 2\n";
        let sel = Selector::new().select(text, T0);
        assert!(matches!(&sel.samples[0], Sample::Jvm(j) if j.gc_time_ms_per_s == Some(3.5)));
    }

    #[test]
    fn nan_inf_and_negative_values_become_none() {
        let text = "flink_taskmanager_Status_JVM_CPU_Load{tm_id=\"t\",} NaN\n\
                    flink_taskmanager_Status_JVM_Threads_Count{tm_id=\"t\",} 12\n\
                    flink_taskmanager_job_task_busyTimeMsPerSecond{job_id=\"j\",task_id=\"v\",task_name=\"w\",subtask_index=\"0\",} +Inf\n\
                    flink_taskmanager_job_task_idleTimeMsPerSecond{job_id=\"j\",task_id=\"v\",task_name=\"w\",subtask_index=\"0\",} 900\n\
                    flink_taskmanager_job_task_operator_currentEmitEventTimeLag{job_id=\"j\",task_id=\"v\",task_name=\"w\",subtask_index=\"0\",operator_name=\"src\",} -9.223372036854776E18\n";
        let sel = Selector::new().select(text, T0);
        assert_eq!(sel.stats.invalid_values, 3);
        assert!(matches!(&sel.samples[0], Sample::Jvm(j) if j.cpu_load.is_none() && j.threads == Some(12.0)));
        assert!(
            matches!(&sel.samples[1], Sample::Task(t) if t.busy_ms_per_s.is_none() && t.idle_ms_per_s == Some(900.0))
        );
        assert!(matches!(&sel.samples[2], Sample::Operator(o) if o.current_emit_event_time_lag_ms.is_none()));
    }

    #[test]
    fn malformed_lines_and_unknown_families_are_counted_and_the_rest_is_kept() {
        let text = format!(
            "{FIXTURE}\nflink_taskmanager_Status_JVM_Foo{{tm_id=\"t\",}} 1\n\
             flink_taskmanager_Status_JVM_Foo{{tm_id=\"t\",}} 2\n\
             some_other_exporter_metric 3\n\
             flink_taskmanager_job_task_busyTimeMsPerSecond{{job_id=\"j\" 4\n\
             this is not a sample\n\
             flink_taskmanager_job_task_operator_myCustomCounter{{job_id=\"j\",}} 5\n"
        );
        let sel = Selector::new().select(&text, T0);
        assert_eq!(sel.stats.parse_error_count, 2);
        assert_eq!(sel.stats.parse_errors[0].line, 783);
        assert_eq!(
            sel.stats.parse_errors_by_kind,
            vec![(ParseErrorKind::InvalidLabelSeparator, 1), (ParseErrorKind::InvalidValue, 1)]
        );
        assert_eq!(
            sel.stats.unknown_families,
            vec!["flink_taskmanager_Status_JVM_Foo".to_string(), "some_other_exporter_metric".to_string()]
        );
        let full = Selector::new().select(FIXTURE, T0);
        assert_eq!(sel.samples, full.samples, "the valid lines map as before");
    }

    #[test]
    fn latency_families_are_matched_case_insensitively_and_missing_labels_counted() {
        let l = "job_id=\"j\",task_id=\"v\",task_name=\"w\",subtask_index=\"2\",operator_name=\"sink\"";
        let text = format!(
            "# TYPE flink_taskmanager_job_task_operator_myGroup_EndToEndLATENCY summary\n\
             flink_taskmanager_job_task_operator_myGroup_EndToEndLATENCY_count{{{l}}} 10\n\
             flink_taskmanager_job_task_operator_myGroup_EndToEndLATENCY{{{l},quantile=\"0.5\"}} 3\n\
             flink_taskmanager_job_task_operator_myGroup_EndToEndLATENCY{{{l},quantile=\"0.95\"}} 7\n\
             flink_taskmanager_job_task_operator_myGroup_EndToEndLATENCY{{{l},quantile=\"1.0\"}} 9\n\
             flink_taskmanager_job_task_operator_numRecordsIn{{job_id=\"j\",}} 5\n"
        );
        let sel = Selector::new().select(&text, T0);
        assert_eq!(sel.stats.missing_labels, 1);
        assert_eq!(sel.samples.len(), 1);
        let Sample::Latency(lat) = &sel.samples[0] else { panic!("{:?}", sel.samples) };
        assert_eq!(lat.metric, "myGroup_EndToEndLATENCY");
        assert_eq!(lat.id.subtask_index, 2);
        assert_eq!(
            (lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.max_ms, lat.count),
            (Some(3.0), Some(7.0), None, Some(9.0), Some(10.0))
        );
    }

    #[test]
    fn several_jobs_leave_job_id_unset() {
        let text = "flink_taskmanager_job_task_idleTimeMsPerSecond{job_id=\"a\",task_id=\"v\",subtask_index=\"0\",} 1\n\
                    flink_taskmanager_job_task_idleTimeMsPerSecond{job_id=\"b\",task_id=\"v\",subtask_index=\"0\",} 1\n";
        let sel = Selector::new().select(text, T0);
        assert_eq!(sel.job_id, None);
        assert_eq!(tasks(&sel).len(), 2);
    }
}

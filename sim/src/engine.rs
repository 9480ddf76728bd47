//! The run loop: one production job per strategy, its profiling jobs, the failure schedule, the
//! strategy's commands and the accounting.

use crate::batches::{Agents, fnv1a};
use crate::job::{JobEvent, JobSecond, JobSim, JobState};
use crate::model;
use crate::params::{ParamsError, SimParams, WorkloadParams};
use crate::report::{
    FailureRecord, ProfileRecord, ReconfigRecord, SeriesRow, SimReport, StrategyRun, Summary,
};
use crate::strategy::{
    Command, OracleView, ProfileId, ProfileOutcome, ReconfigKind, ReconfigOutcome, StepContext, Strategy,
};
use crate::trace::{OfferedRate, Trace};
use demeter_common::{JobConfig, UnixMillis};
use demeter_core::obs::{JobObservation, PerfSample, RecoveryTime, SampleOrigin};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub params: SimParams,
    /// Seeds the offered rate's noise and the metrics' noise; the same for every strategy.
    pub seed: u64,
    /// Parameter set to use; by default the trace's workload (`ads`, `cars`).
    pub workload: Option<String>,
    /// Simulate only the first seconds of the trace.
    pub duration_s: Option<u64>,
    /// Keep the per-second series (about 150 B per second and strategy).
    pub record_series: bool,
    /// Inject the failure every `failure_interval_s` (on by default, as upstream).
    pub failures: bool,
    /// Kubernetes namespace written into the metric batches.
    pub namespace: String,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            params: SimParams::default(),
            seed: 42,
            workload: None,
            duration_s: None,
            record_series: true,
            failures: true,
            namespace: "sim".to_string(),
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error("the trace {0} is empty")]
    EmptyTrace(String),
}

/// A trace made ready for runs: the offered rate with its noise, and the parameters. Shared by
/// all strategies of a run (it is `Sync`, so strategies may run in parallel threads), and the
/// oracle's view of the truth.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub trace_name: String,
    pub workload: String,
    pub start_unix_s: i64,
    pub seed: u64,
    pub params: SimParams,
    pub wp: WorkloadParams,
    pub offered: OfferedRate,
    pub failures: bool,
    pub record_series: bool,
    pub namespace: String,
}

/// Prepares `trace` for runs with `opts`.
pub fn prepare(trace: &Trace, opts: &SimOptions) -> Result<Prepared, SimError> {
    let workload = opts.workload.clone().unwrap_or_else(|| trace.workload.clone()).to_ascii_lowercase();
    let wp = opts.params.workload(&workload)?.clone();
    let mut offered = OfferedRate::new(trace, &opts.params.common, &wp, opts.seed);
    if let Some(d) = opts.duration_s
        && (d as usize) < offered.rate.len()
    {
        offered = OfferedRate::from_rates(offered.rate[..d as usize].to_vec());
    }
    if offered.rate.is_empty() {
        return Err(SimError::EmptyTrace(trace.name.clone()));
    }
    Ok(Prepared {
        trace_name: trace.name.clone(),
        workload,
        start_unix_s: trace.start_unix_s,
        seed: opts.seed,
        params: opts.params.clone(),
        wp,
        offered,
        failures: opts.failures,
        record_series: opts.record_series,
        namespace: opts.namespace.clone(),
    })
}

impl OracleView for Prepared {
    fn offered_rate_at(&self, t: u64) -> f64 {
        self.offered.at(t)
    }
    fn true_capacity(&self, config: &JobConfig) -> f64 {
        model::capacity(config, &self.wp)
    }
    fn true_recovery_s(&self, config: &JobConfig, rate: f64) -> f64 {
        model::recovery_s(config, rate, &self.params.common, &self.wp)
    }
    fn len_s(&self) -> u64 {
        self.offered.len_s()
    }
}

impl Prepared {
    /// Seconds simulated.
    pub fn len_s(&self) -> u64 {
        self.offered.len_s()
    }

    /// Downtime of a redeploy and of an in-place restart.
    pub fn downtimes(&self) -> (f64, f64) {
        (self.params.common.redeploy_downtime_s, self.wp.recovery.restart_s)
    }
}

/// Runs every strategy on the same trace and seed, one after the other. `progress(done, total)`
/// is called every few thousand simulated seconds.
pub fn run(
    trace: &Trace,
    strategies: Vec<Box<dyn Strategy>>,
    opts: &SimOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SimReport, SimError> {
    let prepared = prepare(trace, opts)?;
    let total = prepared.len_s() * strategies.len() as u64;
    let mut runs = Vec::with_capacity(strategies.len());
    for (i, mut s) in strategies.into_iter().enumerate() {
        let base = i as u64 * prepared.len_s();
        let r = run_one(&prepared, s.as_mut(), &mut |d, _| progress(base + d, total));
        runs.push(r);
    }
    progress(total, total);
    Ok(report(&prepared, runs))
}

/// Assembles runs (for instance from parallel threads) into a report.
pub fn report(prepared: &Prepared, runs: Vec<StrategyRun>) -> SimReport {
    SimReport {
        trace: prepared.trace_name.clone(),
        workload: prepared.workload.clone(),
        seed: prepared.seed,
        duration_s: prepared.len_s(),
        strategies: runs,
    }
}

/// A profiling job and what has been measured of it.
#[derive(Debug)]
struct ProfileRun {
    id: ProfileId,
    config: JobConfig,
    started: f64,
    duration_s: f64,
    inject_after: Option<f64>,
    job: JobSim,
    window_s: f64,
    sum_offered: f64,
    sum_processed: f64,
    sum_p95: f64,
    n_p95: f64,
    sum_busy: f64,
    n: f64,
    window_end: f64,
    injected: bool,
    recovery: Option<RecoveryTime>,
}

impl ProfileRun {
    fn measure_end(&self) -> f64 {
        self.started + self.inject_after.unwrap_or(self.duration_s)
    }

    fn outcome(&self, at: UnixMillis) -> Option<ProfileOutcome> {
        if self.n <= 0.0 {
            return None;
        }
        let p95 = if self.n_p95 > 0.0 { self.sum_p95 / self.n_p95 } else { 0.0 };
        Some(ProfileOutcome {
            id: self.id,
            sample: PerfSample {
                config: self.config,
                at,
                origin: SampleOrigin::Profiling,
                offered_rate: self.sum_offered / self.n,
                throughput: self.sum_processed / self.n,
                p95_latency_ms: p95,
                busy_ratio: Some((self.sum_busy / self.n).clamp(0.0, 1.0)),
                recovery: self.recovery,
            },
        })
    }
}

/// A reconfiguration under way.
#[derive(Clone, Copy, Debug)]
struct Pending {
    from: JobConfig,
    to: JobConfig,
    kind: ReconfigKind,
    started: f64,
}

/// Runs one strategy on a prepared trace. Deterministic for a given `prepared` (seed included)
/// and strategy.
pub fn run_one(
    prepared: &Prepared,
    strategy: &mut dyn Strategy,
    progress: &mut dyn FnMut(u64, u64),
) -> StrategyRun {
    let common = &prepared.params.common;
    let wp = &prepared.wp;
    let offered = &prepared.offered;
    let len = prepared.len_s();
    let name = strategy.name().to_string();
    let mut rng = ChaCha8Rng::seed_from_u64(prepared.seed ^ fnv1a(name.as_bytes()));
    let wants_batches = strategy.wants_batches();
    let mut agents = Agents::new(&prepared.namespace, &name);
    let restart_s = wp.recovery.restart_s;

    let mut job = JobSim::running(strategy.initial_config(), strategy.max_parallelism(), 0.0, offered, wp);
    let mut profiles: Vec<ProfileRun> = Vec::new();
    let mut pending: Option<Pending> = None;
    let mut queued: Option<(JobConfig, ReconfigKind)> = None;
    let mut next_failure = common.failure_interval_s;
    let mut last_ckpt_seen = job.next_checkpoint_at();

    let mut reconfig_outcomes: Vec<ReconfigOutcome> = Vec::new();
    let mut profile_outcomes: Vec<ProfileOutcome> = Vec::new();
    let mut carry_outcomes: Vec<ProfileOutcome> = Vec::new();
    let mut run = StrategyRun {
        summary: empty_summary(&name),
        series: Vec::with_capacity(if prepared.record_series { len as usize } else { 0 }),
        reconfigurations: Vec::new(),
        profiles: Vec::new(),
        failures: Vec::new(),
    };
    let mut acc = Accum::default();
    let ms = |t: f64| UnixMillis(((prepared.start_unix_s as f64 + t) * 1000.0).round() as i64);

    for t in 0..len {
        let tf = t as f64;
        // Failure schedule: due every interval, injected 5 s before the next checkpoint.
        if prepared.failures && t >= next_failure && job.is_running() && !job.failure_pending_or_active() {
            let k = (job.config().checkpoint_interval_ms as f64 / 1000.0).max(0.1);
            let mut at = job.next_checkpoint_at() - common.failure_before_checkpoint_s;
            while at < tf {
                at += k;
            }
            if at < tf + 1.0 {
                job.inject_failure(at);
                next_failure += common.failure_interval_s;
                acc.failures += 1;
            }
        }

        let mut sec = job.step(t, offered, common, wp, restart_s);
        // Busy time as measured (sampled by Flink): a little noise, the same in the batches.
        sec.busy = (sec.busy * (1.0 + rng.random_range(-0.05..=0.05))).clamp(0.0, 1.0);
        if job.next_checkpoint_at() != last_ckpt_seen {
            last_ckpt_seen = job.next_checkpoint_at();
            agents.count_checkpoint();
        }
        reconfig_outcomes.clear();
        for e in job.take_events() {
            match e {
                JobEvent::Resumed { at, down_since, config } => {
                    if let Some(p) = pending.filter(|p| p.to == config) {
                        pending = None;
                        let o = ReconfigOutcome {
                            from: p.from,
                            to: p.to,
                            kind: p.kind,
                            started: ms(p.started),
                            finished: ms(at),
                            downtime_s: at - down_since,
                        };
                        run.reconfigurations.push(ReconfigRecord {
                            started_s: p.started,
                            finished_s: at,
                            downtime_s: o.downtime_s,
                            kind: p.kind,
                            from: p.from,
                            to: p.to,
                        });
                        if p.kind == ReconfigKind::Redeploy {
                            agents.new_pods();
                        }
                        reconfig_outcomes.push(o);
                    }
                }
                JobEvent::Recovery { failed_at, recovery_s, recovered } => {
                    run.failures.push(FailureRecord { at_s: failed_at, recovery_s, recovered });
                }
            }
        }

        // Profiling jobs read the same input.
        let mut prof_cpu = 0.0;
        let mut prof_mem = 0.0;
        profile_outcomes.clear();
        profile_outcomes.append(&mut carry_outcomes);
        let mut finished = Vec::new();
        for (i, pr) in profiles.iter_mut().enumerate() {
            prof_cpu += pr.config.total_cpu();
            prof_mem += pr.config.total_memory_mb() as f64;
            if let Some(after) = pr.inject_after
                && !pr.injected
                && tf >= pr.started + after
                && pr.job.is_running()
            {
                let k = (pr.config.checkpoint_interval_ms as f64 / 1000.0).max(0.1);
                let mut at = pr.job.next_checkpoint_at() - common.failure_before_checkpoint_s;
                while at < tf {
                    at += k;
                }
                if at < tf + 1.0 {
                    pr.job.inject_failure(at);
                    pr.injected = true;
                }
            }
            let s = pr.job.step(t, offered, common, wp, restart_s);
            let end = pr.measure_end();
            if tf + 1.0 > end - pr.window_s && tf < end && s.state != Some(JobState::Starting) {
                pr.sum_offered += s.offered;
                pr.sum_processed += s.processed;
                pr.sum_busy += s.busy;
                pr.n += 1.0;
                if let Some(l) = s.p95_ms {
                    pr.sum_p95 += l;
                    pr.n_p95 += 1.0;
                }
                pr.window_end = tf + 1.0;
            }
            for e in pr.job.take_events() {
                if let JobEvent::Recovery { recovery_s, recovered, .. } = e {
                    pr.recovery = Some(if recovered {
                        RecoveryTime::Measured(recovery_s)
                    } else {
                        RecoveryTime::NotRecovered(recovery_s)
                    });
                }
            }
            let done_time = tf + 1.0 >= pr.started + pr.duration_s;
            let done_failure = pr.inject_after.is_none() || pr.recovery.is_some();
            if done_time && done_failure {
                finished.push(i);
            }
        }
        for &i in finished.iter().rev() {
            let pr = profiles.remove(i);
            finish_profile(&pr, tf + 1.0, &ms, &mut run, &mut profile_outcomes);
        }

        // What the strategy sees.
        let obs = JobObservation {
            at: ms(tf + 1.0),
            offered_rate: sec.offered,
            throughput: sec.processed,
            lag: sec.lag,
            p95_latency_ms: sec.p95_ms,
            busy_ratio: sec.busy,
            backpressure_ratio: sec.backpressure,
            cpu_cores_used: sec.cpu_used,
            memory_used_mb: sec.memory_used_mb,
            taskmanagers: sec.reporting_tms,
        };
        let batches: &[demeter_common::MetricBatch] = if wants_batches {
            let silent = u32::from(sec.state == Some(JobState::Stalled));
            agents.emit(obs.at, &job.config(), &sec, job.processed_gross(), silent)
        } else {
            &[]
        };
        let mut ctx = StepContext {
            now: obs.at,
            batches,
            observation: &obs,
            current: job.target_config(),
            reconfiguring: job.is_reconfiguring(),
            reconfig_outcomes: &reconfig_outcomes,
            profile_outcomes: &profile_outcomes,
            commands: Vec::new(),
        };
        strategy.step(&mut ctx);
        let commands = std::mem::take(&mut ctx.commands);
        let now_s = tf + 1.0;
        for c in commands {
            match c {
                Command::Reconfigure { to, kind } => {
                    if valid(&to) {
                        queued = Some((to, kind));
                    }
                }
                Command::StartProfile { id, config, duration_s, inject_failure_after_s } => {
                    if valid(&config) && !profiles.iter().any(|p| p.id == id) {
                        profiles.push(ProfileRun {
                            id,
                            config,
                            started: now_s,
                            duration_s: duration_s as f64,
                            inject_after: inject_failure_after_s.map(f64::from),
                            job: JobSim::starting(config, now_s, common.profile_startup_s, wp),
                            window_s: common.profile_window_s as f64,
                            sum_offered: 0.0,
                            sum_processed: 0.0,
                            sum_p95: 0.0,
                            n_p95: 0.0,
                            sum_busy: 0.0,
                            n: 0.0,
                            window_end: now_s,
                            injected: false,
                            recovery: None,
                        });
                    }
                }
                Command::StopProfile { id } => {
                    if let Some(i) = profiles.iter().position(|p| p.id == id) {
                        let pr = profiles.remove(i);
                        // Delivered with the next step's outcomes.
                        finish_profile(&pr, now_s, &ms, &mut run, &mut carry_outcomes);
                    }
                }
            }
        }
        // Apply the latest reconfiguration request once the job is not moving already.
        if let Some((to, kind)) = queued
            && !job.is_reconfiguring()
        {
            queued = None;
            let from = job.config();
            if to != from {
                let kind = if kind == ReconfigKind::InPlace && from.parallelism_only_change(&to) {
                    ReconfigKind::InPlace
                } else {
                    ReconfigKind::Redeploy
                };
                match kind {
                    ReconfigKind::InPlace => {
                        let wait =
                            if to.taskmanagers() > from.taskmanagers() { common.pod_start_s } else { 0.0 };
                        job.rescale_in_place(now_s, to, wait, restart_s);
                    }
                    ReconfigKind::Redeploy => job.redeploy(now_s, to, common.redeploy_downtime_s),
                }
                pending = Some(Pending { from, to, kind, started: now_s });
            }
        }
        // Abandoned failures and the like are reported with the next step's events.
        let alloc = job.target_config();
        acc.add(&sec, &alloc, prof_cpu, prof_mem, job.capacity());
        if prepared.record_series {
            run.series.push(series_row(t, &sec, &job, &alloc, prof_cpu, prof_mem, strategy.forecast_rate()));
        }
        if (t + 1) % 4096 == 0 {
            progress(t + 1, len);
        }
    }
    // Drain what is left: unfinished failures are not counted as recovered.
    for e in job.take_events() {
        if let JobEvent::Recovery { failed_at, recovery_s, recovered } = e {
            run.failures.push(FailureRecord { at_s: failed_at, recovery_s, recovered });
        }
    }
    progress(len, len);
    let processed_net = job.position() - job.start_position();
    run.summary = acc.summary(&name, len, &run, processed_net, offered, common);
    run
}

fn finish_profile(
    pr: &ProfileRun,
    now_s: f64,
    ms: &dyn Fn(f64) -> UnixMillis,
    run: &mut StrategyRun,
    outs: &mut Vec<ProfileOutcome>,
) {
    if let Some(o) = pr.outcome(ms(pr.window_end)) {
        run.profiles.push(ProfileRecord {
            id: pr.id,
            started_s: pr.started,
            finished_s: now_s,
            config: pr.config,
            offered_rate: o.sample.offered_rate,
            throughput: o.sample.throughput,
            p95_latency_ms: o.sample.p95_latency_ms,
            recovery_s: o.sample.recovery.map(|r| r.seconds()),
        });
        outs.push(o);
    } else {
        run.profiles.push(ProfileRecord {
            id: pr.id,
            started_s: pr.started,
            finished_s: now_s,
            config: pr.config,
            offered_rate: 0.0,
            throughput: 0.0,
            p95_latency_ms: 0.0,
            recovery_s: None,
        });
    }
}

fn valid(c: &JobConfig) -> bool {
    c.parallelism > 0
        && c.task_slots > 0
        && c.tm_cpu_milli > 0
        && c.tm_memory_mb > 0
        && c.checkpoint_interval_ms > 0
}

fn series_row(
    t: u64,
    sec: &JobSecond,
    job: &JobSim,
    alloc: &JobConfig,
    prof_cpu: f64,
    prof_mem: f64,
    forecast: Option<f64>,
) -> SeriesRow {
    let c = job.config();
    SeriesRow {
        t,
        offered_rate: sec.offered,
        throughput: sec.processed,
        capacity: job.capacity(),
        lag: sec.lag,
        p95_latency_ms: sec.p95_ms,
        parallelism: c.parallelism,
        task_slots: c.task_slots,
        tm_cpu: c.tm_cpu_cores(),
        tm_memory_mb: c.tm_memory_mb,
        checkpoint_interval_s: c.checkpoint_interval_ms as f64 / 1000.0,
        taskmanagers: c.taskmanagers(),
        cpu: alloc.total_cpu(),
        memory_mb: alloc.total_memory_mb() as f64,
        cpu_used: sec.cpu_used,
        profiling_cpu: prof_cpu,
        profiling_memory_mb: prof_mem,
        forecast,
        state: sec.state.unwrap_or(JobState::Running),
    }
}

#[derive(Debug, Default)]
struct Accum {
    core_s: f64,
    mb_s: f64,
    prof_core_s: f64,
    prof_mb_s: f64,
    lat_sum: f64,
    lat_n: u64,
    lat_over: u64,
    lag_sum: f64,
    lag_per_sub_sum: f64,
    down_s: f64,
    p_sum: f64,
    tm_sum: f64,
    failures: u64,
    n: u64,
}

impl Accum {
    fn add(&mut self, sec: &JobSecond, alloc: &JobConfig, prof_cpu: f64, prof_mem: f64, _cap: f64) {
        self.n += 1;
        self.core_s += alloc.total_cpu();
        self.mb_s += alloc.total_memory_mb() as f64;
        self.prof_core_s += prof_cpu;
        self.prof_mb_s += prof_mem;
        if let Some(l) = sec.p95_ms {
            self.lat_sum += l;
            self.lat_n += 1;
            if l >= 5000.0 {
                self.lat_over += 1;
            }
        }
        self.lag_sum += sec.lag;
        self.lag_per_sub_sum += sec.lag / alloc.parallelism.max(1) as f64;
        self.down_s += 1.0 - sec.running_frac;
        self.p_sum += alloc.parallelism as f64;
        self.tm_sum += alloc.taskmanagers() as f64;
    }

    fn summary(
        &self,
        name: &str,
        len: u64,
        run: &StrategyRun,
        processed_net: f64,
        offered: &OfferedRate,
        common: &crate::params::CommonParams,
    ) -> Summary {
        let n = self.n.max(1) as f64;
        let st = JobConfig::STATIC_DEFAULT;
        let static_core_s = st.total_cpu() * n;
        let static_mb_s = st.total_memory_mb() as f64 * n;
        // Recovered, or censored; a recovery cut short by a reconfiguration was not measured.
        let censor = common.recovery_censor_s;
        let recs: Vec<f64> = run
            .failures
            .iter()
            .filter(|f| f.recovered || f.recovery_s >= censor)
            .map(|f| f.recovery_s)
            .collect();
        let total_offered = offered.cum_at(len as f64);
        Summary {
            strategy: name.to_string(),
            cpu_ratio: (self.core_s + self.prof_core_s) / static_core_s,
            memory_ratio: (self.mb_s + self.prof_mb_s) / static_mb_s,
            mean_p95_latency_ms: if self.lat_n > 0 { self.lat_sum / self.lat_n as f64 } else { 0.0 },
            pct_seconds_latency_over_5s: if self.lat_n > 0 {
                100.0 * self.lat_over as f64 / self.lat_n as f64
            } else {
                0.0
            },
            mean_lag: self.lag_sum / n,
            reconfigurations: run.reconfigurations.len() as u64,
            profiling_cpu_overhead: if self.core_s > 0.0 { self.prof_core_s / self.core_s } else { 0.0 },
            profiling_memory_overhead: if self.mb_s > 0.0 { self.prof_mb_s / self.mb_s } else { 0.0 },
            cpu_core_hours: self.core_s / 3600.0,
            memory_gb_hours: self.mb_s / 1024.0 / 3600.0,
            profiling_core_hours: self.prof_core_s / 3600.0,
            profiling_gb_hours: self.prof_mb_s / 1024.0 / 3600.0,
            mean_lag_per_subtask: self.lag_per_sub_sum / n,
            downtime_s: self.down_s,
            latency_seconds: self.lat_n,
            failures_injected: self.failures,
            mean_recovery_s: if recs.is_empty() { 0.0 } else { recs.iter().sum::<f64>() / recs.len() as f64 },
            profiling_runs: run.profiles.len() as u64,
            mean_parallelism: self.p_sum / n,
            mean_taskmanagers: self.tm_sum / n,
            processed_fraction: if total_offered > 0.0 { processed_net / total_offered } else { 1.0 },
            duration_s: len,
        }
    }
}

fn empty_summary(name: &str) -> Summary {
    Summary {
        strategy: name.to_string(),
        cpu_ratio: 0.0,
        memory_ratio: 0.0,
        mean_p95_latency_ms: 0.0,
        pct_seconds_latency_over_5s: 0.0,
        mean_lag: 0.0,
        reconfigurations: 0,
        profiling_cpu_overhead: 0.0,
        profiling_memory_overhead: 0.0,
        cpu_core_hours: 0.0,
        memory_gb_hours: 0.0,
        profiling_core_hours: 0.0,
        profiling_gb_hours: 0.0,
        mean_lag_per_subtask: 0.0,
        downtime_s: 0.0,
        latency_seconds: 0,
        failures_injected: 0,
        mean_recovery_s: 0.0,
        profiling_runs: 0,
        mean_parallelism: 0.0,
        mean_taskmanagers: 0.0,
        processed_fraction: 0.0,
        duration_s: 0,
    }
}

//! One simulated Flink job, advanced one second at a time.
//!
//! The job reads the offered stream (a position in [`OfferedRate`]'s running sum), so events are
//! conserved by construction: what was offered is either processed or still lagging, and a
//! restore from a checkpoint moves the position back (the records are replayed). Within a second,
//! phase changes (failure, detection, restart, checkpoint) happen at fractional times.
//!
//! Phases:
//! - `Starting`: a new job before its sources read; it then starts at the latest offset.
//! - `Running`: processes `min(available, capacity × catch-up)`; checkpoints every interval.
//! - `Stalled`: a TaskManager's network is delayed: nothing is processed, the latency metric is
//!   frozen, until the heartbeat timeout declares the TaskManager lost.
//! - `Down`: restarting or redeploying; no metrics. On leaving it the job restores from its last
//!   checkpoint (failover, in-place rescale) or from the savepoint taken when it stopped.

use crate::model;
use crate::params::{CommonParams, WorkloadParams};
use crate::trace::OfferedRate;
use demeter_common::JobConfig;

/// What a restart restores from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restore {
    /// The last completed checkpoint: the records since are replayed.
    Checkpoint,
    /// A savepoint taken when the job stopped: nothing is replayed.
    Savepoint,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Starting {
        until: f64,
    },
    Running,
    Stalled {
        detect_at: f64,
        resume_not_before: f64,
    },
    /// `reconfig`: a reconfiguration rather than a failover.
    Down {
        until: f64,
        restore: Restore,
        then: JobConfig,
        reconfig: bool,
    },
}

/// Coarse state for series and plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Starting,
    Running,
    Stalled,
    Down,
}

/// Something that happened during a step.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum JobEvent {
    /// The job processes again after being down since `down_since`.
    Resumed { at: f64, down_since: f64, config: JobConfig },
    /// A failure injected at `failed_at` is over: `recovery_s` as upstream measures it, or
    /// censored (`recovered == false`).
    Recovery { failed_at: f64, recovery_s: f64, recovered: bool },
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct FailureWatch {
    failed_at: f64,
    detect_at: f64,
    resumed: bool,
}

/// One second of the job as measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct JobSecond {
    /// Records offered during the second.
    pub offered: f64,
    /// Records processed during the second (replayed records included).
    pub processed: f64,
    /// Offered but not yet processed, at the end of the second.
    pub lag: f64,
    /// The p95 latency metric (None while no metrics are published).
    pub p95_ms: Option<f64>,
    /// Busy ratio of the bottleneck vertex, 0..=1.
    pub busy: f64,
    /// Back-pressured ratio of the sources, 0..=1.
    pub backpressure: f64,
    pub cpu_used: f64,
    pub memory_used_mb: f64,
    /// TaskManagers publishing metrics.
    pub reporting_tms: u32,
    /// Fraction of the second spent processing.
    pub running_frac: f64,
    pub state: Option<JobState>,
}

#[derive(Debug)]
pub(crate) struct JobSim {
    cfg: JobConfig,
    /// `pipeline.max-parallelism` (None: Flink's default).
    key_groups: Option<u32>,
    cap: f64,
    phase: Phase,
    /// Records consumed (a position in the offered stream).
    pos: f64,
    ckpt_pos: f64,
    next_ckpt: f64,
    replaying: bool,
    p95_obs: f64,
    last_p95: Option<f64>,
    failure: Option<FailureWatch>,
    /// In-place rescale waiting for new TaskManagers: (target, restart at).
    pending_rescale: Option<(JobConfig, f64)>,
    /// A failure to inject at this time.
    failure_at: Option<f64>,
    /// When the current down period began.
    down_since: f64,
    events: Vec<JobEvent>,
    /// Records processed over the job's life, replays included.
    processed_gross: f64,
    /// Position when the job first read.
    start_pos: f64,
    /// When the job (and its state) was created.
    born: f64,
}

impl JobSim {
    /// A job that is already running at `now` with nothing lagging (the production job at t = 0).
    pub fn running(
        cfg: JobConfig,
        key_groups: Option<u32>,
        now: f64,
        offered: &OfferedRate,
        w: &WorkloadParams,
    ) -> Self {
        let pos = offered.cum_at(now - w.fetch_delay_s);
        let mut j = Self::new(cfg, key_groups, Phase::Running, pos, now, w);
        j.next_ckpt = now + cfg.checkpoint_interval_ms as f64 / 1000.0;
        j.p95_obs = w.latency.base_ms;
        j
    }

    /// A job deployed at `now` that starts reading at the latest offset after `startup_s`.
    pub fn starting(cfg: JobConfig, now: f64, startup_s: f64, w: &WorkloadParams) -> Self {
        Self::new(cfg, None, Phase::Starting { until: now + startup_s }, 0.0, now, w)
    }

    fn new(
        cfg: JobConfig,
        key_groups: Option<u32>,
        phase: Phase,
        pos: f64,
        born: f64,
        w: &WorkloadParams,
    ) -> Self {
        JobSim {
            cfg,
            key_groups,
            cap: model::capacity_with_key_groups(&cfg, key_groups, w),
            phase,
            pos,
            ckpt_pos: pos,
            next_ckpt: f64::INFINITY,
            replaying: false,
            p95_obs: w.latency.base_ms,
            last_p95: None,
            failure: None,
            pending_rescale: None,
            failure_at: None,
            down_since: 0.0,
            events: Vec::new(),
            processed_gross: 0.0,
            start_pos: pos,
            born,
        }
    }

    pub fn config(&self) -> JobConfig {
        self.cfg
    }

    /// The configuration the job is running or moving to.
    pub fn target_config(&self) -> JobConfig {
        match (self.phase, self.pending_rescale) {
            (Phase::Down { then, .. }, _) => then,
            (_, Some((to, _))) => to,
            _ => self.cfg,
        }
    }

    pub fn capacity(&self) -> f64 {
        self.cap
    }

    pub fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }

    /// Down, starting, or waiting for TaskManagers of a rescale.
    pub fn is_reconfiguring(&self) -> bool {
        matches!(self.phase, Phase::Down { reconfig: true, .. } | Phase::Starting { .. })
            || self.pending_rescale.is_some()
    }

    pub fn failure_pending_or_active(&self) -> bool {
        self.failure_at.is_some() || self.failure.is_some()
    }

    pub fn next_checkpoint_at(&self) -> f64 {
        self.next_ckpt
    }

    pub fn position(&self) -> f64 {
        self.pos
    }

    pub fn start_position(&self) -> f64 {
        self.start_pos
    }

    pub fn processed_gross(&self) -> f64 {
        self.processed_gross
    }

    pub fn take_events(&mut self) -> Vec<JobEvent> {
        std::mem::take(&mut self.events)
    }

    /// Schedules a network failure at time `at` (within the next step). Ignored unless running.
    pub fn inject_failure(&mut self, at: f64) {
        if self.is_running() && self.failure.is_none() {
            self.failure_at = Some(at);
        }
    }

    /// Stop with a savepoint at `now` and come back as `to` after `downtime_s`.
    pub fn redeploy(&mut self, now: f64, to: JobConfig, downtime_s: f64) {
        self.abandon_failure(now);
        self.pending_rescale = None;
        if !matches!(self.phase, Phase::Down { .. }) {
            self.down_since = now;
        }
        // A savepoint can only be taken of a running job; otherwise the last checkpoint is used.
        let restore = if self.is_running() { Restore::Savepoint } else { Restore::Checkpoint };
        if restore == Restore::Savepoint {
            self.ckpt_pos = self.pos;
        }
        self.phase = Phase::Down { until: now + downtime_s, restore, then: to, reconfig: true };
    }

    /// Rescale through the adaptive scheduler: if new TaskManagers are needed the job keeps
    /// running until they registered (`wait_s`), then restarts from its last checkpoint.
    pub fn rescale_in_place(&mut self, now: f64, to: JobConfig, wait_s: f64, restart_s: f64) {
        if wait_s > 0.0 && self.is_running() {
            self.pending_rescale = Some((to, now + wait_s));
        } else {
            self.restart_into(now, to, restart_s);
        }
    }

    fn restart_into(&mut self, now: f64, to: JobConfig, restart_s: f64) {
        self.abandon_failure(now);
        self.pending_rescale = None;
        if !matches!(self.phase, Phase::Down { .. }) {
            self.down_since = now;
        }
        self.phase =
            Phase::Down { until: now + restart_s, restore: Restore::Checkpoint, then: to, reconfig: true };
    }

    /// A reconfiguration interrupts a failure's recovery: it is reported as not recovered.
    fn abandon_failure(&mut self, now: f64) {
        self.failure_at = None;
        if let Some(f) = self.failure.take() {
            self.events.push(JobEvent::Recovery {
                failed_at: f.failed_at,
                recovery_s: (now - f.failed_at).max(0.0),
                recovered: false,
            });
        }
    }

    /// Advances the job over `[t, t + 1)`.
    pub fn step(
        &mut self,
        t: u64,
        offered: &OfferedRate,
        common: &CommonParams,
        w: &WorkloadParams,
        restart_s: f64,
    ) -> JobSecond {
        let start = t as f64;
        let end = start + 1.0;
        let k = (self.cfg.checkpoint_interval_ms as f64 / 1000.0).max(0.1);
        let mut clock = start;
        let mut processed = 0.0;
        let mut running = 0.0;
        let mut guard = 0;
        while clock < end - 1e-12 {
            guard += 1;
            debug_assert!(guard < 10_000, "job step does not advance");
            if guard >= 10_000 {
                break;
            }
            match self.phase {
                Phase::Starting { until } => {
                    if until <= clock {
                        self.pos = offered.cum_at(clock);
                        self.start_pos = self.pos;
                        self.ckpt_pos = self.pos;
                        self.next_ckpt = clock + k;
                        self.phase = Phase::Running;
                    } else {
                        clock = until.min(end);
                    }
                }
                Phase::Stalled { detect_at, resume_not_before } => {
                    if detect_at <= clock {
                        let until = (clock + restart_s).max(resume_not_before);
                        self.down_since = self.failure.map_or(clock, |f| f.failed_at);
                        self.phase = Phase::Down {
                            until,
                            restore: Restore::Checkpoint,
                            then: self.cfg,
                            reconfig: false,
                        };
                    } else {
                        clock = detect_at.min(end);
                    }
                }
                Phase::Down { until, restore, then, .. } => {
                    if until <= clock {
                        if restore == Restore::Checkpoint {
                            self.pos = self.ckpt_pos;
                        }
                        self.cfg = then;
                        self.cap = model::capacity_with_key_groups(&then, self.key_groups, w);
                        self.ckpt_pos = self.pos;
                        self.next_ckpt = clock + (then.checkpoint_interval_ms as f64 / 1000.0).max(0.1);
                        self.replaying = true;
                        self.phase = Phase::Running;
                        self.last_p95 = None;
                        if let Some(f) = self.failure.as_mut() {
                            f.resumed = true;
                        }
                        self.events.push(JobEvent::Resumed {
                            at: clock,
                            down_since: self.down_since,
                            config: then,
                        });
                    } else {
                        clock = until.min(end);
                    }
                }
                Phase::Running => {
                    if let Some(at) = self.failure_at.filter(|&a| a <= clock) {
                        self.failure_at = None;
                        let detect_at = at + common.heartbeat_timeout_s;
                        self.failure = Some(FailureWatch { failed_at: at, detect_at, resumed: false });
                        self.phase =
                            Phase::Stalled { detect_at, resume_not_before: at + common.failure_duration_s };
                        continue;
                    }
                    if let Some((to, _)) = self.pending_rescale.filter(|&(_, a)| a <= clock) {
                        self.restart_into(clock, to, restart_s);
                        continue;
                    }
                    if self.next_ckpt <= clock {
                        self.ckpt_pos = self.pos;
                        self.next_ckpt += (self.cfg.checkpoint_interval_ms as f64 / 1000.0).max(0.1);
                        continue;
                    }
                    let mut until = end.min(self.next_ckpt);
                    if let Some(a) = self.failure_at {
                        until = until.min(a.max(clock));
                    }
                    if let Some((_, a)) = self.pending_rescale {
                        until = until.min(a.max(clock));
                    }
                    let dt = until - clock;
                    let rate = self.cap * if self.replaying { w.recovery.catchup_factor } else { 1.0 };
                    let available = (offered.cum_at(until - w.fetch_delay_s) - self.pos).max(0.0);
                    let n = available.min(rate * dt);
                    self.pos += n;
                    processed += n;
                    running += dt;
                    clock = until;
                }
            }
        }
        self.processed_gross += processed;
        self.finish_second(start, end, processed, running, offered, common, w)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_second(
        &mut self,
        start: f64,
        end: f64,
        processed: f64,
        running: f64,
        offered: &OfferedRate,
        common: &CommonParams,
        w: &WorkloadParams,
    ) -> JobSecond {
        let offered_now = offered.cum_at(end) - offered.cum_at(start);
        let started = !matches!(self.phase, Phase::Starting { .. });
        let lag = if started { (offered.cum_at(end) - self.pos).max(0.0) } else { 0.0 };
        let rate_now = offered.at(start as u64);
        let tms = self.cfg.taskmanagers();
        let mut out =
            JobSecond { offered: offered_now, processed, lag, running_frac: running, ..JobSecond::default() };

        // Catch-up and recovery: the replay is over once the backlog is back to its normal level.
        let normal_lag = rate_now * w.fetch_delay_s * 1.05 + 1.0;
        if self.replaying && self.is_running() && lag <= normal_lag {
            self.replaying = false;
            if let Some(f) = self.failure.filter(|f| f.resumed) {
                self.failure = None;
                let measured = end - f.failed_at + w.recovery.detector_margin_s;
                let censored = measured - common.heartbeat_timeout_s > common.recovery_search_s;
                self.events.push(JobEvent::Recovery {
                    failed_at: f.failed_at,
                    recovery_s: if censored {
                        common.recovery_censor_s
                    } else {
                        measured.min(common.recovery_censor_s)
                    },
                    recovered: !censored,
                });
            }
        }
        if let Some(f) = self.failure
            && end - f.detect_at > common.recovery_search_s
        {
            self.failure = None;
            self.events.push(JobEvent::Recovery {
                failed_at: f.failed_at,
                recovery_s: common.recovery_censor_s,
                recovered: false,
            });
        }

        let age_h = (end - self.born) / 3600.0;
        let idle = model::cpu_per_tm(&self.cfg, 0.0, age_h, w) * tms as f64;
        match self.phase {
            Phase::Running if running > 0.0 => {
                let busy = (processed / (self.cap * running)).clamp(0.0, 1.0);
                let head = offered.time_of(self.pos);
                let excess_s = (end - head - w.fetch_delay_s).max(0.0);
                let target = model::steady_latency_ms(busy, w) + 1000.0 * excess_s;
                let fresh = self.last_p95.is_none();
                self.p95_obs = if fresh || target >= self.p95_obs {
                    target
                } else {
                    self.p95_obs + w.latency.decay_per_s * (target - self.p95_obs)
                };
                // A full backlog with busy < 1 cannot happen; with a backlog the sources wait on
                // the bottleneck (back-pressure).
                let backlogged = lag > normal_lag * 2.0;
                out.busy = busy;
                out.backpressure = if backlogged { (1.0 - 0.3 * busy).clamp(0.0, 1.0) * busy } else { 0.0 };
                out.cpu_used = model::cpu_per_tm(&self.cfg, processed / running, age_h, w) * tms as f64;
                out.memory_used_mb = self.cfg.total_memory_mb() as f64 * (0.35 + 0.4 * busy);
                out.reporting_tms = tms;
                out.p95_ms = Some(self.p95_obs);
                out.state = Some(JobState::Running);
            }
            Phase::Running | Phase::Stalled { .. } => {
                // Frozen: the histogram keeps its last window, nothing new arrives.
                out.p95_ms = self.last_p95.or(Some(self.p95_obs));
                out.cpu_used = idle;
                out.memory_used_mb = self.cfg.total_memory_mb() as f64 * 0.35;
                out.reporting_tms = tms.saturating_sub(1);
                out.state = Some(JobState::Stalled);
            }
            Phase::Down { .. } => {
                // The pods are up (or starting) but the job is not processing.
                out.cpu_used = idle;
                out.state = Some(JobState::Down);
            }
            Phase::Starting { .. } => {
                out.state = Some(JobState::Starting);
            }
        }
        if out.p95_ms.is_some() {
            self.last_p95 = out.p95_ms;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::SimParams;

    fn setup(rate: f64, n: usize) -> (SimParams, WorkloadParams, OfferedRate) {
        let p = SimParams::default();
        let w = p.workload("cars").unwrap().clone();
        (p, w, OfferedRate::from_rates(vec![rate; n]))
    }

    #[test]
    fn events_are_conserved_through_failures_and_restarts() {
        let (p, w, o) = setup(50_000.0, 900);
        let cfg = JobConfig { parallelism: 8, ..JobConfig::STATIC_DEFAULT };
        let mut j = JobSim::running(cfg, None, 0.0, &o, &w);
        let p0 = j.position();
        let mut replayed_bound = 0.0;
        for t in 0..900u64 {
            if t == 100 {
                j.inject_failure(100.5);
            }
            if t == 400 {
                j.redeploy(400.0, JobConfig { parallelism: 12, ..cfg }, 60.0);
            }
            if t == 600 {
                j.rescale_in_place(600.0, JobConfig { parallelism: 4, ..cfg }, 0.0, 10.0);
            }
            let s = j.step(t, &o, &p.common, &w, w.recovery.restart_s);
            // produced = position + lag at every second.
            assert!((o.cum_at(t as f64 + 1.0) - (j.position() + s.lag)).abs() < 1e-6);
            assert!(s.lag >= -1e-9 && s.processed >= 0.0);
            replayed_bound += cfg.checkpoint_interval_ms as f64 / 1000.0 * 50_000.0 * 2.0;
        }
        // Net progress never exceeds what was processed (replays are processed twice).
        assert!(j.position() - p0 <= j.processed_gross() + 1e-6);
        assert!(j.processed_gross() - (j.position() - p0) < replayed_bound);
    }

    #[test]
    fn a_failure_costs_time_and_is_recovered() {
        let (p, w, o) = setup(30_000.0, 600);
        let mut j = JobSim::running(JobConfig::STATIC_DEFAULT, None, 0.0, &o, &w);
        let mut down = 0.0;
        let mut rec = None;
        for t in 0..600u64 {
            if t == 45 {
                // Five seconds before the checkpoint at 50 s, as upstream injects.
                j.inject_failure(45.0);
            }
            let s = j.step(t, &o, &p.common, &w, w.recovery.restart_s);
            down += 1.0 - s.running_frac;
            for e in j.take_events() {
                if let JobEvent::Recovery { recovery_s, recovered, .. } = e {
                    rec = Some((recovery_s, recovered));
                }
            }
        }
        assert!(down >= p.common.heartbeat_timeout_s, "down {down}");
        let (r, ok) = rec.expect("recovery measured");
        assert!(ok);
        let expect = model::recovery_s(&JobConfig::STATIC_DEFAULT, 30_000.0, &p.common, &w);
        assert!((r - expect).abs() <= 6.0, "simulated {r} vs closed form {expect}");
    }
}

//! The per-job controller: a deterministic state machine in the style of `quinn-proto`.
//!
//! Inputs (`handle_*`), each with the current time passed in:
//! - [`Controller::handle_observation`]: one aggregated second of the production job;
//! - [`Controller::handle_outcome`]: the result of an action the adapter carried out;
//! - [`Controller::handle_timeout`]: called when [`Controller::poll_timeout`]'s instant is reached.
//!
//! Outputs, drained by the adapter after every input, in this order:
//! - [`Controller::poll_action`]: reconfigurations, profiling runs, recommendations;
//! - [`Controller::poll_event`]: decisions, forecasts and samples to persist and expose;
//! - [`Controller::poll_timeout`]: when to call `handle_timeout` next.
//!
//! The loop is Demeter's (profile, optimise, execute) with these differences from upstream:
//! the production job's own observations train the models; profiling stops when the model is
//! confident enough; a switch must save at least `min_saving` unless the current configuration is
//! predicted to fail, and is never to a configuration scored worse; reconfigurations are
//! rate-limited; and a sustained overload triggers an immediate scale-up between loops.
//!
//! **Invariants.** No action targets a configuration outside the search space or the quota. At most
//! one reconfiguration is in flight. In `recommend-only` mode no `Reconfigure` or `StartProfiling`
//! action is ever emitted. Time only moves through the `now` arguments: a clock that jumps back is
//! ignored (the controller keeps the latest time it saw), and a jump forward fires each due timer
//! once, not once per missed period.

use crate::decide::{self, CurrentHealth, DecideConfig, Decision};
use crate::forecast::{Forecast, ForecastConfig, WorkloadForecaster};
use crate::mobo::{self, ProfilingPolicy};
use crate::obs::{JobObservation, PerfSample, RecoveryTime, SampleOrigin};
use crate::perf::{PerfModel, PerfModelConfig};
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace, UnixMillis};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// Whether decisions are applied or only recommended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Emit `Reconfigure` and `StartProfiling` actions.
    Apply,
    /// Emit only `Recommend` actions; never touch the job.
    #[default]
    RecommendOnly,
}

/// How a reconfiguration is carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconfigKind {
    /// Parallelism-only change through the adaptive scheduler: short pause, no redeploy.
    InPlace,
    /// Stop with savepoint and redeploy with new resources.
    Redeploy,
}

/// Settings of one controller. Every field has a default; see `validate`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    pub mode: Mode,
    pub search_space: SearchSpace,
    pub quota: Quota,
    pub constraints: Constraints,
    /// Period of the optimisation loop (upstream: 600 s).
    #[serde(with = "humantime_secs")]
    pub loop_interval: Duration,
    /// At most this many reconfigurations in any sliding hour (emergency scale-ups included).
    pub max_reconfigs_per_hour: u32,
    /// No planned reconfiguration sooner than this after the previous one.
    #[serde(with = "humantime_secs")]
    pub min_reconfig_spacing: Duration,
    /// An overload must last this long before an emergency scale-up.
    #[serde(with = "humantime_secs")]
    pub overload_grace: Duration,
    /// Length of the windows the production job's observations are averaged over to become
    /// training samples.
    #[serde(with = "humantime_secs")]
    pub sample_window: Duration,
    /// Observations right after a reconfiguration or a failure are not used for training.
    #[serde(with = "humantime_secs")]
    pub settle_time: Duration,
    pub forecast: ForecastConfig,
    pub model: PerfModelConfig,
    pub decide: DecideConfig,
    pub profiling: ProfilingPolicy,
    /// Whether to run profiling runs at all (the adapter must support them).
    pub profiling_enabled: bool,
    /// Seed of every random choice the controller makes.
    pub seed: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            mode: Mode::RecommendOnly,
            search_space: SearchSpace::default(),
            quota: Quota::default(),
            constraints: Constraints::default(),
            loop_interval: Duration::from_secs(600),
            max_reconfigs_per_hour: 2,
            min_reconfig_spacing: Duration::from_secs(600),
            overload_grace: Duration::from_secs(60),
            sample_window: Duration::from_secs(60),
            settle_time: Duration::from_secs(120),
            forecast: ForecastConfig::default(),
            model: PerfModelConfig::default(),
            decide: DecideConfig::default(),
            profiling: ProfilingPolicy::default(),
            profiling_enabled: true,
            seed: 0x5eed_d3e7,
        }
    }
}

mod humantime_secs {
    //! Durations as humantime strings (`"10m"`, `"90s"`) in configuration files.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// A reconfiguration the adapter must carry out, then report with [`Outcome`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reconfiguration {
    /// Unique per controller, increasing; the adapter persists it to apply each id at most once.
    pub id: u64,
    pub from: JobConfig,
    pub to: JobConfig,
    pub kind: ReconfigKind,
    pub decision: Decision,
}

/// A short-lived copy of the job to measure a candidate configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfilingRun {
    pub run_id: u64,
    pub config: JobConfig,
    /// Total lifetime of the run; measurements are taken over its last `sample_window`.
    pub duration_s: u32,
    /// Inject a failure at this age and measure the recovery time.
    pub inject_failure_after_s: Option<u32>,
}

/// What the controller asks its adapter to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Reconfigure(Reconfiguration),
    StartProfiling(ProfilingRun),
    StopProfiling {
        run_id: u64,
    },
    /// `recommend-only` mode: what would have been applied.
    Recommend(Decision),
}

/// What the adapter reports back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    ReconfigApplied {
        id: u64,
        downtime_s: f64,
    },
    /// The reconfiguration did not take; the job runs `running` (the old configuration after a
    /// rollback).
    ReconfigFailed {
        id: u64,
        running: JobConfig,
        reason: String,
    },
    ProfileFinished {
        run_id: u64,
        sample: PerfSample,
    },
    ProfileFailed {
        run_id: u64,
        reason: String,
    },
    /// The job's configuration changed outside the controller (a user edit, a restart).
    ExternalChange {
        config: JobConfig,
    },
}

/// A record of one decision, for the API, the store and the metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at: UnixMillis,
    pub current: JobConfig,
    pub decision: Decision,
    pub forecast_peak: f64,
    /// Whether an action followed (`false` when held by rate limits or recommend-only mode).
    pub acted: bool,
    /// Why no action followed, when `acted` is false and the decision was to switch.
    pub held_by: Option<String>,
    pub emergency: bool,
}

/// Things worth persisting or exposing.
// Events are few (a handful per decision loop) and drained at once, so their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CoreEvent {
    Decision(DecisionRecord),
    Forecast(Forecast),
    Sample(PerfSample),
    ProfilingStopped {
        reason: String,
    },
    /// A reconfiguration finished (applied or failed), with the configuration now running.
    Reconfigured {
        id: u64,
        running: JobConfig,
        downtime_s: f64,
        ok: bool,
    },
}

/// Counters exposed as metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerStats {
    pub decisions: u64,
    pub reconfigurations: u64,
    pub emergency_scale_ups: u64,
    pub profiling_runs: u64,
    pub profiling_failures: u64,
    pub rejected_observations: u64,
    pub held_by_rate_limit: u64,
}

/// A reconfiguration that was emitted and has no outcome yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub reconfiguration: Reconfiguration,
    pub since: UnixMillis,
}

/// A profiling run that was started and has no outcome yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningProfile {
    pub run: ProfilingRun,
    pub since: UnixMillis,
}

/// Averages of the production job's observations over one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Window {
    start: Option<UnixMillis>,
    n: u32,
    offered: f64,
    throughput: f64,
    p95: f64,
    n_p95: u32,
    busy: f64,
}

impl Window {
    fn add(&mut self, o: &JobObservation) {
        self.start.get_or_insert(o.at);
        self.n += 1;
        self.offered += o.offered_rate;
        self.throughput += o.throughput;
        self.busy += o.busy_ratio;
        if let Some(p) = o.p95_latency_ms {
            self.p95 += p;
            self.n_p95 += 1;
        }
    }
}

/// A failure of the production job being watched until it recovers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Disturbance {
    since: UnixMillis,
    lag_before: f64,
    before: JobObservation,
}

/// Everything the controller must keep across a restart. Serialisable as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControllerState {
    pub now: UnixMillis,
    pub current: JobConfig,
    pub forecaster: WorkloadForecaster,
    pub samples: Vec<PerfSample>,
    pub next_decision: UnixMillis,
    pub settle_until: UnixMillis,
    pub reconfig_history: VecDeque<UnixMillis>,
    pub in_flight: Option<InFlight>,
    pub profiling: Vec<RunningProfile>,
    pub profiling_stopped: Option<String>,
    pub next_id: u64,
    pub recent_decisions: VecDeque<DecisionRecord>,
    pub last_forecast: Option<Forecast>,
    pub stats: ControllerStats,
    window: Window,
    recent: VecDeque<JobObservation>,
    overload_since: Option<UnixMillis>,
    disturbance: Option<Disturbance>,
}

/// What the API shows about one job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ControllerStatus {
    pub mode: Mode,
    pub current: JobConfig,
    pub current_cpu: f64,
    pub current_memory_mb: u64,
    pub last_observation: Option<JobObservation>,
    pub forecast: Option<Forecast>,
    pub model: ModelSummary,
    pub in_flight: Option<InFlight>,
    pub profiling: Vec<RunningProfile>,
    pub profiling_stopped: Option<String>,
    pub recent_decisions: Vec<DecisionRecord>,
    pub stats: ControllerStats,
}

/// A short description of the performance model.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelSummary {
    pub samples: usize,
    pub profiling_samples: usize,
    pub production_samples: usize,
    pub recovery_samples: usize,
}

/// How many decisions the status keeps.
const RECENT_DECISIONS: usize = 20;
/// How many seconds of observations the controller keeps for its overload and failure checks.
const RECENT_SECONDS: usize = 600;
/// Recovery times are censored here, as upstream Demeter measures them.
const RECOVERY_CENSOR_S: f64 = 360.0;

/// The per-job controller. See the module documentation.
#[derive(Debug)]
pub struct Controller {
    cfg: ControllerConfig,
    candidates: Vec<JobConfig>,
    st: ControllerState,
    model: Option<PerfModel>,
    model_dirty: bool,
    actions: VecDeque<Action>,
    events: VecDeque<CoreEvent>,
}

impl ControllerConfig {
    /// Checks every setting, collecting all errors.
    pub fn validate(&self) -> Result<(), demeter_common::ValidationErrors> {
        let mut errs = demeter_common::ValidationErrors::default();
        errs.extend(self.search_space.validate());
        errs.extend(self.quota.validate());
        errs.extend(self.constraints.validate());
        let secs = |d: Duration| d.as_secs();
        if !(30..=86_400).contains(&secs(self.loop_interval)) {
            errs.push("loop_interval", humantime::format_duration(self.loop_interval), "30s..=24h");
        }
        if !(1..=60).contains(&self.max_reconfigs_per_hour) {
            errs.push("max_reconfigs_per_hour", self.max_reconfigs_per_hour, "1..=60");
        }
        if !(10..=3_600).contains(&secs(self.sample_window)) {
            errs.push("sample_window", humantime::format_duration(self.sample_window), "10s..=1h");
        }
        if secs(self.overload_grace) > 3_600 {
            errs.push("overload_grace", humantime::format_duration(self.overload_grace), "0s..=1h");
        }
        if errs.is_empty() && self.search_space.candidates(&self.quota).is_empty() {
            errs.push(
                "quota",
                format!("{:?}", self.quota),
                "a quota that admits at least one configuration of the search space",
            );
        }
        errs.into_result()
    }
}

impl Controller {
    /// A controller for a job that currently runs `current`.
    pub fn new(
        cfg: ControllerConfig,
        current: JobConfig,
        now: UnixMillis,
    ) -> Result<Self, demeter_common::ValidationErrors> {
        cfg.validate()?;
        let st = ControllerState {
            now,
            current,
            forecaster: WorkloadForecaster::new(cfg.forecast.clone()),
            samples: Vec::new(),
            next_decision: now.plus(cfg.loop_interval),
            settle_until: now.plus(cfg.settle_time),
            reconfig_history: VecDeque::new(),
            in_flight: None,
            profiling: Vec::new(),
            profiling_stopped: None,
            next_id: 1,
            recent_decisions: VecDeque::new(),
            last_forecast: None,
            stats: ControllerStats::default(),
            window: Window::default(),
            recent: VecDeque::new(),
            overload_since: None,
            disturbance: None,
        };
        Ok(Self::from_parts(cfg, st))
    }

    fn from_parts(cfg: ControllerConfig, st: ControllerState) -> Self {
        let candidates = cfg.search_space.candidates(&cfg.quota);
        Controller {
            cfg,
            candidates,
            st,
            model: None,
            model_dirty: true,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Resumes from a snapshot taken with [`Controller::snapshot`]. The performance model is
    /// refitted from the stored samples on the next decision.
    pub fn restore(cfg: ControllerConfig, state: ControllerState) -> Self {
        Self::from_parts(cfg, state)
    }

    pub fn snapshot(&self) -> ControllerState {
        self.st.clone()
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    pub fn current(&self) -> JobConfig {
        self.st.current
    }

    pub fn stats(&self) -> &ControllerStats {
        &self.st.stats
    }

    pub fn last_forecast(&self) -> Option<&Forecast> {
        self.st.last_forecast.as_ref()
    }

    pub fn samples(&self) -> &[PerfSample] {
        &self.st.samples
    }

    pub fn status(&self) -> ControllerStatus {
        let s = &self.st.samples;
        ControllerStatus {
            mode: self.cfg.mode,
            current: self.st.current,
            current_cpu: self.st.current.total_cpu(),
            current_memory_mb: self.st.current.total_memory_mb(),
            last_observation: self.st.recent.back().cloned(),
            forecast: self.st.last_forecast.clone(),
            model: ModelSummary {
                samples: s.len(),
                profiling_samples: s.iter().filter(|x| x.origin == SampleOrigin::Profiling).count(),
                production_samples: s.iter().filter(|x| x.origin == SampleOrigin::Production).count(),
                recovery_samples: s.iter().filter(|x| x.recovery.is_some()).count(),
            },
            in_flight: self.st.in_flight.clone(),
            profiling: self.st.profiling.clone(),
            profiling_stopped: self.st.profiling_stopped.clone(),
            recent_decisions: self.st.recent_decisions.iter().cloned().collect(),
            stats: self.st.stats.clone(),
        }
    }

    /// Moves the controller's clock; a clock that goes back is ignored.
    fn tick(&mut self, now: UnixMillis) -> UnixMillis {
        if now > self.st.now {
            self.st.now = now;
        }
        self.st.now
    }

    /// One aggregated second of the production job.
    pub fn handle_observation(&mut self, now: UnixMillis, obs: &JobObservation) {
        let now = self.tick(now);
        let valid = [obs.offered_rate, obs.throughput, obs.lag, obs.cpu_cores_used, obs.memory_used_mb]
            .iter()
            .all(|x| x.is_finite() && *x >= 0.0)
            && obs.p95_latency_ms.is_none_or(|p| p.is_finite() && p >= 0.0);
        if !valid {
            self.st.stats.rejected_observations += 1;
            return;
        }
        self.st.recent.push_back(obs.clone());
        while self.st.recent.len() > RECENT_SECONDS {
            self.st.recent.pop_front();
        }
        let reconfiguring = self.st.in_flight.is_some();
        if !reconfiguring {
            self.st.forecaster.observe(obs.at.0.div_euclid(1000), obs.offered_rate);
        }
        self.watch_failures(now, obs, reconfiguring);
        if reconfiguring || now < self.st.settle_until || self.st.disturbance.is_some() {
            self.st.window = Window::default();
            self.st.overload_since = None;
            return;
        }
        self.collect_window(now, obs);
        self.watch_overload(now, obs);
    }

    /// Detects a failure of the production job (throughput collapses while input keeps coming)
    /// and measures how long it takes to recover, as a training sample for the recovery model.
    fn watch_failures(&mut self, now: UnixMillis, obs: &JobObservation, reconfiguring: bool) {
        if reconfiguring {
            self.st.disturbance = None;
            return;
        }
        match self.st.disturbance.clone() {
            None => {
                let n = self.st.recent.len();
                if n < 4 || now < self.st.settle_until {
                    return;
                }
                // Three consecutive seconds below 10 % of the input.
                let collapsed =
                    self.st.recent.iter().skip(n - 3).all(|o| o.throughput < 0.1 * o.offered_rate.max(1.0));
                if collapsed {
                    let before = self.st.recent[n - 4].clone();
                    self.st.disturbance =
                        Some(Disturbance { since: self.st.recent[n - 3].at, lag_before: before.lag, before });
                }
            }
            Some(d) => {
                let elapsed = now.since(d.since).as_secs_f64();
                let recovered = obs.throughput >= 0.9 * obs.offered_rate
                    && obs.lag <= d.lag_before + 5.0 * d.before.offered_rate.max(100.0);
                if recovered || elapsed >= RECOVERY_CENSOR_S {
                    let recovery = if recovered {
                        RecoveryTime::Measured(elapsed)
                    } else {
                        RecoveryTime::NotRecovered(RECOVERY_CENSOR_S)
                    };
                    let b = &d.before;
                    let sample = PerfSample {
                        config: self.st.current,
                        at: now,
                        origin: SampleOrigin::Production,
                        offered_rate: b.offered_rate,
                        throughput: b.throughput,
                        p95_latency_ms: b.p95_latency_ms.unwrap_or(0.0),
                        busy_ratio: Some(b.busy_ratio),
                        recovery: Some(recovery),
                    };
                    self.st.disturbance = None;
                    self.st.settle_until = now.plus(Duration::from_secs(30));
                    if b.p95_latency_ms.is_some() {
                        self.add_sample(sample);
                    }
                }
            }
        }
    }

    fn collect_window(&mut self, now: UnixMillis, obs: &JobObservation) {
        self.st.window.add(obs);
        let w = &self.st.window;
        let full = w.start.is_some_and(|s| now.since(s) >= self.cfg.sample_window);
        if !full {
            return;
        }
        let w = std::mem::take(&mut self.st.window);
        if w.n_p95 == 0 || w.n == 0 {
            return;
        }
        let n = w.n as f64;
        let sample = PerfSample {
            config: self.st.current,
            at: now,
            origin: SampleOrigin::Production,
            offered_rate: w.offered / n,
            throughput: w.throughput / n,
            p95_latency_ms: w.p95 / w.n_p95 as f64,
            busy_ratio: Some((w.busy / n).clamp(0.0, 1.0)),
            recovery: None,
        };
        if sample.throughput > 0.0 {
            self.add_sample(sample);
        }
    }

    fn add_sample(&mut self, sample: PerfSample) {
        if !sample.is_valid() {
            self.st.stats.rejected_observations += 1;
            return;
        }
        self.events.push_back(CoreEvent::Sample(sample.clone()));
        self.st.samples.push(sample);
        self.trim_samples();
        self.model_dirty = true;
    }

    /// Bounds the training set: every profiling and recovery sample up to half the budget, the
    /// newest production samples for the rest.
    fn trim_samples(&mut self) {
        let max = self.cfg.model.max_training_samples.max(10);
        if self.st.samples.len() <= max {
            return;
        }
        let keep_special = max / 2;
        let special: Vec<usize> = (0..self.st.samples.len())
            .filter(|&i| {
                let s = &self.st.samples[i];
                s.origin == SampleOrigin::Profiling || s.recovery.is_some()
            })
            .collect();
        let drop_special: std::collections::HashSet<usize> =
            special.iter().take(special.len().saturating_sub(keep_special)).copied().collect();
        let mut kept: Vec<PerfSample> = Vec::with_capacity(max);
        let mut production_budget = max - special.len().min(keep_special);
        for (i, s) in self.st.samples.iter().enumerate().rev() {
            let is_special = s.origin == SampleOrigin::Profiling || s.recovery.is_some();
            if is_special {
                if !drop_special.contains(&i) {
                    kept.push(s.clone());
                }
            } else if production_budget > 0 {
                production_budget -= 1;
                kept.push(s.clone());
            }
        }
        kept.reverse();
        self.st.samples = kept;
    }

    /// Sustained overload: the backlog grows while the bottleneck is busy, or latency stays above
    /// its bound. After `overload_grace`, decide at once instead of waiting for the loop.
    fn watch_overload(&mut self, now: UnixMillis, obs: &JobObservation) {
        let n = self.st.recent.len();
        let lag_growing = n >= 10 && obs.lag > self.st.recent[n - 10].lag + 0.5 * obs.offered_rate.max(1.0);
        let saturated = obs.busy_ratio >= 0.85 || obs.backpressure_ratio >= 0.5;
        let latency_violated = obs.p95_latency_ms.is_some_and(|p| p > self.cfg.constraints.latency_p95_ms);
        let overloaded = (lag_growing && saturated) || latency_violated;
        if !overloaded {
            self.st.overload_since = None;
            return;
        }
        let since = *self.st.overload_since.get_or_insert(now);
        if now.since(since) >= self.cfg.overload_grace {
            self.st.overload_since = None;
            self.decide_now(now, true, true);
        }
    }

    pub fn handle_outcome(&mut self, now: UnixMillis, outcome: Outcome) {
        let now = self.tick(now);
        match outcome {
            Outcome::ReconfigApplied { id, downtime_s } => {
                if self.st.in_flight.as_ref().is_some_and(|f| f.reconfiguration.id == id) {
                    let f = self.st.in_flight.take().expect("checked above");
                    self.st.current = f.reconfiguration.to;
                    self.st.stats.reconfigurations += 1;
                    self.after_change(now);
                    self.events.push_back(CoreEvent::Reconfigured {
                        id,
                        running: self.st.current,
                        downtime_s,
                        ok: true,
                    });
                }
            }
            Outcome::ReconfigFailed { id, running, reason } => {
                if self.st.in_flight.as_ref().is_some_and(|f| f.reconfiguration.id == id) {
                    self.st.in_flight = None;
                    self.st.current = running;
                    self.after_change(now);
                    self.events.push_back(CoreEvent::Reconfigured {
                        id,
                        running,
                        downtime_s: 0.0,
                        ok: false,
                    });
                    let _ = reason;
                }
            }
            Outcome::ProfileFinished { run_id, sample } => {
                if self.take_profile(run_id) {
                    self.add_sample(PerfSample { origin: SampleOrigin::Profiling, ..sample });
                }
            }
            Outcome::ProfileFailed { run_id, .. } => {
                if self.take_profile(run_id) {
                    self.st.stats.profiling_failures += 1;
                }
            }
            Outcome::ExternalChange { config } => {
                if config != self.st.current {
                    self.st.current = config;
                    self.after_change(now);
                }
            }
        }
    }

    fn after_change(&mut self, now: UnixMillis) {
        self.st.settle_until = now.plus(self.cfg.settle_time);
        self.st.window = Window::default();
        self.st.overload_since = None;
        self.st.disturbance = None;
    }

    fn take_profile(&mut self, run_id: u64) -> bool {
        let before = self.st.profiling.len();
        self.st.profiling.retain(|p| p.run.run_id != run_id);
        before != self.st.profiling.len()
    }

    /// The next instant at which [`Controller::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        let mut t = self.st.next_decision;
        for p in &self.st.profiling {
            t = t.min(self.profile_deadline(p));
        }
        Some(t)
    }

    fn profile_deadline(&self, p: &RunningProfile) -> UnixMillis {
        // A run that has not reported long after its planned end is given up on.
        p.since.plus(Duration::from_secs(p.run.duration_s as u64 + RECOVERY_CENSOR_S as u64 + 300))
    }

    pub fn handle_timeout(&mut self, now: UnixMillis) {
        let now = self.tick(now);
        let overdue: Vec<u64> = self
            .st
            .profiling
            .iter()
            .filter(|p| self.profile_deadline(p) <= now)
            .map(|p| p.run.run_id)
            .collect();
        for run_id in overdue {
            self.take_profile(run_id);
            self.st.stats.profiling_failures += 1;
            self.actions.push_back(Action::StopProfiling { run_id });
        }
        if now >= self.st.next_decision {
            // A jump forward fires once; the next loop is one interval from now.
            self.st.next_decision = now.plus(self.cfg.loop_interval);
            self.decide_now(now, false, false);
        }
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    fn refit(&mut self) {
        if self.model_dirty || self.model.is_none() {
            // Warm start from the previous hyperparameters: a few optimiser steps instead of a
            // cold fit (about half the cost at 500 samples).
            self.model = Some(PerfModel::fit_warm(&self.st.samples, &self.cfg.model, self.model.as_ref()));
            self.model_dirty = false;
        }
    }

    fn health(&self) -> CurrentHealth {
        let last = self.st.recent.back();
        let n = self.st.recent.len();
        let lagging = n >= 60 && {
            let old = &self.st.recent[n - 60];
            let new = &self.st.recent[n - 1];
            new.lag > old.lag + 0.5 * new.offered_rate.max(1.0) && new.busy_ratio >= 0.85
        };
        let observed_p95_ms = last.and_then(|o| o.p95_latency_ms);
        CurrentHealth {
            lagging,
            latency_violated: observed_p95_ms.is_some_and(|p| p > self.cfg.constraints.latency_p95_ms),
            observed_p95_ms,
        }
    }

    /// The rate a decision must provision for: the forecast's peak with its upper band, never
    /// below what the job is being offered right now, plus what it takes to drain the backlog.
    fn provisioning_rate(&mut self, now: UnixMillis, emergency: bool) -> f64 {
        let forecast = self.st.forecaster.forecast(now.0.div_euclid(1000));
        if let Some(f) = &forecast {
            self.events.push_back(CoreEvent::Forecast(f.clone()));
        }
        self.st.last_forecast = forecast.clone();
        let recent_peak = self.st.recent.iter().rev().take(120).map(|o| o.offered_rate).fold(0.0, f64::max);
        let lag = self.st.recent.back().map_or(0.0, |o| o.lag);
        let drain = lag / self.cfg.decide.catch_up_s.max(1.0);
        let base = match forecast {
            Some(f) if !emergency => f.decision_peak.max(recent_peak),
            Some(f) => f.decision_peak.max(recent_peak * 1.1),
            None => recent_peak * 1.2,
        };
        base + drain
    }

    /// A dry run: what the controller would decide now. Uses no rate-limit budget and emits
    /// nothing.
    pub fn recommend(&mut self, now: UnixMillis) -> DecisionRecord {
        let now = self.tick(now);
        self.refit();
        let saved = self.events.len();
        let peak = self.provisioning_rate(now, false);
        self.events.truncate(saved);
        let decision = self.run_decide(peak);
        DecisionRecord {
            at: now,
            current: self.st.current,
            decision,
            forecast_peak: peak,
            acted: false,
            held_by: Some("dry run".into()),
            emergency: false,
        }
    }

    fn run_decide(&self, peak: f64) -> Decision {
        let model = self.model.as_ref().expect("refit() runs before every decision");
        decide::decide(
            model,
            &self.candidates,
            &self.st.current,
            peak,
            self.health(),
            &self.cfg.constraints,
            &self.cfg.quota,
            &self.cfg.search_space,
            &self.cfg.decide,
        )
    }

    fn rate_limited(&self, now: UnixMillis, emergency: bool) -> Option<String> {
        let hour_ago = UnixMillis(now.0 - 3_600_000);
        let in_last_hour = self.st.reconfig_history.iter().filter(|t| **t > hour_ago).count() as u32;
        if in_last_hour >= self.cfg.max_reconfigs_per_hour && !emergency {
            return Some(format!("rate limit: {in_last_hour} reconfigurations in the last hour"));
        }
        let spacing = if emergency { self.cfg.settle_time } else { self.cfg.min_reconfig_spacing };
        if let Some(last) = self.st.reconfig_history.back()
            && now.since(*last) < spacing
        {
            return Some(format!("spacing: last reconfiguration {} s ago", now.since(*last).as_secs()));
        }
        None
    }

    fn decide_now(&mut self, now: UnixMillis, emergency: bool, from_overload: bool) {
        if self.st.in_flight.is_some() {
            return;
        }
        self.refit();
        let peak = self.provisioning_rate(now, emergency);
        let decision = self.run_decide(peak);
        self.st.stats.decisions += 1;
        let mut held_by = None;
        let mut acted = false;
        if decision.switch && decision.target != self.st.current {
            let fails = decision.reason.is_urgent();
            if let Some(why) = self.rate_limited(now, emergency || fails) {
                self.st.stats.held_by_rate_limit += 1;
                held_by = Some(why);
            } else if self.cfg.mode == Mode::RecommendOnly {
                held_by = Some("recommend-only mode".into());
                self.actions.push_back(Action::Recommend(decision.clone()));
            } else {
                let kind = if self.st.current.parallelism_only_change(&decision.target) {
                    ReconfigKind::InPlace
                } else {
                    ReconfigKind::Redeploy
                };
                let r = Reconfiguration {
                    id: self.next_id(),
                    from: self.st.current,
                    to: decision.target,
                    kind,
                    decision: decision.clone(),
                };
                debug_assert!(self.cfg.search_space.contains(&r.to) && self.cfg.quota.admits(&r.to));
                self.st.reconfig_history.push_back(now);
                while self.st.reconfig_history.len() > 100 {
                    self.st.reconfig_history.pop_front();
                }
                if from_overload {
                    self.st.stats.emergency_scale_ups += 1;
                }
                self.st.in_flight = Some(InFlight { reconfiguration: r.clone(), since: now });
                self.actions.push_back(Action::Reconfigure(r));
                acted = true;
            }
        }
        let record = DecisionRecord {
            at: now,
            current: self.st.current,
            decision,
            forecast_peak: peak,
            acted,
            held_by,
            emergency,
        };
        self.st.recent_decisions.push_back(record.clone());
        while self.st.recent_decisions.len() > RECENT_DECISIONS {
            self.st.recent_decisions.pop_front();
        }
        self.events.push_back(CoreEvent::Decision(record));
        if !emergency {
            self.plan_profiling(now);
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.st.next_id;
        self.st.next_id += 1;
        id
    }

    /// Starts profiling runs the acquisition asks for, within the budget, until the stopping rule
    /// says the model is confident enough.
    fn plan_profiling(&mut self, now: UnixMillis) {
        if !self.cfg.profiling_enabled || self.cfg.mode != Mode::Apply || self.st.in_flight.is_some() {
            return;
        }
        let free = self.cfg.profiling.max_concurrent.saturating_sub(self.st.profiling.len());
        if free == 0 {
            return;
        }
        let rate = self.st.recent.back().map_or(0.0, |o| o.offered_rate);
        if rate <= 0.0 {
            return;
        }
        let model = self.model.as_ref().expect("refit() ran in decide_now");
        let seed = self.cfg.seed ^ now.0 as u64;
        let plan = mobo::suggest_profiles(
            model,
            &self.candidates,
            &self.st.samples,
            rate,
            &self.cfg.constraints,
            &self.cfg.profiling,
            seed,
        );
        if plan.stop {
            if self.st.profiling_stopped.is_none() {
                self.events.push_back(CoreEvent::ProfilingStopped { reason: plan.reason.clone() });
            }
            self.st.profiling_stopped = Some(plan.reason);
            return;
        }
        self.st.profiling_stopped = None;
        let running: Vec<JobConfig> = self.st.profiling.iter().map(|p| p.run.config).collect();
        for (config, _acq) in plan.configs.into_iter().filter(|(c, _)| !running.contains(c)).take(free) {
            let run = ProfilingRun {
                run_id: self.next_id(),
                config,
                duration_s: self.cfg.profiling.duration_s,
                inject_failure_after_s: self.cfg.profiling.inject_failure_after_s,
            };
            self.st.stats.profiling_runs += 1;
            self.st.profiling.push(RunningProfile { run: run.clone(), since: now });
            self.actions.push_back(Action::StartProfiling(run));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn obs(t_s: i64, rate: f64, throughput: f64, lag: f64, busy: f64, p95: f64) -> JobObservation {
        JobObservation {
            at: UnixMillis(T0 + t_s * 1000),
            offered_rate: rate,
            throughput,
            lag,
            p95_latency_ms: Some(p95),
            busy_ratio: busy,
            backpressure_ratio: 0.0,
            cpu_cores_used: 4.0,
            memory_used_mb: 8000.0,
            taskmanagers: 24,
        }
    }

    /// Drives `c` for `secs` seconds of a healthy job at `rate`, draining its outputs.
    fn run_healthy(c: &mut Controller, from_s: i64, secs: i64, rate: f64, out: &mut Vec<Action>) {
        for t in from_s..from_s + secs {
            let now = UnixMillis(T0 + t * 1000);
            c.handle_observation(now, &obs(t, rate, rate, 0.0, 0.3, 900.0));
            if c.poll_timeout().is_some_and(|d| d <= now) {
                c.handle_timeout(now);
            }
            while let Some(a) = c.poll_action() {
                out.push(a);
            }
            while c.poll_event().is_some() {}
        }
    }

    #[test]
    fn recommend_only_never_touches_the_job() {
        let cfg = ControllerConfig { mode: Mode::RecommendOnly, ..Default::default() };
        let mut c = Controller::new(cfg, JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap();
        let mut actions = Vec::new();
        run_healthy(&mut c, 0, 3 * 3600, 20_000.0, &mut actions);
        assert!(c.stats().decisions >= 15, "decisions: {}", c.stats().decisions);
        assert!(
            actions.iter().all(|a| matches!(a, Action::Recommend(_))),
            "recommend-only emitted {actions:?}"
        );
        assert_eq!(c.current(), JobConfig::STATIC_DEFAULT);
    }

    #[test]
    fn invalid_observations_are_counted_and_ignored() {
        let mut c =
            Controller::new(ControllerConfig::default(), JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap();
        let mut o = obs(1, f64::NAN, 10.0, 0.0, 0.3, 900.0);
        c.handle_observation(o.at, &o);
        o.offered_rate = -5.0;
        c.handle_observation(o.at, &o);
        o.offered_rate = 10.0;
        o.p95_latency_ms = Some(f64::INFINITY);
        c.handle_observation(o.at, &o);
        assert_eq!(c.stats().rejected_observations, 3);
        assert!(c.status().last_observation.is_none());
    }

    #[test]
    fn invalid_config_names_the_key() {
        let cfg = ControllerConfig { max_reconfigs_per_hour: 0, ..Default::default() };
        let e = Controller::new(cfg, JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap_err();
        assert_eq!(e.0[0].key, "max_reconfigs_per_hour");
        let cfg = ControllerConfig {
            quota: Quota { max_total_cpu: 0.5, max_total_memory_mb: 1024 },
            ..Default::default()
        };
        let e = Controller::new(cfg, JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap_err();
        assert_eq!(e.0[0].key, "quota");
    }

    #[test]
    fn clock_jumps_fire_each_timer_once() {
        let mut c =
            Controller::new(ControllerConfig::default(), JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap();
        let mut actions = Vec::new();
        run_healthy(&mut c, 0, 1200, 20_000.0, &mut actions);
        let before = c.stats().decisions;
        // Forward by ten hours: one decision, not sixty.
        let later = UnixMillis(T0 + 36_000_000);
        c.handle_timeout(later);
        assert_eq!(c.stats().decisions, before + 1);
        c.handle_timeout(later);
        assert_eq!(c.stats().decisions, before + 1);
        // Back by an hour: ignored, no decision until the next loop after the latest time seen.
        c.handle_timeout(UnixMillis(T0 + 32_400_000));
        assert_eq!(c.stats().decisions, before + 1);
        assert!(c.poll_timeout().unwrap() > later);
    }

    #[test]
    fn decisions_stay_in_space_and_quota_and_one_reconfiguration_at_a_time() {
        let cfg = ControllerConfig { mode: Mode::Apply, profiling_enabled: false, ..Default::default() };
        let space = cfg.search_space.clone();
        let quota = cfg.quota;
        let mut c = Controller::new(cfg, JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap();
        let mut actions = Vec::new();
        // A job far below its capacity for hours: the controller learns from production samples.
        run_healthy(&mut c, 0, 4 * 3600, 5_000.0, &mut actions);
        let reconfigs: Vec<&Reconfiguration> = actions
            .iter()
            .filter_map(|a| if let Action::Reconfigure(r) = a { Some(r) } else { None })
            .collect();
        // Without outcomes, at most one reconfiguration is ever in flight.
        assert!(reconfigs.len() <= 1, "{} reconfigurations in flight", reconfigs.len());
        for r in reconfigs {
            assert!(space.contains(&r.to) && quota.admits(&r.to), "{} outside space or quota", r.to);
            assert_ne!(r.to, r.from);
        }
    }

    #[test]
    fn sustained_overload_scales_up_between_loops() {
        let cfg = ControllerConfig { mode: Mode::Apply, profiling_enabled: false, ..Default::default() };
        let small = JobConfig {
            parallelism: 8,
            task_slots: 4,
            tm_cpu_milli: 1000,
            tm_memory_mb: 1024,
            checkpoint_interval_ms: 10_000,
        };
        let mut c = Controller::new(cfg, small, UnixMillis(T0)).unwrap();
        let mut actions = Vec::new();
        // Healthy at 4k/s for 20 minutes (busy 60 %), then the input jumps to 12k/s while
        // throughput stays at the 6.5k/s capacity: the backlog grows and the job is saturated.
        for t in 0..1200 {
            let now = UnixMillis(T0 + t * 1000);
            c.handle_observation(now, &obs(t, 4_000.0, 4_000.0, 0.0, 0.6, 900.0));
            while let Some(a) = c.poll_action() {
                actions.push(a);
            }
        }
        let mut lag = 0.0;
        let mut reconfigured_at = None;
        for t in 1200..1500 {
            let now = UnixMillis(T0 + t * 1000);
            lag += 12_000.0 - 6_500.0;
            c.handle_observation(now, &obs(t, 12_000.0, 6_500.0, lag, 1.0, 900.0 + lag / 6.5));
            while let Some(a) = c.poll_action() {
                if let Action::Reconfigure(r) = &a {
                    reconfigured_at.get_or_insert((t, r.clone()));
                }
                actions.push(a);
            }
        }
        let (t, r) = reconfigured_at.expect("an emergency scale-up");
        assert!(t < 1200 + 120, "scaled up only at t={t}");
        assert!(
            r.to.total_cpu() > small.total_cpu() || r.to.total_memory_mb() > small.total_memory_mb(),
            "{} is not bigger than {small}",
            r.to
        );
        assert!(r.decision.reason.is_urgent(), "{:?}", r.decision.reason);
        assert_eq!(c.stats().emergency_scale_ups, 1);
        // Outcome: applied. The controller now runs the new configuration.
        c.handle_outcome(UnixMillis(T0 + 1_500_000), Outcome::ReconfigApplied { id: r.id, downtime_s: 8.0 });
        assert_eq!(c.current(), r.to);
        assert!(c.status().in_flight.is_none());
    }

    #[test]
    fn snapshot_restores_the_same_state() {
        let cfg = ControllerConfig { mode: Mode::Apply, profiling_enabled: false, ..Default::default() };
        let mut c = Controller::new(cfg.clone(), JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap();
        let mut actions = Vec::new();
        run_healthy(&mut c, 0, 7200, 15_000.0, &mut actions);
        let json = serde_json::to_string(&c.snapshot()).unwrap();
        let restored: ControllerState = serde_json::from_str(&json).unwrap();
        let mut r = Controller::restore(cfg, restored);
        // JSON is the persistence format: the restored state serialises to the same document.
        assert_eq!(serde_json::to_string(&r.snapshot()).unwrap(), json);
        let now = UnixMillis(T0 + 7200 * 1000);
        let a = c.recommend(now);
        let b = r.recommend(now);
        assert_eq!(a.decision.target, b.decision.target);
        assert_eq!(a.forecast_peak, b.forecast_peak);
    }

    #[test]
    fn a_failure_of_the_production_job_becomes_a_recovery_sample() {
        let mut c =
            Controller::new(ControllerConfig::default(), JobConfig::STATIC_DEFAULT, UnixMillis(T0)).unwrap();
        let mut actions = Vec::new();
        run_healthy(&mut c, 0, 600, 10_000.0, &mut actions);
        // 30 s outage, then catch-up at twice the input for 40 s.
        let mut lag = 0.0;
        for t in 600..700 {
            let now = UnixMillis(T0 + t * 1000);
            let thr = if t < 630 {
                0.0
            } else if lag > 0.0 {
                20_000.0
            } else {
                10_000.0
            };
            lag = f64::max(lag + 10_000.0 - thr, 0.0);
            c.handle_observation(now, &obs(t, 10_000.0, thr, lag, 0.5, 900.0));
        }
        let rec: Vec<&PerfSample> = c.samples().iter().filter(|s| s.recovery.is_some()).collect();
        assert_eq!(rec.len(), 1, "samples: {:?}", c.samples());
        match rec[0].recovery.unwrap() {
            RecoveryTime::Measured(s) => assert!((50.0..=70.0).contains(&s), "recovery {s}"),
            other => panic!("{other:?}"),
        }
    }
}

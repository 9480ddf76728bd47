//! One task per job: metric batches → [`JobAggregator`] → [`Controller`], and the controller's
//! actions → [`Backend`], events → [`Store`], outcomes → back into the controller.
//!
//! This is the only code that reads the clock for a job (like quinn's `ConnectionDriver`):
//! everything below it receives `now` as an argument.
//!
//! # The job's clock
//! The core runs on *event time*: the newest `collected_at` the job has seen, never ahead of the
//! wall clock and never more than `ingest.replay_window` behind it ([`JobClock`]). Live, event time
//! trails the wall clock by the scrape-to-delivery delay. After a restart, the backlog the durable
//! consumer redelivers is therefore replayed second by second, as it happened, instead of
//! collapsing into one observation; and when no batch arrives, the wall clock (minus the window)
//! keeps the timers going.
//!
//! # Acknowledgements and checkpoints
//! A batch is acknowledged only once everything it contributed to is durable: an observation
//! emitted after the batch arrived has absorbed it, and a checkpoint (controller snapshot +
//! observations + events, one transaction) that contains that observation has been committed.
//! Checkpoints happen every `store.snapshot_interval`, and at once when an action must be
//! recorded. After a crash the consumer redelivers exactly the batches whose effect was lost;
//! observations no newer than the restored snapshot's are dropped, so none is counted twice.
//! While the store is unhealthy, batches are acknowledged after `ingest.ack_wait / 2` anyway
//! (their effect lives in memory; holding them longer would only make the server redeliver).
//!
//! # Actions
//! - `Reconfigure`: checkpoint an *intent* (with the snapshot that has the reconfiguration in
//!   flight) **before** calling the backend, and the outcome after. On start, an intent without an
//!   outcome is reconciled by asking the backend what runs, never by applying it again.
//! - `StartProfiling` / `StopProfiling`: the same, with profiling intents.
//! - `Recommend`: logged and exported; nothing is carried out.
//!
//! While the runtime is degraded (NATS or the store unhealthy) or the job is in recommend-only
//! mode, the controller runs in recommend-only mode and no action reaches the backend.

use demeter_common::{JobConfig, MetricBatch, UnixMillis};
use demeter_core::aggregate::{AggregatorConfig, AggregatorStats, JobAggregator, VertexDetail};
use demeter_core::controller::{
    Action, Controller, ControllerConfig, ControllerState, ControllerStatus, CoreEvent, DecisionRecord, Mode,
    Outcome, ProfilingRun, Reconfiguration,
};
use demeter_core::obs::{JobObservation, PerfSample};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

use super::health::Health;
use super::metrics::{DecisionLabels, ErrorLabels, JobLabels, Metrics, ResultLabels};
use super::store::{Checkpoint, Intent, IntentKind, ObsBucket, OutcomeRow, SnapshotRow, StateBlob, Store};
use crate::backend::{Backend, BackendError, BackendResult, JobKey, ReconfigReport};

/// A reconfiguration that has not finished after this long is reported as failed.
const RECONFIGURE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bound on one `current_config` call.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// On shutdown, how long to wait for backend calls in flight before the final checkpoint.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the API view is refreshed at most.
const VIEW_EVERY: Duration = Duration::from_millis(500);
/// History kept in memory while the store fails, before the oldest is dropped.
const MAX_UNCOMMITTED: usize = 50_000;

/// Acknowledges one delivery (a JetStream message, or a test's counter).
pub trait Ack: Send + 'static {
    /// Done with it.
    fn ack(self: Box<Self>) -> BoxFuture<'static, ()>;
    /// Never deliver it again (it can never be valid). Defaults to [`Ack::ack`].
    fn term(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.ack()
    }
}

impl Ack for async_nats::jetstream::message::Acker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = async_nats::jetstream::message::Acker::ack(&self).await {
                tracing::debug!(error = %e, "ack failed; the batch will be redelivered");
            }
        })
    }

    fn term(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self.ack_with(async_nats::jetstream::AckKind::Term).await {
                tracing::debug!(error = %e, "term failed; the message will be redelivered and rejected again");
            }
        })
    }
}

/// What a driver is sent.
pub enum DriverMsg {
    Batch {
        batch: Box<MetricBatch>,
        ack: Option<Box<dyn Ack>>,
    },
    /// A dry run (`POST .../recommend`).
    Recommend(oneshot::Sender<DecisionRecord>),
    /// Answered once every message sent before it has been handled (tests, benches, tools).
    Sync(oneshot::Sender<()>),
    /// Checkpoint, acknowledge and stop.
    Shutdown(oneshot::Sender<()>),
}

impl std::fmt::Debug for DriverMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverMsg::Batch { batch, .. } => {
                write!(f, "Batch({} seq {})", batch.source.taskmanager_id, batch.agent_seq)
            }
            DriverMsg::Recommend(_) => f.write_str("Recommend"),
            DriverMsg::Sync(_) => f.write_str("Sync"),
            DriverMsg::Shutdown(_) => f.write_str("Shutdown"),
        }
    }
}

/// Settings of one job's driver.
#[derive(Clone, Debug)]
pub struct DriverSettings {
    pub key: JobKey,
    /// The job's controller settings, with its configured mode (the ceiling).
    pub controller: ControllerConfig,
    pub aggregator: AggregatorConfig,
    /// The configuration assumed when the backend cannot tell (`[[jobs]] current`, else
    /// `default_current`).
    pub fallback_current: JobConfig,
    pub snapshot_interval: Duration,
    pub replay_window: Duration,
    pub observation_bucket: Duration,
    pub backend_poll_interval: Duration,
    pub ack_wait: Duration,
}

/// What a driver shares with the rest of the runtime.
#[derive(Clone, Debug)]
pub struct Shared {
    pub store: Store,
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

/// Where a driver is in its life.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum DriverState {
    Starting,
    Running,
    Stopped,
    Failed(String),
}

/// What the API shows about a job; published by its driver.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub namespace: String,
    pub name: String,
    pub state: DriverState,
    /// The job's configured mode.
    pub mode: Mode,
    /// What the controller runs with now (`recommend-only` while degraded).
    pub effective_mode: Mode,
    /// Why nothing is applied, when the job's mode is `apply` but applying is blocked.
    pub apply_blocked: Option<String>,
    pub backend: &'static str,
    /// Whether the controller was restored from the store.
    pub restored: bool,
    pub status: Option<ControllerStatus>,
    pub taskmanagers: usize,
    pub vertices: BTreeMap<String, VertexDetail>,
    pub aggregator: AggregatorStats,
    pub batches: u64,
    pub last_batch_at: Option<UnixMillis>,
    /// The job's clock (event time).
    pub core_time: UnixMillis,
    pub observations: u64,
    pub last_observation_at: Option<UnixMillis>,
    pub last_checkpoint_at: Option<UnixMillis>,
    pub pending_acks: usize,
    pub last_error: Option<String>,
}

impl JobView {
    pub fn new(key: &JobKey, mode: Mode, backend: &'static str) -> Self {
        JobView {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            state: DriverState::Starting,
            mode,
            effective_mode: Mode::RecommendOnly,
            apply_blocked: None,
            backend,
            restored: false,
            status: None,
            taskmanagers: 0,
            vertices: BTreeMap::new(),
            aggregator: AggregatorStats::default(),
            batches: 0,
            last_batch_at: None,
            core_time: UnixMillis(0),
            observations: 0,
            last_observation_at: None,
            last_checkpoint_at: None,
            pending_acks: 0,
            last_error: None,
        }
    }
}

/// The time a job's core runs on. See the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct JobClock {
    last: UnixMillis,
    event: Option<UnixMillis>,
    window_ms: i64,
}

impl JobClock {
    pub fn new(start: UnixMillis, replay_window: Duration) -> Self {
        JobClock {
            last: start,
            event: None,
            window_ms: replay_window.as_millis().min(i64::MAX as u128) as i64,
        }
    }

    /// A batch collected at `at` arrived.
    pub fn observe_event(&mut self, at: UnixMillis) {
        self.event = Some(self.event.map_or(at, |e| e.max(at)));
    }

    /// The core's `now`, given the wall clock: monotonic, at most `wall`, at least
    /// `wall - replay_window`, otherwise the newest event time.
    pub fn now(&mut self, wall: UnixMillis) -> UnixMillis {
        let floor = UnixMillis(wall.0.saturating_sub(self.window_ms));
        let t = self.event.map_or(floor, |e| e.min(wall).max(floor));
        self.last = self.last.max(t);
        self.last
    }

    pub fn last(&self) -> UnixMillis {
        self.last
    }
}

struct PendingAck {
    /// Observations emitted before this batch arrived.
    after: u64,
    collected_at: UnixMillis,
    received: Instant,
    rejected: bool,
    ack: Box<dyn Ack>,
}

enum Completion {
    Reconfigured {
        r: Box<Reconfiguration>,
        result: BackendResult<ReconfigReport>,
        running: Option<JobConfig>,
    },
    Profiled {
        run_id: u64,
        result: BackendResult<PerfSample>,
    },
    Stopped {
        run_id: u64,
        result: BackendResult<()>,
    },
    Current(BackendResult<JobConfig>),
}

/// How a driver ended.
#[derive(Debug, PartialEq)]
pub enum DriverExit {
    /// Shut down on request or because its inbox closed.
    Stopped,
    /// Cannot run (an invalid configuration); restarting will not help.
    Failed(String),
}

/// The driver of one job. Create with [`JobDriver::start`], then [`JobDriver::run`].
pub struct JobDriver {
    key: JobKey,
    settings: DriverSettings,
    shared: Shared,
    labels: JobLabels,
    controller: Controller,
    aggregator: JobAggregator,
    clock: JobClock,
    rx: mpsc::Receiver<DriverMsg>,
    view_tx: watch::Sender<Arc<JobView>>,
    view: JobView,
    view_dirty: bool,
    last_view: Instant,
    // Persistence.
    cp: Checkpoint,
    bucket: Option<ObsBucket>,
    state_dirty: bool,
    emitted: u64,
    last_obs_at: Option<UnixMillis>,
    durable_emitted: u64,
    durable_time: UnixMillis,
    pending: VecDeque<PendingAck>,
    last_flush: Instant,
    acks_without_store_warned: bool,
    // Backend work in flight.
    inflight: FuturesUnordered<BoxFuture<'static, Completion>>,
    reconfig_in_flight: Option<u64>,
    next_poll: Instant,
    poll_enabled: bool,
    poll_in_flight: bool,
    next_mode_check: Instant,
}

impl std::fmt::Debug for JobDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobDriver").field("key", &self.key).field("pending", &self.pending.len()).finish()
    }
}

fn ms_of(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The `reason` label of a decision.
pub fn reason_label(record: &DecisionRecord) -> String {
    record.decision.reason.label().to_string()
}

/// Asks the backend what runs after an interrupted reconfiguration.
async fn reconcile_reconfiguration(backend: &Arc<dyn Backend>, key: &JobKey, r: &Reconfiguration) -> Outcome {
    let mut last_err = None;
    for attempt in 0..3u32 {
        match tokio::time::timeout(QUERY_TIMEOUT, backend.current_config(key)).await {
            Ok(Ok(running)) if running == r.to => {
                return Outcome::ReconfigApplied { id: r.id, downtime_s: 0.0 };
            }
            Ok(Ok(running)) => {
                return Outcome::ReconfigFailed {
                    id: r.id,
                    running,
                    reason: "interrupted by a coordinator restart; the job does not run the target".into(),
                };
            }
            Ok(Err(e @ BackendError::Unsupported { .. })) => {
                last_err = Some(e.to_string());
                break;
            }
            Ok(Err(e)) => last_err = Some(e.to_string()),
            Err(_) => last_err = Some("timed out".into()),
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
    }
    Outcome::ReconfigFailed {
        id: r.id,
        running: r.from,
        reason: format!(
            "interrupted by a coordinator restart; the backend could not tell what runs ({}); assuming the previous configuration",
            last_err.unwrap_or_default()
        ),
    }
}

impl JobDriver {
    /// Restores the job's controller from the store (or creates it from the backend's, the
    /// configured or the default current configuration) and reconciles what was in flight.
    pub async fn start(
        settings: DriverSettings,
        shared: Shared,
        rx: mpsc::Receiver<DriverMsg>,
        view_tx: watch::Sender<Arc<JobView>>,
    ) -> Result<JobDriver, (DriverExit, mpsc::Receiver<DriverMsg>)> {
        let key = settings.key.clone();
        let wall = UnixMillis::now();
        let mut view = JobView::new(&key, settings.controller.mode, shared.backend.name());
        let mut cfg = settings.controller.clone();
        cfg.profiling_enabled &= shared.backend.can_profile();
        // Start in recommend-only; `check_mode` switches to apply once the job's mode, the
        // backend and the runtime's health allow it.
        cfg.mode = Mode::RecommendOnly;

        let mut restored = None;
        match shared.store.load_snapshot(&key).await {
            Ok(Some(row)) => match serde_json::from_str::<ControllerState>(&row.state) {
                Ok(state) => restored = Some((state, row)),
                Err(e) => {
                    let msg =
                        format!("the stored controller state of {key} cannot be read ({e}); starting afresh");
                    tracing::error!(job = %key, error = %e, "{msg}");
                    view.last_error = Some(msg);
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job = %key, error = %e, "cannot read the stored state; starting afresh");
                view.last_error = Some(format!("cannot read the stored state: {e}"));
            }
        }
        let (controller, clock, emitted, last_obs_at) = match restored {
            Some((state, row)) => {
                let clock = JobClock::new(state.now, settings.replay_window);
                tracing::info!(job = %key, observations = row.observations, samples = state.samples.len(),
                    saved_at = %row.saved_at, "restored the controller from the store");
                view.restored = true;
                (Controller::restore(cfg, state), clock, row.observations, row.last_obs_at)
            }
            None => {
                let current = match tokio::time::timeout(QUERY_TIMEOUT, shared.backend.current_config(&key))
                    .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        if !matches!(e, BackendError::Unsupported { .. }) {
                            tracing::info!(job = %key, error = %e, "backend does not know the job's configuration; using the configured one");
                        }
                        settings.fallback_current
                    }
                    Err(_) => settings.fallback_current,
                };
                let mut clock = JobClock::new(UnixMillis(0), settings.replay_window);
                let now = clock.now(wall);
                match Controller::new(cfg, current, now) {
                    Ok(c) => (c, clock, 0, None),
                    Err(e) => {
                        let msg = format!("invalid controller configuration for {key}: {e}");
                        tracing::error!(job = %key, "{msg}");
                        view.state = DriverState::Failed(msg.clone());
                        view_tx.send_replace(Arc::new(view));
                        return Err((DriverExit::Failed(msg), rx));
                    }
                }
            }
        };
        let now = Instant::now();
        let labels = JobLabels::from(&key);
        let mut d = JobDriver {
            key,
            aggregator: JobAggregator::new(settings.aggregator.clone()),
            labels,
            controller,
            clock,
            rx,
            view_tx,
            view,
            view_dirty: true,
            last_view: now,
            cp: Checkpoint::default(),
            bucket: None,
            state_dirty: false,
            emitted,
            last_obs_at,
            durable_emitted: emitted,
            durable_time: clock.last(),
            pending: VecDeque::new(),
            last_flush: now,
            acks_without_store_warned: false,
            inflight: FuturesUnordered::new(),
            reconfig_in_flight: None,
            next_poll: now + settings.backend_poll_interval,
            poll_enabled: true,
            poll_in_flight: false,
            next_mode_check: now,
            settings,
            shared,
        };
        let cur = d.controller.current();
        d.shared.metrics.job_current_cpu_cores.get_or_create(&d.labels).set(cur.total_cpu());
        d.shared.metrics.job_current_memory_mb.get_or_create(&d.labels).set(cur.total_memory_mb() as f64);
        d.reconcile().await;
        d.check_external_change_once().await;
        d.check_mode();
        d.view.state = DriverState::Running;
        d.publish_view(true);
        Ok(d)
    }

    pub fn key(&self) -> &JobKey {
        &self.key
    }

    /// Runs until shut down or until the inbox closes.
    pub async fn run(mut self) -> DriverExit {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = self.next_timer_in();
            tokio::select! {
                biased;
                msg = self.rx.recv() => match msg {
                    Some(DriverMsg::Batch { batch, ack }) => {
                        self.handle_batch(*batch, ack).await;
                        // Take what else is queued without yielding, up to a bound.
                        for _ in 0..256 {
                            match self.rx.try_recv() {
                                Ok(DriverMsg::Batch { batch, ack }) => self.handle_batch(*batch, ack).await,
                                Ok(other) => { if self.handle_control(other).await { return DriverExit::Stopped; } break; }
                                Err(_) => break,
                            }
                        }
                    }
                    Some(other) => if self.handle_control(other).await { return DriverExit::Stopped; },
                    None => { self.shutdown().await; return DriverExit::Stopped; }
                },
                Some(c) = self.inflight.next(), if !self.inflight.is_empty() => self.handle_completion(c).await,
                _ = tokio::time::sleep(sleep) => {}
                _ = tick.tick() => {}
            }
            self.step().await;
        }
    }

    /// How long until the controller's next timer, in wall time (at most one second).
    fn next_timer_in(&self) -> Duration {
        let core = self.clock.last();
        match self.controller.poll_timeout() {
            Some(t) if t > core => Duration::from_millis((t.0 - core.0) as u64).min(Duration::from_secs(1)),
            Some(_) => Duration::ZERO,
            None => Duration::from_secs(1),
        }
    }

    /// Returns true when the driver must stop.
    async fn handle_control(&mut self, msg: DriverMsg) -> bool {
        match msg {
            DriverMsg::Recommend(reply) => {
                let now = self.clock.now(UnixMillis::now());
                let t = Instant::now();
                let rec = self.controller.recommend(now);
                self.shared
                    .metrics
                    .model_fit_seconds
                    .get_or_create(&self.labels)
                    .observe(t.elapsed().as_secs_f64());
                let _ = reply.send(rec);
                false
            }
            DriverMsg::Sync(done) => {
                let _ = done.send(());
                false
            }
            DriverMsg::Shutdown(done) => {
                self.shutdown().await;
                let _ = done.send(());
                true
            }
            DriverMsg::Batch { batch, ack } => {
                self.handle_batch(*batch, ack).await;
                false
            }
        }
    }

    async fn handle_batch(&mut self, batch: MetricBatch, ack: Option<Box<dyn Ack>>) {
        let wall = UnixMillis::now();
        self.clock.observe_event(batch.collected_at);
        let now = self.clock.now(wall);
        self.view.batches += 1;
        self.view.last_batch_at = Some(batch.collected_at);
        let collected_at = batch.collected_at;
        let rejected = match self.aggregator.handle_batch(now, &batch) {
            Ok(()) => false,
            Err(r) => {
                self.shared.metrics.reject(r.kind());
                tracing::debug!(job = %self.key, reason = %r, "batch not used");
                true
            }
        };
        if let Some(ack) = ack {
            self.pending.push_back(PendingAck {
                after: self.emitted,
                collected_at,
                received: Instant::now(),
                rejected,
                ack,
            });
        }
        self.poll_observations(now).await;
    }

    async fn poll_observations(&mut self, now: UnixMillis) {
        while let Some(obs) = self.aggregator.poll_observation(now) {
            // The aggregator emits at most one observation per second: a second the state has
            // absorbed already (before a restart, from batches now redelivered) is not counted
            // again.
            if self.last_obs_at.is_some_and(|l| obs.at.0.div_euclid(1000) <= l.0.div_euclid(1000)) {
                continue;
            }
            self.absorb(now, obs).await;
        }
    }

    async fn absorb(&mut self, now: UnixMillis, obs: JobObservation) {
        let m = &self.shared.metrics;
        m.job_input_rate.get_or_create(&self.labels).set(obs.offered_rate);
        if let Some(p) = obs.p95_latency_ms {
            m.job_latency_p95_ms.get_or_create(&self.labels).set(p);
        }
        let bucket_ms = ms_of(self.settings.observation_bucket).max(1);
        let b = obs.at.0.div_euclid(bucket_ms) * bucket_ms;
        match &mut self.bucket {
            Some(cur) if cur.bucket == b => cur.add(&obs),
            slot => {
                if let Some(done) = slot.take() {
                    self.cp.observations.push(done);
                }
                let mut nb = ObsBucket { bucket: b, ..Default::default() };
                nb.add(&obs);
                *slot = Some(nb);
            }
        }
        self.emitted += 1;
        self.last_obs_at = Some(obs.at);
        self.state_dirty = true;
        self.view_dirty = true;
        let t = Instant::now();
        self.controller.handle_observation(now, &obs);
        self.drain(t).await;
    }

    /// After every input: actions, then events (quinn's order).
    async fn drain(&mut self, call_started: Instant) {
        let elapsed = call_started.elapsed();
        let mut actions = Vec::new();
        while let Some(a) = self.controller.poll_action() {
            actions.push(a);
        }
        let mut decided = false;
        while let Some(e) = self.controller.poll_event() {
            decided |= matches!(e, CoreEvent::Decision(_));
            self.handle_event(e);
        }
        if decided {
            self.shared.metrics.model_fit_seconds.get_or_create(&self.labels).observe(elapsed.as_secs_f64());
        }
        for a in actions {
            self.handle_action(a).await;
        }
    }

    fn handle_event(&mut self, e: CoreEvent) {
        let m = &self.shared.metrics;
        self.state_dirty = true;
        self.view_dirty = true;
        match e {
            CoreEvent::Decision(rec) => {
                let reason = reason_label(&rec);
                m.decisions
                    .get_or_create(&DecisionLabels {
                        namespace: self.key.namespace.clone(),
                        job: self.key.name.clone(),
                        reason: reason.clone(),
                    })
                    .inc();
                let chosen = if rec.decision.switch { rec.decision.target } else { rec.current };
                m.job_recommended_cpu_cores.get_or_create(&self.labels).set(chosen.total_cpu());
                m.job_recommended_memory_mb.get_or_create(&self.labels).set(chosen.total_memory_mb() as f64);
                if rec.decision.switch && rec.decision.target != rec.current {
                    tracing::info!(job = %self.key, reason = %reason, acted = rec.acted,
                        held_by = rec.held_by.as_deref().unwrap_or("-"), emergency = rec.emergency,
                        from = %rec.current, to = %rec.decision.target, forecast_peak = rec.forecast_peak,
                        explanation = %rec.decision.explanation.text, "decision: switch");
                } else {
                    tracing::debug!(job = %self.key, reason = %reason, current = %rec.current,
                        explanation = %rec.decision.explanation.text, "decision: keep");
                }
                self.cp.decisions.push((reason, rec));
            }
            CoreEvent::Forecast(f) => {
                m.job_forecast_rate.get_or_create(&self.labels).set(f.peak_mean);
                m.job_forecast_upper_rate.get_or_create(&self.labels).set(f.decision_peak);
                let at = UnixMillis::from_secs(f.origin_s);
                if let Ok(text) = serde_json::to_string(&f) {
                    self.cp.forecasts.push((at, text));
                }
            }
            CoreEvent::Sample(s) => self.cp.samples.push(s),
            CoreEvent::ProfilingStopped { reason } => {
                tracing::info!(job = %self.key, %reason, "profiling stopped: the model is confident enough");
            }
            CoreEvent::Reconfigured { id, running, downtime_s, ok } => {
                let result = if ok { "applied" } else { "failed" };
                m.reconfigurations
                    .get_or_create(&ResultLabels {
                        namespace: self.key.namespace.clone(),
                        job: self.key.name.clone(),
                        result: result.into(),
                    })
                    .inc();
                tracing::info!(job = %self.key, id, %running, downtime_s, ok, "reconfiguration finished");
            }
        }
        let cur = self.controller.current();
        m.job_current_cpu_cores.get_or_create(&self.labels).set(cur.total_cpu());
        m.job_current_memory_mb.get_or_create(&self.labels).set(cur.total_memory_mb() as f64);
    }

    /// Boxed: carrying an action out feeds an outcome back, which may produce another action.
    fn handle_action(&mut self, a: Action) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match a {
                Action::Reconfigure(r) => self.start_reconfigure(r).await,
                Action::StartProfiling(run) => self.start_profiling(run).await,
                Action::StopProfiling { run_id } => {
                    let (backend, key) = (self.shared.backend.clone(), self.key.clone());
                    self.record_outcome(
                        IntentKind::Profiling,
                        run_id,
                        false,
                        &Outcome::ProfileFailed { run_id, reason: "stopped: no result in time".into() },
                    );
                    self.inflight.push(Box::pin(async move {
                        let result = backend.stop_profiling(&key, run_id).await;
                        Completion::Stopped { run_id, result }
                    }));
                }
                Action::Recommend(d) => {
                    tracing::info!(job = %self.key, from = %self.controller.current(), to = %d.target,
                    "recommendation (recommend-only: not applied)");
                }
            }
        })
    }

    /// Feeds an outcome into the controller, records it, and checkpoints at once.
    async fn feed_outcome(&mut self, kind: IntentKind, id: u64, ok: bool, outcome: Outcome) {
        self.record_outcome(kind, id, ok, &outcome);
        let now = self.clock.now(UnixMillis::now());
        let t = Instant::now();
        self.controller.handle_outcome(now, outcome);
        self.state_dirty = true;
        self.drain(t).await;
        self.flush(true).await;
    }

    fn record_outcome(&mut self, kind: IntentKind, id: u64, ok: bool, outcome: &Outcome) {
        let body = serde_json::to_value(outcome).unwrap_or(serde_json::Value::Null);
        self.cp.outcomes.push(OutcomeRow { kind, id, at: UnixMillis::now(), ok, body });
    }

    async fn start_reconfigure(&mut self, r: Reconfiguration) {
        // At most once per id: an id the store already knows is reconciled, not applied.
        match self.shared.store.intent(&self.key, IntentKind::Reconfigure, r.id).await {
            Ok(Some(rec)) => {
                tracing::warn!(job = %self.key, id = r.id, "reconfiguration id already recorded; not applying it again");
                let outcome = match rec.outcome.and_then(|o| serde_json::from_value::<Outcome>(o.body).ok()) {
                    Some(o) => o,
                    None => reconcile_reconfiguration(&self.shared.backend, &self.key, &r).await,
                };
                let ok = matches!(outcome, Outcome::ReconfigApplied { .. });
                self.feed_outcome(IntentKind::Reconfigure, r.id, ok, outcome).await;
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let reason = format!("not applied: cannot check the store ({e})");
                let running = r.from;
                self.feed_outcome(
                    IntentKind::Reconfigure,
                    r.id,
                    false,
                    Outcome::ReconfigFailed { id: r.id, running, reason },
                )
                .await;
                return;
            }
        }
        let body = serde_json::to_value(&r).unwrap_or(serde_json::Value::Null);
        self.cp.intents.push(Intent {
            kind: IntentKind::Reconfigure,
            id: r.id,
            created_at: UnixMillis::now(),
            body,
        });
        let blocked = self.shared.health.apply_blocked().or_else(|| {
            (self.settings.controller.mode != Mode::Apply)
                .then(|| "the job is in recommend-only mode".to_string())
        });
        if let Some(why) = blocked {
            tracing::warn!(job = %self.key, id = r.id, %why, "reconfiguration not applied");
            let outcome =
                Outcome::ReconfigFailed { id: r.id, running: r.from, reason: format!("not applied: {why}") };
            self.feed_outcome(IntentKind::Reconfigure, r.id, false, outcome).await;
            return;
        }
        // The intent and the snapshot that has it in flight, durable before the backend is called.
        if !self.flush(true).await {
            let outcome = Outcome::ReconfigFailed {
                id: r.id,
                running: r.from,
                reason: "not applied: the intent could not be persisted".into(),
            };
            self.feed_outcome(IntentKind::Reconfigure, r.id, false, outcome).await;
            return;
        }
        tracing::info!(job = %self.key, id = r.id, from = %r.from, to = %r.to, kind = ?r.kind, "applying reconfiguration");
        self.reconfig_in_flight = Some(r.id);
        let (backend, key) = (self.shared.backend.clone(), self.key.clone());
        self.inflight.push(Box::pin(async move {
            let result = match tokio::time::timeout(RECONFIGURE_TIMEOUT, backend.reconfigure(&key, &r)).await
            {
                Ok(r) => r,
                Err(_) => Err(BackendError::Transient(format!(
                    "no result after {}",
                    humantime::format_duration(RECONFIGURE_TIMEOUT)
                ))),
            };
            let running = match &result {
                Ok(_) => None,
                Err(_) => tokio::time::timeout(QUERY_TIMEOUT, backend.current_config(&key))
                    .await
                    .ok()
                    .and_then(Result::ok),
            };
            Completion::Reconfigured { r: Box::new(r), result, running }
        }));
    }

    async fn start_profiling(&mut self, run: ProfilingRun) {
        self.shared.metrics.profiling_runs.get_or_create(&self.labels).inc();
        let body = serde_json::to_value(&run).unwrap_or(serde_json::Value::Null);
        self.cp.intents.push(Intent {
            kind: IntentKind::Profiling,
            id: run.run_id,
            created_at: UnixMillis::now(),
            body,
        });
        let blocked = self.shared.health.apply_blocked();
        if let Some(why) = blocked {
            let outcome =
                Outcome::ProfileFailed { run_id: run.run_id, reason: format!("not started: {why}") };
            self.feed_outcome(IntentKind::Profiling, run.run_id, false, outcome).await;
            return;
        }
        if !self.flush(true).await {
            let outcome = Outcome::ProfileFailed {
                run_id: run.run_id,
                reason: "not started: the intent could not be persisted".into(),
            };
            self.feed_outcome(IntentKind::Profiling, run.run_id, false, outcome).await;
            return;
        }
        tracing::info!(job = %self.key, run_id = run.run_id, config = %run.config, "starting profiling run");
        let (backend, key) = (self.shared.backend.clone(), self.key.clone());
        self.inflight.push(Box::pin(async move {
            let limit = Duration::from_secs(run.duration_s as u64) + RECONFIGURE_TIMEOUT;
            let result = match tokio::time::timeout(limit, backend.start_profiling(&key, &run)).await {
                Ok(r) => r,
                Err(_) => Err(BackendError::Transient("profiling run did not finish in time".into())),
            };
            Completion::Profiled { run_id: run.run_id, result }
        }));
    }

    async fn handle_completion(&mut self, c: Completion) {
        match c {
            Completion::Reconfigured { r, result, running } => {
                self.reconfig_in_flight = None;
                let (ok, outcome) = match result {
                    Ok(rep) => (true, Outcome::ReconfigApplied { id: r.id, downtime_s: rep.downtime_s }),
                    Err(e) => {
                        tracing::warn!(job = %self.key, id = r.id, error = %e, "reconfiguration failed");
                        let running = running.unwrap_or(r.from);
                        (false, Outcome::ReconfigFailed { id: r.id, running, reason: e.to_string() })
                    }
                };
                self.feed_outcome(IntentKind::Reconfigure, r.id, ok, outcome).await;
            }
            Completion::Profiled { run_id, result } => {
                let (ok, outcome) = match result {
                    Ok(sample) => (true, Outcome::ProfileFinished { run_id, sample }),
                    Err(e) => (false, Outcome::ProfileFailed { run_id, reason: e.to_string() }),
                };
                self.feed_outcome(IntentKind::Profiling, run_id, ok, outcome).await;
            }
            Completion::Stopped { run_id, result } => {
                if let Err(e) = result {
                    tracing::warn!(job = %self.key, run_id, error = %e, "could not stop a profiling run");
                }
            }
            Completion::Current(result) => {
                self.poll_in_flight = false;
                match result {
                    Ok(config)
                        if config != self.controller.current() && self.reconfig_in_flight.is_none() =>
                    {
                        if self.controller.status().in_flight.is_none() {
                            tracing::info!(job = %self.key, from = %self.controller.current(), to = %config,
                                "the job's configuration changed outside Demeter");
                            let now = self.clock.now(UnixMillis::now());
                            let t = Instant::now();
                            self.controller.handle_outcome(now, Outcome::ExternalChange { config });
                            self.state_dirty = true;
                            self.drain(t).await;
                        }
                    }
                    Ok(_) => {}
                    Err(BackendError::Unsupported { .. }) => self.poll_enabled = false,
                    Err(e) => {
                        tracing::debug!(job = %self.key, error = %e, "cannot read the job's configuration")
                    }
                }
            }
        }
        self.view_dirty = true;
    }

    /// Gives every action the restored controller has in flight its outcome: the stored one if
    /// it was recorded, otherwise what the backend says. Nothing is applied again.
    async fn reconcile(&mut self) {
        let status = self.controller.status();
        let store = self.shared.store.clone();
        if let Some(f) = status.in_flight {
            let r = f.reconfiguration;
            let stored = store.intent(&self.key, IntentKind::Reconfigure, r.id).await.ok().flatten();
            let outcome = match stored.as_ref().and_then(|s| s.outcome.clone()) {
                Some(o) => serde_json::from_value::<Outcome>(o.body).ok(),
                None => None,
            };
            let (outcome, fresh) = match outcome {
                Some(o) => (o, false),
                None => (reconcile_reconfiguration(&self.shared.backend, &self.key, &r).await, true),
            };
            tracing::info!(job = %self.key, id = r.id, outcome = ?outcome, "reconciled a reconfiguration interrupted by a restart");
            let ok = matches!(outcome, Outcome::ReconfigApplied { .. });
            if fresh {
                if stored.is_none() {
                    let body = serde_json::to_value(&r).unwrap_or(serde_json::Value::Null);
                    self.cp.intents.push(Intent {
                        kind: IntentKind::Reconfigure,
                        id: r.id,
                        created_at: f.since,
                        body,
                    });
                }
                self.feed_outcome(IntentKind::Reconfigure, r.id, ok, outcome).await;
            } else {
                let now = self.clock.now(UnixMillis::now());
                self.controller.handle_outcome(now, outcome);
                self.state_dirty = true;
                self.drain(Instant::now()).await;
            }
        }
        for p in status.profiling {
            let run_id = p.run.run_id;
            let stored = store.intent(&self.key, IntentKind::Profiling, run_id).await.ok().flatten();
            if let Err(e) = self.shared.backend.stop_profiling(&self.key, run_id).await {
                tracing::warn!(job = %self.key, run_id, error = %e, "could not stop an interrupted profiling run");
            }
            if stored.is_none() {
                let body = serde_json::to_value(&p.run).unwrap_or(serde_json::Value::Null);
                self.cp.intents.push(Intent {
                    kind: IntentKind::Profiling,
                    id: run_id,
                    created_at: p.since,
                    body,
                });
            }
            let outcome =
                Outcome::ProfileFailed { run_id, reason: "interrupted by a coordinator restart".into() };
            self.feed_outcome(IntentKind::Profiling, run_id, false, outcome).await;
        }
        // Intents the state does not know (cannot happen with atomic checkpoints; kept honest).
        if let Ok(open) = store.open_intents(&self.key).await {
            for i in open {
                let body = serde_json::json!({"abandoned": "not in flight in the restored state"});
                self.cp.outcomes.push(OutcomeRow {
                    kind: i.kind,
                    id: i.id,
                    at: UnixMillis::now(),
                    ok: false,
                    body,
                });
            }
            if !self.cp.outcomes.is_empty() {
                self.flush(true).await;
            }
        }
    }

    /// On start with a restored state: has the job changed while the coordinator was away?
    async fn check_external_change_once(&mut self) {
        if !self.view.restored || self.controller.status().in_flight.is_some() {
            return;
        }
        if let Ok(Ok(config)) =
            tokio::time::timeout(QUERY_TIMEOUT, self.shared.backend.current_config(&self.key)).await
            && config != self.controller.current()
        {
            tracing::info!(job = %self.key, from = %self.controller.current(), to = %config,
                "the job's configuration changed while the coordinator was away");
            let now = self.clock.now(UnixMillis::now());
            self.controller.handle_outcome(now, Outcome::ExternalChange { config });
            self.state_dirty = true;
            self.drain(Instant::now()).await;
        }
    }

    /// Runs the controller in recommend-only mode unless the job's mode is `apply`, the backend
    /// can apply and the runtime is healthy.
    fn check_mode(&mut self) {
        let want_apply = self.settings.controller.mode == Mode::Apply && self.shared.backend.can_apply();
        let blocked = if want_apply { self.shared.health.apply_blocked() } else { None };
        let want = if want_apply && blocked.is_none() { Mode::Apply } else { Mode::RecommendOnly };
        if self.view.apply_blocked != blocked {
            self.view.apply_blocked = blocked;
            self.view_dirty = true;
        }
        if self.controller.config().mode != want {
            let mut cfg = self.controller.config().clone();
            cfg.mode = want;
            // Restoring from its own snapshot is how a controller changes settings.
            self.controller = Controller::restore(cfg, self.controller.snapshot());
            tracing::info!(job = %self.key, mode = ?want, "controller mode changed");
            self.view_dirty = true;
        }
        self.view.effective_mode = want;
    }

    /// Timers, periodic work and checkpoints; runs after every input.
    async fn step(&mut self) {
        let wall = UnixMillis::now();
        let now = self.clock.now(wall);
        let inst = Instant::now();
        if inst >= self.next_mode_check {
            self.next_mode_check = inst + Duration::from_secs(1);
            self.check_mode();
        }
        self.poll_observations(now).await;
        if self.controller.poll_timeout().is_some_and(|t| t <= now) {
            let t = Instant::now();
            self.controller.handle_timeout(now);
            self.state_dirty = true;
            self.drain(t).await;
        }
        if self.poll_enabled
            && !self.poll_in_flight
            && inst >= self.next_poll
            && self.reconfig_in_flight.is_none()
            && self.shared.backend.name() != "none"
        {
            self.next_poll = inst + self.settings.backend_poll_interval;
            self.poll_in_flight = true;
            let (backend, key) = (self.shared.backend.clone(), self.key.clone());
            self.inflight.push(Box::pin(async move {
                let r = match tokio::time::timeout(QUERY_TIMEOUT, backend.current_config(&key)).await {
                    Ok(r) => r,
                    Err(_) => Err(BackendError::Transient("timed out".into())),
                };
                Completion::Current(r)
            }));
        }
        if inst.duration_since(self.last_flush) >= self.settings.snapshot_interval {
            self.flush(true).await;
        }
        self.publish_view(false);
    }

    /// Commits what accumulated (and a snapshot when `with_snapshot` and the state changed), then
    /// acknowledges the batches whose effect is now durable. Returns whether the commit
    /// succeeded.
    async fn flush(&mut self, with_snapshot: bool) -> bool {
        self.last_flush = Instant::now();
        if let Some(b) = &mut self.bucket
            && b.n > 0
        {
            // Buckets are added to in the store, so the open one goes out as a delta.
            let delta = std::mem::replace(b, ObsBucket { bucket: b.bucket, ..Default::default() });
            self.cp.observations.push(delta);
        }
        let now = self.clock.last();
        if with_snapshot && self.state_dirty {
            self.cp.snapshot = Some(SnapshotRow {
                state: StateBlob::State(Box::new(self.controller.snapshot())),
                last_obs_at: self.last_obs_at,
                observations: self.emitted,
                saved_at: now,
            });
        }
        let emitted = self.emitted;
        let ok = if self.cp.is_empty() {
            true
        } else {
            let cp = std::mem::take(&mut self.cp);
            match self.shared.store.commit(&self.key, cp).await {
                Ok(()) => {
                    self.state_dirty = false;
                    self.view.last_checkpoint_at = Some(UnixMillis::now());
                    true
                }
                Err((e, mut back)) => {
                    self.shared
                        .metrics
                        .store_errors
                        .get_or_create(&ErrorLabels { error_type: e.kind().into() })
                        .inc();
                    self.shared.health.refresh();
                    tracing::warn!(job = %self.key, error = %e, "checkpoint failed; keeping it in memory to retry");
                    self.view.last_error = Some(format!("checkpoint failed: {e}"));
                    back.snapshot = None;
                    self.requeue(back);
                    false
                }
            }
        };
        if ok {
            self.durable_emitted = emitted;
            self.durable_time = now;
            self.acks_without_store_warned = false;
        }
        self.ack_durable(ok).await;
        self.view_dirty = true;
        ok
    }

    /// Puts a failed checkpoint's history back in front of what accumulated since.
    fn requeue(&mut self, mut back: Checkpoint) {
        let newer = std::mem::take(&mut self.cp);
        back.observations.extend(newer.observations);
        back.samples.extend(newer.samples);
        back.decisions.extend(newer.decisions);
        back.forecasts.extend(newer.forecasts);
        back.intents.extend(newer.intents);
        back.outcomes.extend(newer.outcomes);
        // History beyond the bound is dropped oldest first; intents and outcomes never are.
        fn trim<T>(v: &mut Vec<T>) {
            if v.len() > MAX_UNCOMMITTED {
                let n = v.len() - MAX_UNCOMMITTED;
                v.drain(..n);
            }
        }
        trim(&mut back.observations);
        trim(&mut back.samples);
        trim(&mut back.decisions);
        trim(&mut back.forecasts);
        self.cp = back;
    }

    async fn ack_durable(&mut self, committed: bool) {
        let stale_ms = self.settings.aggregator.stale_after_ms;
        let give_up = self.settings.ack_wait / 2;
        let mut kept = VecDeque::with_capacity(self.pending.len());
        let mut forced = 0usize;
        let mut acks = Vec::new();
        for p in self.pending.drain(..) {
            let absorbed = committed
                && (p.after < self.durable_emitted || self.durable_time.0 - p.collected_at.0 > stale_ms);
            if p.rejected || absorbed {
                acks.push(p.ack);
            } else if !committed && p.received.elapsed() >= give_up {
                forced += 1;
                acks.push(p.ack);
            } else {
                kept.push_back(p);
            }
        }
        self.pending = kept;
        if forced > 0 && !self.acks_without_store_warned {
            self.acks_without_store_warned = true;
            tracing::warn!(job = %self.key, batches = forced,
                "acknowledging batches that are not persisted (store unavailable); a crash now loses their effect");
        }
        for a in acks {
            a.ack().await;
        }
        self.view.pending_acks = self.pending.len();
    }

    fn publish_view(&mut self, force: bool) {
        if !(force || (self.view_dirty && self.last_view.elapsed() >= VIEW_EVERY)) {
            return;
        }
        self.last_view = Instant::now();
        self.view_dirty = false;
        let now = self.clock.last();
        let v = &mut self.view;
        v.status = Some(self.controller.status());
        v.taskmanagers = self.aggregator.taskmanagers(now);
        v.vertices = self.aggregator.vertices().clone();
        v.aggregator = self.aggregator.stats().clone();
        v.core_time = now;
        v.observations = self.emitted;
        v.last_observation_at = self.last_obs_at;
        v.pending_acks = self.pending.len();
        self.view_tx.send_replace(Arc::new(v.clone()));
    }

    async fn shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, self.inflight.next()).await {
                Ok(Some(c)) => self.handle_completion(c).await,
                _ => break,
            }
        }
        self.state_dirty = true;
        self.flush(true).await;
        self.view.state = DriverState::Stopped;
        self.publish_view(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_follows_events_within_the_window() {
        let w = Duration::from_secs(120);
        let mut c = JobClock::new(UnixMillis(0), w);
        let wall = UnixMillis(1_000_000);
        // No events: the wall clock minus the window.
        assert_eq!(c.now(wall), UnixMillis(880_000));
        // A backlog 60 s old is replayed at its own time.
        c.observe_event(UnixMillis(940_000));
        assert_eq!(c.now(wall), UnixMillis(940_000));
        c.observe_event(UnixMillis(941_000));
        assert_eq!(c.now(wall), UnixMillis(941_000));
        // A batch stamped in the future does not move the clock past the wall clock.
        c.observe_event(UnixMillis(2_000_000));
        assert_eq!(c.now(wall), wall);
        // Never backwards.
        assert_eq!(c.now(UnixMillis(999_000)), wall);
        // Events far behind are clamped to the window.
        let mut c = JobClock::new(UnixMillis(0), w);
        c.observe_event(UnixMillis(10_000));
        assert_eq!(c.now(wall), UnixMillis(880_000));
    }
}

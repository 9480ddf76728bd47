//! The running agent: four tasks around one shared state.
//!
//! ```text
//!  scrape loop ──push──▶ OutageSpool ──front/ack──▶ forwarder ──JetStream──▶ DEMETER_METRICS
//!      │                                                 ▲
//!      └─ state ──▶ heartbeat task ──core NATS──▶ demeter.agents.….heartbeat
//!  HTTP server: /healthz /readyz /metrics (reads the shared state)
//! ```
//!
//! The scrape loop never waits on NATS: it pushes into the spool (bounded, drop-oldest) and goes
//! on. The forwarder publishes the oldest entry, waits for its ack, then takes the next, so the
//! order on the stream is the scrape order, also after an outage. On shutdown the scrape loop
//! stops first, the forwarder drains the spool until it is empty or the drain timeout passes, and
//! what is left goes to the spool directory when there is one.

use crate::batch::{BatchBuilder, new_run_id};
use crate::config::Settings;
use crate::container::ContainerStats;
use crate::publish::{JetStreamPublisher, PublishError, Publisher};
use crate::scrape::{Scraper, backoff};
use crate::select::Selector;
use crate::spool::{DirIo, Entry, OutageSpool, SpoolLimits};
use crate::telemetry::{
    BatchPublished, ExpositionIssues, PublishFailed, ScrapeCompleted, ScrapeFailed, Telemetry,
};
use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use demeter_common::wire::{AgentHeartbeat, AgentState, SCHEMA_VERSION, Sample, Source};
use demeter_common::{UnixMillis, subject};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

const TM_UNKNOWN: u8 = 0;
const TM_UP: u8 = 1;
const TM_DOWN: u8 = 2;

/// Lifecycle phase, broadcast to the tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Stop scraping; publish what is buffered until the deadline.
    Draining(tokio::time::Instant),
    Stopped,
}

/// State shared by the tasks and the HTTP handlers.
#[derive(Debug)]
pub struct Shared {
    pub telemetry: Telemetry,
    spool: Mutex<OutageSpool<DirIo>>,
    reported_drops: AtomicU64,
    reported_spool_errors: AtomicU64,
    spool_changed: Notify,
    nats_changed: Notify,
    state_changed: Notify,
    tm: AtomicU8,
    nats_connected: AtomicBool,
    stream_ready: AtomicBool,
    draining: AtomicBool,
    scrape_errors_total: AtomicU64,
    last_scrape_error: Mutex<Option<String>>,
    /// `agent_seq` + 1 of the last batch built (0: none yet).
    next_seq: AtomicU64,
    /// Milliseconds since `started` of the scrape loop's last turn.
    last_turn_ms: AtomicU64,
    started: Instant,
    stale_after: Duration,
}

impl Shared {
    fn new(spool: OutageSpool<DirIo>, stale_after: Duration) -> Self {
        Shared {
            telemetry: Telemetry::new(),
            spool: Mutex::new(spool),
            reported_drops: AtomicU64::new(0),
            reported_spool_errors: AtomicU64::new(0),
            spool_changed: Notify::new(),
            nats_changed: Notify::new(),
            state_changed: Notify::new(),
            tm: AtomicU8::new(TM_UNKNOWN),
            nats_connected: AtomicBool::new(false),
            stream_ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            scrape_errors_total: AtomicU64::new(0),
            last_scrape_error: Mutex::new(None),
            next_seq: AtomicU64::new(0),
            last_turn_ms: AtomicU64::new(0),
            started: Instant::now(),
            stale_after,
        }
    }

    /// Runs `f` on the spool, then brings the depth gauge and the drop counters up to date.
    fn with_spool<T>(&self, f: impl FnOnce(&mut OutageSpool<DirIo>) -> T) -> T {
        let mut s = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut s);
        self.telemetry.buffer_depth.set(s.len() as i64);
        let drops = s.dropped_total();
        let prev = self.reported_drops.swap(drops, Ordering::Relaxed);
        if drops > prev {
            self.telemetry.dropped.inc_by(drops - prev);
            tracing::warn!(
                dropped = drops - prev,
                dropped_total = drops,
                "buffer full: dropped the oldest batches"
            );
        }
        let errs = s.io_errors_total();
        let prev = self.reported_spool_errors.swap(errs, Ordering::Relaxed);
        if errs > prev {
            self.telemetry.spool_errors.inc_by(errs - prev);
        }
        out
    }

    fn push(&self, entry: Entry) {
        self.with_spool(|s| s.push(entry));
        self.spool_changed.notify_one();
    }

    pub fn buffered(&self) -> usize {
        self.with_spool(|s| s.len())
    }

    fn set_tm(&self, v: u8) {
        if self.tm.swap(v, Ordering::Relaxed) != v {
            self.state_changed.notify_one();
        }
    }

    fn set_nats(&self, up: bool) {
        self.telemetry.nats_connected.set(up as i64);
        if self.nats_connected.swap(up, Ordering::Relaxed) != up {
            self.state_changed.notify_one();
        }
        self.nats_changed.notify_one();
    }

    /// What the heartbeat reports.
    pub fn state(&self) -> AgentState {
        if self.draining.load(Ordering::Relaxed) {
            AgentState::Draining
        } else if self.tm.load(Ordering::Relaxed) == TM_DOWN {
            AgentState::TaskManagerUnreachable
        } else if !self.nats_connected.load(Ordering::Relaxed) || self.buffered() > 1 {
            AgentState::Buffering
        } else {
            AgentState::Healthy
        }
    }

    fn touch(&self) {
        self.last_turn_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Live: the scrape loop turned recently.
    pub fn healthy(&self) -> bool {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) <= self.stale_after
    }

    /// Ready: connected to NATS and the stream exists.
    pub fn ready(&self) -> bool {
        self.nats_connected.load(Ordering::Relaxed) && self.stream_ready.load(Ordering::Relaxed)
    }

    fn readiness_json(&self) -> String {
        let tm = match self.tm.load(Ordering::Relaxed) {
            TM_UP => "up",
            TM_DOWN => "unreachable",
            _ => "unknown",
        };
        serde_json::json!({
            "ready": self.ready(),
            "nats_connected": self.nats_connected.load(Ordering::Relaxed),
            "stream_ready": self.stream_ready.load(Ordering::Relaxed),
            "taskmanager": tm,
            "buffered": self.buffered(),
            "state": format!("{:?}", self.state()),
        })
        .to_string()
    }
}

/// Runs the agent until `shutdown` completes, then drains and returns.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let spool = match &settings.spool_dir {
        Some(dir) => {
            let io = DirIo::new(dir).with_context(|| format!("spool directory {}", dir.display()))?;
            let limits = SpoolLimits {
                memory_capacity: settings.buffer_size,
                disk_max_bytes: settings.spool_max_bytes,
            };
            let spool = OutageSpool::open(limits, io)
                .with_context(|| format!("spool directory {}", dir.display()))?;
            if !spool.is_empty() {
                tracing::info!(batches = spool.len(), dir = %dir.display(), "recovered spooled batches from a previous run");
            }
            spool
        }
        None => OutageSpool::memory_only(settings.buffer_size),
    };
    let stale_after = settings.interval.max(settings.scrape_backoff_max) * 3
        + settings.scrape_timeout
        + Duration::from_secs(5);
    let shared = Arc::new(Shared::new(spool, stale_after));
    shared.with_spool(|_| ());
    shared.touch();

    let run_id = new_run_id();
    let id = &settings.identity;
    let source = Source {
        namespace: id.namespace.clone(),
        deployment: id.deployment.clone(),
        job_id: None,
        taskmanager_id: id.taskmanager.clone(),
        pod: id.pod.clone(),
        host: id.host.clone(),
    };
    let builder = BatchBuilder::new(source, run_id.clone());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        run_id = %run_id,
        metrics_url = %settings.metrics_url,
        nats_url = %settings.nats_url_redacted(),
        subject = builder.subject(),
        interval_ms = settings.interval.as_millis() as u64,
        buffer_size = settings.buffer_size,
        spool_dir = ?settings.spool_dir,
        "demeter-agent starting"
    );

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");

    let ev_shared = shared.clone();
    let publisher = JetStreamPublisher::connect(&settings, move |ev| match ev {
        async_nats::Event::Connected => {
            tracing::info!("connected to NATS");
            ev_shared.set_nats(true);
        }
        async_nats::Event::Disconnected => {
            tracing::warn!("disconnected from NATS; buffering batches");
            ev_shared.set_nats(false);
        }
        other => tracing::debug!(event = %other, "NATS event"),
    })
    .await
    .context("NATS connection settings")?;

    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let scraper = Scraper::new(settings.metrics_url.clone(), settings.scrape_timeout)?;
    let heartbeat_subject = subject::heartbeat(&id.namespace, &id.deployment, &id.taskmanager);

    let http = tokio::spawn(serve(listener, shared.clone(), phase_rx.clone()));
    let scrape = tokio::spawn(scrape_loop(
        shared.clone(),
        scraper,
        builder.clone(),
        ContainerStats::new(settings.cgroup_root.clone()),
        settings.clone(),
        phase_rx.clone(),
    ));
    let forward = tokio::spawn(forward(shared.clone(), publisher.clone(), phase_rx.clone()));
    let heartbeat = tokio::spawn(heartbeat_loop(
        shared.clone(),
        publisher.clone(),
        builder.source().clone(),
        run_id.clone(),
        heartbeat_subject.clone(),
        settings.heartbeat_interval,
        phase_rx.clone(),
    ));

    shutdown.await;
    let buffered = shared.buffered();
    tracing::info!(
        buffered,
        drain_timeout_ms = settings.drain_timeout.as_millis() as u64,
        "shutting down: draining the buffer"
    );
    shared.draining.store(true, Ordering::Relaxed);
    shared.state_changed.notify_one();
    let _ = phase_tx.send(Phase::Draining(tokio::time::Instant::now() + settings.drain_timeout));
    let _ = scrape.await;
    let _ = forward.await;

    let left = shared.buffered();
    if left > 0 {
        let written = shared.with_spool(|s| s.persist_memory());
        if settings.spool_dir.is_some() {
            tracing::warn!(
                left,
                written_to_spool = written,
                "NATS did not take every batch before the drain timeout"
            );
        } else {
            tracing::warn!(
                lost = left,
                "NATS did not take every batch before the drain timeout and no spool_dir is set"
            );
        }
    }
    // A last heartbeat with the final figures.
    send_heartbeat(&shared, &publisher, builder.source(), &run_id, &heartbeat_subject).await;
    publisher.flush().await;
    let _ = phase_tx.send(Phase::Stopped);
    let _ = heartbeat.await;
    let _ = http.await;
    tracing::info!(
        published_total = shared.telemetry.published.get(),
        dropped_total = shared.telemetry.dropped.get(),
        "demeter-agent stopped"
    );
    Ok(())
}

async fn scrape_loop(
    shared: Arc<Shared>,
    scraper: Scraper,
    mut builder: BatchBuilder,
    mut container: ContainerStats,
    settings: Settings,
    mut phase: watch::Receiver<Phase>,
) {
    let mut selector = Selector::new();
    let mut next = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = phase.wait_for(|p| *p != Phase::Running) => return,
        }
        shared.touch();
        let t0 = tokio::time::Instant::now();
        match scraper.scrape().await {
            Ok(text) => {
                let duration = t0.elapsed();
                if failures > 0 {
                    tracing::info!(failed_scrapes = failures, "the TaskManager answers again");
                }
                failures = 0;
                *shared.last_scrape_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                shared.set_tm(TM_UP);
                let now = UnixMillis::now();
                let selection = selector.select(&text, now);
                ExpositionIssues { stats: &selection.stats }.emit(&shared.telemetry);
                let mut samples = selection.samples;
                samples.push(Sample::Container(container.sample()));
                let n_samples = samples.len();
                let batch = builder.build(selection.job_id, samples, now);
                let entry = builder.entry(&batch);
                ScrapeCompleted {
                    duration,
                    exposition_bytes: text.len(),
                    batch_bytes: entry.payload.len(),
                    samples: n_samples,
                    seq: batch.agent_seq,
                }
                .emit(&shared.telemetry);
                shared.next_seq.store(batch.agent_seq + 1, Ordering::Relaxed);
                shared.push(entry);
                // Keep the cadence; after a slow scrape, go on at once rather than catch up.
                next = (next + settings.interval).max(tokio::time::Instant::now());
            }
            Err(e) => {
                failures += 1;
                shared.scrape_errors_total.fetch_add(1, Ordering::Relaxed);
                let msg = e.to_string();
                *shared.last_scrape_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
                shared.set_tm(TM_DOWN);
                let wait =
                    backoff(settings.interval, settings.scrape_backoff_max, failures, rand::random::<f64>());
                ScrapeFailed { error_type: e.kind(), error: &msg, consecutive: failures, retry_in: wait }
                    .emit(&shared.telemetry);
                next = t0 + wait;
            }
        }
    }
}

/// Publishes the spool's oldest entry until it is acked, then the next, in order.
async fn forward<P: Publisher>(shared: Arc<Shared>, publisher: P, mut phase: watch::Receiver<Phase>) {
    let mut failures = 0u32;
    let mut last_stream_attempt: Option<Instant> = None;
    loop {
        let current = *phase.borrow();
        let deadline = match current {
            Phase::Running => None,
            Phase::Draining(d) => Some(d),
            Phase::Stopped => return,
        };
        if let Some(d) = deadline
            && (shared.buffered() == 0 || tokio::time::Instant::now() >= d)
        {
            return;
        }
        let Some((idx, entry)) = shared.with_spool(|s| s.front()) else {
            tokio::select! {
                _ = shared.spool_changed.notified() => {}
                _ = phase.changed() => {}
            }
            continue;
        };
        if publisher.is_connected()
            && !shared.stream_ready.load(Ordering::Relaxed)
            && last_stream_attempt.is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
        {
            last_stream_attempt = Some(Instant::now());
            match publisher.ensure_stream().await {
                Ok(outcome) => {
                    tracing::info!(
                        stream = demeter_common::subject::METRICS_STREAM,
                        ?outcome,
                        "metrics stream ready"
                    );
                    shared.stream_ready.store(true, Ordering::Relaxed);
                }
                // Maybe the agent may publish but not manage streams; try publishing anyway.
                Err(e) => tracing::warn!(error = %e, "cannot create or update the metrics stream"),
            }
        }
        match publisher.publish(&entry).await {
            Ok(duplicate) => {
                failures = 0;
                shared.with_spool(|s| s.ack(idx));
                shared.stream_ready.store(true, Ordering::Relaxed);
                BatchPublished { seq: entry.seq, duplicate }.emit(&shared.telemetry);
            }
            Err(e) => {
                failures += 1;
                if matches!(e, PublishError::NoStream(_)) {
                    shared.stream_ready.store(false, Ordering::Relaxed);
                    last_stream_attempt = None;
                }
                let msg = e.to_string();
                PublishFailed { error_type: e.kind(), error: &msg, seq: entry.seq, consecutive: failures }
                    .emit(&shared.telemetry);
                let wait = Duration::from_millis(100u64.saturating_mul(1 << failures.min(5)).min(2_000));
                let sleep = tokio::time::sleep(wait);
                tokio::select! {
                    _ = sleep => {}
                    // Retry at once after a reconnect.
                    _ = shared.nats_changed.notified() => {}
                    _ = phase.changed() => {}
                }
            }
        }
    }
}

async fn send_heartbeat<P: Publisher>(
    shared: &Shared,
    publisher: &P,
    source: &Source,
    run_id: &str,
    subject: &str,
) {
    let next_seq = shared.next_seq.load(Ordering::Relaxed);
    let hb = AgentHeartbeat {
        schema_version: SCHEMA_VERSION,
        source: source.clone(),
        agent_run_id: run_id.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        sent_at: UnixMillis::now(),
        state: shared.state(),
        last_seq: next_seq.saturating_sub(1),
        buffered: shared.buffered() as u64,
        dropped_total: shared.telemetry.dropped.get(),
        scrape_errors_total: shared.scrape_errors_total.load(Ordering::Relaxed),
        last_scrape_error: shared.last_scrape_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    match publisher.heartbeat(subject.to_string(), Bytes::from(hb.encode())).await {
        Ok(()) => {
            shared.telemetry.heartbeats.inc();
            tracing::debug!(state = ?hb.state, buffered = hb.buffered, "heartbeat sent");
        }
        Err(e) => tracing::debug!(error = %e, "heartbeat not sent"),
    }
}

async fn heartbeat_loop<P: Publisher>(
    shared: Arc<Shared>,
    publisher: P,
    source: Source,
    run_id: String,
    subject: String,
    every: Duration,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // State changes are reported at once.
            _ = shared.state_changed.notified() => {}
            _ = phase.wait_for(|p| *p == Phase::Stopped) => return,
        }
        send_heartbeat(&shared, &publisher, &source, &run_id, &subject).await;
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut phase: watch::Receiver<Phase>) {
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let stopped = async move {
        let _ = phase.wait_for(|p| *p == Phase::Stopped).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the scrape loop is stuck\n")
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let code = if s.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], s.readiness_json())
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    s.with_spool(|_| ());
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.telemetry.encode(),
    )
}

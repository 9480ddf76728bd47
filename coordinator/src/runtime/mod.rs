//! The coordinator's runtime: wiring of ingest, per-job drivers, store, backend and HTTP API.
//!
//! ```text
//!  NATS JetStream ──ingest──► Jobs::route ──mpsc──► JobDriver (one task per job)
//!   (durable consumer)          │                    │  JobAggregator → Controller (sans-IO core)
//!                               │                    ├─ actions ──► Backend
//!                               │                    ├─ checkpoints ──► Store (SQLite) ──► acks
//!                               ▼                    └─ JobView ──watch──► API (axum)
//!                           heartbeats ──► Jobs::agents ─────────────────► API
//! ```
//!
//! **Architecture invariants.**
//! - Decisions are the core's; the runtime only moves data and carries actions out.
//! - Only the drivers read the clock on behalf of the core.
//! - A batch is acknowledged only when its effect is durable (see [`driver`]).
//! - A reconfiguration id reaches the backend at most once (intent before, outcome after).
//! - While NATS or the store is unhealthy, nothing is applied ([`health`]).

pub mod api;
pub mod config;
pub mod driver;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod store;

use anyhow::Context;
use demeter_common::UnixMillis;
use demeter_common::wire::AgentHeartbeat;
use demeter_core::controller::Mode;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

use self::config::CoordinatorConfig;
use self::driver::{DriverExit, DriverMsg, DriverSettings, JobDriver, JobView, Shared};
use self::health::Health;
use self::metrics::Metrics;
use self::store::Store;
use crate::backend::{self, JobKey};

/// Messages a driver's inbox holds before ingest waits for it.
const DRIVER_INBOX: usize = 4096;

/// Where a batch of a job goes.
#[derive(Debug)]
pub enum Route {
    To(mpsc::Sender<DriverMsg>),
    /// Not managed, with a bounded reason (`too_many_jobs`, `not_configured`).
    Refused(&'static str),
}

struct JobEntry {
    tx: mpsc::Sender<DriverMsg>,
    view: watch::Receiver<Arc<JobView>>,
    supervisor: tokio::task::JoinHandle<()>,
}

/// The managed jobs: one supervised driver each.
pub struct Jobs {
    cfg: Arc<CoordinatorConfig>,
    shared: Shared,
    entries: Mutex<HashMap<JobKey, JobEntry>>,
    backend_modes: Mutex<HashMap<JobKey, Mode>>,
    agents: Mutex<HashMap<JobKey, BTreeMap<String, AgentHeartbeat>>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("jobs", &self.entries.lock().map(|e| e.len()).unwrap_or(0)).finish()
    }
}

impl Jobs {
    pub fn new(cfg: Arc<CoordinatorConfig>, shared: Shared) -> Arc<Jobs> {
        Arc::new(Jobs {
            cfg,
            shared,
            entries: Mutex::new(HashMap::new()),
            backend_modes: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The driver of `key`, started on first use if the job may be managed.
    pub async fn route(self: &Arc<Self>, key: &JobKey) -> Route {
        if let Some(e) = self.entries.lock().expect("jobs lock").get(key) {
            return Route::To(e.tx.clone());
        }
        let configured = self.cfg.job_override(key).is_some();
        if !configured && !self.cfg.discover_jobs {
            return Route::Refused("not_configured");
        }
        match self.spawn(key.clone()) {
            Some(tx) => Route::To(tx),
            None => Route::Refused("too_many_jobs"),
        }
    }

    fn settings_for(&self, key: &JobKey) -> DriverSettings {
        let c = &self.cfg;
        let backend_mode = self.backend_modes.lock().expect("jobs lock").get(key).copied();
        DriverSettings {
            key: key.clone(),
            controller: c.controller_config_for(key, backend_mode),
            aggregator: c.aggregator.clone(),
            fallback_current: c.job_override(key).and_then(|j| j.current).unwrap_or(c.default_current),
            snapshot_interval: c.store.snapshot_interval,
            replay_window: c.ingest.replay_window,
            observation_bucket: c.store.observation_bucket,
            backend_poll_interval: c.backend_poll_interval,
            ack_wait: c.ingest.ack_wait,
        }
    }

    /// Starts a supervised driver; `None` when `max_jobs` are managed already.
    fn spawn(self: &Arc<Self>, key: JobKey) -> Option<mpsc::Sender<DriverMsg>> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut entries = self.entries.lock().expect("jobs lock");
        if let Some(e) = entries.get(&key) {
            return Some(e.tx.clone());
        }
        if entries.len() >= self.cfg.max_jobs {
            return None;
        }
        let (tx, rx) = mpsc::channel(DRIVER_INBOX);
        let settings = self.settings_for(&key);
        let (view_tx, view_rx) = watch::channel(Arc::new(JobView::new(
            &key,
            settings.controller.mode,
            self.shared.backend.name(),
        )));
        let this = self.clone();
        let k = key.clone();
        let supervisor = tokio::spawn(async move { this.supervise(k, settings, rx, view_tx).await });
        entries.insert(key.clone(), JobEntry { tx: tx.clone(), view: view_rx, supervisor });
        self.shared.metrics.managed_jobs.set(entries.len() as i64);
        tracing::info!(job = %key, "managing job");
        Some(tx)
    }

    /// Runs a job's driver; restarts it (from its last checkpoint) if it panics.
    async fn supervise(
        self: Arc<Self>,
        key: JobKey,
        settings: DriverSettings,
        mut rx: mpsc::Receiver<DriverMsg>,
        view_tx: watch::Sender<Arc<JobView>>,
    ) {
        let mut restarts = 0u32;
        loop {
            let driver =
                match JobDriver::start(settings.clone(), self.shared.clone(), rx, view_tx.clone()).await {
                    Ok(d) => d,
                    Err((DriverExit::Failed(msg), mut rx)) => {
                        tracing::error!(job = %key, error = %msg, "job not managed");
                        // Keep answering: batches are acknowledged (there is nothing to keep them for).
                        while let Some(m) = rx.recv().await {
                            match m {
                                DriverMsg::Batch { ack, .. } => {
                                    self.shared.metrics.reject("job_failed");
                                    if let Some(a) = ack {
                                        a.ack().await;
                                    }
                                }
                                DriverMsg::Recommend(_) => {}
                                DriverMsg::Sync(done) => {
                                    let _ = done.send(());
                                }
                                DriverMsg::Shutdown(done) => {
                                    let _ = done.send(());
                                    return;
                                }
                            }
                        }
                        return;
                    }
                    Err((DriverExit::Stopped, _)) => return,
                };
            match tokio::spawn(driver.run()).await {
                Ok(_) => return,
                Err(e) => {
                    restarts += 1;
                    let delay = ingest::backoff(restarts as usize + 3, Duration::from_secs(300));
                    tracing::error!(job = %key, error = %e, restarts, ?delay,
                        "job driver crashed; restarting it from its last checkpoint (unacknowledged batches are redelivered)");
                    tokio::time::sleep(delay).await;
                    if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let (tx, new_rx) = mpsc::channel(DRIVER_INBOX);
                    if let Some(e) = self.entries.lock().expect("jobs lock").get_mut(&key) {
                        e.tx = tx;
                    }
                    rx = new_rx;
                }
            }
        }
    }

    /// Starts drivers for the jobs known before any metrics arrive: `[[jobs]]`, jobs with
    /// stored state (so that interrupted actions are reconciled at once), and the backend's.
    pub async fn start_known(self: &Arc<Self>) {
        let mut keys: Vec<JobKey> = self.cfg.jobs.iter().map(|j| j.key()).collect();
        match self.shared.store.jobs().await {
            Ok(stored) => keys.extend(stored),
            Err(e) => tracing::warn!(error = %e, "cannot list the stored jobs"),
        }
        match self.shared.backend.list_jobs().await {
            Ok(jobs) => {
                let mut modes = self.backend_modes.lock().expect("jobs lock");
                for j in jobs {
                    if let Some(m) = j.mode {
                        modes.insert(j.key.clone(), m);
                    }
                    keys.push(j.key);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, backend = self.shared.backend.name(), "cannot list the backend's jobs")
            }
        }
        keys.sort();
        keys.dedup();
        for k in keys.into_iter().filter(|k| self.cfg.watches(&k.namespace)) {
            if self.spawn(k.clone()).is_none() {
                tracing::warn!(job = %k, max_jobs = self.cfg.max_jobs, "not managing job: max_jobs reached");
            }
        }
    }

    pub fn heartbeat(&self, h: AgentHeartbeat) {
        let key = JobKey::new(&h.source.namespace, &h.source.deployment);
        if !self.cfg.watches(&key.namespace) {
            return;
        }
        let mut agents = self.agents.lock().expect("jobs lock");
        if !agents.contains_key(&key) && agents.len() >= self.cfg.max_jobs {
            return;
        }
        let tms = agents.entry(key).or_default();
        if tms.len() < 10_000 || tms.contains_key(&h.source.taskmanager_id) {
            tms.insert(h.source.taskmanager_id.clone(), h);
        }
    }

    /// The latest view of every job.
    pub fn views(&self) -> Vec<Arc<JobView>> {
        let entries = self.entries.lock().expect("jobs lock");
        let mut v: Vec<Arc<JobView>> = entries.values().map(|e| e.view.borrow().clone()).collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    pub fn view(&self, key: &JobKey) -> Option<Arc<JobView>> {
        self.entries.lock().expect("jobs lock").get(key).map(|e| e.view.borrow().clone())
    }

    /// Agents' latest heartbeats of a job, fresh within `max_age`.
    pub fn agents(&self, key: &JobKey, now: UnixMillis, max_age: Duration) -> Vec<AgentHeartbeat> {
        self.agents
            .lock()
            .expect("jobs lock")
            .get(key)
            .map(|m| m.values().filter(|h| now.since(h.sent_at) <= max_age).cloned().collect())
            .unwrap_or_default()
    }

    pub fn sender(&self, key: &JobKey) -> Option<mpsc::Sender<DriverMsg>> {
        self.entries.lock().expect("jobs lock").get(key).map(|e| e.tx.clone())
    }

    /// Checkpoints and stops every driver.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let entries: Vec<(JobKey, JobEntry)> = self.entries.lock().expect("jobs lock").drain().collect();
        let mut waits = Vec::new();
        for (k, e) in &entries {
            let (done_tx, done_rx) = oneshot::channel();
            if e.tx.send(DriverMsg::Shutdown(done_tx)).await.is_ok() {
                waits.push((k.clone(), done_rx));
            }
        }
        for (k, w) in waits {
            if tokio::time::timeout(grace, w).await.is_err() {
                tracing::warn!(job = %k, "driver did not stop in time");
            }
        }
        for (_, e) in entries {
            e.supervisor.abort();
        }
        self.shared.metrics.managed_jobs.set(0);
    }
}

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(cfg: CoordinatorConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());
    let store = Store::open_in(&cfg.data_dir);
    let st = store.status();
    if st.healthy {
        tracing::info!(path = %st.path.display(), "store opened");
    } else {
        tracing::error!(path = %st.path.display(), error = st.error.as_deref().unwrap_or(""),
            "store unavailable: running recommend-only (state is not persisted until this is fixed)");
    }
    let backend = backend::build(&cfg)?;
    let health =
        Arc::new(Health::new(cfg.mode, backend.name(), backend.can_apply(), store.clone(), metrics.clone()));
    let shared = Shared {
        store: store.clone(),
        backend: backend.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let jobs = Jobs::new(cfg.clone(), shared);

    let listener = tokio::net::TcpListener::bind(cfg.listen_addr())
        .await
        .with_context(|| format!("cannot listen on {} (`listen`)", cfg.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_state = api::ApiState {
        jobs: jobs.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        api_token: cfg.api_token.clone(),
    };
    let mut api_stop = stop_rx.clone();
    let api = tokio::spawn(async move {
        let app = api::router(api_state);
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "API server failed");
        }
    });
    tracing::info!(listen = %cfg.listen, mode = ?cfg.mode, backend = backend.name(), nats = %cfg.nats_url,
        data_dir = %cfg.data_dir.display(), "coordinator started");

    // With several replicas only the leader consumes and acts; the others serve probes.
    let shutdown = shutdown;
    tokio::pin!(shutdown);
    let mut leadership = backend.leadership();
    if let Some(rx) = leadership.as_mut()
        && !*rx.borrow()
    {
        health.set_standby(true);
        tracing::info!("standing by: another replica leads");
        let elected = tokio::select! {
            r = rx.wait_for(|l| *l) => r.is_ok(),
            _ = &mut shutdown => false,
        };
        if !elected {
            let _ = stop_tx.send(true);
            let _ = api.await;
            tracing::info!("stopped while standing by");
            return Ok(());
        }
        health.set_standby(false);
        tracing::info!("elected leader: consuming metrics and running the controllers");
    }

    jobs.start_known().await;

    let client = ingest::NatsSettings::from_config(&cfg).connect_supervised(health.clone()).await?;
    let ingest = ingest::Ingest {
        cfg: cfg.clone(),
        client: client.clone(),
        jobs: jobs.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let ingest_task = tokio::spawn(ingest.clone().run(stop_rx.clone()));
    let heartbeat_task = tokio::spawn(ingest.heartbeats(stop_rx.clone()));
    let maintenance =
        tokio::spawn(maintain(store.clone(), health.clone(), cfg.store.retention, stop_rx.clone()));

    let lost_leadership = async {
        match leadership.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|l| !*l).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let lost = tokio::select! {
        _ = &mut shutdown => false,
        _ = lost_leadership => true,
    };
    if lost {
        tracing::error!("lost the leadership: checkpointing and exiting, to come back as a standby");
    }
    tracing::info!("shutting down: checkpointing every job");
    let _ = stop_tx.send(true);
    let _ = ingest_task.await;
    jobs.shutdown(Duration::from_secs(20)).await;
    // The drivers' final acks are buffered in the client: send them before exiting.
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await.unwrap_or(Ok(())) {
        tracing::warn!(error = %e, "could not flush the last acknowledgements; those batches will be redelivered");
    }
    heartbeat_task.abort();
    maintenance.abort();
    let _ = api.await;
    tracing::info!("stopped");
    if lost {
        anyhow::bail!("lost the leadership");
    }
    Ok(())
}

/// Store probing (while unhealthy), pruning (hourly) and health gauges.
async fn maintain(store: Store, health: Arc<Health>, retention: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !store.healthy() && store.status().recoverable {
            let _ = store.probe().await;
        }
        health.refresh();
        if store.healthy() && last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(tokio::time::Instant::now());
            let before = UnixMillis(UnixMillis::now().0 - retention.as_millis() as i64);
            match store.prune(before).await {
                Ok(n) if n > 0 => tracing::info!(rows = n, "pruned history older than the retention"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
        }
    }
}

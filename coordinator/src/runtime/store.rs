//! The embedded SQLite store: observations, performance samples, decisions, forecasts, each
//! job's controller state, and reconfiguration/profiling intents with their outcomes.
//!
//! **Invariants.**
//! - One [`Checkpoint`] is one transaction. The driver puts a job's controller snapshot in the
//!   same transaction as the events, observations and intents produced since the previous
//!   checkpoint, so after a crash the store holds a state and exactly the history that led to it.
//! - An intent is committed before its action is carried out, and its outcome is committed with
//!   the snapshot that has absorbed it. An intent without an outcome therefore means "the
//!   coordinator stopped while this was in flight": reconcile it, never repeat it.
//! - `synchronous = FULL` in WAL mode: a commit survives a power loss, not only a `kill -9`.
//! - The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] only ever grows. A database
//!   written by a newer build is refused rather than guessed at.
//!
//! **Failure.** A database that cannot be opened (corrupt, not a database), a read-only file
//! system or a full disk make the store *unhealthy*: the error is kept for `/readyz` and the
//! logs, writes fail fast, and the runtime degrades to recommend-only. A store that failed while
//! running is probed every few seconds and becomes healthy again when a write succeeds; a store
//! that could not be opened stays unhealthy until restart, and is never written to, so that
//! nothing overwrites what an operator may still recover.

use demeter_common::UnixMillis;
use demeter_core::controller::{ControllerState, DecisionRecord};
use demeter_core::obs::PerfSample;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backend::JobKey;

/// The schema, one migration per entry; entry `i` takes `user_version` from `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE jobs (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    ) WITHOUT ROWID;
    CREATE TABLE controller_state (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        saved_at INTEGER NOT NULL,
        last_obs_at INTEGER,
        observations INTEGER NOT NULL,
        state TEXT NOT NULL,
        PRIMARY KEY (namespace, name)
    ) WITHOUT ROWID;
    CREATE TABLE observations (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        offered_sum REAL NOT NULL,
        throughput_sum REAL NOT NULL,
        lag_last REAL NOT NULL,
        p95_sum REAL NOT NULL,
        p95_n INTEGER NOT NULL,
        busy_sum REAL NOT NULL,
        backpressure_sum REAL NOT NULL,
        cpu_sum REAL NOT NULL,
        memory_sum REAL NOT NULL,
        taskmanagers_max INTEGER NOT NULL,
        PRIMARY KEY (namespace, name, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        at INTEGER NOT NULL,
        origin TEXT NOT NULL,
        sample TEXT NOT NULL
    );
    CREATE INDEX samples_by_job ON samples (namespace, name, at);
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        acted INTEGER NOT NULL,
        emergency INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX decisions_by_job ON decisions (namespace, name, at);
    CREATE TABLE forecasts (
        id INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        at INTEGER NOT NULL,
        forecast TEXT NOT NULL
    );
    CREATE INDEX forecasts_by_job ON forecasts (namespace, name, at);
    CREATE TABLE intents (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reconfigure', 'profiling')),
        id INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (namespace, name, kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE outcomes (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        id INTEGER NOT NULL,
        at INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (namespace, name, kind, id),
        FOREIGN KEY (namespace, name, kind, id) REFERENCES intents (namespace, name, kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
];

/// Why the store failed, with a bounded label for metrics.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the disk is full: {0}")]
    Full(String),
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    #[error("the database is corrupt or not a SQLite database: {0}")]
    Corrupt(String),
    #[error("the database cannot be opened: {0}")]
    CannotOpen(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error(
        "the database schema is version {found}, newer than the {known} this build knows; refusing to touch it"
    )]
    TooNew { found: i64, known: i64 },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Full(_) => "full",
            StoreError::ReadOnly(_) => "read_only",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::CannotOpen(_) => "cannot_open",
            StoreError::Io(_) => "io",
            StoreError::TooNew { .. } => "schema_too_new",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Other(_) => "other",
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let text = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full(text),
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(text),
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => StoreError::Corrupt(text),
            Some(ErrorCode::CannotOpen) => StoreError::CannotOpen(text),
            Some(ErrorCode::SystemIoFailure) => StoreError::Io(text),
            _ => StoreError::Other(text),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What an intent is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntentKind {
    Reconfigure,
    Profiling,
}

impl IntentKind {
    fn as_str(self) -> &'static str {
        match self {
            IntentKind::Reconfigure => "reconfigure",
            IntentKind::Profiling => "profiling",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "profiling" { IntentKind::Profiling } else { IntentKind::Reconfigure }
    }
}

/// An action about to be carried out (`body` is the action as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub kind: IntentKind,
    pub id: u64,
    pub created_at: UnixMillis,
    pub body: serde_json::Value,
}

/// How an intent ended (`body` is the outcome as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRow {
    pub kind: IntentKind,
    pub id: u64,
    pub at: UnixMillis,
    pub ok: bool,
    pub body: serde_json::Value,
}

/// An intent and its outcome, if it has one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentRecord {
    pub intent: Intent,
    pub outcome: Option<OutcomeRow>,
}

/// Sums over the observations of one bucket, added to what the bucket already holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObsBucket {
    /// Start of the bucket (ms since the epoch, a multiple of the bucket length).
    pub bucket: i64,
    pub n: u32,
    pub offered_sum: f64,
    pub throughput_sum: f64,
    pub lag_last: f64,
    pub p95_sum: f64,
    pub p95_n: u32,
    pub busy_sum: f64,
    pub backpressure_sum: f64,
    pub cpu_sum: f64,
    pub memory_sum: f64,
    pub taskmanagers_max: u32,
}

impl ObsBucket {
    pub fn add(&mut self, o: &demeter_core::obs::JobObservation) {
        self.n += 1;
        self.offered_sum += o.offered_rate;
        self.throughput_sum += o.throughput;
        self.lag_last = o.lag;
        if let Some(p) = o.p95_latency_ms {
            self.p95_sum += p;
            self.p95_n += 1;
        }
        self.busy_sum += o.busy_ratio;
        self.backpressure_sum += o.backpressure_ratio;
        self.cpu_sum += o.cpu_cores_used;
        self.memory_sum += o.memory_used_mb;
        self.taskmanagers_max = self.taskmanagers_max.max(o.taskmanagers);
    }
}

/// One stored observation bucket, as averages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObservationRow {
    pub at: UnixMillis,
    pub n: u32,
    pub offered_rate: f64,
    pub throughput: f64,
    pub lag: f64,
    pub p95_latency_ms: Option<f64>,
    pub busy_ratio: f64,
    pub backpressure_ratio: f64,
    pub cpu_cores_used: f64,
    pub memory_used_mb: f64,
    pub taskmanagers: u32,
}

/// A controller snapshot and where the observation stream stood when it was taken.
#[derive(Clone, Debug)]
pub struct SnapshotRow<S> {
    pub state: S,
    /// Time of the newest observation the state has absorbed.
    pub last_obs_at: Option<UnixMillis>,
    /// Observations absorbed since the job was first seen.
    pub observations: u64,
    pub saved_at: UnixMillis,
}

/// What one job's driver writes in one transaction.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub observations: Vec<ObsBucket>,
    pub samples: Vec<PerfSample>,
    /// Decision records with their reason label.
    pub decisions: Vec<(String, DecisionRecord)>,
    /// `(at, forecast as JSON)`.
    pub forecasts: Vec<(UnixMillis, String)>,
    pub intents: Vec<Intent>,
    pub outcomes: Vec<OutcomeRow>,
    /// The controller state, with its watermark.
    pub snapshot: Option<SnapshotRow<StateBlob>>,
}

/// A controller state to persist: serialised on the store's blocking thread, because with a
/// forecaster's history it is about half a megabyte of JSON.
#[derive(Debug)]
pub enum StateBlob {
    State(Box<ControllerState>),
    /// Already JSON (tools and tests).
    Json(String),
}

impl StateBlob {
    fn to_json(&self) -> StoreResult<String> {
        match self {
            StateBlob::State(s) => json(s.as_ref()),
            StateBlob::Json(t) => Ok(t.clone()),
        }
    }
}

impl Checkpoint {
    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
            && self.samples.is_empty()
            && self.decisions.is_empty()
            && self.forecasts.is_empty()
            && self.intents.is_empty()
            && self.outcomes.is_empty()
            && self.snapshot.is_none()
    }
}

/// Health of the store, shared with `/readyz` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreStatus {
    pub healthy: bool,
    pub path: PathBuf,
    pub error: Option<String>,
    pub error_kind: Option<&'static str>,
    /// Whether the store can recover by itself (a runtime failure) or needs a restart.
    pub recoverable: bool,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    status: Mutex<StoreStatus>,
}

/// A handle on the store; clones share one connection. Every method runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn configure(conn: &Connection) -> StoreResult<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn open_rw(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    // WAL lets the API read while a driver writes; FULL makes a commit durable across power loss.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Other(format!("cannot switch to WAL journal mode (got {mode})")));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(&conn)?;
    Ok(conn)
}

fn open_ro(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if v != MIGRATIONS.len() as i64 {
        return Err(StoreError::ReadOnly(format!(
            "schema version {v} needs migrating to {}, which a read-only database cannot",
            MIGRATIONS.len()
        )));
    }
    Ok(conn)
}

/// Brings the schema to the newest version, one transaction per migration.
pub fn migrate(conn: &Connection) -> StoreResult<()> {
    let known = MIGRATIONS.len() as i64;
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if v > known {
        return Err(StoreError::TooNew { found: v, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(v as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn ms(t: UnixMillis) -> i64 {
    t.0
}

impl Store {
    /// Opens (creating) the database at `path`. Never fails: a database that cannot be opened for
    /// writing is opened read-only if possible (state can still be restored), otherwise not at
    /// all; either way the store is unhealthy with the reason. See the module documentation.
    pub fn open(path: &Path) -> Store {
        let (conn, status) = match open_rw(path) {
            Ok(c) => (Some(c), StoreStatus::ok(path)),
            Err(e) => {
                let ro = match &e {
                    StoreError::ReadOnly(_) | StoreError::CannotOpen(_) | StoreError::Io(_)
                        if path.exists() =>
                    {
                        open_ro(path).ok()
                    }
                    _ => None,
                };
                let recoverable = ro.is_some() || matches!(e, StoreError::Full(_) | StoreError::Io(_));
                (ro, StoreStatus::failed(path, &e, recoverable))
            }
        };
        Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                conn: Mutex::new(conn),
                status: Mutex::new(status),
            }),
        }
    }

    /// Opens the store in `data_dir` (created if needed).
    pub fn open_in(data_dir: &Path) -> Store {
        if let Err(e) = std::fs::create_dir_all(data_dir) {
            let path = data_dir.join("demeter.db");
            let err = StoreError::CannotOpen(format!("cannot create {}: {e}", data_dir.display()));
            return Store {
                inner: Arc::new(Inner {
                    path: path.clone(),
                    conn: Mutex::new(None),
                    status: Mutex::new(StoreStatus::failed(&path, &err, true)),
                }),
            };
        }
        Store::open(&data_dir.join("demeter.db"))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn status(&self) -> StoreStatus {
        self.inner.status.lock().expect("store status lock").clone()
    }

    pub fn healthy(&self) -> bool {
        self.inner.status.lock().expect("store status lock").healthy
    }

    fn mark(&self, r: &StoreResult<()>) {
        let mut s = self.inner.status.lock().expect("store status lock");
        match r {
            Ok(()) if !s.healthy && s.recoverable => {
                tracing::info!(path = %self.inner.path.display(), "store healthy again");
                *s = StoreStatus::ok(&self.inner.path);
            }
            Err(e) if s.healthy => {
                tracing::error!(path = %self.inner.path.display(), error = %e, kind = e.kind(),
                    "store failed; degrading to recommend-only until it recovers");
                *s = StoreStatus::failed(&self.inner.path, e, true);
            }
            _ => {}
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_blocking(write, f))
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }

    /// The synchronous core of every operation; exposed for benches and tools.
    pub fn with_blocking<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut guard = self.inner.conn.lock().expect("store connection lock");
        let Some(conn) = guard.as_mut() else {
            let s = self.status();
            return Err(StoreError::Unavailable(s.error.unwrap_or_else(|| "not open".into())));
        };
        if write && !self.healthy() && !self.status().recoverable {
            return Err(StoreError::Unavailable(self.status().error.unwrap_or_default()));
        }
        let r = f(conn);
        if write {
            self.mark(&r.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        r
    }

    /// Writes one checkpoint of one job in one transaction. On failure the checkpoint comes back,
    /// so that the caller can retry it with what follows.
    pub async fn commit(&self, job: &JobKey, cp: Checkpoint) -> Result<(), (StoreError, Checkpoint)> {
        let job = job.clone();
        let this = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = this.with_blocking(true, |conn| commit_tx(conn, &job, &cp));
            (r, cp)
        })
        .await;
        match r {
            Ok((Ok(()), _)) => Ok(()),
            Ok((Err(e), cp)) => Err((e, cp)),
            Err(e) => Err((StoreError::Other(format!("store task failed: {e}")), Checkpoint::default())),
        }
    }

    /// Blocking variant of [`Store::commit`].
    pub fn commit_blocking(&self, job: &JobKey, cp: &Checkpoint) -> StoreResult<()> {
        self.with_blocking(true, |conn| commit_tx(conn, job, cp))
    }

    /// Jobs that have a persisted controller state or were ever seen.
    pub async fn jobs(&self) -> StoreResult<Vec<JobKey>> {
        self.with(false, |conn| {
            let mut st = conn.prepare("SELECT namespace, name FROM jobs ORDER BY namespace, name")?;
            let rows =
                st.query_map([], |r| Ok(JobKey::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Records that a job exists (so that it is managed again after a restart).
    pub async fn register_job(&self, job: &JobKey, now: UnixMillis) -> StoreResult<()> {
        let job = job.clone();
        self.with(true, move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO jobs (namespace, name, first_seen) VALUES (?1, ?2, ?3)",
                params![job.namespace, job.name, ms(now)],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest controller snapshot of a job.
    pub async fn load_snapshot(&self, job: &JobKey) -> StoreResult<Option<SnapshotRow<String>>> {
        let job = job.clone();
        self.with(false, move |conn| {
            let row = conn
                .query_row(
                    "SELECT state, last_obs_at, observations, saved_at FROM controller_state
                     WHERE namespace = ?1 AND name = ?2",
                    params![job.namespace, job.name],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()?;
            let Some((text, last, n, saved)) = row else { return Ok(None) };
            Ok(Some(SnapshotRow {
                state: text,
                last_obs_at: last.map(UnixMillis),
                observations: n.max(0) as u64,
                saved_at: UnixMillis(saved),
            }))
        })
        .await
    }

    /// Intents of one job (newest first), with their outcomes.
    pub async fn intents(&self, job: &JobKey, limit: usize) -> StoreResult<Vec<IntentRecord>> {
        let job = job.clone();
        self.with(false, move |conn| intents_q(conn, &job, None, limit)).await
    }

    /// Intents of one job that have no outcome.
    pub async fn open_intents(&self, job: &JobKey) -> StoreResult<Vec<Intent>> {
        let job = job.clone();
        self.with(false, move |conn| {
            Ok(intents_q(conn, &job, None, usize::MAX)?
                .into_iter()
                .filter(|r| r.outcome.is_none())
                .map(|r| r.intent)
                .collect())
        })
        .await
    }

    /// One intent and its outcome.
    pub async fn intent(&self, job: &JobKey, kind: IntentKind, id: u64) -> StoreResult<Option<IntentRecord>> {
        let job = job.clone();
        self.with(false, move |conn| Ok(intents_q(conn, &job, Some((kind, id)), 1)?.into_iter().next())).await
    }

    /// The newest `limit` decision records of a job, newest first.
    pub async fn decisions(&self, job: &JobKey, limit: usize) -> StoreResult<Vec<DecisionRecord>> {
        let job = job.clone();
        self.with(false, move |conn| {
            let mut st = conn.prepare(
                "SELECT record FROM decisions WHERE namespace = ?1 AND name = ?2 ORDER BY at DESC, id DESC LIMIT ?3",
            )?;
            let rows = st.query_map(params![job.namespace, job.name, limit as i64], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for text in rows {
                match serde_json::from_str(&text?) {
                    Ok(d) => out.push(d),
                    // A record written by another version; skip rather than fail the listing.
                    Err(e) => tracing::debug!(error = %e, "skipping an unreadable decision record"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// Observation buckets of a job since `since`, oldest first.
    pub async fn observations(
        &self,
        job: &JobKey,
        since: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<ObservationRow>> {
        let job = job.clone();
        self.with(false, move |conn| observations_q(conn, &job, since, limit)).await
    }

    /// Blocking variant of [`Store::observations`].
    pub fn observations_blocking(
        &self,
        job: &JobKey,
        since: UnixMillis,
        limit: usize,
    ) -> StoreResult<Vec<ObservationRow>> {
        self.with_blocking(false, |conn| observations_q(conn, job, since, limit))
    }

    /// Deletes history older than `before` (states, intents and jobs are kept).
    pub async fn prune(&self, before: UnixMillis) -> StoreResult<usize> {
        self.with(true, move |conn| {
            let tx = conn.transaction()?;
            let mut n = 0;
            for (table, col) in
                [("observations", "bucket"), ("samples", "at"), ("decisions", "at"), ("forecasts", "at")]
            {
                n += tx.execute(&format!("DELETE FROM {table} WHERE {col} < ?1"), params![ms(before)])?;
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// Tries a small write. A store that failed at run time becomes healthy again when it
    /// succeeds; one opened read-only is reopened for writing if the file system allows it now.
    pub async fn probe(&self) -> StoreResult<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let status = this.status();
            if !status.recoverable {
                return Err(StoreError::Unavailable(status.error.unwrap_or_default()));
            }
            {
                let mut guard = this.inner.conn.lock().expect("store connection lock");
                let needs_reopen =
                    guard.as_ref().is_none_or(|c| c.is_readonly(rusqlite::MAIN_DB).unwrap_or(true));
                if needs_reopen {
                    match open_rw(&this.inner.path) {
                        Ok(c) => *guard = Some(c),
                        Err(e) => return Err(e),
                    }
                }
            }
            this.with_blocking(true, |conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?1)",
                    params![UnixMillis::now().0.to_string()],
                )?;
                Ok(())
            })
        })
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }
}

impl StoreStatus {
    fn ok(path: &Path) -> Self {
        StoreStatus {
            healthy: true,
            path: path.to_path_buf(),
            error: None,
            error_kind: None,
            recoverable: true,
        }
    }

    fn failed(path: &Path, e: &StoreError, recoverable: bool) -> Self {
        StoreStatus {
            healthy: false,
            path: path.to_path_buf(),
            error: Some(e.to_string()),
            error_kind: Some(e.kind()),
            recoverable,
        }
    }
}

fn commit_tx(conn: &mut Connection, job: &JobKey, cp: &Checkpoint) -> StoreResult<()> {
    let tx = conn.transaction()?;
    let (ns, name) = (&job.namespace, &job.name);
    if !cp.observations.is_empty() {
        let mut st = tx.prepare_cached(
            "INSERT INTO observations (namespace, name, bucket, n, offered_sum, throughput_sum, lag_last,
                 p95_sum, p95_n, busy_sum, backpressure_sum, cpu_sum, memory_sum, taskmanagers_max)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (namespace, name, bucket) DO UPDATE SET
                 n = n + excluded.n,
                 offered_sum = offered_sum + excluded.offered_sum,
                 throughput_sum = throughput_sum + excluded.throughput_sum,
                 lag_last = excluded.lag_last,
                 p95_sum = p95_sum + excluded.p95_sum,
                 p95_n = p95_n + excluded.p95_n,
                 busy_sum = busy_sum + excluded.busy_sum,
                 backpressure_sum = backpressure_sum + excluded.backpressure_sum,
                 cpu_sum = cpu_sum + excluded.cpu_sum,
                 memory_sum = memory_sum + excluded.memory_sum,
                 taskmanagers_max = max(taskmanagers_max, excluded.taskmanagers_max)",
        )?;
        for b in &cp.observations {
            st.execute(params![
                ns,
                name,
                b.bucket,
                b.n,
                b.offered_sum,
                b.throughput_sum,
                b.lag_last,
                b.p95_sum,
                b.p95_n,
                b.busy_sum,
                b.backpressure_sum,
                b.cpu_sum,
                b.memory_sum,
                b.taskmanagers_max
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO samples (namespace, name, at, origin, sample) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for s in &cp.samples {
            let origin = serde_json::to_value(s.origin)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            st.execute(params![ns, name, ms(s.at), origin, json(s)?])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO decisions (namespace, name, at, reason, acted, emergency, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (reason, d) in &cp.decisions {
            st.execute(params![ns, name, ms(d.at), reason, d.acted, d.emergency, json(d)?])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO forecasts (namespace, name, at, forecast) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (at, f) in &cp.forecasts {
            st.execute(params![ns, name, ms(*at), f])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO intents (namespace, name, kind, id, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for i in &cp.intents {
            st.execute(params![
                ns,
                name,
                i.kind.as_str(),
                i.id as i64,
                ms(i.created_at),
                i.body.to_string()
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT OR REPLACE INTO outcomes (namespace, name, kind, id, at, ok, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for o in &cp.outcomes {
            st.execute(params![ns, name, o.kind.as_str(), o.id as i64, ms(o.at), o.ok, o.body.to_string()])?;
        }
    }
    if let Some(s) = &cp.snapshot {
        tx.execute(
            "INSERT INTO jobs (namespace, name, first_seen) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![ns, name, ms(s.saved_at)],
        )?;
        tx.execute(
            "INSERT INTO controller_state (namespace, name, saved_at, last_obs_at, observations, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (namespace, name) DO UPDATE SET saved_at = excluded.saved_at,
                 last_obs_at = excluded.last_obs_at, observations = excluded.observations, state = excluded.state",
            params![ns, name, ms(s.saved_at), s.last_obs_at.map(ms), s.observations as i64, s.state.to_json()?],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(format!("cannot serialise: {e}")))
}

fn intents_q(
    conn: &Connection,
    job: &JobKey,
    one: Option<(IntentKind, u64)>,
    limit: usize,
) -> StoreResult<Vec<IntentRecord>> {
    let sql = "SELECT i.kind, i.id, i.created_at, i.body, o.at, o.ok, o.body
               FROM intents i LEFT JOIN outcomes o
                 ON o.namespace = i.namespace AND o.name = i.name AND o.kind = i.kind AND o.id = i.id
               WHERE i.namespace = ?1 AND i.name = ?2 AND (?3 IS NULL OR (i.kind = ?3 AND i.id = ?4))
               ORDER BY i.created_at DESC, i.id DESC LIMIT ?5";
    let mut st = conn.prepare_cached(sql)?;
    let (k, id) = match one {
        Some((k, id)) => (Some(k.as_str()), id as i64),
        None => (None, 0),
    };
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![job.namespace, job.name, k, id, lim], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<bool>>(5)?,
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, id, created, body, oat, ok, obody) = row?;
        let kind = IntentKind::parse(&kind);
        let parse = |t: &str| serde_json::from_str(t).unwrap_or(serde_json::Value::Null);
        out.push(IntentRecord {
            intent: Intent { kind, id: id as u64, created_at: UnixMillis(created), body: parse(&body) },
            outcome: match (oat, ok, obody) {
                (Some(at), Some(ok), Some(b)) => {
                    Some(OutcomeRow { kind, id: id as u64, at: UnixMillis(at), ok, body: parse(&b) })
                }
                _ => None,
            },
        });
    }
    Ok(out)
}

fn observations_q(
    conn: &Connection,
    job: &JobKey,
    since: UnixMillis,
    limit: usize,
) -> StoreResult<Vec<ObservationRow>> {
    let mut st = conn.prepare_cached(
        "SELECT bucket, n, offered_sum, throughput_sum, lag_last, p95_sum, p95_n, busy_sum, backpressure_sum,
                cpu_sum, memory_sum, taskmanagers_max
         FROM observations WHERE namespace = ?1 AND name = ?2 AND bucket >= ?3 ORDER BY bucket LIMIT ?4",
    )?;
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![job.namespace, job.name, ms(since), lim], |r| {
        let n: u32 = r.get(1)?;
        let d = n.max(1) as f64;
        let p95_n: u32 = r.get(6)?;
        Ok(ObservationRow {
            at: UnixMillis(r.get(0)?),
            n,
            offered_rate: r.get::<_, f64>(2)? / d,
            throughput: r.get::<_, f64>(3)? / d,
            lag: r.get(4)?,
            p95_latency_ms: if p95_n > 0 { Some(r.get::<_, f64>(5)? / p95_n as f64) } else { None },
            busy_ratio: r.get::<_, f64>(7)? / d,
            backpressure_ratio: r.get::<_, f64>(8)? / d,
            cpu_cores_used: r.get::<_, f64>(9)? / d,
            memory_used_mb: r.get::<_, f64>(10)? / d,
            taskmanagers: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use demeter_core::obs::JobObservation;

    fn job() -> JobKey {
        JobKey::new("flink", "cars")
    }

    fn obs(at: i64, rate: f64) -> JobObservation {
        JobObservation {
            at: UnixMillis(at),
            offered_rate: rate,
            throughput: rate,
            p95_latency_ms: Some(100.0),
            taskmanagers: 2,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let s = Store::open(&path);
        assert!(s.healthy(), "{:?}", s.status());
        drop(s);
        let s = Store::open(&path);
        assert!(s.healthy());
        let v: i64 =
            s.with_blocking(false, |c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let mode: String =
            s.with_blocking(false, |c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_database_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let s = Store::open(&path);
        let st = s.status();
        assert!(!st.healthy);
        assert_eq!(st.error_kind, Some("schema_too_new"));
        assert!(st.error.unwrap().contains("version 99"));
        assert!(s.commit(&job(), Checkpoint::default()).await.is_err());
    }

    #[tokio::test]
    async fn a_corrupt_file_makes_the_store_unhealthy_not_the_process_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        std::fs::write(&path, vec![0x5au8; 8192]).unwrap();
        let s = Store::open(&path);
        let st = s.status();
        assert!(!st.healthy);
        assert_eq!(st.error_kind, Some("corrupt"), "{st:?}");
        assert!(!st.recoverable);
        let err = s.commit(&job(), Checkpoint::default()).await.unwrap_err().0;
        assert_eq!(err.kind(), "unavailable");
        assert!(s.probe().await.is_err());
        // Nothing was written over the file.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5au8; 8192]);
    }

    #[tokio::test]
    async fn checkpoints_are_atomic_and_buckets_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db"));
        let mut b = ObsBucket { bucket: 10_000, ..Default::default() };
        b.add(&obs(10_000, 100.0));
        b.add(&obs(11_000, 300.0));
        let cp = Checkpoint {
            observations: vec![b],
            intents: vec![Intent {
                kind: IntentKind::Reconfigure,
                id: 3,
                created_at: UnixMillis(12_000),
                body: serde_json::json!({"to": 1}),
            }],
            snapshot: Some(SnapshotRow {
                state: StateBlob::Json(r#"{"x":1}"#.into()),
                last_obs_at: Some(UnixMillis(11_000)),
                observations: 2,
                saved_at: UnixMillis(12_000),
            }),
            ..Default::default()
        };
        s.commit(&job(), cp).await.map_err(|e| e.0).unwrap();
        let mut b2 = ObsBucket { bucket: 10_000, ..Default::default() };
        b2.add(&obs(12_000, 200.0));
        let cp = Checkpoint {
            observations: vec![b2],
            outcomes: vec![OutcomeRow {
                kind: IntentKind::Reconfigure,
                id: 3,
                at: UnixMillis(13_000),
                ok: true,
                body: serde_json::json!({"ok": true}),
            }],
            ..Default::default()
        };
        s.commit(&job(), cp).await.map_err(|e| e.0).unwrap();
        let rows = s.observations(&job(), UnixMillis(0), 10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].n, 3);
        assert!((rows[0].offered_rate - 200.0).abs() < 1e-9);
        let snap = s.load_snapshot(&job()).await.unwrap().unwrap();
        assert_eq!(snap.last_obs_at, Some(UnixMillis(11_000)));
        assert_eq!(snap.state, r#"{"x":1}"#);
        assert!(s.open_intents(&job()).await.unwrap().is_empty());
        let rec = s.intent(&job(), IntentKind::Reconfigure, 3).await.unwrap().unwrap();
        assert!(rec.outcome.unwrap().ok);
        assert_eq!(s.jobs().await.unwrap(), vec![job()]);

        // A failing statement rolls the whole checkpoint back: the duplicate intent fails, and
        // the observation in the same checkpoint is not added.
        let mut b3 = ObsBucket { bucket: 10_000, ..Default::default() };
        b3.add(&obs(13_000, 1e6));
        let dup = Checkpoint {
            observations: vec![b3],
            intents: vec![Intent {
                kind: IntentKind::Reconfigure,
                id: 3,
                created_at: UnixMillis(14_000),
                body: serde_json::json!({}),
            }],
            ..Default::default()
        };
        assert!(s.commit(&job(), dup).await.is_err());
        assert_eq!(s.observations(&job(), UnixMillis(0), 10).await.unwrap()[0].n, 3);
    }

    #[tokio::test]
    async fn a_full_disk_makes_the_store_unhealthy_until_a_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db"));
        // SQLite's page limit stands in for a full disk: the same SQLITE_FULL error.
        let pages: i64 =
            s.with_blocking(false, |c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get(0))?)).unwrap();
        s.with_blocking(false, |c| {
            c.pragma_update(None, "max_page_count", pages)?;
            Ok(())
        })
        .unwrap();
        let big = Checkpoint {
            snapshot: Some(SnapshotRow {
                state: StateBlob::Json(format!("\"{}\"", "x".repeat(1 << 20))),
                last_obs_at: None,
                observations: 0,
                saved_at: UnixMillis(1),
            }),
            ..Default::default()
        };
        let (err, back) = s.commit(&job(), big).await.unwrap_err();
        assert_eq!(err.kind(), "full", "{err}");
        assert!(back.snapshot.is_some(), "the checkpoint comes back for a retry");
        let st = s.status();
        assert!(!st.healthy && st.recoverable);
        assert!(st.error.unwrap().contains("disk is full"));
        // Space is freed: the probe succeeds and the store is healthy again.
        s.with_blocking(false, |c| {
            c.pragma_update(None, "max_page_count", 1_000_000)?;
            Ok(())
        })
        .unwrap();
        s.probe().await.unwrap();
        assert!(s.healthy());
        s.commit(&job(), back).await.map_err(|e| e.0).unwrap();
        assert!(s.load_snapshot(&job()).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn open_intents_are_those_without_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db"));
        let intent = |id| Intent {
            kind: IntentKind::Profiling,
            id,
            created_at: UnixMillis(id as i64),
            body: serde_json::json!({"run_id": id}),
        };
        s.commit(&job(), Checkpoint { intents: vec![intent(1), intent(2)], ..Default::default() })
            .await
            .map_err(|e| e.0)
            .unwrap();
        let out = OutcomeRow {
            kind: IntentKind::Profiling,
            id: 1,
            at: UnixMillis(5),
            ok: false,
            body: serde_json::json!("x"),
        };
        s.commit(&job(), Checkpoint { outcomes: vec![out], ..Default::default() })
            .await
            .map_err(|e| e.0)
            .unwrap();
        let open = s.open_intents(&job()).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, 2);
        assert_eq!(s.intents(&job(), 10).await.unwrap().len(), 2);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_read_only_database_still_restores_but_is_unhealthy() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        {
            let s = Store::open(&path);
            let cp = Checkpoint {
                snapshot: Some(SnapshotRow {
                    state: StateBlob::Json(r#"{"kept":true}"#.into()),
                    last_obs_at: None,
                    observations: 0,
                    saved_at: UnixMillis(1),
                }),
                ..Default::default()
            };
            s.commit(&job(), cp).await.map_err(|e| e.0).unwrap();
            // Checkpoint the WAL into the main file so that a read-only open sees everything.
            s.with_blocking(true, |c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?)).unwrap();
        }
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores permissions; the check is only meaningful for other users.
        let is_root = std::fs::File::create(dir.path().join("probe")).is_ok();
        let s = Store::open(&path);
        if !is_root {
            assert!(!s.healthy(), "{:?}", s.status());
            let snap = s.load_snapshot(&job()).await.unwrap().unwrap();
            assert_eq!(snap.state, r#"{"kept":true}"#);
            assert!(s.commit(&job(), Checkpoint::default()).await.is_err());
        } else {
            assert!(s.load_snapshot(&job()).await.unwrap().is_some());
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

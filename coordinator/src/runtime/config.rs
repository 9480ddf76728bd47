//! The coordinator's configuration: defaults, a TOML file, `DEMETER_COORDINATOR_*` environment
//! variables and command-line flags, in increasing precedence.
//!
//! - Top-level keys mirror the flags of `demeter-coordinator run` (flag name in snake_case:
//!   `--nats-url` is `nats_url`). Tables hold settings without a flag: `[stream]`, `[ingest]`,
//!   `[store]`, `[aggregator]`, `[controller]` (the defaults of every job's
//!   [`ControllerConfig`]), `[file_backend]`, and `[[jobs]]` entries that override a job's current
//!   configuration, search space, constraints, quota and mode.
//! - An environment variable `DEMETER_COORDINATOR_<KEY>` sets a top-level key, and `__` reaches
//!   into tables: `DEMETER_COORDINATOR_INGEST__ACK_WAIT=90s`. Variables that match no key are
//!   ignored (Kubernetes adds `<SERVICE>_PORT`-style variables for every Service), and reported
//!   as a warning unless they look like such a service link.
//! - [`CoordinatorConfig::validate`] checks everything and reports every problem at once, each
//!   naming the key, the value and what is allowed. Secrets ([`Secret`]) are never printed.

use demeter_common::{Constraints, JobConfig, Quota, SearchSpace, ValidationErrors};
use demeter_core::aggregate::AggregatorConfig;
use demeter_core::controller::{ControllerConfig, Mode};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::backend::JobKey;

/// Prefix of the environment variables.
pub const ENV_PREFIX: &str = "DEMETER_COORDINATOR";

/// A value that must never appear in logs, errors or API output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Which [`crate::backend::Backend`] carries decisions out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Recommend only, from metrics.
    #[default]
    None,
    /// The Flink REST API (adaptive scheduler).
    FlinkRest,
    /// FlinkDeployments of the Flink Kubernetes operator.
    Kubernetes,
    /// A JSON file per job under `file_backend.dir` (GitOps hand-off, tests).
    File,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::None => "none",
            BackendKind::FlinkRest => "flink-rest",
            BackendKind::Kubernetes => "kubernetes",
            BackendKind::File => "file",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `--mode` flag's values (the same spelling as [`Mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeFlag {
    RecommendOnly,
    Apply,
}

impl From<ModeFlag> for Mode {
    fn from(m: ModeFlag) -> Mode {
        match m {
            ModeFlag::RecommendOnly => Mode::RecommendOnly,
            ModeFlag::Apply => Mode::Apply,
        }
    }
}

/// The JetStream stream that holds the agents' batches (`[stream]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    /// Core-NATS subject of the agents' heartbeats.
    pub heartbeat_subject: String,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// `-1` for no limit other than the JetStream store's.
    pub max_bytes: i64,
    pub replicas: usize,
    /// Create the stream when it does not exist (otherwise wait for it).
    pub create: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            name: demeter_common::subject::METRICS_STREAM.into(),
            subjects: vec![demeter_common::subject::METRICS_ALL.into()],
            heartbeat_subject: demeter_common::subject::HEARTBEATS_ALL.into(),
            max_age: Duration::from_secs(3600),
            max_bytes: -1,
            replicas: 1,
            create: true,
        }
    }
}

/// The durable consumer (`[ingest]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Durable name of the pull consumer.
    pub consumer: String,
    /// A delivered batch not acknowledged within this time is delivered again. Batches are
    /// acknowledged once what they contributed is persisted, so this must exceed
    /// `store.snapshot_interval` comfortably.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged batches the server lets this consumer have.
    pub max_ack_pending: i64,
    /// Deliveries of one message before the server gives up on it (`-1`: never).
    pub max_deliver: i64,
    /// Messages per pull request.
    pub fetch_batch: usize,
    /// How far behind the wall clock a job's event time may run while a backlog (after a
    /// restart) is replayed second by second.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            consumer: "demeter-coordinator".into(),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 50_000,
            max_deliver: 20,
            fetch_batch: 500,
            replay_window: Duration::from_secs(120),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The SQLite store (`[store]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How often each job's controller state is persisted (and its batches acknowledged). An
    /// action (reconfiguration, profiling run) persists at once.
    #[serde(with = "humantime_serde")]
    pub snapshot_interval: Duration,
    /// Observations, samples, decisions and forecasts older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Observations are stored as averages over buckets of this length.
    #[serde(with = "humantime_serde")]
    pub observation_bucket: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            snapshot_interval: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 86_400),
            observation_bucket: Duration::from_secs(10),
        }
    }
}

/// `[file_backend]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBackendConfig {
    /// Default `<data_dir>/file-backend`.
    pub dir: Option<PathBuf>,
    /// How long a reconfiguration takes to "roll out".
    #[serde(with = "humantime_serde")]
    pub apply_delay: Duration,
}

/// `[leader_election]` (rendered by the Helm chart). Leader election needs the Kubernetes API,
/// which this build does not talk to: only one replica may run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderElectionConfig {
    pub enabled: bool,
    pub lease_name: String,
    pub lease_namespace: String,
}

/// `[agent_injection]` (rendered by the Helm chart, used by the Kubernetes backend).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentInjectionConfig {
    pub enabled: bool,
    pub sidecar_file: Option<PathBuf>,
    pub flink_conf_file: Option<PathBuf>,
    pub container_name: String,
}

/// `[profiling]` (rendered by the Helm chart, used by backends that can profile).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilingBackendConfig {
    /// Inject failures with Chaos Mesh NetworkChaos objects.
    pub chaos_mesh: bool,
}

/// One `[[jobs]]` entry: settings of one job that differ from the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOverride {
    pub namespace: String,
    pub name: String,
    /// The configuration the job runs, when the backend cannot tell.
    #[serde(default)]
    pub current: Option<JobConfig>,
    #[serde(default)]
    pub search_space: Option<SearchSpace>,
    #[serde(default)]
    pub constraints: Option<Constraints>,
    #[serde(default)]
    pub quota: Option<Quota>,
    /// `recommend-only` keeps this job hands-off even when the global mode is `apply`.
    #[serde(default)]
    pub mode: Option<Mode>,
}

impl JobOverride {
    pub fn key(&self) -> JobKey {
        JobKey::new(&self.namespace, &self.name)
    }
}

/// Everything `demeter-coordinator run` is configured with. See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    pub nats_user: Option<String>,
    pub nats_password: Option<Secret>,
    pub nats_token: Option<Secret>,
    /// A `.creds` file (NATS decentralised authentication).
    pub nats_creds: Option<PathBuf>,
    /// CA bundle that verifies the NATS server (implies TLS).
    pub nats_tls_ca: Option<PathBuf>,
    /// Inbox prefix for request/reply (pull requests), for accounts that restrict `_INBOX.>`.
    pub nats_inbox_prefix: Option<String>,
    /// Address of the API, probes and `/metrics`.
    pub listen: String,
    /// Where the SQLite store lives.
    pub data_dir: PathBuf,
    /// `apply` or `recommend-only`; a job can only restrict it further.
    pub mode: Mode,
    pub backend: BackendKind,
    /// Namespaces to manage; empty manages all.
    pub namespaces: Vec<String>,
    pub log_format: LogFormat,
    /// Bearer token the mutating API endpoints require; none configured leaves them open.
    pub api_token: Option<Secret>,
    /// Manage every job whose metrics arrive (otherwise only `[[jobs]]` and the backend's).
    pub discover_jobs: bool,
    /// Upper bound on managed jobs; batches of further jobs are rejected.
    pub max_jobs: usize,
    /// The configuration assumed for a job when neither `[[jobs]]` nor the backend tell.
    pub default_current: JobConfig,
    /// How often the backend is asked for each job's configuration, to notice external changes.
    #[serde(with = "humantime_serde")]
    pub backend_poll_interval: Duration,
    pub stream: StreamConfig,
    pub ingest: IngestConfig,
    pub store: StoreConfig,
    pub aggregator: AggregatorConfig,
    pub controller: ControllerConfig,
    pub file_backend: FileBackendConfig,
    pub leader_election: LeaderElectionConfig,
    pub agent_injection: AgentInjectionConfig,
    pub profiling: ProfilingBackendConfig,
    pub jobs: Vec<JobOverride>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_inbox_prefix: None,
            listen: "0.0.0.0:8080".into(),
            data_dir: PathBuf::from("./demeter-data"),
            mode: Mode::RecommendOnly,
            backend: BackendKind::None,
            namespaces: Vec::new(),
            log_format: LogFormat::Text,
            api_token: None,
            discover_jobs: true,
            max_jobs: 1000,
            default_current: JobConfig::STATIC_DEFAULT,
            backend_poll_interval: Duration::from_secs(60),
            stream: StreamConfig::default(),
            ingest: IngestConfig::default(),
            store: StoreConfig::default(),
            aggregator: AggregatorConfig::default(),
            controller: ControllerConfig::default(),
            file_backend: FileBackendConfig::default(),
            leader_election: LeaderElectionConfig::default(),
            agent_injection: AgentInjectionConfig::default(),
            profiling: ProfilingBackendConfig::default(),
            jobs: Vec::new(),
        }
    }
}

/// Values given as flags (or, through clap, as their environment variables). `None` keeps what
/// the file and the defaults say.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub nats_url: Option<String>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub mode: Option<Mode>,
    pub backend: Option<BackendKind>,
    pub namespaces: Option<Vec<String>>,
    pub log_format: Option<LogFormat>,
    pub nats_user: Option<String>,
    pub nats_password: Option<Secret>,
    pub nats_token: Option<Secret>,
    pub nats_creds: Option<PathBuf>,
    pub nats_tls_ca: Option<PathBuf>,
    pub api_token: Option<Secret>,
}

impl Overrides {
    /// The top-level keys that have a flag; clap reads their environment variables itself.
    pub const FLAG_KEYS: &'static [&'static str] = &[
        "nats_url",
        "listen",
        "data_dir",
        "mode",
        "backend",
        "namespaces",
        "log_format",
        "nats_user",
        "nats_password",
        "nats_token",
        "nats_creds",
        "nats_tls_ca",
        "api_token",
        "config",
    ];

    fn apply(self, c: &mut CoordinatorConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = Some(v); } )* };
        }
        set!(nats_url, listen, data_dir, mode, backend, namespaces, log_format);
        set_opt!(nats_user, nats_password, nats_token, nats_creds, nats_tls_ca, api_token);
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(String),
    #[error("invalid configuration: {0}")]
    Invalid(ValidationErrors),
}

/// A loaded, validated configuration and what is worth a warning.
#[derive(Debug)]
pub struct Loaded {
    pub config: CoordinatorConfig,
    /// Logged once logging is set up (the log format is itself configuration).
    pub warnings: Vec<String>,
}

/// Loads defaults, then `file`, then the `DEMETER_COORDINATOR_*` variables among `env`, then
/// `overrides`, and validates the result.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Overrides,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let known = known_keys();
    let prefix = format!("{ENV_PREFIX}_");
    let mut env_map: HashMap<String, String> = HashMap::new();
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(&prefix) else { continue };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        if Overrides::FLAG_KEYS.contains(&key.as_str()) {
            continue;
        }
        if known.contains(&key) {
            env_map.insert(var, value);
        } else if !looks_like_service_link(rest) {
            warnings.push(format!("ignoring environment variable {var}: `{key}` is not a configuration key"));
        }
    }
    let mut b = config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Load(format!("configuration file {} does not exist", path.display())));
        }
        b = b.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
    }
    b = b.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("_")
            .separator("__")
            .source(Some(env_map.into_iter().collect())),
    );
    let raw = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
    if raw.get::<config::Value>("controller.mode").is_ok() {
        return Err(ConfigError::Invalid(single(
            "controller.mode",
            "set",
            "nothing: set `mode` at the top level (or per job in [[jobs]])",
        )));
    }
    let mut config: CoordinatorConfig =
        raw.try_deserialize().map_err(|e| ConfigError::Load(e.to_string()))?;
    overrides.apply(&mut config);
    config.validate().map_err(ConfigError::Invalid)?;
    warnings.extend(config.warnings());
    Ok(Loaded { config, warnings })
}

fn single(key: &str, value: &str, allowed: &str) -> ValidationErrors {
    let mut e = ValidationErrors::default();
    e.push(key, value, allowed);
    e
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_SERVICE_PORT[_<NAME>]`,
/// `<SERVICE>_PORT` and `<SERVICE>_PORT_<N>_<PROTO>[_...]` for every Service of the namespace;
/// a Service named `demeter-coordinator` produces `DEMETER_COORDINATOR_PORT=tcp://...`.
fn looks_like_service_link(rest: &str) -> bool {
    rest == "PORT"
        || rest.starts_with("SERVICE_HOST")
        || rest.starts_with("SERVICE_PORT")
        || rest.strip_prefix("PORT_").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
}

/// Every dotted key the configuration has (tables recursed, arrays as leaves).
pub fn known_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(&key, v, out);
                out.insert(key);
            }
        }
    }
    let mut out = BTreeSet::new();
    let v = serde_json::to_value(CoordinatorConfig::default()).expect("the default configuration serialises");
    walk("", &v, &mut out);
    out
}

fn check_duration(errs: &mut ValidationErrors, key: &str, d: Duration, min: Duration, max: Duration) {
    if d < min || d > max {
        errs.push(
            key,
            humantime::format_duration(d),
            format!("{}..={}", humantime::format_duration(min), humantime::format_duration(max)),
        );
    }
}

fn check_range<T: PartialOrd + fmt::Display>(errs: &mut ValidationErrors, key: &str, v: T, min: T, max: T) {
    if v < min || v > max {
        errs.push(key, &v, format!("{min}..={max}"));
    }
}

/// RFC 1123 label, what Kubernetes accepts as a namespace.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_nats_name(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

fn prefixed(errs: &mut ValidationErrors, prefix: &str, r: Result<(), ValidationErrors>) {
    if let Err(e) = r {
        for mut x in e.0 {
            x.key = format!("{prefix}{}", x.key);
            errs.0.push(x);
        }
    }
}

impl CoordinatorConfig {
    /// Checks every setting and reports every problem at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let url_hint = "comma-separated NATS URLs such as nats://127.0.0.1:4222 or tls://nats:4222";
        if self.nats_url.trim().is_empty() {
            errs.push("nats_url", "\"\"", url_hint);
        }
        for u in self.nats_url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            if async_nats::ServerAddr::from_str(u).is_err() {
                errs.push("nats_url", format!("{u:?}"), url_hint);
            }
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            errs.push("listen", format!("{:?}", self.listen), "an IP address and port such as 0.0.0.0:8080");
        }
        if self.data_dir.as_os_str().is_empty() {
            errs.push("data_dir", "\"\"", "a directory path");
        }
        for ns in &self.namespaces {
            if !is_dns_label(ns) {
                errs.push(
                    "namespaces",
                    format!("{ns:?}"),
                    "Kubernetes namespace names (lowercase RFC 1123 labels)",
                );
            }
        }
        match (&self.nats_user, &self.nats_password) {
            (Some(_), None) => errs.push("nats_password", "(unset)", "a password when nats_user is set"),
            (None, Some(_)) => errs.push("nats_user", "(unset)", "a user when nats_password is set"),
            _ => {}
        }
        let methods = [self.nats_user.is_some(), self.nats_token.is_some(), self.nats_creds.is_some()];
        if methods.iter().filter(|x| **x).count() > 1 {
            errs.push(
                "nats_token",
                "(set with another method)",
                "one of nats_user/nats_password, nats_token or nats_creds",
            );
        }
        for (key, path) in [("nats_creds", &self.nats_creds), ("nats_tls_ca", &self.nats_tls_ca)] {
            if let Some(p) = path
                && !p.is_file()
            {
                errs.push(key, p.display(), "a readable file");
            }
        }
        if let Some(p) = &self.nats_inbox_prefix
            && (p.is_empty() || p.contains(['*', '>', ' ']) || p.ends_with('.'))
        {
            errs.push(
                "nats_inbox_prefix",
                format!("{p:?}"),
                "a subject prefix without wildcards, e.g. _INBOX_demeter",
            );
        }
        if let Some(t) = &self.api_token
            && t.expose().chars().count() < 16
        {
            errs.push(
                "api_token",
                format!("(secret of {} characters)", t.expose().chars().count()),
                "at least 16 characters",
            );
        }
        check_range(&mut errs, "max_jobs", self.max_jobs, 1, 100_000);
        check_duration(
            &mut errs,
            "backend_poll_interval",
            self.backend_poll_interval,
            Duration::from_secs(5),
            Duration::from_secs(3600),
        );
        let d = &self.default_current;
        for (key, v) in [
            ("default_current.parallelism", d.parallelism as u64),
            ("default_current.task_slots", d.task_slots as u64),
            ("default_current.tm_cpu_milli", d.tm_cpu_milli as u64),
            ("default_current.tm_memory_mb", d.tm_memory_mb as u64),
            ("default_current.checkpoint_interval_ms", d.checkpoint_interval_ms),
        ] {
            if v == 0 {
                errs.push(key, 0, ">= 1");
            }
        }

        // [stream]
        if !is_nats_name(&self.stream.name) {
            errs.push(
                "stream.name",
                format!("{:?}", self.stream.name),
                "a stream name without spaces, `.`, `*`, `>`",
            );
        }
        if self.stream.subjects.is_empty() || self.stream.subjects.iter().any(|s| s.trim().is_empty()) {
            errs.push(
                "stream.subjects",
                format!("{:?}", self.stream.subjects),
                "one or more non-empty subjects",
            );
        }
        check_duration(
            &mut errs,
            "stream.max_age",
            self.stream.max_age,
            Duration::from_secs(60),
            Duration::from_secs(30 * 86_400),
        );
        if self.stream.max_bytes != -1 && self.stream.max_bytes < 1 << 20 {
            errs.push("stream.max_bytes", self.stream.max_bytes, "-1 (unlimited) or at least 1048576");
        }
        check_range(&mut errs, "stream.replicas", self.stream.replicas, 1, 5);

        // [ingest]
        let i = &self.ingest;
        if !is_nats_name(&i.consumer) {
            errs.push(
                "ingest.consumer",
                format!("{:?}", i.consumer),
                "a consumer name without spaces, `.`, `*`, `>`",
            );
        }
        check_duration(
            &mut errs,
            "ingest.ack_wait",
            i.ack_wait,
            Duration::from_secs(10),
            Duration::from_secs(3600),
        );
        check_range(&mut errs, "ingest.max_ack_pending", i.max_ack_pending, 1, 1_000_000);
        if i.max_deliver != -1 && !(2..=1000).contains(&i.max_deliver) {
            errs.push("ingest.max_deliver", i.max_deliver, "-1 (unlimited) or 2..=1000");
        }
        check_range(&mut errs, "ingest.fetch_batch", i.fetch_batch, 1, 10_000);
        check_duration(
            &mut errs,
            "ingest.replay_window",
            i.replay_window,
            Duration::ZERO,
            Duration::from_secs(86_400),
        );
        check_duration(
            &mut errs,
            "ingest.max_backoff",
            i.max_backoff,
            Duration::from_millis(100),
            Duration::from_secs(600),
        );

        // [store]
        let s = &self.store;
        let max_snapshot = (i.ack_wait / 3).max(Duration::from_secs(1));
        check_duration(
            &mut errs,
            "store.snapshot_interval",
            s.snapshot_interval,
            Duration::from_millis(200),
            max_snapshot,
        );
        check_duration(
            &mut errs,
            "store.retention",
            s.retention,
            Duration::from_secs(3600),
            Duration::from_secs(3650 * 86_400),
        );
        check_duration(
            &mut errs,
            "store.observation_bucket",
            s.observation_bucket,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );

        // [aggregator]
        check_range(&mut errs, "aggregator.stale_after_ms", self.aggregator.stale_after_ms, 100, 600_000);
        check_range(
            &mut errs,
            "aggregator.max_batch_age_ms",
            self.aggregator.max_batch_age_ms,
            1_000,
            86_400_000,
        );

        // [file_backend]
        check_duration(
            &mut errs,
            "file_backend.apply_delay",
            self.file_backend.apply_delay,
            Duration::ZERO,
            Duration::from_secs(3600),
        );

        // [controller] and [[jobs]]
        let base_ok = self.controller.validate().is_ok();
        prefixed(&mut errs, "controller.", self.controller.validate());
        let mut seen = BTreeSet::new();
        for (n, j) in self.jobs.iter().enumerate() {
            let p = format!("jobs[{n}].");
            if !is_dns_label(&j.namespace) {
                errs.push(
                    format!("{p}namespace"),
                    format!("{:?}", j.namespace),
                    "a Kubernetes namespace name",
                );
            }
            if j.name.is_empty() || j.name.len() > 253 {
                errs.push(
                    format!("{p}name"),
                    format!("{:?}", j.name),
                    "a non-empty name of at most 253 characters",
                );
            }
            if !seen.insert(j.key()) {
                errs.push(
                    format!("{p}name"),
                    format!("{:?}", j.name),
                    format!("one [[jobs]] entry per job ({} is repeated)", j.key()),
                );
            }
            if let Some(q) = &j.quota {
                prefixed(&mut errs, &p, q.validate());
            }
            if let Some(c) = &j.constraints {
                prefixed(&mut errs, &p, c.validate());
            }
            if let Some(s) = &j.search_space {
                prefixed(&mut errs, &p, s.validate());
            }
            let cc = self.controller_config_for(&j.key(), None);
            let parts_ok = j.search_space.as_ref().is_none_or(|s| s.validate().is_ok())
                && j.quota.as_ref().is_none_or(|q| q.validate().is_ok())
                && j.constraints.as_ref().is_none_or(|c| c.validate().is_ok());
            if base_ok && parts_ok {
                // Only the combination is left to get wrong (a quota that admits no candidate).
                prefixed(&mut errs, &p, cc.validate());
            }
            if let Some(cur) = &j.current {
                prefixed(&mut errs, &format!("{p}current."), cur.validate_in(&cc.search_space));
            }
        }
        errs.into_result()
    }

    /// What deserves a warning but is allowed.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.mode == Mode::RecommendOnly {
            for j in self.jobs.iter().filter(|j| j.mode == Some(Mode::Apply)) {
                w.push(format!(
                    "job {} asks for mode apply, but the global mode is recommend-only: nothing will be applied",
                    j.key()
                ));
            }
        }
        if self.mode == Mode::Apply && self.backend == BackendKind::None {
            w.push(
                "mode is apply but backend is none, which cannot apply anything: running recommend-only"
                    .into(),
            );
        }
        if self.leader_election.enabled && self.backend != BackendKind::Kubernetes {
            w.push(format!(
                "leader_election.enabled is set (lease {}), but only the kubernetes backend elects a leader \
                 (backend is {}): run exactly one replica",
                self.leader_election.lease_name, self.backend
            ));
        }
        w
    }

    /// The `[[jobs]]` entry of a job, if any.
    pub fn job_override(&self, key: &JobKey) -> Option<&JobOverride> {
        self.jobs.iter().find(|j| j.namespace == key.namespace && j.name == key.name)
    }

    /// A job's mode: the global mode, restricted by its `[[jobs]]` entry and by the backend's
    /// word on the job (`backend_mode`); never `apply` when the global mode is not.
    pub fn mode_for(&self, key: &JobKey, backend_mode: Option<Mode>) -> Mode {
        let job = self.job_override(key).and_then(|j| j.mode);
        let all = [Some(self.mode), job, backend_mode];
        if all.iter().flatten().any(|m| *m == Mode::RecommendOnly) {
            Mode::RecommendOnly
        } else {
            Mode::Apply
        }
    }

    /// The controller settings of one job: `[controller]` with the job's overrides.
    pub fn controller_config_for(&self, key: &JobKey, backend_mode: Option<Mode>) -> ControllerConfig {
        let mut c = self.controller.clone();
        c.mode = self.mode_for(key, backend_mode);
        if let Some(j) = self.job_override(key) {
            if let Some(s) = &j.search_space {
                c.search_space = s.clone();
            }
            if let Some(q) = j.quota {
                c.quota = q;
            }
            if let Some(k) = j.constraints {
                c.constraints = k;
            }
        }
        c
    }

    /// Whether metrics of `namespace` are managed.
    pub fn watches(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("demeter.db")
    }

    pub fn file_backend_dir(&self) -> PathBuf {
        self.file_backend.dir.clone().unwrap_or_else(|| self.data_dir.join("file-backend"))
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("coordinator.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract() {
        let l = load(None, Vec::new(), Overrides::default()).unwrap();
        let c = l.config;
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.data_dir, PathBuf::from("./demeter-data"));
        assert_eq!(c.mode, Mode::RecommendOnly);
        assert_eq!(c.backend, BackendKind::None);
        assert_eq!(c.stream.name, "DEMETER_METRICS");
        assert_eq!(c.stream.max_age, Duration::from_secs(3600));
        assert_eq!(c.ingest.consumer, "demeter-coordinator");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            r#"
            nats_url = "nats://file:4222"
            max_jobs = 7
            [ingest]
            ack_wait = "2m"
            fetch_batch = 10
            "#,
        );
        let e = env(&[
            ("DEMETER_COORDINATOR_MAX_JOBS", "9"),
            ("DEMETER_COORDINATOR_INGEST__ACK_WAIT", "90s"),
            // A flag key: clap reads it, the loader must not.
            ("DEMETER_COORDINATOR_NATS_URL", "nats://env:4222"),
            ("OTHER", "x"),
        ]);
        let o = Overrides { listen: Some("127.0.0.1:9999".into()), ..Default::default() };
        let c = load(Some(&file), e, o).unwrap().config;
        assert_eq!(c.nats_url, "nats://file:4222");
        assert_eq!(c.max_jobs, 9);
        assert_eq!(c.ingest.ack_wait, Duration::from_secs(90));
        assert_eq!(c.ingest.fetch_batch, 10);
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.ingest.max_ack_pending, IngestConfig::default().max_ack_pending);
    }

    #[test]
    fn kubernetes_service_links_are_ignored_silently_and_typos_warned() {
        let e = env(&[
            ("DEMETER_COORDINATOR_PORT", "tcp://10.0.0.1:8080"),
            ("DEMETER_COORDINATOR_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("DEMETER_COORDINATOR_SERVICE_HOST", "10.0.0.1"),
            ("DEMETER_COORDINATOR_SERVICE_PORT_HTTP", "8080"),
            ("DEMETER_COORDINATOR_MAX_JOB", "3"),
        ]);
        let l = load(None, e, Overrides::default()).unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("DEMETER_COORDINATOR_MAX_JOB"));
    }

    #[test]
    fn every_error_names_key_value_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            r#"
            listen = "localhost"
            max_jobs = 0
            namespaces = ["Bad_NS"]
            [ingest]
            ack_wait = "1s"
            [controller]
            loop_interval = "5s"
            "#,
        );
        let err = load(Some(&file), Vec::new(), Overrides::default()).unwrap_err();
        let ConfigError::Invalid(e) = &err else { panic!("{err}") };
        let keys: Vec<&str> = e.0.iter().map(|x| x.key.as_str()).collect();
        for k in ["listen", "max_jobs", "namespaces", "ingest.ack_wait", "controller.loop_interval"] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("invalid value 0 for `max_jobs`: allowed 1..=100000"), "{text}");
        assert!(text.contains("invalid value 1s for `ingest.ack_wait`: allowed 10s..=1h"), "{text}");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            load(Some(&write(&dir, "nats_ulr = \"x\"\n")), Vec::new(), Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("nats_ulr"), "{err}");
        let err =
            load(Some(&write(&dir, "[ingest]\nack_wait = \"soon\"\n")), Vec::new(), Overrides::default())
                .unwrap_err();
        assert!(err.to_string().contains("ack_wait"), "{err}");
        let err =
            load(Some(&write(&dir, "[controller]\nmode = \"apply\"\n")), Vec::new(), Overrides::default())
                .unwrap_err();
        assert!(err.to_string().contains("controller.mode"), "{err}");
    }

    #[test]
    fn secrets_are_never_printed() {
        let o = Overrides {
            api_token: Some(Secret::new("short-token")),
            nats_password: Some(Secret::new("hunter2hunter2")),
            nats_user: Some("u".into()),
            ..Default::default()
        };
        let err = load(None, Vec::new(), o.clone()).unwrap_err().to_string();
        assert!(err.contains("api_token") && !err.contains("short-token"), "{err}");
        let mut c = CoordinatorConfig::default();
        o.apply(&mut c);
        let dump = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(!dump.contains("hunter2") && !dump.contains("short-token"), "{dump}");
    }

    #[test]
    fn jobs_override_defaults_and_mode_only_restricts() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            r#"
            mode = "apply"
            backend = "file"
            [[jobs]]
            namespace = "flink"
            name = "cars"
            mode = "recommend-only"
            current = { parallelism = 8, task_slots = 2, tm_cpu_milli = 1000, tm_memory_mb = 2048, checkpoint_interval_ms = 10000 }
            quota = { max_total_cpu = 8.0, max_total_memory_mb = 32768 }
            [[jobs]]
            namespace = "flink"
            name = "ads"
            "#,
        );
        let c = load(Some(&file), Vec::new(), Overrides::default()).unwrap().config;
        let cars = JobKey::new("flink", "cars");
        let ads = JobKey::new("flink", "ads");
        assert_eq!(c.mode_for(&cars, None), Mode::RecommendOnly);
        assert_eq!(c.mode_for(&ads, None), Mode::Apply);
        assert_eq!(c.mode_for(&ads, Some(Mode::RecommendOnly)), Mode::RecommendOnly);
        assert_eq!(c.controller_config_for(&cars, None).quota.max_total_cpu, 8.0);
        assert_eq!(c.controller_config_for(&ads, None).quota, Quota::default());

        let recommend = Overrides { mode: Some(Mode::RecommendOnly), ..Default::default() };
        let l = load(Some(&file), Vec::new(), recommend).unwrap();
        assert_eq!(l.config.mode_for(&ads, None), Mode::RecommendOnly);
    }

    #[test]
    fn a_job_outside_its_search_space_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            r#"
            [[jobs]]
            namespace = "flink"
            name = "cars"
            current = { parallelism = 7, task_slots = 1, tm_cpu_milli = 1000, tm_memory_mb = 1024, checkpoint_interval_ms = 10000 }
            "#,
        );
        let err = load(Some(&file), Vec::new(), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("`jobs[0].current.parallelism`"), "{err}");
    }

    #[test]
    fn the_helm_charts_keys_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            r#"
            backend = "none"
            data_dir = "/var/lib/demeter"
            listen = "0.0.0.0:8080"
            mode = "recommend-only"
            namespaces = []
            nats_inbox_prefix = "_INBOX_demeter_coordinator"
            nats_url = "nats://demeter-nats:4222"
            [agent_injection]
            container_name = "demeter-agent"
            enabled = true
            flink_conf_file = "/etc/demeter/agent/flink-conf.yaml"
            sidecar_file = "/etc/demeter/agent/sidecar.yaml"
            [leader_election]
            enabled = true
            lease_name = "r-demeter-leader"
            lease_namespace = "demeter"
            [profiling]
            chaos_mesh = false
            [stream]
            heartbeat_subject = "demeter.agents.>"
            max_age = "1h"
            max_bytes = 1073741824
            name = "DEMETER_METRICS"
            replicas = 1
            subjects = ["demeter.metrics.>"]
            "#,
        );
        let l = load(Some(&file), Vec::new(), Overrides::default()).unwrap();
        assert_eq!(l.config.nats_inbox_prefix.as_deref(), Some("_INBOX_demeter_coordinator"));
        assert_eq!(l.config.stream.max_bytes, 1 << 30);
        assert!(l.warnings.iter().any(|w| w.contains("elects a leader")), "{:?}", l.warnings);
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coordinator.toml");
        let l = load(Some(&path), Vec::new(), Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!l.config.jobs.is_empty());
    }
}

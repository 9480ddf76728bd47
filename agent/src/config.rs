//! Configuration: command-line flags (`clap`), environment `DEMETER_AGENT_<KEY>` and a TOML file
//! (`config`), merged with the precedence flags > environment > file > defaults, then validated
//! once, collecting every error with the key, the value and the allowed range.
//!
//! Every option has the same name in all three places: `--metrics-url`,
//! `DEMETER_AGENT_METRICS_URL`, `metrics_url = "…"` in the file.

use clap::Parser;
use demeter_common::ValidationErrors;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Command line of `demeter-agent`. Every value is kept as text here and checked in
/// [`Settings::validate`], so that a bad value from any source gets the same error message.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "demeter-agent",
    version,
    about = "Scrapes a Flink TaskManager's Prometheus reporter and publishes the metrics to NATS JetStream",
    long_about = "Scrapes a Flink TaskManager's Prometheus reporter every interval, maps the Flink \
metric families to Demeter's wire schema (MessagePack), adds container CPU and memory, and \
publishes one batch per scrape to the JetStream stream DEMETER_METRICS (subject \
demeter.metrics.<namespace>.<deployment>.<taskmanager>) with publish acks. While NATS is \
unreachable, batches wait in a bounded buffer (optionally spilled to disk) and are replayed in \
order after the reconnect. Heartbeats go to demeter.agents.<namespace>.<deployment>.<taskmanager>.heartbeat.",
    after_help = "Every option can also be set in the environment as DEMETER_AGENT_<NAME> (shown with \
each option) or in the TOML file given by --config, as `name = value` with the option's name in \
snake_case (metrics_url = \"http://localhost:9249/metrics\"). Precedence: flags, then \
environment, then file, then defaults.\n\nIdentity defaults (Kubernetes downward API): \
namespace from POD_NAMESPACE, pod and taskmanager from POD_NAME, host from NODE_NAME; outside \
Kubernetes the hostname. Durations are written like 1s, 500ms, 2m, 1h; sizes like 128MiB."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "DEMETER_AGENT_CONFIG")]
    pub config: Option<PathBuf>,

    /// URL of the TaskManager's Prometheus reporter [default: http://localhost:9249/metrics].
    #[arg(long, value_name = "URL", env = "DEMETER_AGENT_METRICS_URL")]
    pub metrics_url: Option<String>,

    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222]. Credentials in the
    /// URL are accepted but --nats-user/--nats-password keep them out of process listings.
    #[arg(long, value_name = "URL", env = "DEMETER_AGENT_NATS_URL")]
    pub nats_url: Option<String>,

    /// Kubernetes namespace of the Flink deployment [default: $POD_NAMESPACE, else "default"].
    #[arg(long, value_name = "NAME", env = "DEMETER_AGENT_NAMESPACE")]
    pub namespace: Option<String>,

    /// Flink deployment (FlinkDeployment name) [default: the hostname].
    #[arg(long, value_name = "NAME", env = "DEMETER_AGENT_DEPLOYMENT")]
    pub deployment: Option<String>,

    /// TaskManager id used in the subject and the batches [default: $POD_NAME, else the hostname].
    #[arg(long, value_name = "ID", env = "DEMETER_AGENT_TASKMANAGER")]
    pub taskmanager: Option<String>,

    /// Pod name reported in the batches [default: $POD_NAME, else the hostname].
    #[arg(long, value_name = "NAME", env = "DEMETER_AGENT_POD")]
    pub pod: Option<String>,

    /// Node name reported in the batches [default: $NODE_NAME, else the hostname].
    #[arg(long, value_name = "NAME", env = "DEMETER_AGENT_HOST")]
    pub host: Option<String>,

    /// Scrape interval, 100ms..=1h [default: 1s].
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_INTERVAL")]
    pub interval: Option<String>,

    /// Timeout of one scrape, 10ms..=interval [default: the interval].
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_SCRAPE_TIMEOUT")]
    pub scrape_timeout: Option<String>,

    /// Longest wait between scrape retries while the TaskManager does not answer, interval..=10m
    /// [default: 5s].
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_SCRAPE_BACKOFF_MAX")]
    pub scrape_backoff_max: Option<String>,

    /// Heartbeat interval, 1s..=1h [default: 5s].
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,

    /// Address of /healthz, /readyz and /metrics [default: 0.0.0.0:9464].
    #[arg(long, value_name = "ADDR", env = "DEMETER_AGENT_LISTEN")]
    pub listen: Option<String>,

    /// Log format: json or text [default: text].
    #[arg(long, value_name = "FORMAT", env = "DEMETER_AGENT_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Log filter, as RUST_LOG (e.g. info, demeter_agent=debug) [default: info].
    #[arg(long, value_name = "FILTER", env = "DEMETER_AGENT_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Batches kept in memory while NATS is unreachable, 1..=1000000 [default: 3600]. Beyond it
    /// the oldest batches spill to --spool-dir, or are dropped (and counted) without one.
    #[arg(long, value_name = "BATCHES", env = "DEMETER_AGENT_BUFFER_SIZE")]
    pub buffer_size: Option<String>,

    /// Directory for batches that overflow the memory buffer; they survive an agent restart
    /// [default: none, memory only].
    #[arg(long, value_name = "DIR", env = "DEMETER_AGENT_SPOOL_DIR")]
    pub spool_dir: Option<String>,

    /// Bytes the spool directory may hold, 64KiB..=1TiB; beyond it the oldest batches are
    /// dropped (and counted) [default: 128MiB].
    #[arg(long, value_name = "SIZE", env = "DEMETER_AGENT_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<String>,

    /// Max age of the DEMETER_METRICS stream that the agent creates or updates, 1m..=365d
    /// [default: 1h].
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_STREAM_MAX_AGE")]
    pub stream_max_age: Option<String>,

    /// How long SIGTERM waits for the buffer to drain to NATS before exiting, 0s..=10m
    /// [default: 10s]. What is left goes to --spool-dir if set.
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<String>,

    /// How long to wait for a JetStream publish ack, 100ms..=1m [default: 5s].
    #[arg(long, value_name = "DURATION", env = "DEMETER_AGENT_PUBLISH_TIMEOUT")]
    pub publish_timeout: Option<String>,

    /// NATS user (with --nats-password).
    #[arg(long, value_name = "USER", env = "DEMETER_AGENT_NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password (with --nats-user). Prefer the environment variable.
    #[arg(long, value_name = "PASSWORD", env = "DEMETER_AGENT_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// NATS token. Prefer the environment variable.
    #[arg(long, value_name = "TOKEN", env = "DEMETER_AGENT_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,

    /// NATS credentials file: a .creds file (user JWT and NKey seed) or a file holding only an
    /// NKey user seed (SU…).
    #[arg(long, value_name = "FILE", env = "DEMETER_AGENT_NATS_CREDS")]
    pub nats_creds: Option<String>,

    /// PEM file of the CA that signed the NATS server certificate; enables TLS.
    #[arg(long, value_name = "FILE", env = "DEMETER_AGENT_NATS_TLS_CA")]
    pub nats_tls_ca: Option<String>,

    /// PEM client certificate for mutual TLS (with --nats-tls-key).
    #[arg(long, value_name = "FILE", env = "DEMETER_AGENT_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<String>,

    /// PEM private key of --nats-tls-cert.
    #[arg(long, value_name = "FILE", env = "DEMETER_AGENT_NATS_TLS_KEY")]
    pub nats_tls_key: Option<String>,

    /// Root of the cgroup v2 hierarchy to read container CPU and memory from
    /// [default: /sys/fs/cgroup]. Without cgroup v2 files there, host figures are reported.
    #[arg(long, value_name = "DIR", env = "DEMETER_AGENT_CGROUP_ROOT")]
    pub cgroup_root: Option<String>,
}

/// The keys of the file and their defaults (`None`: no default).
const KEYS: &[(&str, Option<&str>)] = &[
    ("metrics_url", Some("http://localhost:9249/metrics")),
    ("nats_url", Some("nats://127.0.0.1:4222")),
    ("namespace", None),
    ("deployment", None),
    ("taskmanager", None),
    ("pod", None),
    ("host", None),
    ("interval", Some("1s")),
    ("scrape_timeout", None),
    ("scrape_backoff_max", None),
    ("heartbeat_interval", Some("5s")),
    ("listen", Some("0.0.0.0:9464")),
    ("log_format", Some("text")),
    ("log_level", Some("info")),
    ("buffer_size", Some("3600")),
    ("spool_dir", None),
    ("spool_max_bytes", Some("128MiB")),
    ("stream_max_age", Some("1h")),
    ("drain_timeout", Some("10s")),
    ("publish_timeout", Some("5s")),
    ("nats_user", None),
    ("nats_password", None),
    ("nats_token", None),
    ("nats_creds", None),
    ("nats_tls_ca", None),
    ("nats_tls_cert", None),
    ("nats_tls_key", None),
    ("cgroup_root", Some("/sys/fs/cgroup")),
];

/// The merged, not yet validated values. Numbers and booleans in the file arrive as text too.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    metrics_url: Option<String>,
    nats_url: Option<String>,
    namespace: Option<String>,
    deployment: Option<String>,
    taskmanager: Option<String>,
    pod: Option<String>,
    host: Option<String>,
    interval: Option<String>,
    scrape_timeout: Option<String>,
    scrape_backoff_max: Option<String>,
    heartbeat_interval: Option<String>,
    listen: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    buffer_size: Option<String>,
    spool_dir: Option<String>,
    spool_max_bytes: Option<String>,
    stream_max_age: Option<String>,
    drain_timeout: Option<String>,
    publish_timeout: Option<String>,
    nats_user: Option<String>,
    nats_password: Option<String>,
    nats_token: Option<String>,
    nats_creds: Option<String>,
    nats_tls_ca: Option<String>,
    nats_tls_cert: Option<String>,
    nats_tls_key: Option<String>,
    cgroup_root: Option<String>,
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// How the agent authenticates to NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// A `.creds` file or an NKey seed file.
    Credentials(PathBuf),
}

/// TLS towards NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Who this agent speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub deployment: String,
    pub taskmanager: String,
    pub pod: String,
    pub host: String,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub metrics_url: String,
    /// As given (it may hold credentials; log [`Settings::nats_url_redacted`] instead).
    pub nats_url: Secret,
    pub identity: Identity,
    pub interval: Duration,
    pub scrape_timeout: Duration,
    pub scrape_backoff_max: Duration,
    pub heartbeat_interval: Duration,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub buffer_size: usize,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub stream_max_age: Duration,
    pub drain_timeout: Duration,
    pub publish_timeout: Duration,
    pub nats_auth: NatsAuth,
    pub nats_tls: NatsTls,
    pub cgroup_root: PathBuf,
}

/// Configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration: {0}")]
    Invalid(ValidationErrors),
}

/// Where the process environment's identity fallbacks come from; tests pass their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
    fn hostname(&self) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn hostname(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| self.var("HOSTNAME"))
            .or_else(|| sysinfo::System::host_name().ok())
    }
}

impl Settings {
    /// Merges the file (if `cli.config` names one) under the flags and environment of `cli`,
    /// then validates.
    pub fn load(cli: &Cli, env: &dyn Env) -> Result<Settings, ConfigError> {
        let mut b = config::Config::builder();
        for (key, default) in KEYS {
            if let Some(d) = default {
                b = b.set_default(*key, *d).map_err(|e| ConfigError::Load(e.to_string()))?;
            }
        }
        if let Some(path) = &cli.config {
            b = b.add_source(
                config::File::from(path.as_path()).format(config::FileFormat::Toml).required(true),
            );
        }
        for (key, value) in cli_values(cli) {
            b = b.set_override(key, value).map_err(|e| ConfigError::Load(e.to_string()))?;
        }
        let merged = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        let raw: Raw = merged.try_deserialize().map_err(|e| ConfigError::Load(e.to_string()))?;
        Settings::validate(raw, env).map_err(ConfigError::Invalid)
    }

    fn validate(raw: Raw, env: &dyn Env) -> Result<Settings, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let s =
            |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);

        let metrics_url = s(&raw.metrics_url).unwrap_or_default();
        match reqwest::Url::parse(&metrics_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => errs.push("metrics_url", format!("{metrics_url:?}"), "an http:// or https:// URL"),
        }

        let nats_url = s(&raw.nats_url).unwrap_or_default();
        if nats_url.is_empty()
            || nats_url.split(',').any(|u| u.trim().parse::<async_nats::ServerAddr>().is_err())
        {
            errs.push("nats_url", format!("{:?}", redact_url(&nats_url)), "nats://host:port[,nats://…]");
        }

        let hostname = env.hostname().unwrap_or_else(|| "localhost".to_string());
        let pod_name = env.var("POD_NAME");
        let identity = Identity {
            namespace: s(&raw.namespace)
                .or_else(|| env.var("POD_NAMESPACE"))
                .unwrap_or_else(|| "default".into()),
            deployment: s(&raw.deployment).unwrap_or_else(|| hostname.clone()),
            taskmanager: s(&raw.taskmanager).or_else(|| pod_name.clone()).unwrap_or_else(|| hostname.clone()),
            pod: s(&raw.pod).or_else(|| pod_name.clone()).unwrap_or_else(|| hostname.clone()),
            host: s(&raw.host).or_else(|| env.var("NODE_NAME")).unwrap_or_else(|| hostname.clone()),
        };
        for (key, v) in [
            ("namespace", &identity.namespace),
            ("deployment", &identity.deployment),
            ("taskmanager", &identity.taskmanager),
            ("pod", &identity.pod),
            ("host", &identity.host),
        ] {
            if v.len() > 253 {
                errs.push(key, format!("{v:?}"), "1..=253 characters");
            }
        }

        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let interval = duration(&mut errs, "interval", &raw.interval, ms(100), secs(3600)).unwrap_or(secs(1));
        let scrape_timeout = match s(&raw.scrape_timeout) {
            None => interval,
            Some(_) => duration(&mut errs, "scrape_timeout", &raw.scrape_timeout, ms(10), interval)
                .unwrap_or(interval),
        };
        let scrape_backoff_max = match s(&raw.scrape_backoff_max) {
            None => secs(5).max(interval),
            Some(_) => {
                duration(&mut errs, "scrape_backoff_max", &raw.scrape_backoff_max, interval, secs(600))
                    .unwrap_or(secs(5).max(interval))
            }
        };
        let heartbeat_interval =
            duration(&mut errs, "heartbeat_interval", &raw.heartbeat_interval, secs(1), secs(3600))
                .unwrap_or(secs(5));
        let stream_max_age =
            duration(&mut errs, "stream_max_age", &raw.stream_max_age, secs(60), secs(365 * 86400))
                .unwrap_or(secs(3600));
        let drain_timeout =
            duration(&mut errs, "drain_timeout", &raw.drain_timeout, ms(0), secs(600)).unwrap_or(secs(10));
        let publish_timeout = duration(&mut errs, "publish_timeout", &raw.publish_timeout, ms(100), secs(60))
            .unwrap_or(secs(5));

        let listen_s = s(&raw.listen).unwrap_or_default();
        let listen = listen_s.parse::<SocketAddr>().unwrap_or_else(|_| {
            errs.push("listen", format!("{listen_s:?}"), "an address and port such as 0.0.0.0:9464");
            SocketAddr::from(([0, 0, 0, 0], 9464))
        });

        let log_format = match s(&raw.log_format).as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            other => {
                errs.push("log_format", format!("{:?}", other.unwrap_or("")), "json or text");
                LogFormat::Text
            }
        };
        let log_level = s(&raw.log_level).unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            errs.push(
                "log_level",
                format!("{log_level:?}"),
                "a tracing filter such as info or demeter_agent=debug",
            );
        }

        let buffer_size =
            integer(&mut errs, "buffer_size", &raw.buffer_size, 1, 1_000_000).unwrap_or(3600) as usize;
        let spool_dir = s(&raw.spool_dir).map(PathBuf::from);
        let spool_max_bytes = match s(&raw.spool_max_bytes) {
            Some(v) => match parse_size(&v) {
                Some(n) if (64 * 1024..=1 << 40).contains(&n) => n,
                _ => {
                    errs.push("spool_max_bytes", format!("{v:?}"), "64KiB..=1TiB (e.g. 128MiB or 134217728)");
                    128 << 20
                }
            },
            None => 128 << 20,
        };

        let user = s(&raw.nats_user);
        let password = s(&raw.nats_password);
        let token = s(&raw.nats_token);
        let creds = s(&raw.nats_creds).map(PathBuf::from);
        let methods = [user.is_some() || password.is_some(), token.is_some(), creds.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            errs.push(
                "nats_user/nats_token/nats_creds",
                "several",
                "at most one method: user and password, a token, or a credentials file",
            );
        }
        let nats_auth = match (user, password, token, creds) {
            (Some(user), Some(password), _, _) => NatsAuth::UserPassword { user, password: Secret(password) },
            (Some(_), None, _, _) => {
                errs.push("nats_password", "(unset)", "a password when nats_user is set");
                NatsAuth::None
            }
            (None, Some(_), _, _) => {
                errs.push("nats_user", "(unset)", "a user when nats_password is set");
                NatsAuth::None
            }
            (None, None, Some(t), _) => NatsAuth::Token(Secret(t)),
            (None, None, None, Some(path)) => {
                readable_file(&mut errs, "nats_creds", &path);
                NatsAuth::Credentials(path)
            }
            (None, None, None, None) => NatsAuth::None,
        };

        let ca = s(&raw.nats_tls_ca).map(PathBuf::from);
        if let Some(ca) = &ca {
            readable_file(&mut errs, "nats_tls_ca", ca);
        }
        let client_cert =
            match (s(&raw.nats_tls_cert).map(PathBuf::from), s(&raw.nats_tls_key).map(PathBuf::from)) {
                (Some(c), Some(k)) => {
                    readable_file(&mut errs, "nats_tls_cert", &c);
                    readable_file(&mut errs, "nats_tls_key", &k);
                    Some((c, k))
                }
                (Some(_), None) => {
                    errs.push("nats_tls_key", "(unset)", "a key file when nats_tls_cert is set");
                    None
                }
                (None, Some(_)) => {
                    errs.push("nats_tls_cert", "(unset)", "a certificate file when nats_tls_key is set");
                    None
                }
                (None, None) => None,
            };

        let cgroup_root = PathBuf::from(s(&raw.cgroup_root).unwrap_or_else(|| "/sys/fs/cgroup".into()));

        errs.into_result()?;
        Ok(Settings {
            metrics_url,
            nats_url: Secret(nats_url),
            identity,
            interval,
            scrape_timeout,
            scrape_backoff_max,
            heartbeat_interval,
            listen,
            log_format,
            log_level,
            buffer_size,
            spool_dir,
            spool_max_bytes,
            stream_max_age,
            drain_timeout,
            publish_timeout,
            nats_auth,
            nats_tls: NatsTls { ca, client_cert },
            cgroup_root,
        })
    }

    /// The NATS URL with any user, password or token replaced by `***`.
    pub fn nats_url_redacted(&self) -> String {
        redact_url(self.nats_url.expose())
    }
}

/// The values that the command line or the environment set, as `config` overrides.
fn cli_values(cli: &Cli) -> Vec<(&'static str, String)> {
    let c = cli.clone();
    [
        ("metrics_url", c.metrics_url),
        ("nats_url", c.nats_url),
        ("namespace", c.namespace),
        ("deployment", c.deployment),
        ("taskmanager", c.taskmanager),
        ("pod", c.pod),
        ("host", c.host),
        ("interval", c.interval),
        ("scrape_timeout", c.scrape_timeout),
        ("scrape_backoff_max", c.scrape_backoff_max),
        ("heartbeat_interval", c.heartbeat_interval),
        ("listen", c.listen),
        ("log_format", c.log_format),
        ("log_level", c.log_level),
        ("buffer_size", c.buffer_size),
        ("spool_dir", c.spool_dir),
        ("spool_max_bytes", c.spool_max_bytes),
        ("stream_max_age", c.stream_max_age),
        ("drain_timeout", c.drain_timeout),
        ("publish_timeout", c.publish_timeout),
        ("nats_user", c.nats_user),
        ("nats_password", c.nats_password),
        ("nats_token", c.nats_token),
        ("nats_creds", c.nats_creds),
        ("nats_tls_ca", c.nats_tls_ca),
        ("nats_tls_cert", c.nats_tls_cert),
        ("nats_tls_key", c.nats_tls_key),
        ("cgroup_root", c.cgroup_root),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

fn duration(
    errs: &mut ValidationErrors,
    key: &str,
    v: &Option<String>,
    min: Duration,
    max: Duration,
) -> Option<Duration> {
    let text = v.as_deref().map(str::trim).unwrap_or("");
    let allowed = || format!("a duration {}..={} (e.g. 1s, 500ms)", fmt_duration(min), fmt_duration(max));
    match humantime::parse_duration(text) {
        Ok(d) if d >= min && d <= max => Some(d),
        _ => {
            errs.push(key, format!("{text:?}"), allowed());
            None
        }
    }
}

/// `1h`, `365d`, `500ms`: the largest whole unit.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms > 0 && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

fn integer(errs: &mut ValidationErrors, key: &str, v: &Option<String>, min: u64, max: u64) -> Option<u64> {
    let text = v.as_deref().map(str::trim).unwrap_or("");
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            errs.push(key, format!("{text:?}"), format!("{min}..={max}"));
            None
        }
    }
}

fn readable_file(errs: &mut ValidationErrors, key: &str, path: &std::path::Path) {
    if let Err(e) = std::fs::File::open(path) {
        errs.push(key, format!("{:?}", path.display().to_string()), format!("a readable file ({e})"));
    }
}

/// `128MiB`, `64KiB`, `1GiB`, `1TiB`, `10MB` (decimal), or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        "KB" | "kB" | "K" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        "TB" | "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Replaces the user info of every URL in a comma-separated list with `***`.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.find("://") {
                Some(i) => (&u[..i + 3], &u[i + 3..]),
                None => ("", u),
            };
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct FakeEnv(HashMap<&'static str, &'static str>);

    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn hostname(&self) -> Option<String> {
            Some("box-1".into())
        }
    }

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["demeter-agent"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_and_hostname_identity_outside_kubernetes() {
        let s = Settings::load(&Cli::default(), &FakeEnv::default()).unwrap();
        assert_eq!(s.metrics_url, "http://localhost:9249/metrics");
        assert_eq!(s.nats_url.expose(), "nats://127.0.0.1:4222");
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.scrape_timeout, Duration::from_secs(1));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(s.listen, "0.0.0.0:9464".parse().unwrap());
        assert_eq!(s.buffer_size, 3600);
        assert_eq!(s.spool_dir, None);
        assert_eq!(s.stream_max_age, Duration::from_secs(3600));
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.nats_auth, NatsAuth::None);
        assert_eq!(
            s.identity,
            Identity {
                namespace: "default".into(),
                deployment: "box-1".into(),
                taskmanager: "box-1".into(),
                pod: "box-1".into(),
                host: "box-1".into()
            }
        );
    }

    #[test]
    fn identity_from_the_downward_api() {
        let env = FakeEnv(HashMap::from([
            ("POD_NAMESPACE", "flink"),
            ("POD_NAME", "cars-taskmanager-1-2"),
            ("NODE_NAME", "node-7"),
        ]));
        let s = Settings::load(&cli(&["--deployment", "cars"]), &env).unwrap();
        assert_eq!(s.identity.namespace, "flink");
        assert_eq!(s.identity.deployment, "cars");
        assert_eq!(s.identity.taskmanager, "cars-taskmanager-1-2");
        assert_eq!(s.identity.pod, "cars-taskmanager-1-2");
        assert_eq!(s.identity.host, "node-7");
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(
            &f,
            "interval = \"500ms\"\nbuffer_size = 10\nnamespace = \"from-file\"\nstream_max_age = \"2h\"\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let s =
            Settings::load(&cli(&["--config", path, "--buffer-size", "20"]), &FakeEnv::default()).unwrap();
        assert_eq!(s.interval, Duration::from_millis(500));
        assert_eq!(s.scrape_timeout, Duration::from_millis(500), "defaults to the interval");
        assert_eq!(s.buffer_size, 20, "flag over file");
        assert_eq!(s.identity.namespace, "from-file");
        assert_eq!(s.stream_max_age, Duration::from_secs(7200));
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, "intervall = \"1s\"\n").unwrap();
        let err = Settings::load(&cli(&["--config", f.to_str().unwrap()]), &FakeEnv::default()).unwrap_err();
        assert!(err.to_string().contains("intervall"), "{err}");
    }

    #[test]
    fn every_invalid_value_is_reported_with_key_value_and_range() {
        let c = cli(&[
            "--interval",
            "0s",
            "--buffer-size",
            "0",
            "--listen",
            "nope",
            "--log-format",
            "xml",
            "--metrics-url",
            "ftp://x",
            "--nats-url",
            "nats://u:hunter2@[::1",
            "--spool-max-bytes",
            "12XB",
            "--nats-user",
            "u",
        ]);
        let err = Settings::load(&c, &FakeEnv::default()).unwrap_err();
        let ConfigError::Invalid(errs) = &err else { panic!("{err}") };
        let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "metrics_url",
                "nats_url",
                "interval",
                "listen",
                "log_format",
                "buffer_size",
                "spool_max_bytes",
                "nats_password"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("invalid value \"0s\" for `interval`: allowed a duration 100ms..=1h"),
            "{text}"
        );
        assert!(text.contains("invalid value \"0\" for `buffer_size`: allowed 1..=1000000"), "{text}");
        assert!(!text.contains("hunter2"), "secrets never appear: {text}");
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c =
            cli(&["--nats-user", "agent", "--nats-password", "s3cr3t", "--nats-url", "nats://t0k3n@h:4222"]);
        let s = Settings::load(&c, &FakeEnv::default()).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("t0k3n"), "{dbg}");
        assert_eq!(s.nats_url_redacted(), "nats://***@h:4222");
        assert!(
            matches!(&s.nats_auth, NatsAuth::UserPassword { password, .. } if password.expose() == "s3cr3t")
        );
        let err = Settings::load(
            &cli(&["--nats-token", "abc", "--nats-user", "u", "--nats-password", "p"]),
            &FakeEnv::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("at most one method"), "{err}");
    }

    #[test]
    fn scrape_timeout_may_not_exceed_the_interval() {
        let err =
            Settings::load(&cli(&["--interval", "500ms", "--scrape-timeout", "2s"]), &FakeEnv::default())
                .unwrap_err();
        assert!(err.to_string().contains("`scrape_timeout`: allowed a duration 10ms..=500ms"), "{err}");
    }

    #[test]
    fn sizes_and_redaction() {
        assert_eq!(parse_size("128MiB"), Some(128 << 20));
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(redact_url("nats://a:b@h:1,tls://h2:2"), "nats://***@h:1,tls://h2:2");
    }

    #[test]
    fn help_explains_every_option() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for (key, _) in KEYS {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(help.contains(&flag), "{flag} missing from --help");
            let env = format!("DEMETER_AGENT_{}", key.to_uppercase());
            assert!(help.contains(&env), "{env} missing from --help");
        }
        assert!(help.contains("--config"));
    }
}

//! `demeter-coordinator run`: the coordinator.
//!
//! `run --nats-url nats://…` alone starts with the defaults: API and probes on 0.0.0.0:8080,
//! state in ./demeter-data, recommend-only, no backend. See [`crate::runtime::config`] for every
//! setting and how file, environment and flags combine.

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{NatsAuthArgs, init_logging, non_empty, non_empty_path, secret};
use crate::runtime::config::{self, BackendKind, ConfigError, LogFormat, ModeFlag, Overrides};

#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "DEMETER_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, value_name = "URL", env = "DEMETER_COORDINATOR_NATS_URL")]
    pub nats_url: Option<String>,
    /// Address of the API, the probes and /metrics [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR", env = "DEMETER_COORDINATOR_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the SQLite store [default: ./demeter-data].
    #[arg(long, value_name = "DIR", env = "DEMETER_COORDINATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `apply` carries decisions out; `recommend-only` never changes a job [default: recommend-only].
    #[arg(long, value_enum, env = "DEMETER_COORDINATOR_MODE")]
    pub mode: Option<ModeFlag>,
    /// What carries decisions out [default: none].
    #[arg(long, value_enum, env = "DEMETER_COORDINATOR_BACKEND")]
    pub backend: Option<BackendKind>,
    /// Namespaces to manage, comma-separated [default: all].
    #[arg(long, value_name = "NS,...", value_delimiter = ',', env = "DEMETER_COORDINATOR_NAMESPACES")]
    pub namespaces: Option<Vec<String>>,
    /// Log format [default: text].
    #[arg(long, value_enum, env = "DEMETER_COORDINATOR_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub nats: NatsAuthArgs,
    /// Bearer token required by the mutating API endpoints (at least 16 characters).
    #[arg(long, value_name = "TOKEN", env = "DEMETER_COORDINATOR_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

impl RunArgs {
    pub fn overrides(&self) -> Overrides {
        let a = self.clone();
        Overrides {
            nats_url: non_empty(a.nats_url),
            listen: non_empty(a.listen),
            data_dir: non_empty_path(a.data_dir),
            mode: a.mode.map(Into::into),
            backend: a.backend,
            namespaces: a.namespaces.map(|v| v.into_iter().filter(|s| !s.trim().is_empty()).collect()),
            log_format: a.log_format,
            nats_user: non_empty(a.nats.nats_user),
            nats_password: secret(a.nats.nats_password),
            nats_token: secret(a.nats.nats_token),
            nats_creds: non_empty_path(a.nats.nats_creds),
            nats_tls_ca: non_empty_path(a.nats.nats_tls_ca),
            api_token: secret(a.api_token),
        }
    }
}

/// Loads and validates the configuration, then runs until SIGTERM or SIGINT.
pub fn main(args: RunArgs) -> ExitCode {
    let loaded = match config::load(
        non_empty_path(args.config.clone()).as_deref(),
        std::env::vars(),
        args.overrides(),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demeter-coordinator: {}", describe(&e));
            return ExitCode::from(2);
        }
    };
    init_logging(loaded.config.log_format);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("demeter").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demeter-coordinator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::runtime::run(loaded.config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "coordinator failed");
            eprintln!("demeter-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line per problem.
pub fn describe(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid(errs) => {
            let mut s = String::from("invalid configuration:");
            for x in &errs.0 {
                s.push_str("\n  - ");
                s.push_str(&x.to_string());
            }
            s
        }
        other => other.to_string(),
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

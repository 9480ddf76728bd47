//! Subcommands of `demeter-coordinator`.
//!
//! - [`run`]: the coordinator itself.
//! - [`tail`]: print the agents' batches from NATS as JSON lines.
//!
//! Other subcommands (simulate, calibrate, forecast-eval, bench-decision) live next to these.

pub mod bench;
pub mod calibrate;
pub mod forecast_eval;
pub mod run;
pub mod simulate;
pub mod tail;

use clap::Args;
use std::path::PathBuf;

use crate::runtime::config::{LogFormat, Secret};

/// NATS authentication flags, shared by `run` and `tail`. Each also reads its
/// `DEMETER_COORDINATOR_*` environment variable; an empty value counts as unset.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsAuthArgs {
    /// NATS user (with --nats-password).
    #[arg(long, value_name = "USER", env = "DEMETER_COORDINATOR_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, value_name = "PASSWORD", env = "DEMETER_COORDINATOR_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token.
    #[arg(long, value_name = "TOKEN", env = "DEMETER_COORDINATOR_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, value_name = "FILE", env = "DEMETER_COORDINATOR_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA bundle that verifies the NATS server's certificate (enables TLS).
    #[arg(long, value_name = "FILE", env = "DEMETER_COORDINATOR_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
}

/// `Some` unless empty.
pub(crate) fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.trim().is_empty())
}

pub(crate) fn secret(s: Option<String>) -> Option<Secret> {
    non_empty(s).map(Secret::new)
}

pub(crate) fn non_empty_path(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|p| !p.as_os_str().is_empty())
}

/// Logs go to stderr (stdout is `tail`'s output), as text or JSON; `RUST_LOG` filters them
/// (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let r = match format {
        LogFormat::Json => b.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => b.try_init(),
    };
    // Already initialised (tests, or a subcommand that set it up) is fine.
    let _ = r;
}

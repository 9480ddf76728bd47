//! `demeter-agent`: see `demeter-agent --help`.

use clap::Parser;
use demeter_agent::config::{Cli, ConfigError, LogFormat, ProcessEnv, Settings};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Two TLS backends end up in the dependency graph (reqwest and async-nats choose
    // differently), so rustls cannot pick one by itself: pick ring, async-nats' default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let settings = match Settings::load(&cli, &ProcessEnv) {
        Ok(s) => s,
        Err(ConfigError::Invalid(errs)) => {
            eprintln!("demeter-agent: invalid configuration:");
            for e in &errs.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("demeter-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::new(&settings.log_level);
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => fmt.init(),
    }
    // One thread is plenty for one scrape per second; it keeps the footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demeter-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demeter_agent::agent::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "demeter-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

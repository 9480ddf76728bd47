//! `demeter-coordinator tail`: prints the agents' metric batches as JSON lines, one per batch
//! (MessagePack is not readable with the NATS tools alone).
//!
//! By default it subscribes to `demeter.metrics.>` and follows live traffic without touching the
//! coordinator's consumer. `--from-stream` first replays what the JetStream stream holds (an
//! ordered consumer that acknowledges nothing), then follows. A subject under `demeter.agents.`
//! prints heartbeats. Messages that do not decode are reported on stderr and not counted.

use async_nats::jetstream::{self, consumer};
use clap::Args;
use demeter_common::{AgentHeartbeat, MetricBatch, subject};
use futures::StreamExt;
use std::io::Write;
use std::process::ExitCode;

use super::{NatsAuthArgs, init_logging, non_empty, non_empty_path, secret};
use crate::runtime::config::LogFormat;
use crate::runtime::ingest::NatsSettings;

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        env = "DEMETER_COORDINATOR_NATS_URL"
    )]
    pub nats_url: String,
    /// Subject to follow (wildcards allowed).
    #[arg(long, short = 's', default_value = subject::METRICS_ALL)]
    pub subject: String,
    /// Exit after printing this many batches.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// Replay the stream's stored batches first, then follow.
    #[arg(long)]
    pub from_stream: bool,
    /// The stream to replay with --from-stream.
    #[arg(long, default_value = subject::METRICS_STREAM)]
    pub stream: String,
    /// Inbox prefix, for accounts that restrict `_INBOX.>`.
    #[arg(long, value_name = "PREFIX", env = "DEMETER_COORDINATOR_NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
    #[command(flatten)]
    pub nats: NatsAuthArgs,
}

pub fn main(args: TailArgs) -> ExitCode {
    init_logging(LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demeter-coordinator tail: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(tail(args, std::io::stdout().lock())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demeter-coordinator tail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Decodes one message as a batch (or a heartbeat, on a heartbeat subject) and returns its JSON.
pub fn to_json_line(subject: &str, payload: &[u8]) -> Result<String, String> {
    if subject.starts_with("demeter.agents.") {
        let h = AgentHeartbeat::decode(payload).map_err(|e| e.to_string())?;
        serde_json::to_string(&h).map_err(|e| e.to_string())
    } else {
        let b = MetricBatch::decode(payload).map_err(|e| e.to_string())?;
        serde_json::to_string(&b).map_err(|e| e.to_string())
    }
}

/// Writes decoded batches to `out` until `args.count` are printed (or forever).
pub async fn tail(args: TailArgs, mut out: impl Write) -> anyhow::Result<()> {
    let settings = NatsSettings {
        url: args.nats_url.clone(),
        user: non_empty(args.nats.nats_user.clone()),
        password: secret(args.nats.nats_password.clone()),
        token: secret(args.nats.nats_token.clone()),
        creds: non_empty_path(args.nats.nats_creds.clone()),
        tls_ca: non_empty_path(args.nats.nats_tls_ca.clone()),
        inbox_prefix: non_empty(args.nats_inbox_prefix.clone()),
        name: "demeter-coordinator-tail".into(),
        max_backoff: std::time::Duration::from_secs(5),
    };
    let client = settings.connect().await?;
    let mut printed = 0u64;
    if args.count == Some(0) {
        return Ok(());
    }
    let mut emit = |subject: &str, payload: &[u8]| -> anyhow::Result<bool> {
        match to_json_line(subject, payload) {
            Ok(line) => {
                match writeln!(out, "{line}").and_then(|_| out.flush()) {
                    Ok(()) => {}
                    // `tail | head`: the reader is gone, which is a normal end.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(true),
                    Err(e) => return Err(e.into()),
                }
                printed += 1;
                Ok(args.count.is_some_and(|n| printed >= n))
            }
            Err(e) => {
                eprintln!("{subject}: not a valid message: {e}");
                Ok(false)
            }
        }
    };
    if args.from_stream {
        let js = jetstream::new(client.clone());
        let stream =
            js.get_stream(&args.stream).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", args.stream))?;
        let c = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: args.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create an ordered consumer on {}: {e}", args.stream))?;
        let mut messages = c.messages().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            if emit(&m.subject, &m.payload)? {
                return Ok(());
            }
        }
        return Ok(());
    }
    let mut sub =
        client.subscribe(args.subject.clone()).await.map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
    while let Some(m) = sub.next().await {
        if emit(&m.subject, &m.payload)? {
            return Ok(());
        }
    }
    Ok(())
}

//! JetStream ingest: the stream of metric batches, the coordinator's durable pull consumer, and
//! the routing of each batch to its job's driver.
//!
//! - The stream (`[stream]`, default `DEMETER_METRICS` on `demeter.metrics.>`, max age 1 h) is
//!   created when missing; an existing one keeps its subjects, but its limits follow the
//!   configuration.
//! - The consumer is durable (`ingest.consumer`, default `demeter-coordinator`) with explicit
//!   acks, so nothing is lost across a coordinator restart: the server redelivers whatever was not
//!   acknowledged. The driver acknowledges a batch once its effect is persisted (see
//!   [`super::driver`]).
//! - A message that does not decode ([`MetricBatch::decode`]) or is stamped too far in the future
//!   is counted in `demeter_ingest_rejected_total{error_type}` and terminated (`+TERM`), so that it
//!   is never redelivered; it never stops the loop.
//! - Connection loss is retried forever with capped exponential backoff; while it lasts,
//!   `demeter_nats_connected` is 0, `/readyz` fails and the runtime is degraded.

use async_nats::jetstream::{self, consumer, stream};
use demeter_common::wire::AgentHeartbeat;
use demeter_common::{MetricBatch, UnixMillis, subject};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::config::{CoordinatorConfig, IngestConfig, Secret, StreamConfig};
use super::driver::{Ack, DriverMsg};
use super::health::Health;
use super::metrics::Metrics;
use super::{Jobs, Route};
use crate::backend::JobKey;

/// How to reach NATS (shared by `run` and `tail`).
#[derive(Clone, Debug, Default)]
pub struct NatsSettings {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub creds: Option<std::path::PathBuf>,
    pub tls_ca: Option<std::path::PathBuf>,
    pub inbox_prefix: Option<String>,
    /// Connection name shown by the server (`nats server report connections`).
    pub name: String,
    pub max_backoff: Duration,
}

impl NatsSettings {
    pub fn from_config(c: &CoordinatorConfig) -> Self {
        NatsSettings {
            url: c.nats_url.clone(),
            user: c.nats_user.clone(),
            password: c.nats_password.clone(),
            token: c.nats_token.clone(),
            creds: c.nats_creds.clone(),
            tls_ca: c.nats_tls_ca.clone(),
            inbox_prefix: c.nats_inbox_prefix.clone(),
            name: "demeter-coordinator".into(),
            max_backoff: c.ingest.max_backoff,
        }
    }

    fn servers(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.parse().map_err(|e| anyhow::anyhow!("invalid NATS URL {u:?}: {e}")))
            .collect()
    }

    async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut o = match &self.creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path).await.map_err(|e| {
                anyhow::anyhow!("cannot read the NATS credentials file {}: {e}", path.display())
            })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.expose().to_string());
        }
        if let Some(t) = &self.token {
            o = o.token(t.expose().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(p) = &self.inbox_prefix {
            o = o.custom_inbox_prefix(p);
        }
        let max = self.max_backoff.max(Duration::from_millis(100));
        Ok(o.name(&self.name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| backoff(attempts, max)))
    }

    /// Connects once (failing fast), for tools such as `tail`.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let servers = self.servers()?;
        self.options()
            .await?
            .connect(servers)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", self.url))
    }

    /// Connects in the background and keeps reconnecting; `health` follows the connection.
    pub async fn connect_supervised(&self, health: Arc<Health>) -> anyhow::Result<async_nats::Client> {
        let servers = self.servers()?;
        let h = health.clone();
        let o = self.options().await?.retry_on_initial_connect().event_callback(move |ev| {
            let h = h.clone();
            async move {
                match ev {
                    async_nats::Event::Connected => h.set_nats_connected(true, None),
                    async_nats::Event::Disconnected => {
                        h.set_nats_connected(false, Some("connection lost".into()))
                    }
                    async_nats::Event::Closed => {
                        h.set_nats_connected(false, Some("connection closed".into()))
                    }
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "NATS server error");
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::warn!(error = %e, "NATS client error");
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
        let client = o.connect(servers).await.map_err(|e| anyhow::anyhow!("cannot connect to NATS: {e}"))?;
        if client.connection_state() == async_nats::connection::State::Connected {
            health.set_nats_connected(true, None);
        }
        Ok(client)
    }
}

/// Whether a server version string (`2.10.24`, `2.15.1-beta`) is at least `major.minor`.
pub fn server_at_least(version: &str, major: u64, minor: u64) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

/// Exponential backoff from 100 ms, capped.
pub fn backoff(attempts: usize, max: Duration) -> Duration {
    let exp = attempts.min(16) as u32;
    Duration::from_millis(100u64.saturating_mul(1u64 << exp)).min(max)
}

/// Makes sure the stream exists with the configured limits.
pub async fn ensure_stream(js: &jetstream::Context, s: &StreamConfig) -> anyhow::Result<stream::Stream> {
    match js.get_stream(&s.name).await {
        Ok(mut st) => {
            let info =
                st.info().await.map_err(|e| anyhow::anyhow!("cannot read stream {}: {e}", s.name))?.clone();
            let mut want = info.config.clone();
            want.max_age = s.max_age;
            want.max_bytes = s.max_bytes;
            if want.max_age != info.config.max_age || want.max_bytes != info.config.max_bytes {
                tracing::info!(stream = %s.name, max_age = ?s.max_age, max_bytes = s.max_bytes, "updating the stream's limits");
                js.update_stream(want)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot update stream {}: {e}", s.name))?;
            }
            for subj in &s.subjects {
                if !info.config.subjects.contains(subj) {
                    tracing::warn!(stream = %s.name, subject = %subj, existing = ?info.config.subjects,
                        "the existing stream does not list a configured subject; leaving its subjects as they are");
                }
            }
            Ok(st)
        }
        Err(e) if !s.create => {
            Err(anyhow::anyhow!("stream {} is not available ({e}) and stream.create is false", s.name))
        }
        Err(_) => {
            let cfg = stream::Config {
                name: s.name.clone(),
                subjects: s.subjects.clone(),
                max_age: s.max_age,
                max_bytes: s.max_bytes,
                num_replicas: s.replicas,
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                // Agents set a message id: a batch published twice within this window is stored once.
                duplicate_window: Duration::from_secs(120),
                description: Some("Demeter agents' metric batches (MessagePack)".into()),
                ..Default::default()
            };
            js.get_or_create_stream(cfg)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create stream {}: {e}", s.name))
        }
    }
}

/// The durable pull consumer, created or updated.
///
/// With `resume_in_order` (at process start), a consumer left with unacknowledged deliveries by
/// a previous process (a crash) is rewound to its ack floor, so that those batches come again at
/// once and in stream order, ahead of newer ones; otherwise the server would redeliver them only
/// after `ack_wait`, behind newer batches, and the aggregator would have to reject them as late.
/// Servers ≥ 2.14 reset the consumer (ADR-60); older ones get it recreated from the ack floor.
pub async fn ensure_consumer(
    st: &stream::Stream,
    i: &IngestConfig,
    filters: Vec<String>,
    resume_in_order: bool,
    server_can_reset: bool,
) -> anyhow::Result<consumer::PullConsumer> {
    let mut cfg = consumer::pull::Config {
        durable_name: Some(i.consumer.clone()),
        description: Some("Demeter coordinator".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: i.ack_wait,
        max_ack_pending: i.max_ack_pending,
        max_deliver: i.max_deliver,
        deliver_policy: consumer::DeliverPolicy::All,
        filter_subjects: filters,
        ..Default::default()
    };
    if let Ok(info) = st.consumer_info(&i.consumer).await {
        // The deliver policy of an existing consumer cannot change.
        cfg.deliver_policy = info.config.deliver_policy;
        if resume_in_order && info.num_ack_pending > 0 {
            let start = info.ack_floor.stream_sequence + 1;
            let reset = if server_can_reset {
                st.reset_consumer(&i.consumer, None).await.map_err(|e| e.to_string())
            } else {
                Err("server older than 2.14".to_string())
            };
            match reset {
                Ok(_) => {
                    tracing::info!(consumer = %i.consumer, unacknowledged = info.num_ack_pending, from = start,
                    "rewound the consumer to its ack floor: unacknowledged batches are redelivered first")
                }
                Err(e) => {
                    tracing::info!(consumer = %i.consumer, error = %e, from = start,
                        "the server cannot reset consumers; recreating the consumer from its ack floor");
                    st.delete_consumer(&i.consumer)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot delete consumer {}: {e}", i.consumer))?;
                    cfg.deliver_policy = consumer::DeliverPolicy::ByStartSequence { start_sequence: start };
                }
            }
        }
    }
    st.create_consumer(cfg).await.map_err(|e| anyhow::anyhow!("cannot create consumer {}: {e}", i.consumer))
}

/// Subject filters for the watched namespaces, when the stream uses the standard subjects.
pub fn filters_for(c: &CoordinatorConfig) -> Vec<String> {
    let standard = c.stream.subjects == [subject::METRICS_ALL.to_string()];
    if c.namespaces.is_empty() || !standard {
        return Vec::new();
    }
    c.namespaces.iter().map(|ns| format!("{}.{}.>", subject::METRICS_ROOT, subject::token(ns))).collect()
}

/// Everything the ingest loop needs.
#[derive(Clone, Debug)]
pub struct Ingest {
    pub cfg: Arc<CoordinatorConfig>,
    pub client: async_nats::Client,
    pub jobs: Arc<Jobs>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// What happened to one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    Routed,
    Rejected(&'static str),
}

impl Ingest {
    /// Pulls until `stop` turns true; reconnects and recreates the consumer as needed.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let js = jetstream::new(self.client.clone());
        let max = self.cfg.ingest.max_backoff;
        let mut attempt = 0usize;
        // Only the first setup of this process rewinds the consumer: later ones (after a lost
        // consumer) must not, because this process still holds deliveries it will acknowledge.
        let mut first = true;
        loop {
            if *stop.borrow() {
                return;
            }
            let consumer = async {
                let st = ensure_stream(&js, &self.cfg.stream).await?;
                let can_reset = server_at_least(&self.client.server_info().version, 2, 14);
                ensure_consumer(&st, &self.cfg.ingest, filters_for(&self.cfg), first, can_reset).await
            }
            .await;
            let consumer = match consumer {
                Ok(c) => c,
                Err(e) => {
                    self.health.set_consumer_ready(false, Some(e.to_string()));
                    tracing::warn!(error = %e, "JetStream not ready; retrying");
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt, max)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.cfg.ingest.fetch_batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    self.health.set_consumer_ready(false, Some(e.to_string()));
                    attempt += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt, max)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            attempt = 0;
            first = false;
            self.health.set_consumer_ready(true, None);
            tracing::info!(stream = %self.cfg.stream.name, consumer = %self.cfg.ingest.consumer, "consuming metric batches");
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    m = messages.next() => match m {
                        Some(Ok(m)) => {
                            self.handle(m).await;
                        }
                        Some(Err(e)) => {
                            use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                            match e.kind() {
                                K::ConsumerDeleted | K::PushBasedConsumer | K::RequestLimitExceeded => {
                                    tracing::warn!(error = %e, "consumer gone; recreating it");
                                    self.health.set_consumer_ready(false, Some(e.to_string()));
                                    break;
                                }
                                _ => tracing::debug!(error = %e, "pull error (the client retries)"),
                            }
                        }
                        None => {
                            self.health.set_consumer_ready(false, Some("message stream ended".into()));
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Decodes one message and hands it to its job's driver. Never fails: whatever is wrong
    /// with a message is counted and the message terminated.
    pub async fn handle(&self, m: jetstream::Message) -> Handled {
        let (msg, acker) = m.split();
        self.route(&msg.subject, &msg.payload, Box::new(acker)).await
    }

    /// The routing logic, independent of where the message came from.
    pub async fn route(&self, subject: &str, payload: &[u8], ack: Box<dyn Ack>) -> Handled {
        let m = &self.metrics;
        m.ingest_batches.inc();
        let now = UnixMillis::now();
        let batch = match MetricBatch::decode(payload) {
            Ok(b) => b,
            Err(e) => {
                m.reject(e.kind());
                tracing::warn!(%subject, error = %e, "rejected a message that is not a valid metric batch");
                ack.term().await;
                return Handled::Rejected(e.kind());
            }
        };
        // Only the future is checked here: how old a batch may be is the aggregator's call.
        if let Err(e) = batch.check_timestamp(now, i64::MAX / 4) {
            m.reject("future_timestamp");
            tracing::warn!(%subject, error = %e, "rejected a batch stamped in the future");
            ack.term().await;
            return Handled::Rejected("future_timestamp");
        }
        m.ingest_samples.inc_by(batch.samples.len() as u64);
        m.ingest_lag_seconds.set(now.since(batch.collected_at).as_secs_f64());
        if !self.cfg.watches(&batch.source.namespace) {
            m.reject("unwatched_namespace");
            ack.ack().await;
            return Handled::Rejected("unwatched_namespace");
        }
        let key = JobKey::new(&batch.source.namespace, &batch.source.deployment);
        match self.jobs.route(&key).await {
            Route::To(tx) => {
                let msg = DriverMsg::Batch { batch: Box::new(batch), ack: Some(ack) };
                if tx.send(msg).await.is_err() {
                    // The driver is restarting; without an ack the server redelivers the batch.
                    m.reject("driver_unavailable");
                    return Handled::Rejected("driver_unavailable");
                }
                Handled::Routed
            }
            Route::Refused(why) => {
                m.reject(why);
                ack.ack().await;
                Handled::Rejected(why)
            }
        }
    }

    /// Follows the agents' heartbeats (core NATS) for the API.
    pub async fn heartbeats(self, mut stop: watch::Receiver<bool>) {
        let subject = self.cfg.stream.heartbeat_subject.clone();
        let mut sub = loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "cannot subscribe to heartbeats; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                m = sub.next() => match m {
                    Some(m) => match AgentHeartbeat::decode(&m.payload) {
                        Ok(h) => self.jobs.heartbeat(h),
                        Err(e) => tracing::debug!(subject = %m.subject, error = %e, "ignoring an invalid heartbeat"),
                    },
                    None => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(0, max), Duration::from_millis(100));
        assert_eq!(backoff(3, max), Duration::from_millis(800));
        assert_eq!(backoff(60, max), max);
    }

    #[test]
    fn server_versions_compare_by_major_and_minor() {
        assert!(server_at_least("2.15.1", 2, 14));
        assert!(server_at_least("2.14.0-beta.1", 2, 14));
        assert!(!server_at_least("2.10.24", 2, 14));
        assert!(!server_at_least("2.9.10", 2, 14));
        assert!(server_at_least("3.0.0", 2, 14));
        assert!(!server_at_least("", 2, 14));
    }

    #[test]
    fn namespace_filters_use_sanitised_tokens() {
        let mut c = CoordinatorConfig::default();
        assert!(filters_for(&c).is_empty());
        c.namespaces = vec!["flink".into(), "team-a".into()];
        assert_eq!(filters_for(&c), vec!["demeter.metrics.flink.>", "demeter.metrics.team-a.>"]);
        c.stream.subjects = vec!["custom.>".into()];
        assert!(filters_for(&c).is_empty());
    }
}

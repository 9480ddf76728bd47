//! Publishing to NATS: batches to JetStream with publish acks and a message id for server-side
//! deduplication, heartbeats as plain core-NATS messages.
//!
//! Heartbeats use core NATS on purpose: a heartbeat only says "this agent is alive and in this
//! state now". One that cannot be delivered is worthless a few seconds later, so it must not be
//! buffered, replayed or stored; and it must not land in the `DEMETER_METRICS` stream, whose
//! consumer expects metric batches only. A coordinator that missed heartbeats sees the next one.

use crate::config::{NatsAuth, Secret, Settings};
use crate::spool::Entry;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, Event, HeaderMap};
use bytes::Bytes;
use demeter_common::subject::{METRICS_ALL, METRICS_STREAM};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Why a publish or a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("no publish ack within {0:?}")]
    Timeout(Duration),
    #[error("no stream takes subject {0} (DEMETER_METRICS missing?)")]
    NoStream(String),
    #[error("JetStream rejected the message: {0}")]
    Rejected(String),
    #[error("{0}")]
    Other(String),
}

impl PublishError {
    /// A bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::Disconnected => "disconnected",
            PublishError::Timeout(_) => "timeout",
            PublishError::NoStream(_) => "no_stream",
            PublishError::Rejected(_) => "rejected",
            PublishError::Other(_) => "other",
        }
    }
}

/// What the forwarder needs from a message broker.
pub trait Publisher: Send + Sync {
    /// Whether the connection is up now.
    fn is_connected(&self) -> bool;
    /// Creates the metrics stream or updates its subjects and max age.
    fn ensure_stream(&self) -> impl Future<Output = Result<StreamOutcome, PublishError>> + Send;
    /// Publishes one batch and waits for the ack; `Ok(true)` if the server had it already.
    fn publish(&self, entry: &Entry) -> impl Future<Output = Result<bool, PublishError>> + Send;
    /// Sends a heartbeat without waiting for anything.
    fn heartbeat(
        &self,
        subject: String,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// What [`Publisher::ensure_stream`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOutcome {
    Created,
    Updated,
    Unchanged,
}

/// The JetStream publisher.
#[derive(Clone, Debug)]
pub struct JetStreamPublisher {
    client: async_nats::Client,
    js: jetstream::Context,
    max_age: Duration,
    ack_timeout: Duration,
}

/// Connection options from the settings: authentication, TLS, reconnect forever.
pub async fn connect_options(settings: &Settings) -> std::io::Result<ConnectOptions> {
    let mut o = ConnectOptions::new()
        .name(format!("demeter-agent {}", settings.identity.taskmanager))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        // 100 ms, 200 ms, … capped at 2 s: reconnect soon after the server is back.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)).min(2_000))
        });
    o = match &settings.nats_auth {
        NatsAuth::None => o,
        NatsAuth::UserPassword { user, password } => {
            o.user_and_password(user.clone(), password.expose().to_string())
        }
        NatsAuth::Token(t) => o.token(t.expose().to_string()),
        NatsAuth::Credentials(path) => {
            let text = tokio::fs::read_to_string(path).await?;
            let trimmed = text.trim();
            if trimmed.starts_with("SU") && !trimmed.contains("-----") {
                // A bare NKey user seed.
                o.nkey(trimmed.to_string())
            } else {
                o.credentials(&text)?
            }
        }
    };
    if let Some(ca) = &settings.nats_tls.ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.nats_tls.client_cert {
        o = o.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    Ok(o)
}

impl JetStreamPublisher {
    /// Connects in the background (the agent starts even while NATS is down); `on_event` sees
    /// every connection event.
    pub async fn connect(
        settings: &Settings,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let on_event = Arc::new(on_event);
        let opts = connect_options(settings).await?.event_callback(move |ev| {
            let on_event = on_event.clone();
            async move { on_event(ev) }
        });
        let (urls, url_auth) = split_credentials(settings.nats_url.expose())?;
        // Credentials in the URL are moved into the options, so that no library ever logs them
        // with the server address. Explicit settings win.
        let opts = match (url_auth, &settings.nats_auth) {
            (Some(NatsAuth::UserPassword { user, password }), NatsAuth::None) => {
                opts.user_and_password(user, password.expose().to_string())
            }
            (Some(NatsAuth::Token(t)), NatsAuth::None) => opts.token(t.expose().to_string()),
            (Some(_), _) => {
                tracing::warn!(
                    "the NATS URL holds credentials as well as nats_user/nats_token/nats_creds; using the latter"
                );
                opts
            }
            (None, _) => opts,
        };
        let client = opts.connect(urls).await?;
        let js = jetstream::ContextBuilder::new().timeout(settings.publish_timeout).build(client.clone());
        Ok(JetStreamPublisher {
            client,
            js,
            max_age: settings.stream_max_age,
            ack_timeout: settings.publish_timeout,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The stream configuration the agent wants.
    pub fn stream_config(max_age: Duration) -> stream::Config {
        stream::Config {
            name: METRICS_STREAM.to_string(),
            subjects: vec![METRICS_ALL.to_string()],
            max_age,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120).min(max_age),
            ..Default::default()
        }
    }

    /// Flushes what the client has buffered.
    pub async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }
}

/// Splits user info out of comma-separated NATS URLs: `nats://user:pass@h` gives a user and
/// password, `nats://token@h` a token. Returns the bare server addresses.
pub fn split_credentials(urls: &str) -> anyhow::Result<(Vec<async_nats::ServerAddr>, Option<NatsAuth>)> {
    let mut auth = None;
    let mut out = Vec::new();
    for u in urls.split(',') {
        let addr: async_nats::ServerAddr = u.trim().parse()?;
        let mut url = addr.into_inner();
        if !url.username().is_empty() {
            let user = percent_decode(url.username());
            auth = Some(match url.password() {
                Some(p) => NatsAuth::UserPassword { user, password: Secret::new(percent_decode(p)) },
                None => NatsAuth::Token(Secret::new(user)),
            });
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        out.push(url.as_str().parse()?);
    }
    Ok((out, auth))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Publisher for JetStreamPublisher {
    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn ensure_stream(&self) -> Result<StreamOutcome, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::Disconnected);
        }
        match self.js.get_stream(METRICS_STREAM).await {
            Ok(stream) => {
                // Keep whatever else an operator configured; own only subjects and max age.
                let mut cfg = stream.cached_info().config.clone();
                let mut changed = false;
                if !cfg.subjects.iter().any(|s| s == METRICS_ALL) {
                    cfg.subjects.push(METRICS_ALL.to_string());
                    changed = true;
                }
                if cfg.max_age != self.max_age {
                    cfg.max_age = self.max_age;
                    cfg.duplicate_window = cfg.duplicate_window.min(self.max_age);
                    changed = true;
                }
                if !changed {
                    return Ok(StreamOutcome::Unchanged);
                }
                self.js
                    .update_stream(cfg)
                    .await
                    .map_err(|e| PublishError::Other(format!("update stream: {e}")))?;
                Ok(StreamOutcome::Updated)
            }
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js) if js.code() == 404 => {
                    match self.js.create_stream(Self::stream_config(self.max_age)).await {
                        Ok(_) => Ok(StreamOutcome::Created),
                        // Another agent created it first.
                        Err(e) if e.to_string().contains("already in use") => Ok(StreamOutcome::Unchanged),
                        Err(e) => Err(PublishError::Other(format!("create stream: {e}"))),
                    }
                }
                _ => Err(PublishError::Other(format!("stream info: {e}"))),
            },
        }
    }

    async fn publish(&self, entry: &Entry) -> Result<bool, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::Disconnected);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", entry.msg_id.as_str());
        let publish =
            jetstream::message::PublishMessage::build().payload(entry.payload.clone()).headers(headers);
        let classify = |e: jetstream::context::PublishError| {
            use jetstream::context::PublishErrorKind as K;
            match e.kind() {
                K::TimedOut => PublishError::Timeout(self.ack_timeout),
                K::StreamNotFound => PublishError::NoStream(entry.subject.clone()),
                K::BrokenPipe => PublishError::Disconnected,
                K::MaxPayloadExceeded | K::WrongLastMessageId | K::WrongLastSequence => {
                    PublishError::Rejected(e.to_string())
                }
                _ => PublishError::Other(e.to_string()),
            }
        };
        let ack = self.js.send_publish(entry.subject.clone(), publish).await.map_err(classify)?;
        let ack = ack.await.map_err(classify)?;
        Ok(ack.duplicate)
    }

    async fn heartbeat(&self, subject: String, payload: Bytes) -> Result<(), PublishError> {
        if !self.is_connected() {
            return Err(PublishError::Disconnected);
        }
        self.client.publish(subject, payload).await.map_err(|e| PublishError::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_move_out_of_the_urls() {
        let (addrs, auth) = split_credentials("nats://agent:p%40ss@127.0.0.1:4222,nats://h2:4223").unwrap();
        let shown: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
        assert!(shown.iter().all(|s| !s.contains("agent") && !s.contains("p@ss")), "{shown:?}");
        assert_eq!(addrs.len(), 2);
        assert_eq!(
            auth,
            Some(NatsAuth::UserPassword { user: "agent".into(), password: Secret::new("p@ss") })
        );
        let (_, auth) = split_credentials("tls://s3cr3t@nats.example:4222").unwrap();
        assert_eq!(auth, Some(NatsAuth::Token(Secret::new("s3cr3t"))));
        let (_, auth) = split_credentials("nats://127.0.0.1:4222").unwrap();
        assert_eq!(auth, None);
    }

    #[test]
    fn the_stream_config_is_the_documented_one() {
        let c = JetStreamPublisher::stream_config(Duration::from_secs(3600));
        assert_eq!(c.name, "DEMETER_METRICS");
        assert_eq!(c.subjects, vec!["demeter.metrics.>".to_string()]);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(
            JetStreamPublisher::stream_config(Duration::from_secs(60)).duplicate_window,
            Duration::from_secs(60)
        );
    }
}

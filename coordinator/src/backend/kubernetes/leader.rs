//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several coordinator
//! replicas exactly one acts (patches jobs, runs profiling, writes events and status).
//!
//! The algorithm is client-go's `leaderelection` with the verbs the chart grants (`create`, and
//! `get`/`update` on the one Lease name; no `patch`):
//!
//! - every `retry_period` a replica `GET`s the Lease. Absent: it `POST`s one naming itself. Held by
//!   itself: it renews (`PUT` with the read `resourceVersion`, so a concurrent writer makes the
//!   write fail with 409). Held by another: it takes over only when the holder has not renewed for
//!   `lease_duration`, measured on *its own* monotonic clock from the moment it last saw the
//!   record change (no trust in other nodes' clocks).
//! - a leader that could not renew for `renew_deadline` (< `lease_duration`) steps down *before*
//!   anyone else may take over, so two replicas never both believe they lead.
//! - on shutdown the leader releases the Lease (empty holder) so that a standby takes over at once.
//!
//! The outcome is published on a `watch` channel: `true` while this replica leads.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Timing of the election (client-go's defaults are 15 s / 10 s / 2 s).
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's side of the election. See the module documentation.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    tx: watch::Sender<bool>,
    /// The last record seen (holder, renew time, resourceVersion) and when it was first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    last_renew: Option<Instant>,
}

impl LeaderElector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let e = LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            tx,
            observed: None,
            last_renew: None,
        };
        (e, rx)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns and renews until `stop` turns true, then releases the Lease if held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let leading = self.step().await;
            self.publish(leading);
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let leading = *self.tx.borrow();
        if leading {
            self.publish(false);
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.name, error = %e, "could not release the leader lease");
            }
        }
    }

    fn publish(&self, leading: bool) {
        if *self.tx.borrow() != leading {
            if leading {
                tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
            } else {
                tracing::warn!(lease = %self.name, identity = %self.identity, "not the leader any more");
            }
            self.tx.send_replace(leading);
        }
    }

    /// One attempt to acquire or renew; returns whether this replica leads afterwards.
    pub async fn step(&mut self) -> bool {
        let was_leading = *self.tx.borrow();
        match tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew()).await {
            Ok(Ok(true)) => {
                self.last_renew = Some(Instant::now());
                true
            }
            Ok(Ok(false)) => false,
            Ok(Err(e)) => {
                tracing::debug!(lease = %self.name, error = %e, "leader election attempt failed");
                was_leading && self.within_renew_deadline()
            }
            Err(_) => was_leading && self.within_renew_deadline(),
        }
    }

    fn within_renew_deadline(&self) -> bool {
        self.last_renew.is_some_and(|t| t.elapsed() < self.timing.renew_deadline)
    }

    fn record(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire,
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.record(0, Some(MicroTime(Timestamp::now())))),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let now = Instant::now();
        let changed = self.observed.as_ref().is_none_or(|(h, r, _)| *h != holder || *r != spec.renew_time);
        if changed {
            self.observed = Some((holder.clone(), spec.renew_time.clone(), now));
        }
        let observed_at = self.observed.as_ref().map_or(now, |o| o.2);
        let duration = spec
            .lease_duration_seconds
            .filter(|s| *s > 0)
            .map_or(self.timing.lease_duration, |s| Duration::from_secs(s as u64));
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let expired = holder.is_none() || now.duration_since(observed_at) >= duration;
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + if mine { 0 } else { 1 };
        let acquire = if mine { spec.acquire_time.clone() } else { Some(MicroTime(Timestamp::now())) };
        lease.spec = Some(self.record(transitions, acquire));
        // `replace` sends the resourceVersion we read: a concurrent update makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(l) => {
                let s = l.spec.unwrap_or_default();
                self.observed = Some((s.holder_identity, s.renew_time, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
    }
}

/// This replica's identity: `POD_NAME` (set by the chart from the downward API), else the host
/// name, plus the process id so that two processes on one host differ.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "demeter-coordinator".into());
    format!("{base}_{}", std::process::id())
}

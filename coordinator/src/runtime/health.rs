//! Readiness and the degraded mode.
//!
//! The coordinator applies reconfigurations only while it can see the jobs (NATS connected and
//! the durable consumer set up) and can remember what it did (store healthy). Otherwise it
//! *degrades to recommend-only*: controllers keep deciding, the driver carries nothing out, and
//! `/readyz` answers 503 with the reasons. Every transition is logged once.

use demeter_core::controller::Mode;
use serde::Serialize;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::metrics::Metrics;
use super::store::{Store, StoreStatus};

/// What `/readyz` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The configured mode.
    pub mode: Mode,
    /// What the coordinator does now: `recommend-only` while degraded.
    pub effective_mode: Mode,
    pub nats_connected: bool,
    pub consumer_ready: bool,
    pub store: StoreStatus,
    pub backend: &'static str,
    /// `leader`, or `standby` while another replica leads (a standby consumes nothing, applies
    /// nothing and is ready to take over).
    pub role: &'static str,
    pub reasons: Vec<String>,
}

/// Shared health of the runtime.
#[derive(Debug)]
pub struct Health {
    mode: Mode,
    backend: &'static str,
    backend_can_apply: bool,
    nats_connected: AtomicBool,
    consumer_ready: AtomicBool,
    nats_error: Mutex<Option<String>>,
    degraded: AtomicBool,
    standby: AtomicBool,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Health {
    pub fn new(
        mode: Mode,
        backend: &'static str,
        backend_can_apply: bool,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        let h = Health {
            mode,
            backend,
            backend_can_apply,
            nats_connected: AtomicBool::new(false),
            consumer_ready: AtomicBool::new(false),
            nats_error: Mutex::new(None),
            degraded: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            store,
            metrics,
        };
        h.refresh();
        h
    }

    pub fn set_nats_connected(&self, connected: bool, error: Option<String>) {
        let before = self.nats_connected.swap(connected, Ordering::SeqCst);
        *self.nats_error.lock().expect("health lock") = error.clone();
        if before != connected {
            if connected {
                tracing::info!("connected to NATS");
            } else {
                tracing::warn!(
                    error = error.as_deref().unwrap_or("connection lost"),
                    "disconnected from NATS"
                );
            }
        }
        self.refresh();
    }

    pub fn set_consumer_ready(&self, ready: bool, error: Option<String>) {
        let before = self.consumer_ready.swap(ready, Ordering::SeqCst);
        if let Some(e) = error {
            *self.nats_error.lock().expect("health lock") = Some(e);
        }
        if before != ready && ready {
            tracing::info!("durable consumer ready");
        }
        self.refresh();
    }

    /// Standing by while another replica leads.
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
        self.refresh();
    }

    pub fn nats_connected(&self) -> bool {
        self.nats_connected.load(Ordering::SeqCst)
    }

    /// Why reconfigurations may not be applied now, or `None` when they may.
    pub fn apply_blocked(&self) -> Option<String> {
        let r = self.reasons(true);
        if r.is_empty() { None } else { Some(r.join("; ")) }
    }

    fn reasons(&self, for_apply: bool) -> Vec<String> {
        let mut r = Vec::new();
        let standby = self.standby.load(Ordering::SeqCst);
        if standby && for_apply {
            r.push("standing by: another replica leads".to_string());
        }
        if for_apply {
            if self.mode != Mode::Apply {
                r.push("mode is recommend-only".to_string());
            }
            if !self.backend_can_apply {
                r.push(format!("backend `{}` cannot apply", self.backend));
            }
        }
        if standby {
            // A standby neither consumes nor needs NATS; only its store matters.
        } else if !self.nats_connected.load(Ordering::SeqCst) {
            let e = self.nats_error.lock().expect("health lock").clone();
            r.push(format!("NATS disconnected{}", e.map(|e| format!(" ({e})")).unwrap_or_default()));
        } else if !self.consumer_ready.load(Ordering::SeqCst) {
            let e = self.nats_error.lock().expect("health lock").clone();
            r.push(format!("durable consumer not ready{}", e.map(|e| format!(" ({e})")).unwrap_or_default()));
        }
        let s = self.store.status();
        if !s.healthy {
            r.push(format!("store unhealthy: {}", s.error.unwrap_or_default()));
        }
        r
    }

    /// Updates the gauges and logs entering or leaving the degraded mode.
    pub fn refresh(&self) {
        let store_ok = self.store.healthy();
        self.metrics.nats_connected.set(self.nats_connected.load(Ordering::SeqCst) as i64);
        self.metrics.store_healthy.set(store_ok as i64);
        let blocked = self.reasons(false);
        let apply_possible = self.mode == Mode::Apply && self.backend_can_apply;
        self.metrics.apply_enabled.set(self.reasons(true).is_empty() as i64);
        let degraded = !blocked.is_empty();
        let before = self.degraded.swap(degraded, Ordering::SeqCst);
        if apply_possible && degraded && !before {
            tracing::warn!(reasons = %blocked.join("; "), "degraded to recommend-only: nothing is applied until this recovers");
        } else if apply_possible && !degraded && before {
            tracing::info!("recovered: applying reconfigurations again");
        }
    }

    pub fn readiness(&self) -> Readiness {
        self.refresh();
        let reasons = self.reasons(false);
        let ready = reasons.is_empty();
        let standby = self.standby.load(Ordering::SeqCst);
        let effective_mode = if ready && !standby && self.mode == Mode::Apply && self.backend_can_apply {
            Mode::Apply
        } else {
            Mode::RecommendOnly
        };
        Readiness {
            ready,
            mode: self.mode,
            effective_mode,
            nats_connected: self.nats_connected.load(Ordering::SeqCst),
            consumer_ready: self.consumer_ready.load(Ordering::SeqCst),
            store: self.store.status(),
            backend: self.backend,
            role: if standby { "standby" } else { "leader" },
            reasons,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_is_blocked_until_nats_and_the_consumer_are_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("d.db"));
        let m = Arc::new(Metrics::new());
        let h = Health::new(Mode::Apply, "file", true, store, m.clone());
        assert!(h.apply_blocked().unwrap().contains("NATS disconnected"));
        assert!(!h.readiness().ready);
        h.set_nats_connected(true, None);
        assert!(h.apply_blocked().unwrap().contains("consumer not ready"));
        h.set_consumer_ready(true, None);
        assert_eq!(h.apply_blocked(), None);
        let r = h.readiness();
        assert!(r.ready && r.effective_mode == Mode::Apply, "{r:?}");
        assert!(m.encode().contains("demeter_apply_enabled 1"));
        h.set_nats_connected(false, Some("connection refused".into()));
        let r = h.readiness();
        assert!(!r.ready && r.effective_mode == Mode::RecommendOnly);
        assert!(r.reasons[0].contains("connection refused"), "{r:?}");
    }

    #[test]
    fn recommend_only_never_applies_even_when_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("d.db"));
        let h = Health::new(Mode::RecommendOnly, "file", true, store, Arc::new(Metrics::new()));
        h.set_nats_connected(true, None);
        h.set_consumer_ready(true, None);
        assert!(h.readiness().ready);
        assert_eq!(h.apply_blocked().as_deref(), Some("mode is recommend-only"));
    }
}

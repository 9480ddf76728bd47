//! The HTTP API, probes and metrics, on one port (`listen`).
//!
//! | Route | |
//! |---|---|
//! | `GET /api/v1/jobs` | every managed job: configuration, recommendation, forecast peak, state |
//! | `GET /api/v1/jobs/{namespace}/{name}` | one job: current configuration, forecast with band, model summary, recent decisions with explanations, agents, stored decisions (`?decisions=N`), intents, stored observation buckets as `history` (`?observations_minutes=M`) |
//! | `POST /api/v1/jobs/{namespace}/{name}/recommend` | a dry run: what the controller would decide now; applies nothing |
//! | `GET /healthz` | liveness: 200 while the process serves |
//! | `GET /readyz` | 200 when NATS, the consumer and the store are healthy; 503 with the reasons (and the degraded mode) otherwise |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//!
//! Every `POST` requires `Authorization: Bearer <api_token>` when a token is configured; the
//! comparison takes constant time. Responses are JSON; errors are `{"error": "..."}`.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use demeter_common::{AgentHeartbeat, JobConfig, UnixMillis};
use demeter_core::controller::{DecisionRecord, Mode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use super::Jobs;
use super::config::Secret;
use super::driver::{DriverMsg, DriverState, JobView};
use super::health::Health;
use super::metrics::Metrics;
use super::store::{IntentRecord, ObservationRow, Store};
use crate::backend::JobKey;

/// How long a dry run may take before the API gives up.
const RECOMMEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ApiState {
    pub jobs: Arc<Jobs>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub api_token: Option<Secret>,
}

pub fn router(state: ApiState) -> Router {
    let mutating = Router::new()
        .route("/api/v1/jobs/{namespace}/{name}/recommend", post(recommend))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{namespace}/{name}", get(job))
        .merge(mutating)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// Whether `headers` carry `Bearer <token>`, compared in constant time.
pub fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some(given) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) else { return false };
    given.trim().as_bytes().ct_eq(token.expose().as_bytes()).into()
}

async fn require_token(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.api_token
        && !bearer_matches(req.headers(), token)
    {
        let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let r = s.health.readiness();
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r)).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    s.health.refresh();
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
        .into_response()
}

/// One line of `GET /api/v1/jobs`.
#[derive(Debug, Serialize)]
pub struct JobSummary {
    pub namespace: String,
    pub name: String,
    pub state: DriverState,
    pub mode: Mode,
    pub effective_mode: Mode,
    pub current: Option<JobConfig>,
    pub current_cpu: Option<f64>,
    pub current_memory_mb: Option<u64>,
    /// What the last decision chose (the current configuration when it chose to keep it).
    pub recommended: Option<JobConfig>,
    pub last_decision_at: Option<UnixMillis>,
    pub input_rate: Option<f64>,
    pub forecast_peak: Option<f64>,
    pub reconfiguration_in_flight: bool,
    pub taskmanagers: usize,
    pub observations: u64,
    pub apply_blocked: Option<String>,
}

fn summary(v: &JobView) -> JobSummary {
    let st = v.status.as_ref();
    let last = st.and_then(|s| s.recent_decisions.last());
    JobSummary {
        namespace: v.namespace.clone(),
        name: v.name.clone(),
        state: v.state.clone(),
        mode: v.mode,
        effective_mode: v.effective_mode,
        current: st.map(|s| s.current),
        current_cpu: st.map(|s| s.current_cpu),
        current_memory_mb: st.map(|s| s.current_memory_mb),
        recommended: last.map(|d| if d.decision.switch { d.decision.target } else { d.current }),
        last_decision_at: last.map(|d| d.at),
        input_rate: st.and_then(|s| s.last_observation.as_ref()).map(|o| o.offered_rate),
        forecast_peak: st.and_then(|s| s.forecast.as_ref()).map(|f| f.decision_peak),
        reconfiguration_in_flight: st.is_some_and(|s| s.in_flight.is_some()),
        taskmanagers: v.taskmanagers,
        observations: v.observations,
        apply_blocked: v.apply_blocked.clone(),
    }
}

#[derive(Debug, Serialize)]
struct JobList {
    jobs: Vec<JobSummary>,
}

async fn list_jobs(State(s): State<ApiState>) -> Json<JobList> {
    Json(JobList { jobs: s.jobs.views().iter().map(|v| summary(v)).collect() })
}

#[derive(Debug, Deserialize)]
struct JobQuery {
    /// Stored decisions to include (newest first), up to 1000.
    #[serde(default)]
    decisions: Option<usize>,
    /// Minutes of stored observation buckets to include, up to one week.
    #[serde(default)]
    observations_minutes: Option<u64>,
}

/// `GET /api/v1/jobs/{namespace}/{name}`.
#[derive(Debug, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub view: JobView,
    pub agents: Vec<AgentHeartbeat>,
    pub decisions: Vec<DecisionRecord>,
    pub intents: Vec<IntentRecord>,
    /// Stored observation buckets (`?observations_minutes=M`).
    pub history: Vec<ObservationRow>,
}

async fn job(
    State(s): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<JobQuery>,
) -> Response {
    let key = JobKey::new(namespace, name);
    let Some(view) = s.jobs.view(&key) else {
        return error(StatusCode::NOT_FOUND, format!("job {key} is not managed"));
    };
    let now = UnixMillis::now();
    let decisions = match q.decisions.unwrap_or(20).min(1000) {
        0 => Vec::new(),
        n => s.store.decisions(&key, n).await.unwrap_or_default(),
    };
    let intents = s.store.intents(&key, 20).await.unwrap_or_default();
    let history = match q.observations_minutes.unwrap_or(0).min(7 * 24 * 60) {
        0 => Vec::new(),
        m => {
            let since = UnixMillis(now.0 - (m as i64) * 60_000);
            s.store.observations(&key, since, 100_000).await.unwrap_or_default()
        }
    };
    let agents = s.jobs.agents(&key, now, Duration::from_secs(120));
    Json(JobDetail { view: (*view).clone(), agents, decisions, intents, history }).into_response()
}

#[derive(Debug, Serialize)]
struct Recommendation {
    namespace: String,
    name: String,
    dry_run: bool,
    record: DecisionRecord,
}

async fn recommend(State(s): State<ApiState>, Path((namespace, name)): Path<(String, String)>) -> Response {
    let key = JobKey::new(namespace, name);
    let Some(tx) = s.jobs.sender(&key) else {
        return error(StatusCode::NOT_FOUND, format!("job {key} is not managed"));
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(DriverMsg::Recommend(reply_tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, format!("the driver of {key} is restarting"));
    }
    match tokio::time::timeout(RECOMMEND_TIMEOUT, reply_rx).await {
        Ok(Ok(record)) => Json(Recommendation {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            dry_run: true,
            record,
        })
        .into_response(),
        Ok(Err(_)) => error(StatusCode::SERVICE_UNAVAILABLE, format!("the driver of {key} cannot answer")),
        Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "the dry run did not finish in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let t = Secret::new("0123456789abcdef");
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, &t));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer 0123456789abcdef"));
        assert!(bearer_matches(&h, &t));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer 0123456789abcdeF"));
        assert!(!bearer_matches(&h, &t));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer 0123456789abcde"));
        assert!(!bearer_matches(&h, &t));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic 0123456789abcdef"));
        assert!(!bearer_matches(&h, &t));
    }
}

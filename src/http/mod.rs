//! HTTP surface on one port: `/ws` (WebSocket), `/health`, `/health/live`,
//! `/health/ready`, `/version`, `/metrics`, and the admin API under `/admin`.
//!
//! Every query parameter is bounded and validated before a WebSocket upgrade;
//! bad input gets a 400 with a JSON body naming the problem.

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod backpressure;
pub(crate) mod config;
pub(crate) mod health;
pub(crate) mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::http::admission::{Admission, Refusal};
use crate::http::auth::AuthConfig;
use crate::telemetry;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::http::health::Health;
use crate::hub::{Filter, Format};
use crate::ingest::consume::AdminCommand;
use crate::ingest::halt::ReleaseError;
use crate::replay::ResumeFrom;
use crate::session::{self, SessionContext};

/// Longest thread id accepted by the admin API.
const MAX_THREAD_ID_BYTES: usize = 256;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) health: Arc<Health>,
    pub(crate) sessions: Arc<SessionContext>,
    pub(crate) tracker: TaskTracker,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) admin_tx: mpsc::Sender<AdminCommand>,
    pub(crate) admin: AdminAuth,
    pub(crate) admission: Arc<Admission>,
    pub(crate) auth: Arc<AuthConfig>,
    pub(crate) max_incoming_bytes: usize,
    pub(crate) max_filter_values: usize,
    pub(crate) group_id: String,
}

/// How admin endpoints are protected.
#[derive(Clone, Debug)]
pub(crate) enum AdminAuth {
    Token(String),
    /// No token configured and bound to loopback: open to local callers.
    LoopbackOnly,
    /// No token configured on a non-loopback bind: admin is disabled.
    Disabled,
}

impl AdminAuth {
    pub(crate) fn new(token: Option<String>, listen: SocketAddr) -> Self {
        match token {
            Some(t) => AdminAuth::Token(t),
            None if listen.ip().is_loopback() => AdminAuth::LoopbackOnly,
            None => AdminAuth::Disabled,
        }
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        match self {
            AdminAuth::LoopbackOnly => Ok(()),
            AdminAuth::Disabled => Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "admin endpoints are disabled on a non-loopback bind until ADMIN_TOKEN is set",
            ))),
            AdminAuth::Token(expected) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
                    Ok(())
                } else {
                    Err(Box::new(error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "missing or wrong bearer token",
                    )))
                }
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::http::web::index))
        .route("/app.js", get(crate::http::web::app_js))
        .route("/style.css", get(crate::http::web::style_css))
        .route("/client.js", get(crate::http::web::client_js))
        .route(
            "/client.classic.js",
            get(crate::http::web::client_classic_js),
        )
        .route("/api", get(index))
        .route("/ws", get(ws))
        .route("/health", get(health))
        .route(
            "/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/health/ready", get(ready))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/admin/threads/halted", get(halted))
        .route("/admin/circuit-breaker/reset", post(reset_breaker))
        .route("/admin/tenants/rate-limits", get(rate_limits))
        .route(
            "/admin/tenants/{tenant}/rate-limit",
            axum::routing::put(set_rate_limit).delete(clear_rate_limit),
        )
        .route("/admin/threads/{thread_id}/resume", post(release_thread))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    Json(json!({
        "service": "kafka-ws-bridge",
        "endpoints": [
            "/", "/client.js", "/client.classic.js", "/api", "/ws", "/health", "/health/live", "/health/ready",
            "/version", "/metrics", "/admin/threads/halted", "/admin/threads/{thread_id}/resume",
            "/admin/circuit-breaker/reset", "/admin/tenants/rate-limits", "/admin/tenants/{tenant}/rate-limit"
        ],
        "protocol": "see docs/PROTOCOL.md",
    }))
}

#[derive(Deserialize)]
struct WsParams {
    format: Option<String>,
    threads: Option<String>,
    tenant: Option<String>,
    types: Option<String>,
    /// `cursor`, `earliest` or `latest`.
    resume: Option<String>,
    /// With `resume=cursor`: `0:12,1:40` (partition:last applied offset).
    last_offsets: Option<String>,
    /// Access token for browsers (others may use `Authorization: Bearer`).
    token: Option<String>,
}

async fn ws(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Result<Query<WsParams>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "query string could not be parsed",
        );
    };
    let format = match params.format.as_deref() {
        None | Some("binary") => Format::Binary,
        Some("json") => Format::Json,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_format",
                "format must be 'binary' or 'json'",
            )
        }
    };
    let filter = match Filter::parse(
        params.threads.as_deref(),
        params.tenant.as_deref(),
        params.types.as_deref(),
        app.max_filter_values,
    ) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_filter", &e.to_string()),
    };
    // An Origin that is not visible ASCII cannot be on the allowlist: refuse it rather than ignore it.
    let origin = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => None,
        Some(Ok(o)) => Some(o),
        Some(Err(_)) => Some("(not ASCII)"),
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut filter = filter;
    let checked = app
        .auth
        .check_origin(origin)
        .and_then(|()| app.auth.verify(bearer.or(params.token.as_deref())))
        .and_then(|claims| auth::enforce(&claims, &mut filter));
    if let Err(e) = checked {
        metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => "unauthorized").increment(1);
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
        return error(
            status,
            if e.status() == 401 {
                "unauthorized"
            } else {
                "forbidden"
            },
            &e.to_string(),
        );
    }
    let resume = match ResumeFrom::from_query(
        params.resume.as_deref(),
        params.last_offsets.as_deref(),
        app.sessions.settings.max_resume_partitions,
    ) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_resume", &e),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                &e.body_text(),
            )
        }
    };
    if app.health.shutting_down() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        );
    }
    let ip = app.admission.client_ip(peer, &headers);
    let permit = match app.admission.admit(ip) {
        Ok(p) => p,
        Err(Refusal::CircuitOpen) => {
            // Overloaded: complete the handshake only to say "try again later" (1013).
            return upgrade.on_upgrade(|mut socket| async move {
                let frame = CloseFrame {
                    code: session::socket::CLOSE_TRY_AGAIN_LATER,
                    reason: Utf8Bytes::from_static("try again later: server overloaded"),
                };
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    socket.send(Message::Close(Some(frame))),
                )
                .await;
            });
        }
        Err(Refusal::GlobalLimit) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                "the server has reached WEBSOCKET_MAX_CONNECTIONS",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        Err(Refusal::PerIpLimit) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_from_ip",
                &format!("{ip} has reached WEBSOCKET_MAX_CONNECTIONS_PER_IP"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
    };
    let sessions = app.sessions.clone();
    let tracker = app.tracker.clone();
    // The permit moves into the session future: released when the session
    // ends, or when the upgrade never completes and the future is dropped.
    upgrade
        .max_message_size(app.max_incoming_bytes)
        .max_frame_size(app.max_incoming_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let _permit = permit;
                session::run(socket, sessions, format, filter, resume).await
            })
        })
}

/// Asks the consumer task (which owns the pipeline) and waits for its answer.
async fn ask<T>(
    app: &AppState,
    command: impl FnOnce(oneshot::Sender<T>) -> AdminCommand,
) -> Result<T, Box<Response>> {
    let (reply, rx) = oneshot::channel();
    if app.admin_tx.send(command(reply)).await.is_err() {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "consumer_stopped",
            "the consumer is not running",
        )));
    }
    rx.await.map_err(|_| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "consumer_stopped",
            "the consumer stopped before answering",
        ))
    })
}

async fn rate_limits(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    match ask(&app, |reply| AdminCommand::RateLimits { reply }).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => *r,
    }
}

async fn set_rate_limit(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: Result<Json<crate::ingest::ratelimit::Rate>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    let Ok(Json(rate)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected JSON {\"messages_per_second\": N, \"burst\": N}",
        );
    };
    if let Err(e) = rate.validate() {
        return error(StatusCode::BAD_REQUEST, "invalid_rate", &e);
    }
    change_rate_limit(&app, tenant, Some(rate)).await
}

async fn clear_rate_limit(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    change_rate_limit(&app, tenant, None).await
}

async fn change_rate_limit(
    app: &AppState,
    tenant: String,
    rate: Option<crate::ingest::ratelimit::Rate>,
) -> Response {
    if tenant.is_empty() || tenant.len() > 256 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            "tenant id must be 1-256 bytes",
        );
    }
    match ask(app, |reply| AdminCommand::SetRateLimit {
        tenant,
        rate,
        reply,
    })
    .await
    {
        Ok(v) => Json(v).into_response(),
        Err(r) => *r,
    }
}

async fn reset_breaker(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    let before = app.admission.reset_breaker();
    Json(json!({"circuit_breaker": "CLOSED", "was": before.as_str()})).into_response()
}

async fn health(State(app): State<AppState>) -> Response {
    let doc = app.health.health_json(app.sessions.hub.connected());
    let code = if doc["status"] == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(doc)).into_response()
}

async fn ready(State(app): State<AppState>) -> Response {
    match app.health.not_ready_reason() {
        None => Json(json!({"ready": true})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

async fn version(State(app): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "name": "kafka-ws-bridge",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "topic": app.sessions.topic,
        "group_id": app.group_id,
        "resume_namespace": app.health.namespace,
    }))
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn halted(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    Json(json!({"halted_threads": app.health.halted()})).into_response()
}

async fn release_thread(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(thread_id): Path<String>,
) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    if thread_id.is_empty() || thread_id.len() > MAX_THREAD_ID_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_thread_id",
            "thread id must be 1-256 bytes",
        );
    }
    let answer = ask(&app, |reply| AdminCommand::ReleaseThread {
        thread: thread_id.clone(),
        reply,
    })
    .await;
    match answer {
        Ok(Ok(released)) => {
            Json(json!({"thread_id": thread_id, "resumed": true, "released": released}))
                .into_response()
        }
        Ok(Err(ReleaseError::NotHalted(t))) => error(
            StatusCode::NOT_FOUND,
            "not_halted",
            &format!("thread '{t}' is not halted"),
        ),
        Err(r) => *r,
    }
}

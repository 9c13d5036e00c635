//! HTTP surface on one port: `/ws` (WebSocket), `/health`, `/health/live`,
//! `/health/ready`, `/version`, `/metrics`, and the admin API under `/admin`.
//!
//! Every query parameter is bounded and validated before a WebSocket upgrade;
//! bad input gets a 400 with a JSON body naming the problem.

pub(crate) mod admin;
pub(crate) mod admin_auth;
pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod backpressure;
pub(crate) mod claims;
pub(crate) mod config;
pub(crate) mod health;
pub(crate) mod jwt;
pub(crate) mod server;
pub(crate) mod state;
pub(crate) mod web;
pub(crate) mod ws;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::http::state::AppState;

#[cfg(test)]
mod tests;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::http::web::index))
        .route("/app.js", get(crate::http::web::app_js))
        .route("/charts.js", get(crate::http::web::charts_js))
        .route("/style.css", get(crate::http::web::style_css))
        .route("/client.js", get(crate::http::web::client_js))
        .route(
            "/client.classic.js",
            get(crate::http::web::client_classic_js),
        )
        .route("/api", get(index))
        .route("/ws", get(ws::ws))
        .route("/auth/token", get(token_check))
        .route("/health", get(health))
        .route(
            "/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/health/ready", get(ready))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/admin/threads/halted", get(admin::halted))
        .route("/admin/circuit-breaker/reset", post(admin::reset_breaker))
        .route("/admin/tenants/rate-limits", get(admin::rate_limits))
        .route(
            "/admin/tenants/{tenant}/rate-limit",
            axum::routing::put(admin::set_rate_limit).delete(admin::clear_rate_limit),
        )
        .route(
            "/admin/threads/{thread_id}/resume",
            post(admin::release_thread),
        )
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    Json(json!({
        "service": "kafka-ws-bridge",
        "endpoints": [
            "/", "/app.js", "/charts.js", "/client.js", "/client.classic.js", "/api", "/ws", "/auth/token", "/health", "/health/live", "/health/ready",
            "/version", "/metrics", "/admin/threads/halted", "/admin/threads/{thread_id}/resume",
            "/admin/circuit-breaker/reset", "/admin/tenants/rate-limits", "/admin/tenants/{tenant}/rate-limit"
        ],
        "protocol": "see docs/PROTOCOL.md",
    }))
}

/// Checks the token in `Authorization: Bearer` as `/ws` would, so a page
/// can tell its user why a token is refused (a browser never sees the
/// status of a refused WebSocket handshake): 200 with whether a token is
/// required and, for a valid one, its claims and expiry; else the 401 or
/// 403 `/ws` would give.
async fn token_check(State(app): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    match app.auth.verify_refreshing(auth::bearer(&headers)).await {
        Ok(c) => Json(json!({
            "required": app.auth.required(),
            "tenant": c.tenant,
            "threads": c.threads,
            "expires_at": c.expires_at,
        }))
        .into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
            state::error(status, "unauthorized", &e.to_string())
        }
    }
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

//! The admin API under `/admin`: halted threads and their release, the
//! circuit breaker, tenant rate limits. Protected by `ADMIN_TOKEN` (or open
//! to loopback callers on a loopback bind); commands for the pipeline go to
//! the consumer task, which owns it, and wait for its answer.

use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::oneshot;

use crate::http::{error, AppState};
use crate::ingest::consume::AdminCommand;
use crate::ingest::halt::ReleaseError;

/// Longest thread id accepted by the admin API.
const MAX_THREAD_ID_BYTES: usize = 256;

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

pub(crate) async fn rate_limits(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    match ask(&app, |reply| AdminCommand::RateLimits { reply }).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => *r,
    }
}

pub(crate) async fn set_rate_limit(
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

pub(crate) async fn clear_rate_limit(
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

pub(crate) async fn reset_breaker(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    let before = app.admission.reset_breaker();
    Json(json!({"circuit_breaker": "CLOSED", "was": before.as_str()})).into_response()
}

pub(crate) async fn halted(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = app.admin.check(&headers) {
        return *r;
    }
    Json(json!({"halted_threads": app.health.halted()})).into_response()
}

pub(crate) async fn release_thread(
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

//! The admin API under `/admin`: halted threads and their release, the
//! circuit breaker, tenant rate limits. Protected by `ADMIN_TOKEN` (or open
//! to loopback callers on a loopback bind); commands for the pipeline go to
//! the consumer task, which owns it, and wait for its answer.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tokio::sync::oneshot;

use crate::http::state::{error, AppState};
use crate::ingest::consume::AdminCommand;
use crate::ingest::halt::ReleaseError;

/// Longest thread id accepted by the admin API.
const MAX_THREAD_ID_BYTES: usize = 256;

/// Refuses the request unless `ADMIN_TOKEN` (or a loopback bind) allows it.
fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    app.admin
        .check(headers)
        .map_err(|r| Box::new(error(r.status, r.code, r.message)))
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
    if let Err(r) = authorize(&app, &headers) {
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
    if let Err(r) = authorize(&app, &headers) {
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
    if let Err(r) = authorize(&app, &headers) {
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
    // Every instance applies it (and a restart keeps it) through Redis.
    let shared = match &app.health.redis {
        Some(r) => match crate::follow::limits::publish(r, &app.shared_limits, &tenant, rate).await
        {
            Ok(()) => Some(true),
            Err(e) => {
                tracing::warn!(tenant_id = ?tenant, error = %e, "rate limit change not written to Redis: it applies to this instance only");
                Some(false)
            }
        },
        None => None,
    };
    match ask(app, |reply| AdminCommand::SetRateLimit {
        tenant,
        rate,
        reply,
    })
    .await
    {
        Ok(mut v) => {
            if let (Some(shared), Some(o)) = (shared, v.as_object_mut()) {
                o.insert("shared".into(), json!(shared));
            }
            Json(v).into_response()
        }
        Err(r) => *r,
    }
}

pub(crate) async fn reset_breaker(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&app, &headers) {
        return *r;
    }
    let before = app.admission.reset_breaker();
    Json(json!({"circuit_breaker": "CLOSED", "was": before.as_str()})).into_response()
}

pub(crate) async fn halted(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&app, &headers) {
        return *r;
    }
    Json(json!({"halted_threads": app.health.halted()})).into_response()
}

pub(crate) async fn release_thread(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(thread_id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&app, &headers) {
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
    let local = match answer {
        Ok(Ok(released)) => Some(released),
        Ok(Err(ReleaseError::NotHalted(_))) => None,
        Err(r) => return *r,
    };
    // Other instances may hold it too (the one that owns the records, or ones
    // that restored the halt at a rebalance): ask them all through Redis.
    let everywhere = match &app.health.redis {
        Some(r) => {
            let origin = format!("{:016x}", app.sessions.hub.notices.boot());
            crate::follow::halts::release_everywhere(r, &thread_id, local, &origin).await
        }
        None => Ok(local),
    };
    match everywhere {
        Ok(Some(released)) => Json(json!({
            "thread_id": thread_id, "resumed": true, "released": released,
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_halted",
            &format!("thread '{thread_id}' is not halted"),
        ),
        Err(e) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "owner_did_not_answer",
            &e.to_string(),
        ),
    }
}

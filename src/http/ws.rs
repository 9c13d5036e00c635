//! `/ws`: the WebSocket upgrade. Every query parameter is bounded and
//! validated first (400), then access (Origin 403, token 401, claims that
//! narrow the filter or 403), then the resume parameters (400), then
//! admission (503 / 429, breaker open: 1013 after the handshake), so a refused
//! request never holds a connection slot.

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use crate::http::admission::Refusal;
use crate::http::auth;
use crate::http::state::{error, AppState};
use crate::hub::{Filter, Format};
use crate::replay::ResumeFrom;
use crate::session::{self, socket};
use crate::telemetry;

/// Bytes a connection reads at a time. Clients send small control messages
/// (at most `WEBSOCKET_MAX_INCOMING_BYTES`; the buffer grows for a larger
/// one), so an idle connection does not hold tungstenite's default 128 KiB:
/// with 1 KiB, 1,000 idle connections cost about 6.3 KB each (`kwb-bench`).
const READ_BUFFER_BYTES: usize = 1024;

/// Bytes of frames a connection buffers before they are written out: a
/// pass over the log goes out in a few writes, and a client that stopped
/// reading holds at most this much (and one frame) besides its kernel
/// socket buffer, instead of tungstenite's default 128 KiB.
const WRITE_BUFFER_BYTES: usize = 32 * 1024;

/// The subprotocol the server selects when a client offers it. Browsers
/// that pass their token as a subprotocol must offer it too (a browser
/// fails a handshake whose response selects none of its offers).
pub(crate) const SUBPROTOCOL: &str = "dashstream.v1";

/// A subprotocol offer carrying a token: `dashstream.bearer.<token>`.
const TOKEN_SUBPROTOCOL_PREFIX: &str = "dashstream.bearer.";

/// The token a client gave: `Authorization: Bearer`, else a
/// `dashstream.bearer.<token>` subprotocol offer, else `?token=`.
pub(crate) fn request_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let bearer = auth::bearer(headers);
    let offered = || {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
    };
    bearer.or_else(offered).or(query)
}

#[derive(Deserialize)]
pub(crate) struct WsParams {
    format: Option<String>,
    threads: Option<String>,
    tenant: Option<String>,
    types: Option<String>,
    /// `cursor`, `earliest` or `latest`.
    resume: Option<String>,
    /// With `resume=cursor`: `0:12,1:40` (partition:last applied offset).
    last_offsets: Option<String>,
    /// With `resume`: the notice cursor the client keeps (`BOOT:SEQ`).
    notices: Option<String>,
    /// Access token for browsers (others may use `Authorization: Bearer`).
    token: Option<String>,
}

/// The checks of the upgrade that read only the query string (format,
/// filter, resume), in the same order; for the fuzz targets.
pub(crate) fn check_query(
    query: &str,
    max_filter_values: usize,
    max_resume_partitions: usize,
) -> Result<(), String> {
    let uri: axum::http::Uri = format!("/ws?{query}")
        .parse()
        .map_err(|_| "not a URI".to_string())?;
    let Query(params) = Query::<WsParams>::try_from_uri(&uri).map_err(|e| e.body_text())?;
    parse_format(params.format.as_deref()).ok_or("invalid_format")?;
    Filter::parse(
        params.threads.as_deref(),
        params.tenant.as_deref(),
        params.types.as_deref(),
        max_filter_values,
    )
    .map_err(|e| e.to_string())?;
    ResumeFrom::from_query(
        params.resume.as_deref(),
        params.last_offsets.as_deref(),
        max_resume_partitions,
    )?;
    check_notices(params.notices.as_deref())?;
    Ok(())
}

/// A notice cursor, when given, is `BOOT:SEQ`.
fn check_notices(notices: Option<&str>) -> Result<(), String> {
    notices
        .map(crate::hub::notices::parse_cursor)
        .transpose()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn parse_format(f: Option<&str>) -> Option<Format> {
    match f {
        None | Some("binary") => Some(Format::Binary),
        Some("json") => Some(Format::Json),
        Some(_) => None,
    }
}

pub(crate) async fn ws(
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
    let format = match parse_format(params.format.as_deref()) {
        Some(f) => f,
        None => {
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
    let mut filter = filter;
    let token = request_token(&headers, params.token.as_deref());
    let checked = match app.auth.check_origin(origin) {
        Ok(()) => app.auth.verify_refreshing(token).await,
        Err(e) => Err(e),
    }
    .and_then(|claims| auth::enforce(&claims, &mut filter).map(|()| claims.expires_at));
    let expires_at = match checked {
        Ok(e) => e,
        Err(e) => return refused(e),
    };
    let resume = match ResumeFrom::from_query(
        params.resume.as_deref(),
        params.last_offsets.as_deref(),
        app.sessions.settings.max_resume_partitions,
    ) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_resume", &e),
    };
    if let Err(e) = check_notices(params.notices.as_deref()) {
        return error(StatusCode::BAD_REQUEST, "invalid_resume", &e);
    }
    let notices = params.notices.filter(|_| resume.is_some());
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
    let ip = app.admission.client_bucket(peer, &headers);
    let permit = match app.admission.admit(ip) {
        Ok(p) => p,
        Err(Refusal::CircuitOpen) => {
            // Overloaded: complete the handshake only to say "try again later" (1013).
            return upgrade.on_upgrade(|mut ws| async move {
                let frame = CloseFrame {
                    code: socket::CLOSE_TRY_AGAIN_LATER,
                    reason: Utf8Bytes::from_static("try again later: server overloaded"),
                };
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    ws.send(Message::Close(Some(frame))),
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
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(app.max_incoming_bytes)
        .max_frame_size(app.max_incoming_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let _permit = permit;
                session::run(
                    socket, sessions, format, filter, resume, notices, expires_at,
                )
                .await
            })
        })
}

/// A refused token or Origin: 401 `unauthorized` or 403 `forbidden`, with
/// the reason.
pub(crate) fn refused(e: auth::AuthError) -> Response {
    metrics::counter!(telemetry::CONNECTIONS_REJECTED, "reason" => "unauthorized").increment(1);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
    let code = if e.status() == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    error(status, code, &e.to_string())
}

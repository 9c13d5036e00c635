//! What every HTTP handler shares, and the one shape of a refusal.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::http::admin_auth::AdminAuth;
use crate::http::admission::Admission;
use crate::http::auth::AuthConfig;
use crate::http::health::Health;
use crate::ingest::consume::AdminCommand;
use crate::session::SessionContext;

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
    /// The shared rate-limit overrides applied here (with Redis).
    pub(crate) shared_limits: Arc<crate::follow::limits::Applied>,
}

/// A refusal: the status and a JSON body `{"error": code, "message": …}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

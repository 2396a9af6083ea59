//! `sluicegate serve`: a read-only live dashboard, a JSON API (with token-guarded mutations)
//! and Prometheus `/metrics`, all drawn from the tracking database so that any `serve` process
//! shows every worker's progress.

mod api;
mod metrics;
mod pages;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sluicegate::Sluicegate;

pub use self::metrics::MetricsState;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The tracking database.
    pub sg: Sluicegate,
    /// Bearer token for mutations; `None` turns mutations off (403).
    pub token: Option<Arc<str>>,
    /// The Prometheus recorder and what it has already observed.
    pub metrics: Arc<MetricsState>,
}

impl AppState {
    /// State for `sg` with an optional mutation token.
    pub fn new(sg: Sluicegate, token: Option<String>) -> Self {
        Self {
            sg,
            token: token.map(Arc::from),
            metrics: Arc::new(MetricsState::new()),
        }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/migrations/{id}", get(pages::migration))
        .route("/jobs/{id}", get(pages::job))
        .route("/static/app.js", get(pages::script))
        .route("/static/app.css", get(pages::stylesheet))
        .route("/api/migrations", get(api::migrations))
        .route("/api/migrations/{id}", get(api::migration))
        .route("/api/migrations/{id}/jobs", get(api::jobs))
        .route("/api/migrations/{id}/history", get(api::migration_history))
        .route("/api/migrations/{id}/health", get(api::health))
        .route("/api/jobs/{id}/history", get(api::job_history))
        .route("/api/migrations/{id}/{action}", post(api::act))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page or endpoint") })
        .with_state(state)
}

/// Reads the mutation token: the file's content, trimmed; an empty file is refused.
pub fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

/// Serves until Ctrl-C or SIGTERM, then lets requests in flight finish.
pub async fn serve(state: AppState, listen: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    eprintln!(
        "serving the dashboard on http://{address}/ (mutations {})",
        if state.token.is_some() {
            "need the bearer token"
        } else {
            "off: no --token-file"
        }
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .context("serving HTTP")
}

/// An error as the API answers it: a status code and `{"error": "..."}`. Internal errors are
/// logged and answered with a generic message (no SQL, no URLs, no passwords).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<sluicegate::Error> for ApiError {
    fn from(e: sluicegate::Error) -> Self {
        use sluicegate::Error as E;
        let status = match &e {
            E::MigrationNotFound(_) | E::JobNotFound(_) => StatusCode::NOT_FOUND,
            E::IllegalMigrationTransition { .. }
            | E::IllegalJobTransition { .. }
            | E::Conflict { .. } => StatusCode::CONFLICT,
            E::SchemaMissing | E::SchemaTooNew { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::InvalidSettings(_) | E::OutOfRange(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
            return Self::new(status, "internal error: see the server's log");
        }
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

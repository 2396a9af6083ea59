//! `sluicegate serve`: a read-only live dashboard, a JSON API (with token-guarded mutations)
//! and Prometheus `/metrics`, all drawn from the tracking database so that any `serve` process
//! shows every worker's progress.
//!
//! Its edge: a non-loopback address needs the token for everything (reads included) unless
//! `--public-reads` says otherwise; the `Host` header is checked (DNS rebinding); tokens are
//! long and their files private; bodies, reasons, and the time to send a request's header and
//! body are bounded; every error is JSON.

mod api;
mod edge;
mod metrics;
mod pages;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sluicegate::Sluicegate;

pub use self::edge::AllowedHosts;
pub use self::metrics::MetricsState;

/// The shortest token accepted: 32 characters (`openssl rand -hex 32` writes 64).
pub const MIN_TOKEN_CHARS: usize = 32;
/// The largest request body read (a mutation's JSON is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send a request's header (from the connection's start or
/// the end of its previous request): a half-sent request is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's whole body once its header is in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The tracking database.
    pub sg: Sluicegate,
    /// Bearer token for mutations; `None` turns mutations off (403).
    pub token: Option<Arc<str>>,
    /// The Prometheus recorder and what it has already observed.
    pub metrics: Arc<MetricsState>,
    /// Whether reading (pages, API, `/metrics`) needs the token too.
    pub reads_need_token: bool,
    /// The `Host` names answered.
    pub hosts: Arc<AllowedHosts>,
}

impl AppState {
    /// State for `sg` with an optional mutation token, public reads, answering loopback names
    /// only (see [`AppState::with_hosts`]).
    pub fn new(sg: Sluicegate, token: Option<String>) -> Self {
        Self {
            sg,
            token: token.map(Arc::from),
            metrics: Arc::new(MetricsState::new()),
            reads_need_token: false,
            hosts: Arc::new(AllowedHosts::loopback()),
        }
    }

    /// The `Host` names answered.
    pub fn with_hosts(mut self, hosts: AllowedHosts) -> Self {
        self.hosts = Arc::new(hosts);
        self
    }

    /// Reads need the token too (it must be set).
    pub fn reads_need_token(mut self, yes: bool) -> Self {
        self.reads_need_token = yes;
        self
    }
}

/// Every route of the server, behind its edge (`edge::guard`): `Host` check, read
/// access, body size and body read time.
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
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed here (pages and reads are GET, actions POST)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::guard,
        ))
        .with_state(state)
}

/// Reads the mutation token: the file's content, trimmed. Refused: a file that group or
/// others may read or write (say which `chmod`), an empty one, a token shorter than
/// [`MIN_TOKEN_CHARS`].
pub fn read_token(path: &Path) -> Result<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading the token file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "the token file {} is open to group or others (mode {:o}): run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    let chars = token.chars().count();
    if chars < MIN_TOKEN_CHARS {
        bail!(
            "the token in {} is {chars} characters long; at least {MIN_TOKEN_CHARS} are needed \
             (e.g. `(umask 077 && openssl rand -hex 32 > {})`)",
            path.display(),
            path.display()
        );
    }
    Ok(token)
}

/// What `sluicegate serve` was asked for.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Address to listen on (`host:port`).
    pub listen: String,
    /// The token's file.
    pub token_file: Option<PathBuf>,
    /// Serve reads without the token on a non-loopback address.
    pub public_reads: bool,
    /// `Host` names answered besides loopback names and the listen address.
    pub allowed_hosts: Vec<String>,
}

/// A bound listener with what the options decided, before any database is opened.
pub struct Prepared {
    /// The listener.
    pub listener: tokio::net::TcpListener,
    /// The token, when given.
    pub token: Option<String>,
    /// Whether reads need the token.
    pub reads_need_token: bool,
    /// The `Host` names answered.
    pub hosts: AllowedHosts,
    /// What to warn about at start.
    pub warnings: Vec<String>,
}

/// Reads the token and binds the address. A non-loopback address without a token is
/// refused unless `public_reads` asks for it (with a warning); with a token, reads there
/// need it too, unless `public_reads`.
pub async fn prepare(opts: &ServeOptions) -> Result<Prepared> {
    let token = opts.token_file.as_deref().map(read_token).transpose()?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let address = listener.local_addr()?;
    let loopback = address.ip().is_loopback();
    let mut warnings = Vec::new();
    if !loopback && token.is_none() && !opts.public_reads {
        bail!(
            "refusing to serve on {address}, a non-loopback address, without a token: anyone \
             who reaches it would read every migration's SQL, probes and errors. Give \
             --token-file FILE (then reads need the token too), listen on 127.0.0.1, or pass \
             --public-reads to serve reads to anyone"
        );
    }
    if !loopback && opts.public_reads {
        warnings.push(format!(
            "warning: --public-reads: anyone who reaches {address} reads every migration's SQL, \
             probes and errors"
        ));
    }
    Ok(Prepared {
        listener,
        reads_need_token: !loopback && !opts.public_reads,
        hosts: AllowedHosts::for_listener(address, &opts.allowed_hosts),
        token,
        warnings,
    })
}

/// Serves until Ctrl-C or SIGTERM, then lets requests in flight finish.
pub async fn serve(prepared: Prepared, sg: Sluicegate) -> Result<()> {
    let address = prepared.listener.local_addr()?;
    for warning in &prepared.warnings {
        eprintln!("{warning}");
    }
    let state = AppState::new(sg, prepared.token)
        .with_hosts(prepared.hosts)
        .reads_need_token(prepared.reads_need_token);
    eprintln!(
        "serving the dashboard on http://{address}/ (reads {}; mutations {})",
        if state.reads_need_token {
            "need the token"
        } else {
            "open"
        },
        if state.token.is_some() {
            "need the bearer token"
        } else {
            "off: no --token-file"
        }
    );
    serve_with(prepared.listener, router(state), crate::shutdown_signal())
        .await
        .context("serving HTTP")
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish.
/// HTTP/1.1 through hyper, with a [`HEADER_READ_TIMEOUT`]: a connection that has not sent a
/// whole request header by then is closed (the router's layer bounds the body's time).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
            E::InvalidSettings(_) | E::OutOfRange(_) | E::ReasonTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
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

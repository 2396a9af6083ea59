//! The server's edge: which `Host` it answers for, who may read, and extractors whose
//! refusals are JSON like every other error.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// The `Host` names a request may carry: the answer to DNS rebinding, where a page of
/// `evil.example` whose name now resolves to this machine reads the dashboard as its own
/// origin. A browser always says which name it connected to; only names that can belong to
/// this server are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Names and address literals, lower case, without port or brackets.
    names: Vec<String>,
    /// Any IP literal (the server listens on every address): no page of another origin can
    /// reach an address literal under its own name.
    any_ip: bool,
}

impl AllowedHosts {
    /// `localhost` and loopback addresses only.
    pub fn loopback() -> Self {
        Self {
            names: vec!["localhost".into()],
            any_ip: false,
        }
    }

    /// For a server bound to `address`: loopback names, the address itself (any address
    /// literal when it is `0.0.0.0` or `::`), and the names given with `--allowed-host`.
    pub fn for_listener(address: SocketAddr, names: &[String]) -> Self {
        let mut hosts = Self::loopback();
        if address.ip().is_unspecified() {
            hosts.any_ip = true;
        } else {
            hosts.names.push(address.ip().to_string());
        }
        hosts
            .names
            .extend(names.iter().map(|n| host_name(n)).filter(|n| !n.is_empty()));
        hosts
    }

    /// Whether a request whose `Host` is `host` (a name or address, with or without port)
    /// is answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host);
        if self.names.contains(&name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || self.any_ip,
            Err(_) => false,
        }
    }
}

/// `host` without port, brackets or trailing dot, in lower case.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match host.rsplit_once(':') {
            // One colon: name:port. More: a bare IPv6 address.
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The host a request was sent to: the request target's authority (absolute form) or the
/// `Host` header.
fn request_host(req: &Request) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
}

/// Every request passes here first: a `Host` this server does not answer for is refused
/// (421, before any database is read), and where reads need the token (a non-loopback
/// address without `--public-reads`) a request without it is refused (401, with a Basic
/// challenge so that a browser asks for it: any user name, the token as password).
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match request_host(&req) {
        None => {
            return ApiError::new(StatusCode::BAD_REQUEST, "a Host header is required")
                .into_response()
        }
        Some(host) if !st.hosts.allows(&host) => {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer for host {host:?}: start it with \
                     --allowed-host {} to serve that name",
                    host_name(&host)
                ),
            )
            .into_response()
        }
        Some(_) => {}
    }
    if st.reads_need_token && !holds_token(&st, req.headers()) {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs the token to be read: send it as a bearer token, or as the \
             password of basic authentication (any user name)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"sluicegate\", charset=\"UTF-8\""),
        );
        return response;
    }
    next.run(req).await
}

/// `Authorization: Bearer <token>`, or `Basic` with the token as password; compared in
/// constant time.
fn holds_token(st: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = &st.token else {
        return false;
    };
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let given = if let Some(token) = value.strip_prefix("Bearer ") {
        token.as_bytes().to_vec()
    } else if let Some(encoded) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        match decoded.iter().position(|&b| b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(given.ct_eq(expected.as_bytes()))
}

/// A migration's id or name (or a job's id) from the path. Characters no name can hold
/// (control characters, NUL among them, which PostgreSQL refuses in text) are a 400.
pub struct Id(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        checked_id(&id)?;
        Ok(Id(id))
    }
}

/// The id or name and the action of `POST /api/migrations/{id}/{action}`.
pub struct IdAction(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdAction {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((id, action)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(path_rejection)?;
        checked_id(&id)?;
        Ok(IdAction(id, action))
    }
}

fn checked_id(id: &str) -> Result<(), ApiError> {
    if id.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid id or name {id:?}: it holds a control character"),
        ));
    }
    Ok(())
}

fn path_rejection(e: PathRejection) -> ApiError {
    ApiError::new(e.status(), format!("invalid path: {}", e.body_text()))
}

/// The query string, or a JSON 400 naming what is wrong with it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e: QueryRejection| ApiError::new(e.status(), e.body_text()))
    }
}

/// An optional JSON body: none (no `Content-Type` and nothing sent) is the default value;
/// anything else must be JSON of the expected shape, at most [`super::MAX_BODY_BYTES`]. A
/// refusal is JSON with the status axum gives it (400 syntax, 413 too large, 415 not JSON,
/// 422 wrong shape) and its message.
pub struct ApiBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for ApiBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let no_type = !req.headers().contains_key(header::CONTENT_TYPE);
        let no_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|l| l.as_bytes() == b"0");
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        if no_type && no_length && !chunked {
            return Ok(ApiBody(T::default()));
        }
        match Json::<T>::from_request(req, state).await {
            Ok(Json(body)) => Ok(ApiBody(body)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let message = match &e {
        JsonRejection::MissingJsonContentType(_) => {
            "the body must be JSON, sent with Content-Type: application/json".to_owned()
        }
        JsonRejection::BytesRejection(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            format!(
                "the body is larger than {} KiB",
                super::MAX_BODY_BYTES / 1024
            )
        }
        _ => format!("invalid JSON body: {}", e.body_text()),
    };
    ApiError::new(e.status(), message)
}

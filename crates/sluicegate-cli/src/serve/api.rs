//! The JSON API: read endpoints for everyone, mutations for holders of the bearer token.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sluicegate::MigrationEvent;
use subtle::ConstantTimeEq;

use super::edge::{ApiBody, Id, IdAction};
use super::{ApiError, AppState};
use crate::json::{JobJson, MigrationJson, StatusJson};

type ApiResult = Result<Json<Value>, ApiError>;

fn to_value(v: impl serde::Serialize) -> ApiResult {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub async fn migrations(State(st): State<AppState>) -> ApiResult {
    let mut all = Vec::new();
    for m in st.sg.migrations().await? {
        all.push(StatusJson::read(&st.sg, &st.sg.progress(&m).await?).await?);
    }
    to_value(all)
}

pub async fn migration(State(st): State<AppState>, Id(id): Id) -> ApiResult {
    let m = st.sg.migration(&id).await?;
    let lanes = st.sg.lanes(&m).await?;
    let mut status = StatusJson::read(&st.sg, &st.sg.progress(&m).await?).await?;
    status.nodes = (!lanes.is_empty()).then(|| sluicegate::lanes_by_node(&lanes));
    to_value(status)
}

pub async fn jobs(State(st): State<AppState>, Id(id): Id) -> ApiResult {
    let m = st.sg.migration(&id).await?;
    let jobs = st.sg.jobs(&m, None).await?;
    let lanes = st.sg.store().lane_list(m.id).await?;
    to_value(
        jobs.iter()
            .map(|j| JobJson::in_lanes(j, &lanes))
            .collect::<Vec<_>>(),
    )
}

/// Each health indicator's reading for a migration, now.
pub async fn health(State(st): State<AppState>, Id(id): Id) -> ApiResult {
    let m = st.sg.migration(&id).await?;
    let readings = st.sg.health(&m).await?;
    to_value(json!({
        "migration_id": m.id,
        "stop": readings.iter().any(|r| r.signal == sluicegate::health::Signal::Stop),
        "indicators": readings,
    }))
}

pub async fn migration_history(State(st): State<AppState>, Id(id): Id) -> ApiResult {
    let m = st.sg.migration(&id).await?;
    to_value(st.sg.migration_history(&m).await?)
}

pub async fn job_history(State(st): State<AppState>, Id(id): Id) -> ApiResult {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("job id {id:?} is not a number"),
        )
    })?;
    to_value(st.sg.job_history(id).await?)
}

/// Body of a mutation: the reason, and for `set` the settings to change.
#[derive(Debug, Default, Deserialize)]
pub struct ActBody {
    reason: Option<String>,
    batch_size: Option<i64>,
    sub_batch_size: Option<i64>,
    max_batch_size: Option<i64>,
    pause_ms: Option<i64>,
    interval_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    lock_timeout_ms: Option<u64>,
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &st.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "mutations are off: start `sluicegate serve` with --token-file",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ))
    }
}

pub async fn act(
    State(st): State<AppState>,
    IdAction(id, action): IdAction,
    headers: HeaderMap,
    ApiBody(body): ApiBody<ActBody>,
) -> ApiResult {
    let event = match action.as_str() {
        "pause" => MigrationEvent::Pause,
        "resume" => MigrationEvent::Resume,
        "retry" => MigrationEvent::Retry,
        "cancel" => MigrationEvent::Cancel,
        "set" => MigrationEvent::Set,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?} (pause, resume, retry, cancel or set)"),
            ))
        }
    };
    authorize(&st, &headers)?;
    // The reason as the operator wrote it (the log row's actor, `http`, says where it came
    // from); the library bounds its length.
    let reason = body.reason.clone().filter(|r| !r.trim().is_empty());
    let m = if event == MigrationEvent::Set {
        let m = st.sg.migration(&id).await?;
        let change = sluicegate::SettingsChange {
            batch_size: body.batch_size,
            sub_batch_size: body.sub_batch_size,
            max_batch_size: body.max_batch_size,
            pause_ms: body.pause_ms,
            interval: body.interval_ms.map(std::time::Duration::from_millis),
            health: None,
            statement_timeout: body
                .statement_timeout_ms
                .map(std::time::Duration::from_millis),
            lock_timeout: body.lock_timeout_ms.map(std::time::Duration::from_millis),
        };
        st.sg.set(&m, &change, reason, "http").await?
    } else {
        st.sg.apply(&id, event, reason, "http").await?
    };
    to_value(json!({ "migration": MigrationJson::from_migration(&m) }))
}

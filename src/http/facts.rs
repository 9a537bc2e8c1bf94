//! The fact API: `POST /v1/facts` (an atomic batch of operations),
//! `GET /v1/facts/{uid}` (an entity and the revision that last wrote it) and
//! `GET /v1/facts/changes` (the change log, with long-poll).
//!
//! Every endpoint needs `Authorization: Bearer <facts token>`: a write can
//! make someone an admin, and a read shows who is a member of what. A
//! sidecar serving facts from entity files answers `409`, saying how to
//! start with a store. Every write is logged (actor, operations, revision;
//! never the token).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;
use crate::facts::store::StoreError;
use crate::facts::writer::WriteError;
use crate::facts::{Batch, Limits};
use crate::live_facts::{LiveFacts, WriteRequest};

/// Who the change log names as the author of an API write.
const ACTOR: &str = "facts-api";

/// Most change rows one read returns, and the longest long-poll.
const MAX_CHANGES: usize = 1000;
const MAX_WAIT_MS: u64 = 30_000;

/// The live facts, or the error of a file-backed sidecar.
fn live(app: &App) -> Result<&Arc<LiveFacts>, ApiError> {
    app.pdp.facts.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "facts_read_only",
            "this sidecar reads its facts from entity files: start with --facts sqlite:PATH \
             (orgwarden facts import entities/ --into sqlite:PATH) to change facts through the API",
        )
    })
}

fn store_error(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "fact store");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "facts_unavailable",
        format!("the fact store failed; nothing was written: {e}"),
    )
}

/// `POST /v1/facts`: `{"operations": [...], "if_revision": N?}`, answered
/// with `{"revision": N}` once durable and visible to decisions.
pub async fn write(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    match write_inner(&app, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn write_inner(app: &App, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let facts = live(app)?;
    app.require_facts_token(headers)?;
    let value: Value = super::error::parse_json(body)?;
    let ops = value.get("operations").cloned().unwrap_or(Value::Null);
    let batch = Batch::from_json_value(value, &Limits::default())
        .map_err(|e| ApiError::bad_request("invalid_batch", e.field.clone(), e.message.clone()))?;
    let count = batch.operations.len();
    let request = WriteRequest {
        batch,
        actor: ACTOR.to_string(),
        ops,
    };
    match facts.write(request).await {
        Ok(revision) => {
            tracing::info!(actor = ACTOR, operations = count, revision, "facts written");
            Ok(Json(json!({ "revision": revision })).into_response())
        }
        Err(WriteError::Rejected(r)) if r.code == "revision_mismatch" => {
            let current = facts.revision();
            tracing::info!(
                actor = ACTOR,
                operations = count,
                current,
                "fact write refused: revision conflict"
            );
            Ok((
                StatusCode::CONFLICT,
                Json(json!({ "error": {
                    "code": "revision_conflict",
                    "message": r.message,
                    "field": r.field,
                    "revision": current,
                }})),
            )
                .into_response())
        }
        Err(WriteError::Rejected(r)) => {
            tracing::info!(actor = ACTOR, operations = count, field = %r.field, error = %r.message, "fact write refused");
            let status = if r.code == "invalid_batch" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let mut error = json!({ "code": r.code, "message": r.message, "field": r.field });
            if let Some(rule) = &r.rule {
                error["rule"] = json!(rule);
            }
            Ok((status, Json(json!({ "error": error }))).into_response())
        }
        Err(WriteError::Store(e)) => Err(store_error(&e)),
        Err(WriteError::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "facts_unavailable",
            "the fact writer has stopped; nothing was written",
        )),
    }
}

/// `GET /v1/facts/{uid}`: `{"uid", "entity", "revision"}`.
pub async fn entity(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let facts = live(&app)?;
    app.require_facts_token(&headers)?;
    let snap = app.pdp.live.snapshot();
    let uid = super::search::principal_from_path(&snap, &uid)?;
    match facts.store().entity(&uid.to_string()).await {
        Ok(Some(e)) => Ok(Json(json!({
            "uid": e.uid,
            "entity": e.json,
            "revision": e.revision,
        }))),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no entity {uid} in the facts"),
        )),
        Err(e) => Err(store_error(&e)),
    }
}

/// Query of the change log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    #[serde(default)]
    pub since: u64,
    pub limit: Option<usize>,
    #[serde(default)]
    pub wait_ms: u64,
}

/// `GET /v1/facts/changes?since=N&limit=L&wait_ms=W`: the revisions after
/// `since`, oldest first. With nothing after `since`, waits up to `wait_ms`
/// (at most 30 s) for the next revision.
pub async fn changes(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let facts = live(&app)?;
    app.require_facts_token(&headers)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", "query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_CHANGES);
    let read = async || match facts.store().changes_since(q.since, limit).await {
        Ok(c) => Ok(c),
        Err(e @ StoreError::Pruned { .. }) => Err(ApiError::new(
            StatusCode::GONE,
            "changes_pruned",
            e.to_string(),
        )),
        Err(e) => Err(store_error(&e)),
    };
    let mut changes = read().await?;
    if changes.is_empty() && q.wait_ms > 0 {
        let wait = Duration::from_millis(q.wait_ms.min(MAX_WAIT_MS));
        if facts.wait_for(q.since.saturating_add(1), wait).await {
            changes = read().await?;
        }
    }
    Ok(Json(json!({
        "revision": facts.revision(),
        "changes": changes,
    })))
}

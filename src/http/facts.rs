//! The fact API: `POST /v1/facts` (an atomic batch of operations),
//! `GET /v1/facts/{uid}` (an entity and the revision that last wrote it) and
//! `GET /v1/facts/changes` (the change log, with long-poll); and
//! cedar-agent's data API on the same store: `GET /v1/data` (every entity),
//! `PUT /v1/data` (replace every entity: one validated batch, one revision),
//! `DELETE /v1/data` (remove every entity), so that cedar-agent clients and
//! OPAL's Cedar client keep working.
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

/// The live facts, or the error of a file-backed sidecar (or of one whose
/// facts are not loaded yet).
fn live(app: &App) -> Result<&Arc<LiveFacts>, ApiError> {
    let facts = app.pdp.facts.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "facts_read_only",
            "this sidecar reads its facts from entity files: start with --facts sqlite:PATH \
             (orgwarden facts import entities/ --into sqlite:PATH) to change facts through the API",
        )
    })?;
    if !facts.ready() {
        return Err(not_loaded());
    }
    Ok(facts)
}

/// The error of a sidecar that has not loaded its facts from the store yet.
pub fn not_loaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        STORE_UNAVAILABLE,
        "the facts have not been loaded from the fact store yet (it could not be reached \
         since start-up); retrying in the background",
    )
}

/// The error code of a store that failed or cannot be reached.
pub const STORE_UNAVAILABLE: &str = "facts_store_unavailable";

fn store_error(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "fact store");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        STORE_UNAVAILABLE,
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
    super::error::check_content_type(headers)?;
    let value: Value = super::error::parse_json(body)?;
    match submit(facts, value, &Limits::default(), ACTOR).await? {
        Ok(revision) => Ok(Json(json!({ "revision": revision })).into_response()),
        Err(refused) => Ok(refused),
    }
}

/// Parse and write one batch: its revision, or the answer refusing it.
async fn submit(
    facts: &LiveFacts,
    value: Value,
    limits: &Limits,
    actor: &str,
) -> Result<Result<u64, Response>, ApiError> {
    let ops = value.get("operations").cloned().unwrap_or(Value::Null);
    let batch = Batch::from_json_value(value, limits)
        .map_err(|e| ApiError::bad_request("invalid_batch", e.field.clone(), e.message.clone()))?;
    let count = batch.operations.len();
    let request = WriteRequest {
        batch,
        actor: actor.to_string(),
        ops,
    };
    match facts.write(request).await {
        Ok(revision) => {
            tracing::info!(actor, operations = count, revision, "facts written");
            Ok(Ok(revision))
        }
        Err(WriteError::Rejected(r)) if r.code == "revision_mismatch" => {
            let current = facts.revision();
            tracing::info!(
                actor,
                operations = count,
                current,
                "fact write refused: revision conflict"
            );
            Ok(Err((
                StatusCode::CONFLICT,
                Json(json!({ "error": {
                    "code": "revision_conflict",
                    "message": r.message,
                    "field": r.field,
                    "revision": current,
                }})),
            )
                .into_response()))
        }
        Err(WriteError::Rejected(r)) => {
            tracing::info!(actor, operations = count, field = %r.field, error = %r.message, "fact write refused");
            let status = if r.code == "invalid_batch" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let mut error = json!({ "code": r.code, "message": r.message, "field": r.field });
            if let Some(rule) = &r.rule {
                error["rule"] = json!(rule);
            }
            Ok(Err(
                (status, Json(json!({ "error": error }))).into_response()
            ))
        }
        Err(WriteError::Store(e)) => Err(store_error(&e)),
        Err(WriteError::Diverged(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "facts_diverged",
            format!(
                "this sidecar cannot apply the fact store's latest changes under its schema; \
                 nothing was written: {why}"
            ),
        )),
        Err(WriteError::Closed) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            STORE_UNAVAILABLE,
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

/// Who the change log names as the author of a cedar-agent data API write.
const DATA_ACTOR: &str = "data-api";

/// Rounds of "read the revision, write at it" before a replace gives up
/// to concurrent writers.
const REPLACE_ATTEMPTS: usize = 5;

/// `GET /v1/`: cedar-agent's health probe (OPAL probes it).
pub async fn agent_root() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The published entities, cedar-agent's `GET /v1/data` body.
fn all_entities(facts: &LiveFacts, app: &App) -> Response {
    let at = facts.at(app.pdp.live.snapshot());
    let view = &at.facts.as_ref().expect("store mode").view;
    (
        super::revision_header(&at),
        Json(Value::Array(view.to_json())),
    )
        .into_response()
}

/// `GET /v1/data`: every entity, as cedar-agent lists them.
pub async fn get_data(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let facts = match live(&app).and_then(|f| app.require_facts_token(&headers).map(|_| f)) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    all_entities(facts, &app)
}

/// An entity's uid as the view writes it, when the item names one.
fn item_uid(item: &Value) -> Option<String> {
    let uid = item.get("uid")?;
    let uid = uid.get("__entity").unwrap_or(uid);
    cedar_policy::EntityUid::from_json(uid.clone())
        .ok()
        .map(|u| u.to_string())
}

/// Replace every entity with `items` (none: delete all) as one batch at the
/// published revision, retried when another write lands first.
async fn replace(
    facts: &LiveFacts,
    app: &App,
    items: Vec<Value>,
) -> Result<Result<u64, Response>, ApiError> {
    let items: Vec<Value> = items
        .into_iter()
        .filter(|item| {
            item.get("uid")
                .map(|u| u.get("__entity").unwrap_or(u))
                .and_then(|u| u.get("type"))
                .and_then(Value::as_str)
                .is_none_or(|t| t != "Action" && !t.ends_with("::Action"))
        })
        .collect();
    let kept: std::collections::HashSet<String> = items.iter().filter_map(item_uid).collect();
    let upserts: Vec<Value> = items
        .into_iter()
        .map(|entity| json!({ "op": "upsert", "entity": entity }))
        .collect();
    let limits = Limits {
        max_operations: usize::MAX,
    };
    for _ in 0..REPLACE_ATTEMPTS {
        let at = facts.at(app.pdp.live.snapshot());
        let view = &at.facts.as_ref().expect("store mode").view;
        let mut operations = upserts.clone();
        let mut gone: Vec<String> = view
            .uids()
            .map(|u| u.to_string())
            .filter(|u| !kept.contains(u))
            .collect();
        gone.sort();
        operations.extend(
            gone.into_iter()
                .map(|uid| json!({ "op": "delete", "uid": uid })),
        );
        if operations.is_empty() {
            return Ok(Ok(view.revision()));
        }
        let batch = json!({ "operations": operations, "if_revision": view.revision() });
        match submit(facts, batch, &limits, DATA_ACTOR).await? {
            Err(r) if r.status() == StatusCode::CONFLICT => continue,
            other => return Ok(other),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "revision_conflict",
        "other writes kept landing first: retry the replace",
    ))
}

/// `PUT /v1/data`: replace every entity (a JSON array of Cedar entities)
/// in one revision, validated as a load is; answers the entities now held.
/// A refused item is named as `operations[i]`: the i-th non-action entity
/// of the array.
pub async fn put_data(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let result: Result<Response, ApiError> = async {
        let facts = live(&app)?;
        app.require_facts_token(&headers)?;
        super::error::check_content_type(&headers)?;
        let items: Vec<Value> = super::error::parse_json(&body)?;
        match replace(facts, &app, items).await? {
            Ok(_) => Ok(all_entities(facts, &app)),
            Err(refused) => Ok(refused),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /v1/data`: remove every entity, in one revision; 204.
pub async fn delete_data(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let result: Result<Response, ApiError> = async {
        let facts = live(&app)?;
        app.require_facts_token(&headers)?;
        match replace(facts, &app, Vec::new()).await? {
            Ok(revision) => Ok((
                StatusCode::NO_CONTENT,
                [(
                    super::REVISION_HEADER,
                    axum::http::HeaderValue::from(revision),
                )],
            )
                .into_response()),
            Err(refused) => Ok(refused),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

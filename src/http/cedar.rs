//! The cedar-agent compatible API: `POST /v1/is_authorized` and its batch.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::error::{ApiError, JsonBody};
use crate::engine::RequestInput;
use crate::pdp::Decided;
use crate::snapshot::Snapshot;

/// `{"requests": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchInput {
    pub requests: Vec<RequestInput>,
}

/// The cedar-agent response shape.
pub fn response_body(d: &Decided) -> Value {
    json!({
        "decision": d.entry.outcome.decision,
        "diagnostics": { "reason": d.entry.outcome.reasons, "errors": d.entry.outcome.errors },
        "decision_id": d.decision_id,
    })
}

fn decide_one(app: &App, snap: &Snapshot, input: &RequestInput) -> Result<Value, ApiError> {
    app.check_bounds(input)?;
    let decided = app.pdp.authorize(snap, input, "cedar")?;
    Ok(response_body(&decided))
}

pub async fn is_authorized(
    State(app): State<Arc<App>>,
    JsonBody(input): JsonBody<RequestInput>,
) -> Result<Json<Value>, ApiError> {
    let snap = app.pdp.live.snapshot();
    decide_one(&app, &snap, &input).map(Json)
}

/// Every request of a batch is decided against the same snapshot; an invalid
/// request fails the whole batch with the index of the one at fault.
pub async fn is_authorized_batch(
    State(app): State<Arc<App>>,
    JsonBody(batch): JsonBody<BatchInput>,
) -> Result<Json<Value>, ApiError> {
    app.check_batch_len(batch.requests.len(), "requests")?;
    let snap = app.pdp.live.snapshot();
    let results = batch
        .requests
        .iter()
        .enumerate()
        .map(|(i, input)| {
            decide_one(&app, &snap, input).map_err(|e| e.within(&format!("requests[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "results": results })))
}

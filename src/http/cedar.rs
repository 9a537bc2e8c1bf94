//! The cedar-agent compatible API: `POST /v1/is_authorized` and its batch.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, JsonBody};
use super::{App, MinRevision};
use crate::engine::RequestInput;
use crate::live_facts::At;
use crate::pdp::{BatchMemo, Decided, Entry};

/// `{"requests": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchInput {
    pub requests: Vec<RequestInput>,
}

/// The cedar-agent response shape, serialized straight from the (possibly
/// cached) decision: `{"decision", "diagnostics": {"reason", "errors"},
/// "decision_id"}`, `request_facts` (the uids of the request's own
/// entities) when the request brought any, and on a single answer the fact
/// `revision` it was decided at.
pub struct ResponseBody {
    entry: Arc<Entry>,
    decision_id: Uuid,
    /// The fact revision, on a single answer (a batch says it once).
    revision: Option<u64>,
}

impl Serialize for ResponseBody {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Diagnostics<'a>(&'a Entry);
        impl Serialize for Diagnostics<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("reason", &self.0.outcome.reasons)?;
                m.serialize_entry("errors", &self.0.outcome.errors)?;
                m.end()
            }
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("decision", &self.entry.outcome.decision)?;
        m.serialize_entry("diagnostics", &Diagnostics(&self.entry))?;
        m.serialize_entry("decision_id", &self.decision_id)?;
        if !self.entry.request_facts.is_empty() {
            m.serialize_entry("request_facts", &self.entry.request_facts)?;
        }
        if let Some(revision) = self.revision {
            m.serialize_entry("revision", &revision)?;
        }
        m.end()
    }
}

/// The cedar-agent response of a decision.
pub fn response_body(d: &Decided) -> ResponseBody {
    ResponseBody {
        entry: d.entry.clone(),
        decision_id: d.decision_id,
        revision: None,
    }
}

async fn decide_one(app: &App, snap: &At, input: &RequestInput) -> Result<ResponseBody, ApiError> {
    app.check_bounds(input)?;
    let decided = super::token::decide(app, snap, input, "cedar").await?;
    Ok(response_body(&decided))
}

pub async fn is_authorized(
    State(app): State<Arc<App>>,
    MinRevision(min_revision): MinRevision,
    JsonBody(input): JsonBody<RequestInput>,
) -> Result<([(HeaderName, HeaderValue); 1], Json<ResponseBody>), ApiError> {
    let snap = app.at_least(min_revision.as_ref()).await?;
    let mut body = decide_one(&app, &snap, &input).await?;
    body.revision = Some(snap.revision());
    Ok((super::revision_header(&snap), Json(body)))
}

/// `{"results": [...], "revision": N}`, in request order, with the fact
/// revision every result was decided at.
#[derive(Serialize)]
pub struct BatchBody {
    results: Vec<ResponseBody>,
    revision: u64,
}

/// Every request of a batch is decided against the same snapshot (a request
/// the batch repeats is decided once); an invalid request fails the whole
/// batch with the index of the one at fault.
pub async fn is_authorized_batch(
    State(app): State<Arc<App>>,
    MinRevision(min_revision): MinRevision,
    JsonBody(batch): JsonBody<BatchInput>,
) -> Result<([(HeaderName, HeaderValue); 1], Json<BatchBody>), ApiError> {
    app.check_batch_len(batch.requests.len(), "requests")?;
    app.check_total_entities(&batch.requests, "requests")?;
    let snap = app.at_least(min_revision.as_ref()).await?;
    let mut results = Vec::with_capacity(batch.requests.len());
    let mut memo = BatchMemo::default();
    for (i, input) in batch.requests.iter().enumerate() {
        let within = |e: ApiError| e.within(&format!("requests[{i}]"));
        app.check_bounds(input).map_err(within)?;
        let decided = if input.token.is_some() {
            super::token::decide(&app, &snap, input, "cedar")
                .await
                .map_err(within)?
        } else {
            app.pdp
                .authorize_in_batch(&snap, input, "cedar", &mut memo)
                .await
                .map_err(|e| within(e.into()))?
        };
        results.push(response_body(&decided));
    }
    let revision = snap.revision();
    Ok((
        super::revision_header(&snap),
        Json(BatchBody { results, revision }),
    ))
}

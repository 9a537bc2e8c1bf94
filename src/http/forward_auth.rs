//! The forward-auth handler: `ANY /v1/forward-auth[/{*path}]`, thin over
//! [`crate::gateway::forward_auth`] (which reads the gateway's contract) and
//! [`crate::gateway::check`] (which decides, as for the gRPC service).
//!
//! The answer: **200** to allow, with `X-Orgwarden-Principal`
//! (`Prefect::User::"alice"`) and `X-Orgwarden-Decision-Id` for the gateway
//! to pass upstream; **401** with `WWW-Authenticate: Bearer` when the caller
//! has no valid credentials; **403** when the policies deny, the route is
//! unknown (unless configured otherwise), or the request cannot be read.
//! Nothing but an Allow of the engine (or an unmatched route configured to
//! pass) answers 200. The request goes through the decision point with api
//! `forward_auth`, so it is cached, counted and logged like every decision.
//! Neither the key nor the `Authorization` header is ever logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::App;
use crate::gateway::check::{self, Allowed};
use crate::gateway::forward_auth::{self, DECISION_ID_HEADER, PRINCIPAL_HEADER, Refusal};
use crate::live_facts::At;

pub use crate::gateway::forward_auth::PATH;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge() {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if let Some(id) = self
            .decision_id
            .and_then(|id| HeaderValue::from_str(&id).ok())
        {
            headers.insert(DECISION_ID_HEADER, id);
        }
        response
    }
}

fn allow(allowed: Allowed) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(p) = allowed
        .principal
        .and_then(|p| HeaderValue::from_str(&p).ok())
    {
        headers.insert(PRINCIPAL_HEADER, p);
    }
    if let Some(id) = allowed
        .decided
        .and_then(|d| HeaderValue::from_str(&d.decision_id.to_string()).ok())
    {
        headers.insert(DECISION_ID_HEADER, id);
    }
    response
}

/// Decide one forwarded request against `snap`.
pub async fn decide(
    app: &App,
    snap: &At,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let (original_method, target) = match forward_auth::original(method, uri, headers) {
        Ok(original) => original,
        Err(refusal) => return refusal.into_response(),
    };
    let verdict = check::check(
        &app.pdp,
        &app.config.forward_auth,
        snap,
        original_method,
        target,
        headers,
        "forward_auth",
    )
    .await;
    match verdict {
        Ok(allowed) => allow(allowed),
        Err(refused) => refused.refusal.into_response(),
    }
}

/// `ANY /v1/forward-auth` and `ANY /v1/forward-auth/{*path}`.
pub async fn forward_auth(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let snap = match app.at(&headers).await {
        Ok(snap) => snap,
        Err(e) => return e.into_response(),
    };
    let mut response = decide(&app, &snap, &method, &uri, &headers).await;
    let [(name, value)] = super::revision_header(&snap);
    response.headers_mut().insert(name, value);
    response
}

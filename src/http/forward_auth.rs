//! The forward-auth handler: `ANY /v1/forward-auth[/{*path}]`, thin over
//! [`crate::gateway::forward_auth`] (which reads the gateway's request) and
//! [`crate::pdp::Pdp`] (which decides).
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
use serde_json::json;

use super::App;
use crate::gateway::forward_auth::{self, DECISION_ID_HEADER, Mapped, PRINCIPAL_HEADER, Refusal};
use crate::live_facts::At;

pub use crate::gateway::forward_auth::PATH;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(id) = &self.decision_id {
            body["decision_id"] = json!(id);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.invalid_token {
                r#"Bearer realm="orgwarden", error="invalid_token""#
            } else {
                r#"Bearer realm="orgwarden""#
            };
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

fn allow(principal: Option<&str>, decision_id: Option<String>) -> Result<Response, Refusal> {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(p) = principal {
        let value = HeaderValue::from_str(p).map_err(|_| {
            Refusal::forbidden(
                "invalid_principal",
                "the principal cannot be written in a header",
            )
        })?;
        headers.insert(PRINCIPAL_HEADER, value);
    }
    if let Some(id) = decision_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(DECISION_ID_HEADER, id);
    }
    Ok(response)
}

/// Decide one forwarded request against `snap`.
pub async fn decide(
    app: &App,
    snap: &At,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    match decide_inner(app, snap, method, uri, headers).await {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    }
}

async fn decide_inner(
    app: &App,
    snap: &At,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let (principal, matched) =
        match forward_auth::map(&app.config.forward_auth, snap, method, uri, headers)? {
            Mapped::Pass(who) => {
                let shown = who.as_ref().map(ToString::to_string);
                return allow(shown.as_deref(), None);
            }
            Mapped::Ask { principal, matched } => (principal, matched),
        };
    let decided = app
        .pdp
        .authorize_uids(
            snap,
            principal,
            matched.route.action.clone(),
            matched.resource_uid(),
            "forward_auth",
        )
        .await
        .map_err(|e| {
            tracing::warn!(
                route = %matched.route.name(),
                origin = %matched.route.origin,
                error = %e,
                "forward-auth: the route's request is invalid"
            );
            Refusal::forbidden("invalid_request", e.to_string())
        })?;
    let decision_id = decided.decision_id.to_string();
    if decided.entry.outcome.allowed() {
        allow(Some(&decided.entry.principal), Some(decision_id))
    } else {
        Err(Refusal {
            decision_id: Some(decision_id),
            ..Refusal::forbidden("forbidden", "denied by the policies")
        })
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

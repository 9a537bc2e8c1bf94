//! The forward-auth endpoint: `/v1/forward-auth`, any method.
//!
//! One handler speaks three gateway contracts; which one a request uses is
//! read from the request itself:
//!
//! * **Envoy** `ext_authz` (HTTP service, `path_prefix: /v1/forward-auth`):
//!   the original method and path are the request's own, under the prefix
//!   (`GET /v1/forward-auth/api/...`). Forwarded-URI headers are then ignored.
//! * **nginx** `auth_request`: a request to `/v1/forward-auth` itself, with
//!   the original URI in `X-Original-URI` and its method in `X-Original-Method`.
//! * **Traefik** ForwardAuth (and Caddy, APISIX): a request to
//!   `/v1/forward-auth` with `X-Forwarded-Uri` and `X-Forwarded-Method`.
//!
//! A request carrying both `X-Original-URI` and `X-Forwarded-Uri` is refused,
//! so that a header a client smuggled through one kind of gateway can never
//! choose the request that is authorized.
//!
//! The answer: **200** to allow, with `X-Orgwarden-Principal`
//! (`Prefect::User::"alice"`) and `X-Orgwarden-Decision-Id` for the gateway
//! to pass upstream; **401** with `WWW-Authenticate: Bearer` when the caller
//! has no valid credentials; **403** when the policies deny, the route is
//! unknown (unless configured otherwise), or the request cannot be read.
//! Nothing but an Allow of the engine (or an unmatched route configured to
//! pass) answers 200. The principal comes from the trusted header when one is
//! configured and present, else from the bearer API key ([`super::keys`]);
//! the request goes through [`crate::pdp::Pdp::authorize`] with api
//! `forward_auth`, so it is cached, counted and logged like every decision.
//! Neither the key nor the `Authorization` header is ever logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cedar_policy::EntityUid;
use serde_json::json;

use super::keys::{self, Credential};
use super::routes;
use crate::engine::RequestInput;
use crate::http::App;
use crate::names::EntityRef;
use crate::snapshot::Snapshot;

/// The endpoint's path (and Envoy's `path_prefix`).
pub const PATH: &str = "/v1/forward-auth";

/// Set on an Allow: the principal the request was decided for.
pub const PRINCIPAL_HEADER: HeaderName = HeaderName::from_static("x-orgwarden-principal");
/// Set on every decision: the id of its decision log line.
pub const DECISION_ID_HEADER: HeaderName = HeaderName::from_static("x-orgwarden-decision-id");

const NGINX_URI: &str = "x-original-uri";
const NGINX_METHOD: &str = "x-original-method";
const TRAEFIK_URI: &str = "x-forwarded-uri";
const TRAEFIK_METHOD: &str = "x-forwarded-method";

/// What to answer for a request that no route matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unmatched {
    /// 403 (401 without credentials).
    #[default]
    Deny,
    /// 200, with the principal header when the caller is known: the
    /// upstream decides alone. Invalid credentials are still a 401.
    Allow,
}

/// Options of the forward-auth endpoint.
#[derive(Debug, Clone, Default)]
pub struct ForwardAuthConfig {
    pub unmatched: Unmatched,
    /// A header set by a trusted upstream authenticator naming the principal
    /// (`User::"alice"`). Unset: no such header is read.
    pub trusted_principal_header: Option<HeaderName>,
}

/// A refusal: its status, a stable code and a message for the caller.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    decision_id: Option<String>,
    /// For a 401: was a credential given (and wrong)?
    invalid_token: bool,
}

impl Refusal {
    fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            code,
            message: message.into(),
            decision_id: None,
            invalid_token: false,
        }
    }

    fn unauthorized(invalid_token: bool, message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            code: if invalid_token {
                "invalid_token"
            } else {
                "unauthenticated"
            },
            message: message.into(),
            decision_id: None,
            invalid_token,
        }
    }
}

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

/// The one value of header `name`: `Ok(None)` when absent, an error when
/// repeated or not visible ASCII.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::forbidden(
            "invalid_request",
            format!("the `{name}` header is repeated"),
        ));
    }
    first.to_str().map(Some).map_err(|_| {
        Refusal::forbidden(
            "invalid_request",
            format!("the `{name}` header is not visible ASCII"),
        )
    })
}

/// The original method and request target, by contract.
fn original<'r>(
    method: &'r Method,
    uri: &'r Uri,
    headers: &'r HeaderMap,
) -> Result<(&'r str, &'r str), Refusal> {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix(PATH)
        && rest.starts_with('/')
    {
        // Envoy: the original path (its query is not in `uri.path()`).
        return Ok((method.as_str(), rest));
    }
    let nginx = single(headers, NGINX_URI)?;
    let traefik = single(headers, TRAEFIK_URI)?;
    let (target, method_header) = match (nginx, traefik) {
        (Some(t), None) => (t, NGINX_METHOD),
        (None, Some(t)) => (t, TRAEFIK_METHOD),
        (Some(_), Some(_)) => {
            return Err(Refusal::forbidden(
                "ambiguous_request",
                "both X-Original-URI and X-Forwarded-Uri are set: configure the gateway to send one",
            ));
        }
        (None, None) => {
            return Err(Refusal::forbidden(
                "missing_original_uri",
                format!(
                    "no original request: send X-Original-URI (nginx) or X-Forwarded-Uri (Traefik), or call {PATH}/<path> (Envoy)"
                ),
            ));
        }
    };
    let original_method = single(headers, method_header)?.unwrap_or(method.as_str());
    let token = !original_method.is_empty()
        && original_method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(Refusal::forbidden(
            "invalid_request",
            format!("the `{method_header}` header is not an HTTP method"),
        ));
    }
    Ok((original_method, target))
}

/// The caller: from the trusted header when configured and present, else
/// from the bearer key. `Ok(None)`: no credentials at all.
fn principal(
    app: &App,
    snap: &Snapshot,
    headers: &HeaderMap,
) -> Result<Option<EntityUid>, Refusal> {
    if let Some(name) = &app.config.forward_auth.trusted_principal_header
        && let Some(value) =
            single(headers, name.as_str()).map_err(|r| Refusal::unauthorized(true, r.message))?
    {
        return trusted_principal(snap, value).map(Some);
    }
    match keys::bearer(headers) {
        Credential::Missing => Ok(None),
        Credential::Malformed => Err(Refusal::unauthorized(
            true,
            "the Authorization header must be `Bearer <api key>`",
        )),
        Credential::Bearer(key) => snap
            .keys
            .resolve(key)
            .cloned()
            .map(Some)
            .ok_or_else(|| Refusal::unauthorized(true, "unknown API key")),
    }
}

/// A principal named by the trusted header: it must be a loaded entity of a
/// type that is a principal of some action.
fn trusted_principal(snap: &Snapshot, value: &str) -> Result<EntityUid, Refusal> {
    let unknown = || Refusal::unauthorized(true, "the trusted principal header names no principal");
    let uid = snap
        .names
        .resolve_entity(&EntityRef::Text(value.trim().to_string()))
        .map_err(|_| unknown())?;
    let is_principal_type = snap.schema.principals().any(|t| t == uid.type_name());
    if !is_principal_type || snap.entities.get(&uid).is_none() {
        return Err(unknown());
    }
    Ok(uid)
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
pub fn decide(
    app: &App,
    snap: &Snapshot,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    match decide_inner(app, snap, method, uri, headers) {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    }
}

fn decide_inner(
    app: &App,
    snap: &Snapshot,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let (original_method, target) = original(method, uri, headers)?;
    let segments = routes::request_segments(target)
        .map_err(|e| Refusal::forbidden("invalid_path", e.to_string()))?;
    let who = principal(app, snap, headers)?;
    let Some(matched) = snap.routes.find(original_method, &segments) else {
        tracing::debug!(method = original_method, "forward-auth: no route matches");
        return match (app.config.forward_auth.unmatched, &who) {
            (Unmatched::Allow, who) => {
                let shown = who.as_ref().map(ToString::to_string);
                allow(shown.as_deref(), None)
            }
            (Unmatched::Deny, None) => Err(Refusal::unauthorized(false, "an API key is required")),
            (Unmatched::Deny, Some(_)) => Err(Refusal::forbidden(
                "unmatched_route",
                "no route matches this request",
            )),
        };
    };
    let Some(who) = who else {
        return Err(Refusal::unauthorized(false, "an API key is required"));
    };
    let input = RequestInput {
        principal: Some(EntityRef::Object {
            type_name: who.type_name().to_string(),
            id: who.id().unescaped().to_string(),
        }),
        action: Some(matched.action()),
        resource: Some(matched.resource()),
        ..RequestInput::default()
    };
    let decided = app
        .pdp
        .authorize(snap, &input, "forward_auth")
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
    let snap = app.pdp.live.snapshot();
    decide(&app, &snap, &method, &uri, &headers)
}

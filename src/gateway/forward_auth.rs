//! The forward-auth contract: from a gateway's request to what to decide.
//!
//! One endpoint (`/v1/forward-auth`, any method) speaks three gateway
//! contracts; which one a request uses is read from the request itself:
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
//! [`map`] reads the contract, matches the route ([`super::routes`]) and
//! resolves the principal: from the trusted header when one is configured
//! and present, else from the bearer API key ([`super::keys`]);
//! [`map_original`] does the same for a transport that carries the original
//! method and target itself (Envoy's gRPC `Check`). It decides nothing and
//! holds no server state: [`super::check`] asks the decision point, for the
//! HTTP handler (`crate::http::forward_auth`) and the gRPC service
//! (`crate::grpc`) alike.

use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use cedar_policy::EntityUid;

use super::keys::{self, Credential, Principals};
use super::routes::{self, Matched};
use crate::identity::{TokenError, Verified, looks_like_jwt};
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Unmatched {
    /// 403 (401 without credentials).
    #[default]
    Deny,
    /// 200, with the principal header when the caller is known: the
    /// upstream decides alone. Invalid credentials are still a 401.
    Allow,
}

crate::words::words!(Unmatched { "deny" => Deny, "allow" => Allow });

/// What a method-override header (`X-HTTP-Method-Override`,
/// `X-HTTP-Method`, `X-Method-Override`) on a forwarded request does: some
/// upstreams act on the method it names instead of the request's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MethodOverride {
    /// The request is refused: the upstream might run another method than
    /// the one authorized.
    #[default]
    Refuse,
    /// The named method is the one authorized (for upstreams that honour it).
    Honor,
}

crate::words::words!(MethodOverride { "refuse" => Refuse, "honor" => Honor });

const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Options of the forward-auth endpoint.
#[derive(Debug, Clone, Default)]
pub struct ForwardAuthConfig {
    pub unmatched: Unmatched,
    /// What a method-override header does.
    pub method_override: MethodOverride,
    /// A header set by a trusted upstream authenticator naming the principal
    /// (`User::"alice"`). Unset: no such header is read.
    pub trusted_principal_header: Option<HeaderName>,
}

/// A refusal: its status, a stable code and a message for the caller.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub decision_id: Option<String>,
    /// For a 401: was a credential given (and wrong)?
    pub invalid_token: bool,
}

impl Refusal {
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            code,
            message: message.into(),
            decision_id: None,
            invalid_token: false,
        }
    }

    /// The JSON body of the refusal, as every transport writes it:
    /// `{"error": {"code", "message"}}`, with the decision id when there is one.
    pub fn body(&self) -> serde_json::Value {
        let mut body =
            serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(id) = &self.decision_id {
            body["decision_id"] = serde_json::json!(id);
        }
        body
    }

    /// The `WWW-Authenticate` challenge of a 401 (none for other statuses).
    pub fn challenge(&self) -> Option<&'static str> {
        (self.status == StatusCode::UNAUTHORIZED).then_some(if self.invalid_token {
            r#"Bearer realm="orgwarden", error="invalid_token""#
        } else {
            r#"Bearer realm="orgwarden""#
        })
    }

    pub fn unauthorized(invalid_token: bool, message: impl Into<String>) -> Self {
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
pub fn original<'r>(
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
    if !is_method(original_method) {
        return Err(Refusal::forbidden(
            "invalid_request",
            format!("the `{method_header}` header is not an HTTP method"),
        ));
    }
    Ok((original_method, target))
}

/// Why a request target is ambiguous, when it is: upstreams read these
/// differently (a `#` ends the path for some and not others, a backslash
/// is a separator for some, a NUL ends a string for some), so the request
/// authorized might not be the one served.
fn ambiguity(target: &str) -> Option<&'static str> {
    let lower = target.to_ascii_lowercase();
    if target.contains('#') {
        Some("a `#` in the URI: upstreams differ on whether it ends the path")
    } else if target.contains('\\') || lower.contains("%5c") {
        Some("a backslash in the URI: some upstreams read it as a path separator")
    } else if target.contains('\0') || lower.contains("%00") {
        Some("a NUL in the URI: some upstreams end the path there")
    } else {
        None
    }
}

/// The method of a method-override header: none when there is no such
/// header; refused unless the operator honours them.
fn method_override<'h>(
    config: &ForwardAuthConfig,
    headers: &'h HeaderMap,
) -> Result<Option<&'h str>, Refusal> {
    let mut found: Option<(&str, &str)> = None;
    for name in OVERRIDE_HEADERS {
        if let Some(value) = single(headers, name)? {
            match found {
                Some((_, other)) if !other.eq_ignore_ascii_case(value) => {
                    return Err(Refusal::forbidden(
                        "ambiguous_request",
                        "method-override headers name different methods",
                    ));
                }
                _ => found = Some((name, value)),
            }
        }
    }
    let Some((name, value)) = found else {
        return Ok(None);
    };
    match config.method_override {
        MethodOverride::Refuse => Err(Refusal::forbidden(
            "ambiguous_request",
            format!(
                "the `{name}` header asks for another method, which some upstreams honour: refused (--forward-auth-method-override honor decides on it instead)"
            ),
        )),
        MethodOverride::Honor => Ok(Some(value)),
    }
}

/// The bearer JWT of `headers` that needs verifying before [`map_original`]:
/// none when the credential is an API key, absent or malformed, or when the
/// trusted principal header (which wins) is present.
pub fn bearer_jwt<'h>(config: &ForwardAuthConfig, headers: &'h HeaderMap) -> Option<&'h str> {
    if let Some(name) = &config.trusted_principal_header
        && headers.contains_key(name)
    {
        return None;
    }
    match keys::bearer(headers) {
        Credential::Bearer(t) if looks_like_jwt(t) => Some(t),
        _ => None,
    }
}

/// A bearer JWT's verification, done by the caller (it may fetch keys).
pub type TokenCheck = Result<Verified, TokenError>;

/// Who is asking.
#[derive(Debug)]
pub enum Caller {
    /// An API key's or the trusted header's principal.
    Principal(EntityUid),
    /// A verified token's.
    Token(Box<Verified>),
}

impl Caller {
    pub fn uid(&self) -> &EntityUid {
        match self {
            Caller::Principal(p) => p,
            Caller::Token(v) => &v.principal,
        }
    }
}

/// The caller: from the trusted header when configured and present, else
/// from the bearer credential, an API key or a JWT (verified as `token`).
/// `Ok(None)`: no credentials at all.
fn principal(
    config: &ForwardAuthConfig,
    snap: &Snapshot,
    facts: &dyn Principals,
    headers: &HeaderMap,
    token: Option<TokenCheck>,
) -> Result<Option<Caller>, Refusal> {
    if let Some(name) = &config.trusted_principal_header
        && let Some(value) =
            single(headers, name.as_str()).map_err(|r| Refusal::unauthorized(true, r.message))?
    {
        return trusted_principal(snap, facts, value).map(|p| Some(Caller::Principal(p)));
    }
    match keys::bearer(headers) {
        Credential::Missing => Ok(None),
        Credential::Malformed => Err(Refusal::unauthorized(
            true,
            "the Authorization header must be one `Bearer <api key or JWT>`",
        )),
        Credential::Bearer(t) if looks_like_jwt(t) => match token {
            Some(Ok(v)) => Ok(Some(Caller::Token(Box::new(v)))),
            Some(Err(e)) => Err(Refusal::unauthorized(true, e.message)),
            None => Err(Refusal::unauthorized(
                true,
                "the bearer token was not verified",
            )),
        },
        Credential::Bearer(key) => facts
            .key_holder(key)
            .map(|p| Some(Caller::Principal(p)))
            .ok_or_else(|| Refusal::unauthorized(true, "unknown API key")),
    }
}

/// A principal named by the trusted header: it must be a loaded entity of a
/// type that is a principal of some action.
fn trusted_principal(
    snap: &Snapshot,
    facts: &dyn Principals,
    value: &str,
) -> Result<EntityUid, Refusal> {
    let unknown = || Refusal::unauthorized(true, "the trusted principal header names no principal");
    let uid = snap
        .names
        .resolve_entity(&EntityRef::Text(value.trim().to_string()))
        .map_err(|_| unknown())?;
    let is_principal_type = snap.schema.principals().any(|t| t == uid.type_name());
    if !is_principal_type || !facts.holds(&uid) {
        return Err(unknown());
    }
    Ok(uid)
}

/// Without a fact store, the snapshot's entity files are the facts.
impl Principals for Snapshot {
    fn key_holder(&self, key: &str) -> Option<EntityUid> {
        self.keys.resolve(key).cloned()
    }

    fn holds(&self, uid: &EntityUid) -> bool {
        self.entities.get(uid).is_some()
    }
}

/// What a forwarded request asks.
#[derive(Debug)]
pub enum Mapped<'s> {
    /// No route matches and unmatched requests pass: the caller, when known.
    Pass(Option<EntityUid>),
    /// A route matched: decide `caller` on the route's action and resource.
    Ask {
        caller: Caller,
        matched: Matched<'s>,
    },
}

/// Read one forwarded request (its contract, route and principal) against
/// `snap`: what to decide, or why it is refused before any decision.
pub fn map<'s>(
    config: &ForwardAuthConfig,
    snap: &'s Snapshot,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    token: Option<TokenCheck>,
) -> Result<Mapped<'s>, Refusal> {
    let (original_method, target) = original(method, uri, headers)?;
    let raw = uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
    if let Some(why) = ambiguity(raw) {
        return Err(Refusal::forbidden("ambiguous_request", why));
    }
    map_original(config, snap, snap, original_method, target, headers, token)
}

/// Whether `method` is an HTTP method token (RFC 9110).
fn is_method(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// [`map`] for a request whose original method and target are already
/// known (a transport that carries them, such as Envoy's gRPC `Check`).
/// `token` is the verification of the bearer JWT ([`bearer_jwt`]), when
/// there is one.
pub fn map_original<'s>(
    config: &ForwardAuthConfig,
    snap: &'s Snapshot,
    facts: &dyn Principals,
    original_method: &str,
    target: &str,
    headers: &HeaderMap,
    token: Option<TokenCheck>,
) -> Result<Mapped<'s>, Refusal> {
    if let Some(why) = ambiguity(target) {
        return Err(Refusal::forbidden("ambiguous_request", why));
    }
    let mut original_method = original_method;
    if let Some(named) = method_override(config, headers)? {
        if !is_method(named) {
            return Err(Refusal::forbidden(
                "invalid_request",
                "the method-override header is not an HTTP method",
            ));
        }
        original_method = named;
    }
    if !is_method(original_method) {
        return Err(Refusal::forbidden(
            "invalid_request",
            "the original method is not an HTTP method",
        ));
    }
    let segments = routes::request_segments(target)
        .map_err(|e| Refusal::forbidden("invalid_path", e.to_string()))?;
    let who = principal(config, snap, facts, headers, token)?;
    let Some(matched) = snap.routes.find(original_method, &segments) else {
        tracing::debug!(method = original_method, "forward-auth: no route matches");
        return match (config.unmatched, who) {
            (Unmatched::Allow, who) => Ok(Mapped::Pass(who.map(|c| c.uid().clone()))),
            (Unmatched::Deny, None) => Err(Refusal::unauthorized(
                false,
                "credentials are required: an API key or a bearer JWT",
            )),
            (Unmatched::Deny, Some(_)) => Err(Refusal::forbidden(
                "unmatched_route",
                "no route matches this request",
            )),
        };
    };
    let Some(caller) = who else {
        return Err(Refusal::unauthorized(
            false,
            "credentials are required: an API key or a bearer JWT",
        ));
    };
    Ok(Mapped::Ask { caller, matched })
}

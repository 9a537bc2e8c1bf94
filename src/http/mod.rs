//! HTTP: the sidecar's wire formats, translated to engine requests and back.
//!
//! Handlers stay thin: each parses its wire format, takes the live snapshot
//! once, and asks the [`Pdp`]. The router bounds every input (body size,
//! batch length, request entities, JSON nesting through serde_json's limit)
//! and every request's time, and counts requests in flight.

pub mod authzen;
pub mod cedar;
pub mod error;
pub mod facts;
pub mod forward_auth;
pub mod layers;
pub mod listen;
pub mod ops;
pub mod search;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::routing::{any, get, post};
use sha2::{Digest, Sha256};
use tower_http::timeout::TimeoutLayer;

use crate::engine::RequestInput;
use crate::live_facts::At;
use crate::pdp::{MinRevisionError, Pdp};
use crate::request_facts::RequestEntities;
use error::ApiError;

/// Limits and options of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Most entities a request may bring (`entities`, `additional_entities`).
    pub max_request_entities: usize,
    pub request_timeout: Duration,
    /// Bearer token for admin endpoints; admin endpoints refuse all when unset.
    pub admin_token: Option<String>,
    /// Base URL advertised in the AuthZEN metadata (default: from `Host`).
    pub public_url: Option<String>,
    /// Options of `/v1/forward-auth`.
    pub forward_auth: crate::gateway::ForwardAuthConfig,
    /// Bearer token for the fact API (`/v1/facts`); unset refuses it.
    pub facts_token: Option<String>,
    /// How long a request with `Orgwarden-Min-Revision` waits for the facts
    /// to reach it before `503 stale_facts`.
    pub consistency_wait: Duration,
    /// What a request's own entities may do (`add`: new entities only).
    pub request_entities: RequestEntities,
    /// Connection limits and timeouts.
    pub connections: listen::ConnLimits,
    /// Threads deciding requests with request facts at once.
    pub decision_workers: usize,
    /// Decisions with request facts that may wait for a thread; beyond
    /// them a request is refused with 503 and `Retry-After`.
    pub decision_queue: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1024 * 1024,
            max_batch: 100,
            max_request_entities: 1000,
            request_timeout: Duration::from_secs(5),
            admin_token: None,
            public_url: None,
            forward_auth: crate::gateway::ForwardAuthConfig::default(),
            facts_token: None,
            consistency_wait: Duration::from_millis(1000),
            request_entities: RequestEntities::default(),
            connections: listen::ConnLimits::default(),
            decision_workers: crate::pdp::default_workers(),
            decision_queue: 64,
        }
    }
}

/// The state every handler shares.
pub struct App {
    /// Shared with the gRPC service, when one runs.
    pub pdp: Arc<Pdp>,
    pub config: HttpConfig,
    pub public_url: Option<String>,
    admin_digest: Option<[u8; 32]>,
    facts_digest: Option<[u8; 32]>,
}

/// The fact revision a decision was made at (response header).
pub const REVISION_HEADER: HeaderName = HeaderName::from_static(crate::pdp::REVISION_HEADER);
/// The least fact revision a request accepts being decided at.
pub const MIN_REVISION_HEADER: HeaderName =
    HeaderName::from_static(crate::pdp::MIN_REVISION_HEADER);

/// The `Orgwarden-Revision` header of an answer decided at `at`.
pub fn revision_header(at: &At) -> [(HeaderName, HeaderValue); 1] {
    [(REVISION_HEADER, HeaderValue::from(at.revision()))]
}

fn digest(token: Option<&str>) -> Option<[u8; 32]> {
    token
        .filter(|t| !t.is_empty())
        .map(|t| Sha256::digest(t.as_bytes()).into())
}

/// Whether `headers` carry `Authorization: Bearer <t>` with `t` of digest
/// `expected` (digests compared, so the time says nothing about the token).
fn bearer_matches(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|token| <[u8; 32]>::from(Sha256::digest(token.as_bytes())) == *expected)
}

impl App {
    pub fn new(pdp: Pdp, config: HttpConfig) -> Self {
        let admin_digest = digest(config.admin_token.as_deref());
        let facts_digest = digest(config.facts_token.as_deref());
        let pdp = pdp
            .with_request_entities(config.request_entities)
            .with_heavy_limits(config.decision_workers, config.decision_queue);
        App {
            pdp: Arc::new(pdp),
            public_url: config.public_url.clone(),
            config,
            admin_digest,
            facts_digest,
        }
    }

    /// The fact API needs `Authorization: Bearer <facts token>`; with no
    /// token configured it is refused.
    pub fn require_facts_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        require_bearer(
            self.facts_digest.as_ref(),
            headers,
            (
                "facts_api_disabled",
                "the fact API is disabled: start the server with --facts-token or ORGWARDEN_FACTS_TOKEN",
            ),
            "a valid facts bearer token is required",
        )
    }

    /// What a decision request decides against: the current facts, once
    /// they reach the request's `Orgwarden-Min-Revision` (waiting up to the
    /// configured consistency wait, then `503 stale_facts`).
    pub async fn at(&self, headers: &HeaderMap) -> Result<At, ApiError> {
        self.at_least(headers.get(&MIN_REVISION_HEADER)).await
    }

    /// [`App::at`] given the request's `Orgwarden-Min-Revision` header, if
    /// any ([`MinRevision`]).
    pub async fn at_least(&self, min_revision: Option<&HeaderValue>) -> Result<At, ApiError> {
        if let Some(facts) = &self.pdp.facts
            && !facts.ready()
        {
            return Err(facts::not_loaded());
        }
        self.pdp
            .at_min_revision(
                min_revision.map(HeaderValue::as_bytes),
                self.config.consistency_wait,
            )
            .await
            .map_err(|e| match e {
                MinRevisionError::Invalid => {
                    ApiError::bad_request("invalid_header", "Orgwarden-Min-Revision", e.to_string())
                }
                MinRevisionError::Behind(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stale_facts",
                    e.to_string(),
                ),
            })
    }

    /// Refuse an HTTP request whose items bring more entities, together,
    /// than one request may (`field` names the list).
    pub fn check_total_entities<'a>(
        &self,
        inputs: impl IntoIterator<Item = &'a RequestInput>,
        field: &str,
    ) -> Result<(), ApiError> {
        let n: usize = inputs
            .into_iter()
            .flat_map(|i| [&i.entities, &i.additional_entities])
            .filter_map(|v| v.as_ref().and_then(|v| v.as_array()).map(Vec::len))
            .sum();
        if n > self.config.max_request_entities {
            return Err(ApiError::bad_request(
                "too_many_entities",
                field,
                format!(
                    "{n} entities in one request exceed the limit of {}",
                    self.config.max_request_entities
                ),
            ));
        }
        Ok(())
    }

    /// Refuse a request whose entities exceed the configured bound.
    pub fn check_bounds(&self, input: &RequestInput) -> Result<(), ApiError> {
        for (field, value) in [
            ("entities", &input.entities),
            ("additional_entities", &input.additional_entities),
        ] {
            if let Some(n) = value.as_ref().and_then(|v| v.as_array()).map(Vec::len)
                && n > self.config.max_request_entities
            {
                return Err(ApiError::bad_request(
                    "too_many_entities",
                    field,
                    format!(
                        "{n} entities exceed the limit of {}",
                        self.config.max_request_entities
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn check_batch_len(&self, len: usize, field: &str) -> Result<(), ApiError> {
        if len > self.config.max_batch {
            return Err(ApiError::bad_request(
                "batch_too_large",
                field,
                format!(
                    "{len} items exceed the batch limit of {}",
                    self.config.max_batch
                ),
            ));
        }
        Ok(())
    }

    /// Admin endpoints need `Authorization: Bearer <token>` matching the
    /// configured token; with no token configured they are refused.
    pub fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        require_bearer(
            self.admin_digest.as_ref(),
            headers,
            (
                "admin_disabled",
                "admin endpoints are disabled: start the server with --admin-token or ORGWARDEN_ADMIN_TOKEN",
            ),
            "a valid admin bearer token is required",
        )
    }
}

/// A bearer-token check: refused (403 `disabled`) when no token is
/// configured, 401 when the request's token does not match its digest.
fn require_bearer(
    expected: Option<&[u8; 32]>,
    headers: &HeaderMap,
    disabled: (&'static str, &'static str),
    unauthorized: &'static str,
) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, disabled.0, disabled.1));
    };
    if bearer_matches(headers, expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            unauthorized,
        ))
    }
}

/// The `Orgwarden-Min-Revision` header of a request, the one header a
/// decision endpoint needs ([`App::at_least`]): extracted alone rather than
/// copying every header of the request.
pub struct MinRevision(pub Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for MinRevision {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(MinRevision(
            parts.headers.get(&MIN_REVISION_HEADER).cloned(),
        ))
    }
}

async fn overloaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "the server is at its connection limit: retry later",
    )
}

/// What a connection beyond the limit is served: health checks, and 503
/// for everything else.
fn shedding_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(overloaded)
        .layer(layers::JsonErrorsLayer)
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The router with every endpoint and limit.
pub fn router(app: Arc<App>) -> Router {
    router_with(app, Router::new())
}

/// [`router`] with `extra` routes (served by a module above this one, such
/// as the console) under the same limits, timeout and error format.
pub fn router_with(app: Arc<App>, extra: Router<Arc<App>>) -> Router {
    let timeout = app.config.request_timeout;
    let body_limit = app.config.max_body_bytes;
    Router::new()
        .route("/v1/is_authorized", post(cedar::is_authorized))
        .route("/v1/is_authorized/batch", post(cedar::is_authorized_batch))
        .route("/access/v1/evaluation", post(authzen::evaluation))
        .route("/access/v1/evaluations", post(authzen::evaluations))
        .route("/access/v1/search/subject", post(search::subject))
        .route("/access/v1/search/resource", post(search::resource))
        .route("/access/v1/search/action", post(search::action))
        .route("/v1/principals/{uid}/workspaces", get(search::workspaces))
        .route(
            "/.well-known/authzen-configuration",
            get(authzen::configuration),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/status", get(ops::status))
        .route("/v1/reload", post(ops::reload))
        .route("/v1/facts", post(facts::write))
        .route("/v1/facts/changes", get(facts::changes))
        .route("/v1/facts/{uid}", get(facts::entity))
        .route(
            "/v1/data",
            get(facts::get_data)
                .put(facts::put_data)
                .delete(facts::delete_data),
        )
        .route("/v1/", get(facts::agent_root))
        .route(forward_auth::PATH, any(forward_auth::forward_auth))
        .route("/v1/forward-auth/", any(forward_auth::forward_auth))
        .route("/v1/forward-auth/{*path}", any(forward_auth::forward_auth))
        .merge(extra)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(layers::InFlightLayer::new(
            app.pdp.metrics.in_flight.clone(),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(layers::JsonErrorsLayer)
        .with_state(app)
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain requests
/// in flight; connections are bounded and timed out ([`listen`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, Router::new(), shutdown).await
}

/// [`serve`] with `extra` routes ([`router_with`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    extra: Router<Arc<App>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = app.config.connections;
    let metrics = app.pdp.metrics.clone();
    let shedding = shedding_router(app.clone());
    let router = router_with(app, extra);
    listen::serve(listener, router, shedding, limits, metrics, shutdown).await
}

//! HTTP: the sidecar's wire formats, translated to engine requests and back.
//!
//! Handlers stay thin: each parses its wire format, takes the live snapshot
//! once, and asks the [`Pdp`]. The router bounds every input (body size,
//! batch length, request entities, JSON nesting through serde_json's limit)
//! and every request's time, and counts requests in flight.

pub mod authzen;
pub mod cedar;
pub mod error;
pub mod forward_auth;
pub mod ops;
pub mod search;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{any, get, post};
use sha2::{Digest, Sha256};
use tower_http::timeout::TimeoutLayer;

use crate::engine::RequestInput;
use crate::pdp::Pdp;
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
        }
    }
}

/// The state every handler shares.
pub struct App {
    pub pdp: Pdp,
    pub config: HttpConfig,
    pub public_url: Option<String>,
    admin_digest: Option<[u8; 32]>,
}

impl App {
    pub fn new(pdp: Pdp, config: HttpConfig) -> Self {
        let admin_digest = config
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into());
        App {
            pdp,
            public_url: config.public_url.clone(),
            config,
            admin_digest,
        }
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
        let Some(expected) = &self.admin_digest else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "admin endpoints are disabled: start the server with --admin-token or ORGWARDEN_ADMIN_TOKEN",
            ));
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Compare digests, so the comparison's time says nothing about the token.
        match given {
            Some(token) if <[u8; 32]>::from(Sha256::digest(token.as_bytes())) == *expected => {
                Ok(())
            }
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
            )),
        }
    }
}

async fn count_in_flight(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    app.pdp.metrics.in_flight.inc();
    let response = next.run(req).await;
    app.pdp.metrics.in_flight.dec();
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The router with every endpoint and limit.
pub fn router(app: Arc<App>) -> Router {
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
        .route(forward_auth::PATH, any(forward_auth::forward_auth))
        .route("/v1/forward-auth/", any(forward_auth::forward_auth))
        .route("/v1/forward-auth/{*path}", any(forward_auth::forward_auth))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(app.clone(), count_in_flight))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(app)
}

/// Serve `app` on `listener` until `shutdown` resolves, then drain requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

//! gRPC: Envoy's and Istio's external authorizer, the ext_authz v3
//! `envoy.service.auth.v3.Authorization` service, and the standard
//! `grpc.health.v1` health service, on their own listener
//! (`serve --grpc-listen`).
//!
//! `Check` reads the request Envoy forwards (`attributes.request.http`: its
//! method, path with query, and headers) and decides it through
//! [`crate::gateway::check`], the very path of `/v1/forward-auth`: the same
//! routes, credentials, unmatched-route choice and decision point (counted
//! and logged with api `ext_authz_grpc`). It answers:
//!
//! * allowed: an `OkHttpResponse` adding `x-orgwarden-principal` and
//!   `x-orgwarden-decision-id` to the upstream request (removing a client's
//!   own copies it does not replace), removing `Authorization` when
//!   credentials are stripped, and `dynamic_metadata` (principal, action,
//!   resource, determining policies, decision id) for Envoy's access log;
//! * refused: a `DeniedHttpResponse` with the forward-auth status (401 with
//!   `www-authenticate`, 403, or 503 while the facts are not loaded) and the
//!   HTTP API's JSON error body.
//!
//! Like the HTTP APIs, a check decides at the revision of the facts it
//! names in `orgwarden-revision` (a response header for the client, on an
//! allow and on a deny), and a request carrying `Orgwarden-Min-Revision` is
//! decided only once the facts reach it: it waits up to the consistency
//! wait, then is refused with 503 `stale_facts` (400 `invalid_header` for a
//! value that is not a revision).
//!
//! Every failure inside the service (a missing `http` block, headers that
//! cannot be read, the deadline passed, a panic while deciding) is such a
//! deny *response*, never a gRPC error status, so that an operator's
//! `failure_mode_allow: true` can never turn it into an allow. Only a
//! message that cannot be read at all (over the size limit, or not a
//! `CheckRequest`) gets a gRPC error from the transport: keep
//! `failure_mode_allow: false` (Envoy's default), and Envoy denies those too.
//!
//! Health: `NOT_SERVING` (for the whole server and the `Authorization`
//! service) while the last reload failed (an older snapshot serves) or, with
//! a fact store, while the facts are not loaded or stale; `SERVING`
//! otherwise. It is re-read every [`HEALTH_PERIOD`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HttpResponse, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use futures_util::{FutureExt, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use crate::gateway::ForwardAuthConfig;
use crate::gateway::check::{self, Allowed, Refused};
use crate::gateway::forward_auth::{DECISION_ID_HEADER, PRINCIPAL_HEADER, Refusal};
use crate::pdp::{Decided, MIN_REVISION_HEADER, MinRevisionError, Pdp, REVISION_HEADER};

mod coalesce;
use coalesce::Coalesced;

/// The api label of gRPC checks in metrics and the decision log.
pub const API: &str = "ext_authz_grpc";

/// How often the health service re-reads the sidecar's state.
pub const HEALTH_PERIOD: Duration = Duration::from_millis(500);

/// Idle time after which the kernel probes a connection (TCP keepalive).
const KEEPALIVE: Duration = Duration::from_secs(30);

/// How long a stopping server waits for gRPC connections to close.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Most checks in flight on one HTTP/2 connection (Envoy queues more).
pub const MAX_STREAMS: u32 = 1024;

/// The `Authorization` service's full name (its health entry).
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Options of the gRPC listener.
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Where to listen; none: no gRPC listener.
    pub listen: Option<SocketAddr>,
    /// Remove the `Authorization` header from an allowed request before
    /// Envoy sends it upstream.
    pub strip_credentials: bool,
    /// Largest `CheckRequest` accepted, in bytes (encoded).
    pub max_message_bytes: usize,
    /// Time limit of one check; past it the answer is a deny.
    pub timeout: Duration,
    /// How long a check with `Orgwarden-Min-Revision` waits for the facts
    /// to reach it before it is refused (503 `stale_facts`).
    pub consistency_wait: Duration,
    /// Routes, credentials and unmatched routes, as for `/v1/forward-auth`.
    pub forward_auth: ForwardAuthConfig,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: None,
            strip_credentials: false,
            max_message_bytes: 4 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            consistency_wait: Duration::from_millis(1000),
            forward_auth: ForwardAuthConfig::default(),
        }
    }
}

/// The ext_authz `Authorization` service.
pub struct Authorizer {
    pdp: Arc<Pdp>,
    config: GrpcConfig,
}

impl Authorizer {
    pub fn new(pdp: Arc<Pdp>, config: GrpcConfig) -> Self {
        Authorizer { pdp, config }
    }

    /// Decide one `CheckRequest`: always an answer, never an error.
    pub async fn decide(&self, request: &CheckRequest) -> CheckResponse {
        let Some(http) = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            return denied(
                Refusal::forbidden(
                    "invalid_request",
                    "the check request has no HTTP request attributes",
                ),
                None,
            );
        };
        let headers = match header_map(http) {
            Ok(h) => h,
            Err(refusal) => return denied(refusal, None),
        };
        if let Some(facts) = &self.pdp.facts
            && !facts.ready()
        {
            return denied(
                Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "facts_store_unavailable",
                    message: "the facts have not been loaded from the fact store yet".into(),
                    decision_id: None,
                    invalid_token: false,
                },
                None,
            );
        }
        let snap = match self.at(&headers).await {
            Ok(snap) => snap,
            Err(refusal) => return denied(refusal, None),
        };
        let revision = Some(snap.revision());
        let verdict = check::check(
            &self.pdp,
            &self.config.forward_auth,
            &snap,
            &http.method,
            &http.path,
            &headers,
            API,
        )
        .await;
        match verdict {
            Ok(allowed) => self.allowed(allowed, revision),
            Err(Refused { refusal, decided }) => {
                let mut response = denied(refusal, revision);
                response.dynamic_metadata = decided.as_ref().map(metadata);
                response
            }
        }
    }

    /// What to decide against: the current facts, or, when the request
    /// carries `Orgwarden-Min-Revision`, the facts once they reach it
    /// (waiting up to the consistency wait, as the HTTP APIs do).
    async fn at(&self, headers: &HeaderMap) -> Result<crate::live_facts::At, Refusal> {
        self.pdp
            .at_min_revision(
                headers.get(MIN_REVISION_HEADER).map(|v| v.as_bytes()),
                self.config.consistency_wait,
            )
            .await
            .map_err(|e| {
                let (status, code) = match e {
                    MinRevisionError::Invalid => (StatusCode::BAD_REQUEST, "invalid_header"),
                    MinRevisionError::Behind(_) => (StatusCode::SERVICE_UNAVAILABLE, "stale_facts"),
                };
                Refusal {
                    status,
                    code,
                    message: e.to_string(),
                    decision_id: None,
                    invalid_token: false,
                }
            })
    }

    fn allowed(&self, allowed: Allowed, revision: Option<u64>) -> CheckResponse {
        let mut ok = OkHttpResponseBuilder::new();
        let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
        match &allowed.principal {
            Some(p) => ok.add_header(PRINCIPAL_HEADER.as_str(), p, set, false),
            // A client's own copy never reaches the upstream.
            None => ok.remove_header(PRINCIPAL_HEADER.as_str()),
        };
        match &allowed.decided {
            Some(d) => ok.add_header(
                DECISION_ID_HEADER.as_str(),
                d.decision_id.to_string(),
                set,
                false,
            ),
            None => ok.remove_header(DECISION_ID_HEADER.as_str()),
        };
        if self.config.strip_credentials {
            ok.remove_header("authorization");
        }
        if let Some(revision) = revision {
            ok.add_response_header(REVISION_HEADER, revision.to_string(), set, false);
        }
        CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                message: String::new(),
                details: Vec::new(),
            }),
            dynamic_metadata: allowed.decided.as_ref().map(metadata),
            http_response: Some(HttpResponse::OkResponse(ok.build())),
        }
    }
}

/// The request's headers as an HTTP header map (pseudo-headers left out):
/// from `headers`, or from `header_map` when Envoy sends raw headers.
fn header_map(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Result<HeaderMap, Refusal> {
    let unreadable = |name: &str| {
        Refusal::forbidden(
            "invalid_request",
            format!("the request header `{name}` cannot be read"),
        )
    };
    let mut out = HeaderMap::with_capacity(http.headers.len());
    let mut add = |name: &str, value: &[u8]| -> Result<(), Refusal> {
        if name.starts_with(':') {
            return Ok(());
        }
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| unreadable(name))?;
        let v = HeaderValue::from_bytes(value).map_err(|_| unreadable(name))?;
        out.append(n, v);
        Ok(())
    };
    match &http.header_map {
        Some(raw) if http.headers.is_empty() => {
            for h in &raw.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(&h.key, value)?;
            }
        }
        _ => {
            for (name, value) in &http.headers {
                add(name, value.as_bytes())?;
            }
        }
    }
    Ok(out)
}

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// What Envoy's access log may show of a decision.
fn metadata(decided: &Decided) -> Struct {
    let entry = &decided.entry;
    let policies = entry.outcome.reasons.iter().cloned().map(string).collect();
    let fields = HashMap::from([
        ("principal".to_string(), string(&entry.principal)),
        ("action".to_string(), string(&entry.action)),
        ("resource".to_string(), string(&entry.resource)),
        (
            "decision".to_string(),
            string(if entry.outcome.allowed() {
                "allow"
            } else {
                "deny"
            }),
        ),
        (
            "decision_id".to_string(),
            string(decided.decision_id.to_string()),
        ),
        (
            "determining_policies".to_string(),
            Value {
                kind: Some(Kind::ListValue(ListValue { values: policies })),
            },
        ),
    ]);
    Struct { fields }
}

/// A deny answer: the forward-auth status, headers and JSON body, and the
/// fact revision it was decided at when it was decided.
pub fn denied(refusal: Refusal, revision: Option<u64>) -> CheckResponse {
    let mut deny = DeniedHttpResponseBuilder::new();
    let status = match refusal.status {
        StatusCode::BAD_REQUEST => HttpStatusCode::BadRequest,
        StatusCode::UNAUTHORIZED => HttpStatusCode::Unauthorized,
        StatusCode::SERVICE_UNAVAILABLE => HttpStatusCode::ServiceUnavailable,
        _ => HttpStatusCode::Forbidden,
    };
    deny.set_http_status(status);
    let set = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    deny.add_header("content-type", "application/json", set, false);
    deny.add_header("cache-control", "no-store", set, false);
    if let Some(challenge) = refusal.challenge() {
        deny.add_header("www-authenticate", challenge, set, false);
    }
    if let Some(id) = &refusal.decision_id {
        deny.add_header(DECISION_ID_HEADER.as_str(), id, set, false);
    }
    if let Some(revision) = revision {
        deny.add_header(REVISION_HEADER, revision.to_string(), set, false);
    }
    deny.set_body(refusal.body().to_string());
    let code = if refusal.status == StatusCode::UNAUTHORIZED {
        tonic::Code::Unauthenticated
    } else {
        tonic::Code::PermissionDenied
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: refusal.message.clone(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(deny.build())),
    }
}

/// The deny of a check that could not finish (deadline, panic).
fn failed(message: &str) -> CheckResponse {
    denied(Refusal::forbidden("internal", message), None)
}

/// The service as tonic runs it: each check bounded by the deadline, and a
/// panic caught, so that neither a stuck nor a panicking check becomes a
/// gRPC error.
#[derive(Clone)]
pub struct Service(Arc<Authorizer>);

#[tonic::async_trait]
impl Authorization for Service {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let timeout = self.0.config.timeout;
        let request = request.into_inner();
        let deciding = AssertUnwindSafe(self.0.decide(&request)).catch_unwind();
        let answer = match tokio::time::timeout(timeout, deciding).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                tracing::error!("ext_authz gRPC: the check panicked; denied");
                failed("the check failed")
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "ext_authz gRPC: the check passed its deadline; denied"
                );
                failed("the check passed its deadline")
            }
        };
        Ok(Response::new(answer))
    }
}

/// Whether the sidecar should be reported healthy now.
fn serving(pdp: &Pdp) -> ServingStatus {
    let stale_snapshot = pdp.live.last_error().is_some();
    let facts_ok = pdp.facts.as_ref().is_none_or(|f| {
        let h = f.health();
        h.store.bootstrapped && !h.stale
    });
    if !stale_snapshot && facts_ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Serve the `Authorization` and health services on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pdp: Arc<Pdp>,
    config: GrpcConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limit = config.max_message_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    let watched = pdp.clone();
    let first = serving(&watched);
    reporter.set_service_status("", first).await;
    reporter.set_service_status(SERVICE, first).await;
    let health_task = tokio::spawn(async move {
        let mut last = Some(first);
        loop {
            tokio::time::sleep(HEALTH_PERIOD).await;
            let now = serving(&watched);
            if last != Some(now) {
                if now == ServingStatus::NotServing {
                    tracing::warn!("gRPC health: NOT_SERVING (stale or not ready)");
                } else {
                    tracing::info!("gRPC health: SERVING");
                }
                reporter.set_service_status("", now).await;
                reporter.set_service_status(SERVICE, now).await;
                last = Some(now);
            }
        }
    });
    let service = Service(Arc::new(Authorizer::new(pdp, config)));
    let authorization = AuthorizationServer::new(service)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(MAX_STREAMS))
        .add_service(health)
        .add_service(authorization)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                // A dead peer is found by TCP keepalive, not by HTTP/2
                // pings: hyper polls a ping timer on every wake of a
                // connection that has them, a cost on every check.
                .with_keepalive(Some(KEEPALIVE))
                .map(|accepted| accepted.map(Coalesced::new)),
            shutdown,
        )
        .await;
    health_task.abort();
    result
}

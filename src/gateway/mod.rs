//! Gateway integration: forward-auth for nginx, Envoy and Traefik, with
//! API-key principals.
//!
//! A gateway in front of the platform's HTTP API asks `/v1/forward-auth`
//! whether to let each request through. Three things turn
//! an HTTP request into an engine request:
//!
//! * [`routes`]: the routes files (`routes/*.yaml`) map a method and a path
//!   template to a Cedar action and resource. They are part of the
//!   [`crate::snapshot::Snapshot`]: loaded and validated against the schema
//!   with the policies, and hot-reloaded with them (a bad file keeps the old
//!   set serving).
//! * [`keys`]: `Authorization: Bearer <api key>` names the user or service
//!   account whose `apiKeyDigests` attribute holds the key's SHA-256 digest,
//!   through an index built once per snapshot.
//! * [`forward_auth`]: the gateway contracts: a forwarded request to the
//!   route and the principal to decide. It holds no server state.
//! * [`check`]: the one decision path of a forwarded request, through
//!   [`crate::pdp::Pdp`], shared by the HTTP handler
//!   (`crate::http::forward_auth`) and the ext_authz gRPC service
//!   (`crate::grpc`), which only write its answer in their wire formats.
//!
//! `docs/gateway.md` shows tested nginx, Envoy (HTTP and gRPC), Traefik and
//! Istio configurations.

pub mod check;
pub mod forward_auth;
pub mod keys;
pub mod routes;

pub use forward_auth::{ForwardAuthConfig, Unmatched};
pub use keys::KeyIndex;
pub use routes::Routes;

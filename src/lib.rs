//! orgwarden: an authorization sidecar deciding with Cedar policies.
//!
//! Data flows one way: a module imports only modules below it (within a
//! layer, only those it is built on), so the import graph has no cycle.
//! From the bottom up:
//!
//! 1. source files and positions: [`diag`], [`source`], [`yaml`], [`words`],
//!    [`names`];
//! 2. indexes and domain checks: [`index`], [`search_index`],
//!    [`gateway::routes`], [`gateway::keys`], [`domain`], [`identity`]
//!    (identity sources and bearer-JWT verification);
//! 3. snapshot and engine: [`snapshot`], [`load`] (files -> snapshot),
//!    [`engine`] (snapshot + request -> decision);
//! 4. clients of the engine: [`search`], [`matrix`], [`symbolic`],
//!    [`verify`], [`diff`], [`gateway::forward_auth`] (a gateway's request
//!    to what to decide), [`world`] (generated facts);
//! 5. live state and the decision point: [`reload`], [`decision_log`],
//!    [`metrics`], [`pdp`], and [`gateway::check`] (a forwarded request
//!    decided, for every gateway transport);
//! 6. on top: [`http`] (wire formats and handlers), [`console`] (the web
//!    console for policy authors, over [`http`]), [`grpc`] (Envoy's
//!    ext_authz service and gRPC health), [`server`] (a plain
//!    [`server::ServerConfig`] in, a running sidecar out) and [`cli`] (the
//!    only module that knows clap).
//!
//! Each module owns one thing and says so in its first lines.

#![forbid(unsafe_code)]

/// Every binary built on this crate (the sidecar, its tests and benches)
/// allocates with mimalloc: a decision makes and drops many small values.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cli;
pub mod console;
pub mod diag;
pub mod diff;
pub mod domain;
pub mod engine;
pub mod facts;
pub mod gateway;
pub mod identity;
pub mod index;
pub mod load;
pub mod matrix;
pub mod names;
pub mod search;
pub mod search_index;
pub mod snapshot;
pub mod source;
pub mod symbolic;
pub mod verify;
pub mod words;
pub mod world;
pub mod yaml;

pub mod decision_log;
pub mod grpc;
pub mod http;
pub mod live_facts;
pub mod metrics;
pub mod pdp;
pub mod reload;
pub mod request_facts;
pub mod server;

pub use engine::{Decision, Outcome, Query, RequestError, RequestInput, decide, prepare};
pub use load::{Paths, load};
pub use snapshot::Snapshot;

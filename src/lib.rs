//! orgwarden: an authorization sidecar deciding with Cedar policies.
//!
//! Data flows one way: files -> [`load`] -> [`snapshot::Snapshot`] ->
//! [`engine`] -> the callers ([`cli`], [`http`] through [`pdp`]). Each module owns
//! one thing and says so in its first lines. [`facts`] keeps facts live: a
//! revisioned view changed by batches of operations, decided on through
//! request-scoped slices.

pub mod cli;
pub mod diag;
pub mod diff;
pub mod domain;
pub mod engine;
pub mod facts;
pub mod gateway;
pub mod index;
pub mod load;
pub mod matrix;
pub mod names;
pub mod search;
pub mod snapshot;
pub mod symbolic;
pub mod verify;
pub mod world;

pub mod decision_log;
pub mod http;
pub mod metrics;
pub mod pdp;
pub mod reload;
pub mod server;

pub use engine::{Decision, Outcome, Query, RequestError, RequestInput, decide, prepare};
pub use load::{Paths, load};
pub use snapshot::Snapshot;

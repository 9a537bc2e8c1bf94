//! SSO principals: identity sources (trusted OIDC issuers) and the
//! verification of their bearer JWTs.
//!
//! * [`config`]: the identity files (`identity/*.yaml`): per issuer, its
//!   `iss`, where its keys come from (`discovery`, a JWKS URL, `file:PATH`),
//!   its audiences, the claim and entity type naming principals, the
//!   accepted algorithms, the leeway, the claims shown to policies and the
//!   key cache bounds. Compiled against the schema with the policies: part
//!   of the [`crate::snapshot::Snapshot`], reloaded with it (a bad file
//!   keeps the old set serving), errors with file, line and column.
//! * [`schema`]: the schema's `context.token` record, which types the
//!   claims given to policies.
//! * [`jwks`]: an issuer's keys, fetched, cached per their cache headers,
//!   refreshed on an unknown `kid` within a rate limit, failing closed when
//!   they expire with the provider unreachable.
//! * [`verify`]: a bearer JWT to its issuer, principal and `context.token`,
//!   or the reason it is refused.
//!
//! A token authenticates, the facts authorize: the principal's memberships
//! and roles come from the facts, never from the token. Nothing here logs a
//! token or a claim's value.

pub mod config;
pub mod jwks;
pub mod schema;
pub mod verify;

pub use config::{Issuer, Sources};
pub use verify::{TokenError, Verified, Verifier, looks_like_jwt};

//! One forwarded request, decided: the path every gateway transport takes.
//!
//! [`check`] maps a gateway's request (its original method, target and
//! headers) through the routes and credential resolution of
//! [`super::forward_auth`], asks [`crate::pdp::Pdp`] on the route's action
//! and resource, and returns a transport-neutral [`Verdict`]. The HTTP
//! forward-auth handler (`crate::http::forward_auth`) and the ext_authz gRPC
//! service (`crate::grpc`) both call it and only write the answer in their
//! own wire format, so that the two can never decide differently.
//!
//! It fails closed: nothing but an Allow of the engine (or an unmatched
//! route configured to pass) is an [`Allowed`]; an invalid route request is
//! a 403 refusal, never an error for a transport to turn into something else.

use axum::http::{HeaderMap, HeaderValue};
use cedar_policy::EntityUid;

use super::forward_auth::{self, ForwardAuthConfig, Mapped, Refusal};
use crate::live_facts::At;
use crate::pdp::{Decided, Pdp};

/// A request let through.
#[derive(Debug)]
pub struct Allowed {
    /// The principal, when known (always for a decided request), as a valid
    /// header value (`Prefect::User::"alice"`).
    pub principal: Option<String>,
    /// The engine's decision; none for an unmatched route that passes.
    pub decided: Option<Decided>,
}

/// What to answer a forwarded request.
pub type Verdict = Result<Allowed, Refused>;

/// A request refused: why, and the engine's decision when it denied.
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub decided: Option<Decided>,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused {
            refusal,
            decided: None,
        }
    }
}

fn header_safe(principal: &str) -> Result<(), Refusal> {
    HeaderValue::from_str(principal).map(|_| ()).map_err(|_| {
        Refusal::forbidden(
            "invalid_principal",
            "the principal cannot be written in a header",
        )
    })
}

/// Decide one forwarded request (`method` and `target` as the client sent
/// them, `headers` with its credentials) against `snap`, counted and logged
/// under `api`.
pub async fn check(
    pdp: &Pdp,
    config: &ForwardAuthConfig,
    snap: &At,
    method: &str,
    target: &str,
    headers: &HeaderMap,
    api: &'static str,
) -> Verdict {
    let (principal, matched) =
        match forward_auth::map_original(config, snap, snap, method, target, headers)? {
            Mapped::Pass(who) => {
                let shown = who.as_ref().map(EntityUid::to_string);
                if let Some(p) = &shown {
                    header_safe(p)?;
                }
                return Ok(Allowed {
                    principal: shown,
                    decided: None,
                });
            }
            Mapped::Ask { principal, matched } => (principal, matched),
        };
    let decided = pdp
        .authorize_uids(
            snap,
            principal,
            matched.route.action.clone(),
            matched.resource_uid(),
            api,
        )
        .await
        .map_err(|e| {
            tracing::warn!(
                route = %matched.route.name(),
                origin = %matched.route.origin,
                error = %e,
                api,
                "forward-auth: the route's request is invalid"
            );
            Refusal::forbidden("invalid_request", e.to_string())
        })?;
    if decided.entry.outcome.allowed() {
        header_safe(&decided.entry.principal)?;
        Ok(Allowed {
            principal: Some(decided.entry.principal.clone()),
            decided: Some(decided),
        })
    } else {
        Err(Refused {
            refusal: Refusal {
                decision_id: Some(decided.decision_id.to_string()),
                ..Refusal::forbidden("forbidden", "denied by the policies")
            },
            decided: Some(decided),
        })
    }
}

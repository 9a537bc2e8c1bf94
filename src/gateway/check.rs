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

use super::forward_auth::{self, Caller, ForwardAuthConfig, Mapped, Refusal};
use super::keys::Principals;
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
    // A bearer JWT is verified first: that may fetch the issuer's keys.
    let token = match forward_auth::bearer_jwt(config, headers) {
        Some(jwt) => {
            let checked = pdp.identity.verify(&snap.identity, jwt).await;
            if let Err(e) = &checked {
                tracing::info!(
                    code = e.code,
                    reason = %e.message,
                    api,
                    "forward-auth: bearer token refused"
                );
            }
            Some(checked)
        }
        None => None,
    };
    let (caller, matched) =
        match forward_auth::map_original(config, snap, snap, method, target, headers, token)? {
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
            Mapped::Ask { caller, matched } => (caller, matched),
        };
    let decided = match caller {
        Caller::Principal(principal) => {
            pdp.authorize_uids(
                snap,
                principal,
                matched.route.action.clone(),
                matched.resource_uid(),
                api,
            )
            .await
        }
        Caller::Token(verified) => {
            if !snap.holds(&verified.principal) {
                tracing::info!(
                    issuer = %verified.issuer,
                    principal = %verified.principal,
                    api,
                    "forward-auth: the token's principal is not in the facts: denied"
                );
                return Err(Refusal::forbidden(
                    "unknown_principal",
                    format!(
                        "the token names {}, who is not in the facts",
                        verified.principal
                    ),
                )
                .into());
            }
            let action = matched.route.action.clone();
            let context = snap
                .identity
                .action_takes_token(&action.to_string())
                .then(|| serde_json::json!({ "token": verified.token }));
            pdp.authorize_token(
                snap,
                [verified.principal, action, matched.resource_uid()],
                context,
                &verified.issuer,
                api,
            )
            .await
        }
    }
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

//! A bearer JWT in place of the principal, for the decision APIs: the
//! cedar-agent `token` field (as Verified Permissions'
//! `IsAuthorizedWithToken`) and an AuthZEN subject of type `jwt`.
//!
//! [`resolve`] verifies the token against the snapshot's identity sources
//! ([`crate::identity`]), names the principal it maps to, and gives the
//! verified claims to the policies as `context.token` when the action's
//! context declares it. A token that does not verify is a 401; a token whose
//! principal is not in the facts is a Deny with a reason ([`unknown`]),
//! never an error. The token itself is never logged or echoed.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use cedar_policy::EntityUid;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::App;
use super::error::ApiError;
use crate::engine::{Decision, Outcome, RequestInput};
use crate::live_facts::At;
use crate::names::EntityRef;
use crate::pdp::{Decided, Entry};

/// The AuthZEN subject type that carries a bearer JWT in `subject.id`.
pub const AUTHZEN_SUBJECT_TYPE: &str = "jwt";

/// What a request with a token asks.
pub enum Resolved {
    /// No token: decide as written.
    Plain,
    /// Decide the rewritten request, naming `issuer` in the decision log.
    Token { issuer: Arc<str> },
    /// The token's principal is not in the facts: this Deny.
    Unknown(Decided),
}

/// Verify `input.token`, when there is one, and rewrite `input` to name the
/// token's principal with its claims in `context.token`.
pub async fn resolve(app: &App, snap: &At, input: &mut RequestInput) -> Result<Resolved, ApiError> {
    let Some(token) = input.token.take() else {
        return Ok(Resolved::Plain);
    };
    if input.principal.is_some() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "token",
            "give `principal` or `token`, not both",
        ));
    }
    if input
        .context
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|c| c.contains_key("token"))
    {
        return Err(ApiError::bad_request(
            "invalid_context",
            "context.token",
            "`context.token` is written from the verified token only",
        ));
    }
    let verified = app
        .pdp
        .identity
        .verify(&snap.identity, &token)
        .await
        .map_err(|e| {
            tracing::info!(code = e.code, reason = %e.message, "decision API: bearer token refused");
            let mut err = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.message);
            err.field = Some("token".into());
            err
        })?;
    let action = input
        .action
        .as_ref()
        .and_then(|a| snap.names.resolve_action(a).ok());
    if let Some(action) = &action
        && snap.identity.action_takes_token(&action.to_string())
    {
        input.context = match input.context.take() {
            None => Some(Value::Object(Map::from_iter([(
                "token".to_string(),
                verified.token.clone(),
            )]))),
            Some(Value::Object(mut m)) => {
                m.insert("token".into(), verified.token.clone());
                Some(Value::Object(m))
            }
            // Not an object: left for the engine to refuse.
            other => other,
        };
    }
    let principal = verified.principal.clone();
    input.principal = Some(EntityRef::Object {
        type_name: principal.type_name().to_string(),
        id: principal.id().unescaped().to_string(),
    });
    if !crate::gateway::keys::Principals::holds(snap, &principal) {
        tracing::info!(
            issuer = %verified.issuer,
            principal = %principal,
            "decision API: the token's principal is not in the facts: denied"
        );
        return Ok(Resolved::Unknown(unknown(snap, &principal, input)));
    }
    Ok(Resolved::Token {
        issuer: verified.issuer,
    })
}

/// The Deny of a request whose token names a principal the facts lack.
fn unknown(snap: &At, principal: &EntityUid, input: &RequestInput) -> Decided {
    let text = |r: &Option<EntityRef>| match r {
        Some(EntityRef::Text(t)) => t.clone(),
        Some(EntityRef::Object { type_name, id }) => format!("{type_name}::{id:?}"),
        None => String::new(),
    };
    Decided {
        decision_id: Uuid::now_v7(),
        generation: snap.generation,
        cached: false,
        latency: Duration::ZERO,
        entry: Arc::new(Entry {
            outcome: Outcome {
                decision: Decision::Deny,
                reasons: Vec::new(),
                errors: vec![format!(
                    "unknown_principal: the token names {principal}, who is not in the facts"
                )],
            },
            principal: principal.to_string(),
            action: text(&input.action),
            resource: text(&input.resource),
            request_facts: Vec::new(),
        }),
    }
}

/// Decide `input` (with or without a token) against `snap` for `api`.
pub async fn decide(
    app: &App,
    snap: &At,
    input: &RequestInput,
    api: &'static str,
) -> Result<Decided, ApiError> {
    if input.token.is_none() {
        return Ok(app.pdp.authorize(snap, input, api).await?);
    }
    let mut input = input.clone();
    match resolve(app, snap, &mut input).await? {
        Resolved::Plain => Ok(app.pdp.authorize(snap, &input, api).await?),
        Resolved::Token { issuer } => Ok(app
            .pdp
            .authorize_with_issuer(snap, &input, &issuer, api)
            .await?),
        Resolved::Unknown(decided) => Ok(decided),
    }
}

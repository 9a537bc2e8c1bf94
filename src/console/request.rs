//! Try a request: what the form completes from, and one request decided.
//!
//! * `GET /v1/console/catalog`: the schema's actions (with the principal
//!   and resource types each applies to and its context attributes), for
//!   the form's choices and hints;
//! * `GET /v1/console/complete?types=T1,T2&q=TEXT`: stored entities of
//!   those types whose id contains `TEXT`, from the facts decisions read
//!   (uids only: attributes are never listed);
//! * `POST /v1/console/decide` `{principal, action, resource, context?}`:
//!   the engine's decision on the served facts (no cache, no decision-log
//!   line: a console question is not an access), its determining policies
//!   with file, line and text, a one-line reason, and every action the
//!   principal holds on the resource with the facts that grant it
//!   ([`crate::search::explain`]).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use cedar_policy::{Effect, EntityUid, PolicyId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Console, on_source, pages_up_to, query, request_error, stored};
use crate::engine::{self, Outcome, RequestInput};
use crate::http::error::{ApiError, JsonBody};
use crate::http::search::blocking;
use crate::names::EntityRef;
use crate::search::explain::{self, Because};
use crate::search::{self, Source};
use crate::snapshot::Snapshot;

/// The attributes of `action`'s context record: name, type and whether
/// it is required.
fn context_attributes(snap: &Snapshot, action: &EntityUid) -> Vec<Value> {
    use cedar_policy_core::validator::ValidatorSchema;
    use cedar_policy_core::validator::types::Type;
    let schema: &ValidatorSchema = snap.schema.as_ref();
    match schema.context_type(action.as_ref()) {
        Some(Type::Record { attrs, .. }) => attrs
            .iter()
            .map(|(name, ty)| {
                json!({
                    "name": name.as_str(),
                    "type": ty.attr_type.to_string(),
                    "required": ty.is_required,
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `GET /v1/console/catalog`.
pub async fn catalog(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    console.authorize(&headers)?;
    blocking(&console.app, &headers, |snap, _src, revision| {
        let mut principal_types = std::collections::BTreeSet::new();
        let mut resource_types = std::collections::BTreeSet::new();
        let actions: Vec<Value> = snap
            .names
            .actions()
            .into_iter()
            .filter_map(|action| {
                let principals: Vec<String> = snap
                    .schema
                    .principals_for_action(action)?
                    .map(ToString::to_string)
                    .collect();
                let resources: Vec<String> = snap
                    .schema
                    .resources_for_action(action)?
                    .map(ToString::to_string)
                    .collect();
                if principals.is_empty() || resources.is_empty() {
                    return None;
                }
                principal_types.extend(principals.iter().cloned());
                resource_types.extend(resources.iter().cloned());
                Some(json!({
                    "id": action.id().unescaped(),
                    "uid": action.to_string(),
                    "principals": principals,
                    "resources": resources,
                    "context": context_attributes(snap, action),
                }))
            })
            .collect();
        Ok(json!({
            "generation": snap.generation,
            "revision": revision,
            "actions": actions,
            "principal_types": principal_types,
            "resource_types": resource_types,
            "workspace_type": super::workspace_type(snap).map(|t| t.to_string()),
        }))
    })
    .await
}

/// Query of the completion endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteQuery {
    /// Entity types, comma-separated (with or without namespace).
    pub types: String,
    /// Text the id should contain (case-insensitive); `Type::"id` is
    /// read as its id part.
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Most completions one answer holds.
const MAX_COMPLETIONS: usize = 100;

/// `GET /v1/console/complete`.
pub async fn complete(
    State(console): State<Arc<Console>>,
    q: Result<Query<CompleteQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    console.authorize(&headers)?;
    let q = query(q)?;
    let limit = q.limit.unwrap_or(20).min(MAX_COMPLETIONS);
    blocking(&console.app, &headers, move |snap, src, revision| {
        let needle =
            q.q.rsplit_once("::")
                .map_or(q.q.as_str(), |(_, id)| id)
                .trim_matches('"')
                .to_lowercase();
        let mut items = Vec::new();
        let mut more = false;
        for name in q.types.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let ty = snap
                .names
                .resolve_type(name)
                .map_err(|e| ApiError::bad_request("unknown_type", "types", e.to_string()))?;
            let ids = on_source!(src, |s| s
                .of_type(&ty)
                .iter()
                .map(|id| s.uid(id))
                .filter(|uid| uid.id().unescaped().to_lowercase().contains(&needle))
                .take(limit + 1 - items.len().min(limit))
                .collect::<Vec<EntityUid>>());
            for uid in ids {
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(uid.to_string());
            }
        }
        Ok(json!({ "items": items, "more": more, "revision": revision }))
    })
    .await
}

/// The request the form sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    pub principal: EntityRef,
    pub action: EntityRef,
    pub resource: EntityRef,
    #[serde(default)]
    pub context: Option<Value>,
}

/// A determining policy: id, effect, where it is, and its text.
fn policy_json(snap: &Snapshot, id: &str) -> Value {
    let pid = PolicyId::new(id);
    let policy = snap.policies.policy(&pid);
    let origin = snap.origins.get(&pid);
    json!({
        "id": id,
        "effect": policy.map(|p| match p.effect() {
            Effect::Permit => "permit",
            Effect::Forbid => "forbid",
        }),
        "file": origin.map(|o| o.file.display().to_string()),
        "line": origin.and_then(|o| o.line),
        "text": policy.map(ToString::to_string),
    })
}

/// A policy's facts with the rule each instantiates.
pub(super) fn because_json(b: &Because) -> Value {
    let facts: Vec<Value> = b
        .facts
        .iter()
        .enumerate()
        .map(|(i, text)| json!({ "text": text, "ground": b.grounds.get(i) }))
        .collect();
    json!({ "policy": b.policy, "origin": b.origin, "facts": facts })
}

fn effect_of(snap: &Snapshot, id: &str) -> Option<Effect> {
    snap.policies.policy(&PolicyId::new(id)).map(|p| p.effect())
}

fn named(snap: &Snapshot, ids: &[String]) -> String {
    ids.iter()
        .map(|id| match snap.origins.get(&PolicyId::new(id)) {
            Some(o) => match o.line {
                Some(l) => format!("`{id}` ({}:{l})", o.file.display()),
                None => format!("`{id}` ({})", o.file.display()),
            },
            None => format!("`{id}`"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decision in one sentence, from the engine's determining policies
/// and errors, and (for a deny by default) the facts behind what the
/// principal does hold.
fn reason(snap: &Snapshot, outcome: &Outcome, query: &engine::Query, holds: &[Held]) -> String {
    let (p, a, r) = (
        &query.principal,
        query.action.id().unescaped(),
        &query.resource,
    );
    if outcome.allowed() {
        return format!("Allowed by {}.", named(snap, &outcome.reasons));
    }
    let forbids: Vec<String> = outcome
        .reasons
        .iter()
        .filter(|id| effect_of(snap, id) == Some(Effect::Forbid))
        .cloned()
        .collect();
    let mut text = if !forbids.is_empty() {
        format!("Denied by forbid policy {}.", named(snap, &forbids))
    } else {
        format!("No permit policy allows {p} to {a} on {r}: Cedar denies by default.")
    };
    if !outcome.errors.is_empty() {
        text.push_str(&format!(
            " Evaluation errors (an erroring policy is skipped): {}.",
            outcome.errors.join("; ")
        ));
    }
    if forbids.is_empty() {
        let mut facts: Vec<&str> = Vec::new();
        for h in holds {
            for b in &h.because {
                for f in &b.facts {
                    if !facts.contains(&f.as_str()) {
                        facts.push(f);
                    }
                }
            }
        }
        if holds.is_empty() {
            text.push_str(&format!(" {p} holds no action on {r}."));
        } else if facts.is_empty() {
            text.push_str(&format!(
                " {p} holds {} other action(s) on {r}, none of them {a}.",
                holds.len()
            ));
        } else {
            text.push_str(&format!(
                " {p} holds {} other action(s) on {r}, through {}; none of them grants {a}.",
                holds.len(),
                facts.join("; ")
            ));
        }
    }
    text
}

/// An action the principal holds on the resource, and why.
struct Held {
    action: EntityUid,
    because: Vec<Because>,
}

/// Most actions listed as held.
const MAX_HELD: usize = 1000;

fn held<S: Source>(
    snap: &Snapshot,
    src: &S,
    principal: &EntityUid,
    resource: &EntityUid,
    context: &Value,
) -> Result<Vec<Held>, ApiError> {
    let (grants, _) = pages_up_to(MAX_HELD, |page| {
        search::actions_in(snap, src, principal, resource, context, page)
    })?;
    Ok(grants
        .into_iter()
        .map(|g| Held {
            because: explain::explain_in(snap, src, principal, &g.action, resource, &g.policies),
            action: g.action,
        })
        .collect())
}

/// `POST /v1/console/decide`.
pub async fn decide(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<DecideRequest>,
) -> Result<impl IntoResponse, ApiError> {
    console.authorize(&headers)?;
    blocking(&console.app, &headers, move |snap, src, revision| {
        let input = RequestInput {
            principal: Some(req.principal),
            action: Some(req.action),
            resource: Some(req.resource),
            context: req.context,
            entities: None,
            additional_entities: None,
            token: None,
        };
        let query = engine::prepare(snap, &input).map_err(request_error)?;
        let context = input.context.clone().unwrap_or_else(|| json!({}));
        let (outcome, holds, notes) = on_source!(src, |s| {
            let outcome = s.decide(snap, &query);
            let holds = held(snap, s, &query.principal, &query.resource, &context)?;
            let notes: Vec<String> = [&query.principal, &query.resource]
                .into_iter()
                .filter(|uid| !stored(s, uid))
                .map(|uid| format!("{uid} is not in the facts"))
                .collect();
            (outcome, holds, notes)
        });
        let granted_by: Vec<Value> = holds
            .iter()
            .find(|h| h.action == query.action)
            .map(|h| h.because.iter().map(because_json).collect())
            .unwrap_or_default();
        let holds_json: Vec<Value> = holds
            .iter()
            .map(|h| {
                json!({
                    "action": h.action.id().unescaped(),
                    "granted_by": h.because.iter().map(because_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut request = Map::new();
        for (k, uid) in [
            ("principal", &query.principal),
            ("action", &query.action),
            ("resource", &query.resource),
        ] {
            request.insert(k.into(), json!(uid.to_string()));
        }
        Ok(json!({
            "decision": outcome.decision,
            "reason": reason(snap, &outcome, &query, &holds),
            "policies": outcome.reasons.iter().map(|id| policy_json(snap, id)).collect::<Vec<_>>(),
            "errors": outcome.errors,
            "request": request,
            "granted_by": granted_by,
            "holds": holds_json,
            "notes": notes,
            "generation": snap.generation,
            "revision": revision,
        }))
    })
    .await
}

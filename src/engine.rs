//! The engine: one request against one snapshot, decided exactly as
//! `cedar-policy` decides it.
//!
//! Everything that answers a question about access (HTTP, CLI, matrices,
//! forward-auth) goes through [`prepare`] and [`decide`], so answers never
//! disagree. [`prepare`] turns a wire request ([`RequestInput`]) into a
//! validated [`Query`]: names resolved in the schema, context typed by the
//! action's context schema, request-scoped entities parsed and validated. Bad
//! input is a [`RequestError`] naming the field. [`decide`] evaluates only the
//! policies the action can match (see [`crate::index`]) against the loaded
//! facts, or, when the request brings entities of its own, against a small
//! slice of the facts: never a copy of the whole store.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::LazyLock;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, EvalResult, Request, RequestValidationError,
};
use serde::{Deserialize, Serialize};

use crate::names::{EntityRef, NameError};
use crate::snapshot::Snapshot;

static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(Authorizer::new);

/// A request as callers write it (cedar-agent's shape).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    pub principal: Option<EntityRef>,
    pub action: Option<EntityRef>,
    pub resource: Option<EntityRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Value>,
    /// Replaces the loaded entities for this decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<serde_json::Value>,
    /// Added to the loaded entities for this decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_entities: Option<serde_json::Value>,
    /// A bearer JWT naming the principal in place of `principal` (read by
    /// the HTTP API, which verifies it; the engine never sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What a request was wrong about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// A stable code: `missing_field`, `invalid_reference`, `unknown_type`,
    /// `unknown_action`, `invalid_context`, `invalid_entities`, `invalid_request`.
    pub code: &'static str,
    /// The request field at fault (`principal`, `context.ip`, ...).
    pub field: String,
    pub message: String,
}

impl RequestError {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The facts a query is decided against.
#[derive(Debug)]
pub enum Facts {
    /// The snapshot's entities.
    Loaded,
    /// The snapshot's entities plus these (which replace loaded entities with
    /// the same uid).
    Additional(Vec<Entity>),
    /// Only these entities (and the schema's actions).
    Replaced(Entities),
}

/// A validated request, ready to decide.
#[derive(Debug)]
pub struct Query {
    pub request: Request,
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub facts: Facts,
}

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    Deny,
}

/// A decision with the policies that determined it and the errors met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub decision: Decision,
    /// Ids of the determining policies, sorted.
    pub reasons: Vec<String>,
    /// Evaluation errors, as Cedar words them, sorted.
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn allowed(&self) -> bool {
        self.decision == Decision::Allow
    }

    /// The decision for a request that could not be evaluated: fail closed.
    pub fn deny_with_error(message: impl Into<String>) -> Self {
        Outcome {
            decision: Decision::Deny,
            reasons: Vec::new(),
            errors: vec![message.into()],
        }
    }
}

fn name_error(field: &str, e: NameError) -> RequestError {
    let code = match e {
        NameError::Malformed(_) => "invalid_reference",
        NameError::UnknownType(_) | NameError::AmbiguousType { .. } => "unknown_type",
        NameError::UnknownAction(_) | NameError::AmbiguousAction { .. } => "unknown_action",
    };
    RequestError::new(code, field, e.to_string())
}

fn required<'a>(field: &str, v: &'a Option<EntityRef>) -> Result<&'a EntityRef, RequestError> {
    v.as_ref()
        .ok_or_else(|| RequestError::new("missing_field", field, format!("`{field}` is required")))
}

/// Validate a wire request against the snapshot's schema.
pub fn prepare(snap: &Snapshot, input: &RequestInput) -> Result<Query, RequestError> {
    prepare_with_context_text(snap, input, None)
}

/// [`prepare`], given the JSON text of the request's context when the
/// caller already wrote it (the decision cache's key holds it).
pub fn prepare_with_context_text(
    snap: &Snapshot,
    input: &RequestInput,
    context_text: Option<&str>,
) -> Result<Query, RequestError> {
    let principal = snap
        .names
        .resolve_entity(required("principal", &input.principal)?)
        .map_err(|e| name_error("principal", e))?;
    let action = snap
        .names
        .resolve_action(required("action", &input.action)?)
        .map_err(|e| name_error("action", e))?;
    let resource = snap
        .names
        .resolve_entity(required("resource", &input.resource)?)
        .map_err(|e| name_error("resource", e))?;
    let facts = match (&input.entities, &input.additional_entities) {
        (Some(_), Some(_)) => {
            return Err(RequestError::new(
                "invalid_request",
                "entities",
                "give either `entities` (replacing the loaded facts) or `additional_entities`, not both",
            ));
        }
        (Some(all), None) => Facts::Replaced(parse_replacement(snap, all)?),
        (None, Some(extra)) => {
            Facts::Additional(parse_entity_list(snap, extra, "additional_entities")?)
        }
        (None, None) => Facts::Loaded,
    };
    let context = typed_context(snap, &action, input.context.as_ref(), context_text)?;
    let query = query_with_context(snap, principal, action, resource, context)?;
    Ok(Query { facts, ..query })
}

static EMPTY_OBJECT: LazyLock<serde_json::Value> = LazyLock::new(|| serde_json::json!({}));

/// The request context `json` (none: `{}`) typed by `action`'s context
/// schema, exactly as `Context::from_json_value` types it; memoized per
/// action in the policy index, since the same JSON always gives the same
/// context.
pub fn context_for(
    snap: &Snapshot,
    action: &EntityUid,
    json: Option<&serde_json::Value>,
) -> Result<Context, RequestError> {
    typed_context(snap, action, json, None)
}

/// [`context_for`]; `text`, when given, is `json` written as JSON text.
fn typed_context(
    snap: &Snapshot,
    action: &EntityUid,
    json: Option<&serde_json::Value>,
    text: Option<&str>,
) -> Result<Context, RequestError> {
    let json = json.unwrap_or(&EMPTY_OBJECT);
    if !json.is_object() {
        return Err(RequestError::new(
            "invalid_context",
            "context",
            "`context` must be a JSON object",
        ));
    }
    let memo = snap.index.for_action(action).map(|ap| &ap.contexts);
    let key: Option<Cow<'_, str>> = memo.and_then(|_| {
        let text = text.map_or_else(|| Cow::Owned(json.to_string()), Cow::Borrowed);
        (text.len() <= crate::index::CONTEXT_MEMO_MAX_KEY).then_some(text)
    });
    if let (Some(memo), Some(key)) = (memo, &key)
        && let Some(context) = memo.get(key.as_ref())
    {
        return Ok(context);
    }
    let context = Context::from_json_value(json.clone(), Some((&snap.schema, action)))
        .map_err(|e| RequestError::new("invalid_context", "context", crate::diag::one_line(&e)))?;
    if let (Some(memo), Some(key)) = (memo, key) {
        memo.insert(key.into_owned(), context.clone());
    }
    Ok(context)
}

/// A query on the loaded facts from resolved parts (used by tools that
/// already hold uids, such as matrices and search).
pub fn build_query(
    snap: &Snapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: serde_json::Value,
) -> Result<Query, RequestError> {
    let context = context_for(snap, &action, Some(&context))?;
    query_with_context(snap, principal, action, resource, context)
}

fn query_with_context(
    snap: &Snapshot,
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Context,
) -> Result<Query, RequestError> {
    let request = Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        Some(&snap.schema),
    )
    .map_err(request_validation_error)?;
    Ok(Query {
        request,
        principal,
        action,
        resource,
        facts: Facts::Loaded,
    })
}

fn request_validation_error(e: RequestValidationError) -> RequestError {
    let (code, field) =
        match &e {
            RequestValidationError::UndeclaredAction(_)
            | RequestValidationError::ExternalAction(_) => ("unknown_action", "action"),
            RequestValidationError::UndeclaredPrincipalType(_) => ("unknown_type", "principal"),
            RequestValidationError::InvalidPrincipalType(_) => ("invalid_request", "principal"),
            RequestValidationError::UndeclaredResourceType(_) => ("unknown_type", "resource"),
            RequestValidationError::InvalidResourceType(_) => ("invalid_request", "resource"),
            RequestValidationError::InvalidContext(_)
            | RequestValidationError::TypeOfContext(_) => ("invalid_context", "context"),
            _ => ("invalid_request", "request"),
        };
    RequestError::new(code, field, crate::diag::one_line(&e))
}

fn parse_entity_list(
    snap: &Snapshot,
    value: &serde_json::Value,
    field: &str,
) -> Result<Vec<Entity>, RequestError> {
    let items = value.as_array().ok_or_else(|| {
        RequestError::new(
            "invalid_entities",
            field,
            format!("`{field}` must be a JSON array of entities"),
        )
    })?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let e = Entity::from_json_value(item.clone(), Some(&snap.schema)).map_err(|e| {
            RequestError::new(
                "invalid_entities",
                format!("{field}[{i}]"),
                crate::diag::one_line(&e),
            )
        })?;
        if crate::snapshot::is_action(&e.uid()) {
            continue;
        }
        if !seen.insert(e.uid()) {
            return Err(RequestError::new(
                "invalid_entities",
                format!("{field}[{i}]"),
                format!("duplicate entity {}", e.uid()),
            ));
        }
        out.push(e);
    }
    Ok(out)
}

fn parse_replacement(snap: &Snapshot, value: &serde_json::Value) -> Result<Entities, RequestError> {
    let list = parse_entity_list(snap, value, "entities")?;
    let actions = snap
        .schema
        .action_entities()
        .map_err(|e| RequestError::new("invalid_entities", "entities", e.to_string()))?;
    Entities::from_entities(list.into_iter().chain(actions.iter().cloned()), None)
        .map_err(|e| RequestError::new("invalid_entities", "entities", crate::diag::one_line(&e)))
}

/// Decide a prepared query.
///
/// The policy index ([`crate::index`]) hands out the disjoint sets of
/// policies the request can match; each is evaluated by Cedar and the
/// responses merged exactly as Cedar decides one set (see [`merge`]).
pub fn decide(snap: &Snapshot, q: &Query) -> Outcome {
    let literals = policy_literals(snap, &q.action);
    let sliced;
    let entities = match &q.facts {
        Facts::Loaded => &snap.entities,
        Facts::Replaced(entities) => entities,
        Facts::Additional(extra) => match slice(snap, q, literals, extra) {
            Ok(entities) => {
                sliced = entities;
                &sliced
            }
            Err(message) => return Outcome::deny_with_error(message),
        },
    };
    decide_on(snap, q, entities)
}

/// The entities the policies a request of `action` can match name: a
/// request-scoped slice of the facts always includes them.
pub fn policy_literals<'a>(snap: &'a Snapshot, action: &EntityUid) -> &'a [EntityUid] {
    match snap.index.for_action(action) {
        Some(ap) => ap.literals.as_slice(),
        None => snap.policy_literals.as_slice(),
    }
}

/// Decide `q` with the snapshot's policies against `entities`, whatever
/// facts the query names (the caller has resolved them: the snapshot's
/// entities, a request-scoped slice, or a live fact view's slice).
pub fn decide_on(snap: &Snapshot, q: &Query, entities: &Entities) -> Outcome {
    let Some(ap) = snap.index.for_action(&q.action) else {
        return outcome(&AUTHORIZER.is_authorized(&q.request, &snap.policies, entities));
    };
    match ap.sets_for(&q.principal, &q.resource, entities).as_slice() {
        [] => Outcome {
            decision: Decision::Deny,
            reasons: Vec::new(),
            errors: Vec::new(),
        },
        [one] => outcome(&AUTHORIZER.is_authorized(&q.request, one, entities)),
        sets => merge(
            sets.iter()
                .map(|set| outcome(&AUTHORIZER.is_authorized(&q.request, set, entities))),
        ),
    }
}

/// The outcome of one policy set made of disjoint parts, from the outcomes
/// of the parts. Cedar evaluates each policy on its own, so the union's
/// satisfied forbids, satisfied permits and errors are those of the parts;
/// a Deny with reasons is a satisfied forbid (Cedar's reasons for a Deny
/// are the forbids that hold; a Deny without reasons means no policy held).
/// So: any forbid -> Deny for the union of the forbids; else any permit ->
/// Allow for the union of the permits; else Deny without reasons. Errors
/// are always the union.
pub fn merge(parts: impl IntoIterator<Item = Outcome>) -> Outcome {
    let mut forbids: Vec<String> = Vec::new();
    let mut permits: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for part in parts {
        match part.decision {
            Decision::Deny => forbids.extend(part.reasons),
            Decision::Allow => permits.extend(part.reasons),
        }
        errors.extend(part.errors);
    }
    errors.sort();
    let (decision, mut reasons) = if !forbids.is_empty() {
        (Decision::Deny, forbids)
    } else if !permits.is_empty() {
        (Decision::Allow, permits)
    } else {
        (Decision::Deny, Vec::new())
    };
    reasons.sort();
    Outcome {
        decision,
        reasons,
        errors,
    }
}

/// A Cedar response as an [`Outcome`].
pub fn outcome(response: &cedar_policy::Response) -> Outcome {
    let mut reasons: Vec<String> = response.diagnostics().reason().map(policy_id).collect();
    reasons.sort();
    let mut errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(ToString::to_string)
        .collect();
    errors.sort();
    let decision = match response.decision() {
        cedar_policy::Decision::Allow => Decision::Allow,
        cedar_policy::Decision::Deny => Decision::Deny,
    };
    Outcome {
        decision,
        reasons,
        errors,
    }
}

/// A policy id as Cedar displays it (`escape_debug` of the id), without
/// the formatter for the usual ids, which that escaping leaves unchanged.
fn policy_id(id: &cedar_policy::PolicyId) -> String {
    let raw: &str = id.as_ref();
    let plain = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_/:.@ ".contains(&b));
    if plain {
        raw.to_owned()
    } else {
        id.to_string()
    }
}

/// The entities a query can reach: its principal, action and resource, the
/// entities in its context and in the policies, the request's own entities,
/// and, transitively, every entity their attributes, tags and parents name.
/// Loaded entities keep their (already closed) ancestor sets.
fn slice(
    snap: &Snapshot,
    q: &Query,
    literals: &[EntityUid],
    extra: &[Entity],
) -> Result<Entities, String> {
    let extra_by_uid: HashMap<EntityUid, &Entity> = extra.iter().map(|e| (e.uid(), e)).collect();
    let mut queue: VecDeque<EntityUid> = VecDeque::new();
    queue.extend([q.principal.clone(), q.action.clone(), q.resource.clone()]);
    queue.extend(literals.iter().cloned());
    queue.extend(extra_by_uid.keys().cloned());
    if let Some(ctx) = q.request.context() {
        for (key, _) in ctx.clone() {
            if let Some(v) = ctx.get(&key) {
                collect_uids(&v, &mut queue);
            }
        }
    }
    let mut seen: HashSet<EntityUid> = HashSet::new();
    let mut out: Vec<Entity> = Vec::new();
    while let Some(uid) = queue.pop_front() {
        if !seen.insert(uid.clone()) {
            continue;
        }
        let (entity, is_extra) = match extra_by_uid.get(&uid) {
            Some(e) => (*e, true),
            None => match snap.entities.get(&uid) {
                Some(e) => (e, false),
                None => continue,
            },
        };
        for (_, v) in entity.attrs().chain(entity.tags()) {
            if let Ok(v) = v {
                collect_uids(&v, &mut queue);
            }
        }
        if is_extra {
            let (_, _, parents) = entity.clone().into_inner();
            queue.extend(parents);
        }
        out.push(entity.clone());
    }
    let sliced = Entities::from_entities(out, None).map_err(|e| crate::diag::one_line(&e))?;
    // A request entity that replaces a loaded one with other ancestors changes
    // the ancestors of loaded entities below it, which the slice keeps as they
    // were: decide against the whole store then (rare, and exact).
    let reparented = extra_by_uid.keys().any(|uid| {
        snap.entities.get(uid).is_some()
            && ancestor_set(&snap.entities, uid) != ancestor_set(&sliced, uid)
    });
    if reparented {
        return whole_store_with(snap, extra);
    }
    Ok(sliced)
}

fn ancestor_set(entities: &Entities, uid: &EntityUid) -> HashSet<EntityUid> {
    entities
        .ancestors(uid)
        .map(|a| a.cloned().collect())
        .unwrap_or_default()
}

/// The loaded entities with `extra` replacing or adding entities.
///
/// Cedar's upsert, not a rebuild from the loaded entities: those carry their
/// closed ancestor sets, and a transitive-closure pass only adds edges, so a
/// replaced entity that lost a parent would leave its loaded descendants
/// with ancestors they no longer have. The upsert strips those edges from
/// the descendants and repairs the closure.
pub fn whole_store_with(snap: &Snapshot, extra: &[Entity]) -> Result<Entities, String> {
    snap.entities
        .clone()
        .upsert_entities(extra.iter().cloned(), None)
        .map_err(|e| crate::diag::one_line(&e))
}

fn collect_uids(v: &EvalResult, out: &mut VecDeque<EntityUid>) {
    match v {
        EvalResult::EntityUid(u) => out.push_back(u.clone()),
        EvalResult::Set(s) => s.iter().for_each(|x| collect_uids(x, out)),
        EvalResult::Record(r) => r.iter().for_each(|(_, x)| collect_uids(x, out)),
        _ => {}
    }
}

/// The entity JSON of `uid` with `properties` merged over its loaded
/// attributes (its parents and tags kept), or a new entity with only these
/// attributes when none is loaded. For request-scoped facts such as
/// AuthZEN's subject and resource properties.
pub fn overlay_attributes(
    snap: &Snapshot,
    uid: &EntityUid,
    properties: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, RequestError> {
    let mut json = match snap.entities.get(uid) {
        Some(e) => e.to_json_value().map_err(|e| {
            RequestError::new("invalid_entities", "properties", crate::diag::one_line(&e))
        })?,
        None => serde_json::json!({
            "uid": { "type": uid.type_name().to_string(), "id": uid.id().unescaped() },
            "attrs": {},
            "parents": [],
        }),
    };
    let attrs = json
        .get_mut("attrs")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or_else(|| {
            RequestError::new(
                "invalid_entities",
                "properties",
                "entity has no attributes object",
            )
        })?;
    for (k, v) in properties {
        attrs.insert(k.clone(), v.clone());
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_ids_read_as_cedar_displays_them() {
        for raw in [
            "admin-overrides",
            "union-of-default-and-explicit",
            "policy12",
            "a \"quoted\" id",
            "tab\there",
            "back\\slash",
            "apostrophe's",
            "émoji 🚀",
            "new\nline",
            "",
        ] {
            let id = cedar_policy::PolicyId::new(raw);
            assert_eq!(policy_id(&id), id.to_string(), "{raw:?}");
        }
    }
}

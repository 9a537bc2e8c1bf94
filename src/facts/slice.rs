//! Deciding against a fact view: a small, request-scoped `Entities` built
//! from the view and decided by Cedar's authorizer.
//!
//! The slice holds the request's principal, action and resource, the
//! entities its context and the policies name, and, transitively, every
//! entity their attributes and (kept) tags name: everything the evaluation
//! can reach. Each entity comes with its closed ancestors, so Cedar needs no
//! closure pass over the slice; an entity is shared with the view (an `Arc`),
//! not copied, unless its tags are projected.
//!
//! Projection: Cedar reads a tag only through `getTag`/`hasTag`. When every
//! key expression of the policy set is a string literal or a path of
//! attributes from `principal`, `action`, `resource` or `context`
//! ([`SlicePlan`]), the keys a request can read are the values of those
//! expressions for it (an expression that does not evaluate to a string
//! reads no tag: Cedar's evaluation of it errors or yields no key), so the
//! slice keeps only the tags with those keys. Otherwise every tag is kept.
//! A generated user with hundreds of memberships then costs one tag, not
//! hundreds. The differential tests hold the result to
//! [`crate::engine::decide`] on a full load of the same facts.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use cedar_policy::{Entities, EvalResult, PolicySet};
use cedar_policy_core::ast::{self, EntityUID, Literal, PartialValue, ValueKind};
use cedar_policy_core::entities::{NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use serde_json::Value;
use smol_str::SmolStr;

use super::Model;
use super::view::{FactView, collect_refs};
use crate::engine::{Facts, Outcome, Query};
use crate::snapshot::Snapshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Principal,
    Action,
    Resource,
    Context,
}

/// A tag key expression the plan can evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyExpr {
    Literal(SmolStr),
    Path(Var, Vec<SmolStr>),
}

/// What a policy set can read of tags, analyzed once per policy set.
#[derive(Debug, Clone, Default)]
pub struct SlicePlan {
    /// The key expressions of every `getTag`/`hasTag`; none when one of them
    /// is not a literal or an attribute path (every tag is kept then).
    keys: Option<Vec<KeyExpr>>,
}

fn var(name: &str) -> Option<Var> {
    Some(match name {
        "principal" => Var::Principal,
        "action" => Var::Action,
        "resource" => Var::Resource,
        "context" => Var::Context,
        _ => return None,
    })
}

/// A key expression (of Cedar's JSON policy format) the plan can evaluate.
fn key_expr(e: &Value) -> Option<KeyExpr> {
    let obj = e.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    if let Some(Value::String(s)) = obj.get("Value") {
        return Some(KeyExpr::Literal(SmolStr::new(s)));
    }
    let mut path = Vec::new();
    let mut cur = e;
    loop {
        let o = cur.as_object()?;
        if let Some(get) = o.get(".") {
            path.push(SmolStr::new(get.get("attr")?.as_str()?));
            cur = get.get("left")?;
        } else if let Some(Value::String(v)) = o.get("Var") {
            path.reverse();
            return Some(KeyExpr::Path(var(v)?, path));
        } else {
            return None;
        }
    }
}

/// Collect the key expressions under `e`; false when one cannot be planned.
fn walk(e: &Value, out: &mut Vec<KeyExpr>) -> bool {
    match e {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "getTag" || k == "hasTag" {
                    match v.get("right").and_then(key_expr) {
                        Some(k) => {
                            if !out.contains(&k) {
                                out.push(k)
                            }
                        }
                        None => return false,
                    }
                }
                if !walk(v, out) {
                    return false;
                }
            }
            true
        }
        Value::Array(items) => items.iter().all(|v| walk(v, out)),
        _ => true,
    }
}

impl SlicePlan {
    /// Analyze a policy set.
    pub fn new(policies: &PolicySet) -> SlicePlan {
        let mut keys = Vec::new();
        for p in policies.policies() {
            let ok = match p.to_json() {
                Ok(json) => walk(&json, &mut keys),
                Err(_) => false,
            };
            if !ok {
                return SlicePlan { keys: None };
            }
        }
        SlicePlan { keys: Some(keys) }
    }

    /// Does the plan project tags (false: every tag is kept)?
    pub fn projects(&self) -> bool {
        self.keys.is_some()
    }

    /// The tag keys a request can read; none: any.
    fn keys_for(&self, model: &Model, view: &FactView, q: &Query) -> Option<HashSet<SmolStr>> {
        let exprs = self.keys.as_ref()?;
        let mut out = HashSet::new();
        for e in exprs {
            match e {
                KeyExpr::Literal(s) => {
                    out.insert(s.clone());
                }
                KeyExpr::Path(v, path) => {
                    if let Some(s) = eval_path(model, view, q, *v, path) {
                        out.insert(s);
                    }
                }
            }
        }
        Some(out)
    }
}

/// A value met while following an attribute path.
enum Cur {
    Entity(EntityUID),
    Value(ast::Value),
    Eval(EvalResult),
}

fn entity<'a>(model: &'a Model, view: &'a FactView, uid: &EntityUID) -> Option<&'a ast::Entity> {
    match view.node(uid) {
        Some(n) => Some(&n.entity),
        None => model.actions.get(uid).map(|a| &**a),
    }
}

fn eval_path(
    model: &Model,
    view: &FactView,
    q: &Query,
    v: Var,
    path: &[SmolStr],
) -> Option<SmolStr> {
    let mut cur = match v {
        Var::Principal => Cur::Entity(q.principal.clone().into()),
        Var::Action => Cur::Entity(q.action.clone().into()),
        Var::Resource => Cur::Entity(q.resource.clone().into()),
        Var::Context => {
            let ctx = q.request.context()?;
            let first = path.first()?;
            let value = ctx.get(first)?;
            return follow(model, view, Cur::Eval(value), &path[1..]);
        }
    };
    for attr in path {
        cur = step(model, view, cur, attr)?;
    }
    string_of(cur)
}

fn follow(model: &Model, view: &FactView, mut cur: Cur, path: &[SmolStr]) -> Option<SmolStr> {
    for attr in path {
        cur = step(model, view, cur, attr)?;
    }
    string_of(cur)
}

fn string_of(cur: Cur) -> Option<SmolStr> {
    match cur {
        Cur::Value(ast::Value {
            value: ValueKind::Lit(Literal::String(s)),
            ..
        }) => Some(s),
        Cur::Eval(EvalResult::String(s)) => Some(SmolStr::new(s)),
        _ => None,
    }
}

fn step(model: &Model, view: &FactView, cur: Cur, attr: &str) -> Option<Cur> {
    match cur {
        Cur::Entity(uid) => match entity(model, view, &uid)?.get(attr)? {
            PartialValue::Value(v) => Some(Cur::Value(v.clone())),
            PartialValue::Residual(_) => None,
        },
        Cur::Value(v) => match v.value {
            ValueKind::Lit(Literal::EntityUID(u)) => {
                step(model, view, Cur::Entity((*u).clone()), attr)
            }
            ValueKind::Record(r) => r.get(attr).cloned().map(Cur::Value),
            _ => None,
        },
        Cur::Eval(v) => match v {
            EvalResult::EntityUid(u) => step(model, view, Cur::Entity(u.into()), attr),
            EvalResult::Record(r) => r.get(attr).cloned().map(Cur::Eval),
            _ => None,
        },
    }
}

fn eval_refs(v: &EvalResult, out: &mut VecDeque<EntityUID>) {
    match v {
        EvalResult::EntityUid(u) => out.push_back(u.clone().into()),
        EvalResult::Set(s) => s.iter().for_each(|x| eval_refs(x, out)),
        EvalResult::Record(r) => r.iter().for_each(|(_, x)| eval_refs(x, out)),
        _ => {}
    }
}

/// The request-scoped entities of `q` from `view` (see the module doc).
pub fn slice(
    plan: &SlicePlan,
    model: &Model,
    view: &FactView,
    q: &Query,
    literals: &[cedar_policy::EntityUid],
) -> Entities {
    let keys = plan.keys_for(model, view, q);
    let mut queue: VecDeque<EntityUID> = VecDeque::new();
    queue.push_back(q.principal.clone().into());
    queue.push_back(q.action.clone().into());
    queue.push_back(q.resource.clone().into());
    queue.extend(literals.iter().map(|u| EntityUID::from(u.clone())));
    if let Some(ctx) = q.request.context() {
        for (key, _) in ctx.clone() {
            if let Some(v) = ctx.get(&key) {
                eval_refs(&v, &mut queue);
            }
        }
    }
    let mut seen: HashSet<EntityUID> = HashSet::new();
    let mut out: Vec<Arc<ast::Entity>> = Vec::new();
    let mut refs: HashSet<EntityUID> = HashSet::new();
    while let Some(uid) = queue.pop_front() {
        if seen.contains(&uid) {
            continue;
        }
        let shared = match view.node(&uid) {
            Some(n) => &n.entity,
            None => match model.actions.get(&uid) {
                Some(a) => a,
                None => {
                    seen.insert(uid);
                    continue;
                }
            },
        };
        refs.clear();
        for (_, v) in shared.attrs() {
            collect_refs(v, &mut refs);
        }
        let kept = match &keys {
            Some(keys) if shared.tags_len() > 0 => {
                let selected: Vec<(SmolStr, PartialValue)> = keys
                    .iter()
                    .filter_map(|k| shared.get_tag(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                for (_, v) in &selected {
                    collect_refs(v, &mut refs);
                }
                if selected.len() == shared.tags_len() {
                    shared.clone()
                } else {
                    Arc::new(ast::Entity::new_with_attr_partial_value(
                        uid.clone(),
                        shared.attrs().map(|(k, v)| (k.clone(), v.clone())),
                        shared.indirect_ancestors().cloned().collect(),
                        shared.parents().cloned().collect(),
                        selected,
                    ))
                }
            }
            _ => {
                for (_, v) in shared.tags() {
                    collect_refs(v, &mut refs);
                }
                shared.clone()
            }
        };
        out.push(kept);
        queue.extend(refs.drain().filter(|r| !seen.contains(r)));
        seen.insert(uid);
    }
    let core = cedar_policy_core::entities::Entities::new()
        .add_entities(
            out,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .expect("a slice holds each entity once");
    Entities::from(core)
}

/// Decide `q` against `view`, with the policies of `snap` (its schema,
/// policy index and literals; its entities are not read).
pub fn decide(
    snap: &Snapshot,
    plan: &SlicePlan,
    model: &Model,
    view: &FactView,
    q: &Query,
) -> Outcome {
    match &q.facts {
        Facts::Loaded => {}
        Facts::Replaced(_) => return crate::engine::decide(snap, q),
        Facts::Additional(_) => {
            return Outcome::deny_with_error(
                "request-scoped additional entities are not supported against live facts",
            );
        }
    }
    let literals = crate::engine::policy_literals(snap, &q.action);
    let entities = slice(plan, model, view, q, literals);
    crate::engine::decide_on(snap, q, &entities)
}

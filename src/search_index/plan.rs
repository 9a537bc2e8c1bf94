//! Policy analysis: for one permit policy, a *necessary* condition on the
//! principal and the resource, written in relations the index can answer.
//!
//! [`plan`] reads the policy's scope and its conditions (through Cedar's JSON
//! form of the policy, the EST) and returns a [`Req`]: a formula of [`Link`]s
//! such that whenever the policy is satisfied for a request, the formula
//! holds. Two functions over expressions do the work:
//!
//! * `truthy(e)`: necessary for `e` to evaluate to `true`;
//! * `ok(e)`: necessary for `e` to evaluate without an error.
//!
//! `a && b` is true only if both are; `a || b` only if `a` evaluates and one
//! of them is true; `if c then a else b` only if `c` evaluates and `a` or `b`
//! is true; `!a` only if `a` evaluates. Every other operator evaluates all its
//! operands, so it needs each of them to evaluate; `==`, `in`, `contains`,
//! `hasTag`, `getTag` and `is` add a link between their operands when those
//! are terms: a variable followed by attribute accesses, a literal, the
//! request's `action` (known when searching, as a literal is), or a `getTag`
//! of terms or an attribute of a literal, possibly followed by attribute
//! accesses, whose value is only read when checking a candidate
//! (`action in principal.getTag(resource.key).grants` prunes the workspaces
//! where the principal's role does not grant the action). `getTag` also
//! needs the tag to exist just to evaluate. Anything the analysis does not
//! understand (context, arithmetic, extension calls, negations) becomes
//! [`Req::Any`]: no constraint, which is always sound.

use std::str::FromStr;

use cedar_policy::{
    EntityId, EntityTypeName, EntityUid, Policy, PrincipalConstraint, ResourceConstraint,
};
use serde_json::Value;

/// A request variable the index can relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Var {
    Principal,
    Resource,
}

/// An operand the index understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Term {
    /// A variable followed by attribute accesses (`resource.org.admins`).
    Path(Var, Vec<String>),
    Entity(EntityUid),
    Str(String),
    /// The request's action: known whenever a search runs.
    Action,
    /// `holder.getTag(key)`: read when checking a candidate, never indexed.
    Tag(Box<Term>, Box<Term>),
    /// Attribute accesses on a tag or a literal (`principal.getTag(k).grants`,
    /// `Role::"r".grants`): read when checking a candidate, never indexed.
    Attr(Box<Term>, Vec<String>),
}

impl Term {
    /// Does the term read the variable `v`?
    pub(crate) fn mentions(&self, v: Var) -> bool {
        match self {
            Term::Path(var, _) => *var == v,
            Term::Tag(holder, key) => holder.mentions(v) || key.mentions(v),
            Term::Attr(of, _) => of.mentions(v),
            Term::Entity(_) | Term::Str(_) | Term::Action => false,
        }
    }

    /// Is the term's value known before any candidate, naming a whole class
    /// of entities rather than a few (a literal, or the request's action)?
    pub(crate) fn is_literal(&self) -> bool {
        matches!(self, Term::Entity(_) | Term::Str(_) | Term::Action)
    }

    /// Does the term read the request's action?
    pub(crate) fn reads_action(&self) -> bool {
        match self {
            Term::Action => true,
            Term::Tag(holder, key) => holder.reads_action() || key.reads_action(),
            Term::Attr(of, _) => of.reads_action(),
            Term::Path(..) | Term::Entity(_) | Term::Str(_) => false,
        }
    }
}

/// How two terms relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelOp {
    /// `sub in sup`: `sup` (an entity or a set of them) is `sub` or one of
    /// its ancestors.
    In,
    /// `sub == sup`.
    Eq,
    /// `sup.contains(sub)`.
    Member,
}

/// One relation a satisfied policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    Rel {
        op: RelOp,
        sub: Term,
        sup: Term,
    },
    /// `holder.hasTag(key)` (or a `getTag` that evaluates).
    Tag {
        holder: Term,
        key: Term,
    },
    /// The variable is of this type.
    Is {
        var: Var,
        ty: EntityTypeName,
    },
}

/// A necessary condition, as a formula of links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Req {
    /// No constraint the index can use.
    Any,
    /// Cannot hold.
    Never,
    Link(Box<Link>),
    And(Vec<Req>),
    Or(Vec<Req>),
}

impl Req {
    /// Does the condition read the request's action? (Its candidates then
    /// depend on the action, not only on the policy.)
    pub(crate) fn reads_action(&self) -> bool {
        match self {
            Req::Any | Req::Never => false,
            Req::And(parts) | Req::Or(parts) => parts.iter().any(Req::reads_action),
            Req::Link(link) => match link.as_ref() {
                Link::Rel { sub, sup, .. } => sub.reads_action() || sup.reads_action(),
                Link::Tag { holder, key } => holder.reads_action() || key.reads_action(),
                Link::Is { .. } => false,
            },
        }
    }

    fn link(link: Link) -> Req {
        Req::Link(Box::new(link))
    }

    fn and(parts: Vec<Req>) -> Req {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Req::Any => {}
                Req::Never => return Req::Never,
                Req::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Req::Any,
            1 => out.pop().expect("one part"),
            _ => Req::And(out),
        }
    }

    fn or(parts: Vec<Req>) -> Req {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Req::Any => return Req::Any,
                Req::Never => {}
                Req::Or(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Req::Never,
            1 => out.pop().expect("one part"),
            _ => Req::Or(out),
        }
    }
}

/// The necessary condition of a permit policy: its scope and conditions.
pub(crate) fn plan(policy: &Policy) -> Req {
    let mut parts = Vec::new();
    match policy.principal_constraint() {
        PrincipalConstraint::Any => {}
        PrincipalConstraint::Eq(e) => parts.push(scope_rel(Var::Principal, RelOp::Eq, e)),
        PrincipalConstraint::In(e) => parts.push(scope_rel(Var::Principal, RelOp::In, e)),
        PrincipalConstraint::Is(ty) => parts.push(scope_is(Var::Principal, ty)),
        PrincipalConstraint::IsIn(ty, e) => {
            parts.push(scope_is(Var::Principal, ty));
            parts.push(scope_rel(Var::Principal, RelOp::In, e));
        }
    }
    match policy.resource_constraint() {
        ResourceConstraint::Any => {}
        ResourceConstraint::Eq(e) => parts.push(scope_rel(Var::Resource, RelOp::Eq, e)),
        ResourceConstraint::In(e) => parts.push(scope_rel(Var::Resource, RelOp::In, e)),
        ResourceConstraint::Is(ty) => parts.push(scope_is(Var::Resource, ty)),
        ResourceConstraint::IsIn(ty, e) => {
            parts.push(scope_is(Var::Resource, ty));
            parts.push(scope_rel(Var::Resource, RelOp::In, e));
        }
    }
    match policy.to_json() {
        Ok(est) => {
            for condition in est
                .get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let body = &condition["body"];
                match condition.get("kind").and_then(Value::as_str) {
                    Some("when") => parts.push(truthy(body)),
                    // `unless { e }` holds when `!e` is true: `e` evaluates.
                    Some("unless") => parts.push(ok(body)),
                    _ => {}
                }
            }
        }
        Err(_) => parts.push(Req::Any),
    }
    Req::and(parts)
}

fn scope_rel(var: Var, op: RelOp, e: EntityUid) -> Req {
    Req::link(Link::Rel {
        op,
        sub: Term::Path(var, Vec::new()),
        sup: Term::Entity(e),
    })
}

fn scope_is(var: Var, ty: EntityTypeName) -> Req {
    Req::link(Link::Is { var, ty })
}

/// The one `(operator, argument)` pair of an EST expression object.
fn op(e: &Value) -> Option<(&str, &Value)> {
    let obj = e.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn binary(v: &Value) -> Option<(&Value, &Value)> {
    Some((v.get("left")?, v.get("right")?))
}

/// Necessary for `e` to evaluate to `true`.
fn truthy(e: &Value) -> Req {
    let Some((k, v)) = op(e) else {
        return Req::Any;
    };
    match k {
        "Value" => match v {
            Value::Bool(false) => Req::Never,
            _ => Req::Any,
        },
        "!" => v.get("arg").map(ok).unwrap_or(Req::Any),
        "&&" => match binary(v) {
            Some((l, r)) => Req::and(vec![truthy(l), truthy(r)]),
            None => Req::Any,
        },
        "||" => match binary(v) {
            Some((l, r)) => Req::and(vec![ok(l), Req::or(vec![truthy(l), truthy(r)])]),
            None => Req::Any,
        },
        "if-then-else" => match (v.get("if"), v.get("then"), v.get("else")) {
            (Some(c), Some(t), Some(f)) => {
                Req::and(vec![ok(c), Req::or(vec![truthy(t), truthy(f)])])
            }
            _ => Req::Any,
        },
        "==" | "in" | "contains" => match binary(v) {
            Some((l, r)) => {
                let link = match k {
                    "==" => rel(RelOp::Eq, l, r).or_else(|| rel(RelOp::Eq, r, l)),
                    "in" => rel_in(l, r),
                    _ => rel_member(l, r),
                };
                Req::and(vec![ok(l), ok(r), link.unwrap_or(Req::Any)])
            }
            None => Req::Any,
        },
        "hasTag" | "getTag" => match binary(v) {
            Some((l, r)) => Req::and(vec![ok(l), ok(r), tag(l, r)]),
            None => Req::Any,
        },
        "is" => {
            let Some(left) = v.get("left") else {
                return Req::Any;
            };
            let mut parts = vec![ok(left)];
            if let (Some(Term::Path(var, path)), Some(ty)) = (
                term(left),
                v.get("entity_type")
                    .and_then(Value::as_str)
                    .and_then(|t| EntityTypeName::from_str(t).ok()),
            ) && path.is_empty()
            {
                parts.push(Req::link(Link::Is { var, ty }));
            }
            if let Some(within) = v.get("in") {
                parts.push(ok(within));
                parts.push(rel_in(left, within).unwrap_or(Req::Any));
            }
            Req::and(parts)
        }
        _ => ok(e),
    }
}

/// Necessary for `e` to evaluate without an error.
fn ok(e: &Value) -> Req {
    let Some((k, v)) = op(e) else {
        return Req::Any;
    };
    match k {
        "Value" | "Var" | "Slot" => Req::Any,
        // Only the left operand is always evaluated.
        "&&" | "||" => v.get("left").map(ok).unwrap_or(Req::Any),
        "if-then-else" => match (v.get("if"), v.get("then"), v.get("else")) {
            (Some(c), Some(t), Some(f)) => Req::and(vec![ok(c), Req::or(vec![ok(t), ok(f)])]),
            _ => Req::Any,
        },
        "getTag" => match binary(v) {
            Some((l, r)) => Req::and(vec![ok(l), ok(r), tag(l, r)]),
            None => Req::Any,
        },
        "!" | "neg" | "isEmpty" => v.get("arg").map(ok).unwrap_or(Req::Any),
        "." | "has" | "like" => v.get("left").map(ok).unwrap_or(Req::Any),
        "is" => {
            let mut parts = vec![v.get("left").map(ok).unwrap_or(Req::Any)];
            if let Some(within) = v.get("in") {
                parts.push(ok(within));
            }
            Req::and(parts)
        }
        "Set" => match v.as_array() {
            Some(items) => Req::and(items.iter().map(ok).collect()),
            None => Req::Any,
        },
        "Record" => match v.as_object() {
            Some(fields) => Req::and(fields.values().map(ok).collect()),
            None => Req::Any,
        },
        _ => {
            if let Some((l, r)) = binary(v) {
                // Every other binary operator evaluates both operands.
                Req::and(vec![ok(l), ok(r)])
            } else if let Some(args) = v.as_array() {
                // An extension function or method call.
                Req::and(args.iter().map(ok).collect())
            } else {
                Req::Any
            }
        }
    }
}

/// An operand as a term, when it is one.
fn term(e: &Value) -> Option<Term> {
    let (k, v) = op(e)?;
    match k {
        "Var" => match v.as_str()? {
            "principal" => Some(Term::Path(Var::Principal, Vec::new())),
            "resource" => Some(Term::Path(Var::Resource, Vec::new())),
            "action" => Some(Term::Action),
            _ => None,
        },
        "." => {
            let attr = v.get("attr")?.as_str()?.to_string();
            match term(v.get("left")?)? {
                Term::Path(var, mut path) => {
                    path.push(attr);
                    Some(Term::Path(var, path))
                }
                Term::Attr(of, mut path) => {
                    path.push(attr);
                    Some(Term::Attr(of, path))
                }
                of @ (Term::Tag(..) | Term::Entity(_)) => {
                    Some(Term::Attr(Box::new(of), vec![attr]))
                }
                Term::Str(_) | Term::Action => None,
            }
        }
        "getTag" => {
            let (holder, key) = binary(v)?;
            match (term(holder)?, term(key)?) {
                (holder @ Term::Path(..), key) => Some(Term::Tag(Box::new(holder), Box::new(key))),
                _ => None,
            }
        }
        "Value" => match v {
            Value::String(s) => Some(Term::Str(s.clone())),
            Value::Object(o) => {
                let e = o.get("__entity")?;
                let ty = EntityTypeName::from_str(e.get("type")?.as_str()?).ok()?;
                let id = EntityId::new(e.get("id")?.as_str()?);
                Some(Term::Entity(EntityUid::from_type_name_and_id(ty, id)))
            }
            _ => None,
        },
        _ => None,
    }
}

fn rel(op: RelOp, sub: &Value, sup: &Value) -> Option<Req> {
    Some(Req::link(Link::Rel {
        op,
        sub: term(sub)?,
        sup: term(sup)?,
    }))
}

/// `sub in sup`, where `sup` may also be a set literal of terms.
fn rel_in(sub: &Value, sup: &Value) -> Option<Req> {
    if let Some(("Set", items)) = op(sup) {
        let items = items.as_array()?;
        let mut alts = Vec::new();
        for item in items {
            alts.push(rel(RelOp::In, sub, item)?);
        }
        return Some(Req::or(alts));
    }
    rel(RelOp::In, sub, sup)
}

/// `container.contains(element)`, where `container` may be a set literal.
fn rel_member(container: &Value, element: &Value) -> Option<Req> {
    if let Some(("Set", items)) = op(container) {
        let items = items.as_array()?;
        let mut alts = Vec::new();
        for item in items {
            alts.push(rel(RelOp::Eq, element, item)?);
        }
        return Some(Req::or(alts));
    }
    rel(RelOp::Member, element, container)
}

fn tag(holder: &Value, key: &Value) -> Req {
    match (term(holder), term(key)) {
        (Some(holder @ Term::Path(..)), Some(key)) => Req::link(Link::Tag { holder, key }),
        _ => Req::Any,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(src: &str) -> Req {
        plan(&Policy::parse(None, src).unwrap())
    }

    fn path(var: Var, p: &[&str]) -> Term {
        Term::Path(var, p.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn unconstrained_policies_plan_to_any() {
        assert_eq!(planned("permit(principal, action, resource);"), Req::Any);
        assert_eq!(
            planned("permit(principal, action, resource) when { resource.public };"),
            Req::Any
        );
        assert_eq!(
            planned("permit(principal, action, resource) unless { principal == resource.owner };"),
            Req::Any
        );
        assert_eq!(
            planned(
                "permit(principal, action, resource) when { context.ok || principal in resource };"
            ),
            Req::Any
        );
        assert_eq!(
            planned("permit(principal, action, resource) when { false };"),
            Req::Never
        );
    }

    #[test]
    fn relations_in_conditions_become_links() {
        let owner = Req::link(Link::Rel {
            op: RelOp::Eq,
            sub: path(Var::Resource, &["owner"]),
            sup: path(Var::Principal, &[]),
        });
        assert_eq!(
            planned("permit(principal, action, resource) when { resource.owner == principal };"),
            owner
        );
        let req = planned(
            r#"permit(principal is User, action, resource)
               when { principal.hasTag(resource.key) || principal in [resource.a, resource.b] };"#,
        );
        let Req::And(parts) = req else {
            panic!("{req:?}")
        };
        assert!(parts.contains(&Req::link(Link::Is {
            var: Var::Principal,
            ty: "User".parse().unwrap()
        })));
        let Some(Req::Or(alts)) = parts.iter().find(|p| matches!(p, Req::Or(_))) else {
            panic!("{parts:?}")
        };
        assert_eq!(alts.len(), 3);
        assert!(alts.contains(&Req::link(Link::Tag {
            holder: path(Var::Principal, &[]),
            key: path(Var::Resource, &["key"]),
        })));
    }

    #[test]
    fn get_tag_needs_the_tag_even_under_in() {
        let req = planned(
            r#"permit(principal, action, resource)
               when { action in principal.getTag(resource.key).grants };"#,
        );
        let tag = Req::link(Link::Tag {
            holder: path(Var::Principal, &[]),
            key: path(Var::Resource, &["key"]),
        });
        let role_grants = Req::link(Link::Rel {
            op: RelOp::In,
            sub: Term::Action,
            sup: Term::Attr(
                Box::new(Term::Tag(
                    Box::new(path(Var::Principal, &[])),
                    Box::new(path(Var::Resource, &["key"])),
                )),
                vec!["grants".to_string()],
            ),
        });
        assert_eq!(req, Req::And(vec![tag, role_grants]));
        assert!(req.reads_action());
    }

    #[test]
    fn the_action_relates_to_attributes_of_variables_and_literals() {
        let req = planned(
            r#"permit(principal, action, resource)
               when { action in resource.defaultRole.grants || action in Role::"c".grants };"#,
        );
        let default_role = Req::link(Link::Rel {
            op: RelOp::In,
            sub: Term::Action,
            sup: path(Var::Resource, &["defaultRole", "grants"]),
        });
        let literal = Req::link(Link::Rel {
            op: RelOp::In,
            sub: Term::Action,
            sup: Term::Attr(
                Box::new(Term::Entity(r#"Role::"c""#.parse().unwrap())),
                vec!["grants".to_string()],
            ),
        });
        assert_eq!(req, Req::Or(vec![default_role, literal]));
        assert!(req.reads_action());
        assert!(
            !planned("permit(principal, action, resource) when { principal in resource.org };")
                .reads_action()
        );
    }
}

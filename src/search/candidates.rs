//! Candidate generation: from a policy's necessary condition ([`Req`]) and
//! one known side of the request, a superset of the entities of the other
//! side that could satisfy the policy.
//!
//! `generate` answers with [`Cand::All`] (the index cannot narrow it down)
//! or with a sorted list of stored entities of the wanted type. For a
//! conjunction it generates from its most selective part only and *checks*
//! each candidate against the other parts (`check`, which answers `false`
//! only when the part surely fails): the cost follows the small set, never
//! the large ones such as "every workspace whose default role grants
//! `see_flows`".

use cedar_policy::{EntityTypeName, EntityUid, EvalResult};

use super::source::{Source, Target};
use crate::search_index::plan::{Link, RelOp, Req, Term, Var};

/// Candidates of the unknown side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cand<Id> {
    All,
    /// Sorted, unique ids of stored entities of the wanted type.
    Some(Vec<Id>),
}

/// What is known and what is searched.
pub(crate) struct Ctx<'a, S: Source> {
    pub facts: &'a S,
    pub known_var: Var,
    pub known: &'a EntityUid,
    /// The request's action (the value of `action` in a condition).
    pub action: &'a EntityUid,
    pub unknown_type: &'a EntityTypeName,
}

/// A value of a term, as far as the index cares.
#[derive(Debug, Clone)]
enum Val {
    /// Evaluating the term is an error (a missing attribute or entity).
    Fail,
    Entity(EntityUid),
    Str(String),
    Set(Vec<Val>),
    /// Anything else (numbers, records, extension values).
    Other,
}

impl<S: Source> Ctx<'_, S> {
    fn unknown_var(&self) -> Var {
        match self.known_var {
            Var::Principal => Var::Resource,
            Var::Resource => Var::Principal,
        }
    }

    fn depends_on_unknown(&self, t: &Term) -> bool {
        t.mentions(self.unknown_var())
    }

    /// Candidates for `req`.
    pub(crate) fn generate(&self, req: &Req) -> Cand<S::Id> {
        match req {
            Req::Any => Cand::All,
            Req::Never => Cand::Some(Vec::new()),
            Req::Link(link) => self.generate_link(link),
            Req::Or(alts) => {
                let mut out = Vec::new();
                for alt in alts {
                    match self.generate(alt) {
                        Cand::All => return Cand::All,
                        Cand::Some(ids) => out.extend(ids),
                    }
                }
                out.sort_unstable();
                out.dedup();
                Cand::Some(out)
            }
            Req::And(parts) => {
                // Parts about the known side alone are cheap filters: a
                // failing one empties the conjunction.
                for p in parts {
                    if !self.mentions_unknown(p) && !self.check(p, None) {
                        return Cand::Some(Vec::new());
                    }
                }
                let mut order: Vec<&Req> =
                    parts.iter().filter(|p| self.mentions_unknown(p)).collect();
                order.sort_by_key(|p| self.priority(p));
                for (i, p) in order.iter().enumerate() {
                    if let Cand::Some(mut ids) = self.generate(p) {
                        let rest: Vec<&&Req> = order
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| *j != i)
                            .map(|(_, r)| r)
                            .collect();
                        ids.retain(|id| {
                            let uid = self.facts.uid(id);
                            rest.iter().all(|r| self.check(r, Some(&uid)))
                        });
                        return Cand::Some(ids);
                    }
                }
                Cand::All
            }
        }
    }

    fn mentions_unknown(&self, req: &Req) -> bool {
        match req {
            Req::Any | Req::Never => false,
            Req::And(parts) | Req::Or(parts) => parts.iter().any(|p| self.mentions_unknown(p)),
            Req::Link(link) => self.link_mentions_unknown(link),
        }
    }

    fn link_mentions_unknown(&self, link: &Link) -> bool {
        match link {
            Link::Is { var, .. } => *var == self.unknown_var(),
            Link::Rel { sub, sup, .. } => {
                self.depends_on_unknown(sub) || self.depends_on_unknown(sup)
            }
            Link::Tag { holder, key } => {
                self.depends_on_unknown(holder) || self.depends_on_unknown(key)
            }
        }
    }

    /// Which part of a conjunction to generate from: lower first. A link
    /// relating the unknown side to the known one names few entities; a
    /// link to a literal may name a whole class of them.
    fn priority(&self, req: &Req) -> u8 {
        match req {
            Req::Never => 0,
            Req::Any => 9,
            Req::Link(link) => self.link_priority(link),
            Req::And(parts) => parts.iter().map(|p| self.priority(p)).min().unwrap_or(9),
            Req::Or(alts) => alts.iter().map(|p| self.priority(p)).max().unwrap_or(0),
        }
    }

    fn link_priority(&self, link: &Link) -> u8 {
        match link {
            Link::Is { .. } => 8,
            Link::Rel { op, sub, sup } => {
                let (u, other) = if self.depends_on_unknown(sub) {
                    (sub, sup)
                } else {
                    (sup, sub)
                };
                match (u, other.is_literal(), op) {
                    (Term::Path(..), false, _) => 1,
                    (Term::Path(_, p), true, RelOp::Eq) if p.is_empty() => 1,
                    (Term::Path(..), true, _) => 5,
                    // A tag's value is only checked, never generated from.
                    _ => 9,
                }
            }
            Link::Tag { holder, key } => {
                let other = if self.depends_on_unknown(holder) {
                    key
                } else {
                    holder
                };
                if other.is_literal() { 5 } else { 2 }
            }
        }
    }

    /// Could `req` hold with the unknown side bound to `candidate`? (With
    /// `None`, only parts that do not mention the unknown side are judged.)
    /// `false` only when it surely cannot.
    pub(crate) fn check(&self, req: &Req, candidate: Option<&EntityUid>) -> bool {
        match req {
            Req::Any => true,
            Req::Never => false,
            Req::And(parts) => parts.iter().all(|p| self.check(p, candidate)),
            Req::Or(alts) => alts.iter().any(|p| self.check(p, candidate)),
            Req::Link(link) => self.check_link(link, candidate),
        }
    }

    /// The value of `t` with the unknown side bound to `candidate`: `None`
    /// when it cannot be known (the candidate is needed and not given, or
    /// the value is one the index does not model).
    fn value(&self, t: &Term, candidate: Option<&EntityUid>) -> Option<Val> {
        match t {
            Term::Entity(e) => Some(Val::Entity(e.clone())),
            Term::Str(s) => Some(Val::Str(s.clone())),
            Term::Action => Some(Val::Entity(self.action.clone())),
            Term::Attr(of, path) => match self.value(of, candidate)? {
                Val::Entity(e) => Some(self.follow(&e, path)),
                // A record (or an extension value) is not modelled.
                Val::Other => None,
                // Attributes of a string or a set, or of an error: an error.
                Val::Fail | Val::Str(_) | Val::Set(_) => Some(Val::Fail),
            },
            Term::Path(var, path) => {
                let root = if *var == self.known_var {
                    self.known
                } else {
                    candidate?
                };
                Some(self.follow(root, path))
            }
            Term::Tag(holder, key) => {
                let (holder, key) = (self.value(holder, candidate)?, self.value(key, candidate)?);
                // Cedar's `getTag` errors on a missing entity or tag and on
                // operands of the wrong type.
                Some(match (holder, key) {
                    (Val::Entity(h), Val::Str(k)) => match self.facts.tag(&h, &k) {
                        Some(v) => to_val(&v),
                        None => Val::Fail,
                    },
                    _ => Val::Fail,
                })
            }
        }
    }

    /// Evaluate `root.path` as Cedar would, against the stored facts.
    fn follow(&self, root: &EntityUid, path: &[String]) -> Val {
        let mut cur = EvalResult::EntityUid(root.clone());
        for attr in path {
            cur = match cur {
                EvalResult::EntityUid(uid) => match self.facts.attr(&uid, attr) {
                    Some(v) => v,
                    None => return Val::Fail,
                },
                EvalResult::Record(r) => match r.get(attr) {
                    Some(v) => v.clone(),
                    None => return Val::Fail,
                },
                _ => return Val::Fail,
            };
        }
        to_val(&cur)
    }

    fn check_link(&self, link: &Link, candidate: Option<&EntityUid>) -> bool {
        match link {
            Link::Is { var, ty } => {
                let uid = if *var == self.known_var {
                    Some(self.known)
                } else {
                    candidate
                };
                match uid {
                    Some(uid) => uid.type_name() == ty,
                    None => *ty == *self.unknown_type,
                }
            }
            Link::Rel { op, sub, sup } => {
                let (Some(a), Some(b)) = (self.value(sub, candidate), self.value(sup, candidate))
                else {
                    return true;
                };
                match (op, a, b) {
                    (_, Val::Fail, _) | (_, _, Val::Fail) => false,
                    (RelOp::In, Val::Entity(e), Val::Entity(s)) => self.is_in(&e, &[s]),
                    (RelOp::In, Val::Entity(e), Val::Set(items)) => {
                        let sups: Vec<EntityUid> = items
                            .into_iter()
                            .filter_map(|v| match v {
                                Val::Entity(s) => Some(s),
                                _ => None,
                            })
                            .collect();
                        self.is_in(&e, &sups)
                    }
                    (RelOp::Eq, Val::Entity(x), Val::Entity(y)) => x == y,
                    (RelOp::Eq, Val::Str(x), Val::Str(y)) => x == y,
                    (RelOp::Eq, Val::Entity(_), Val::Str(_))
                    | (RelOp::Eq, Val::Str(_), Val::Entity(_)) => false,
                    (RelOp::Member, x @ (Val::Entity(_) | Val::Str(_)), Val::Set(items)) => {
                        items.iter().any(|i| same(i, &x))
                    }
                    _ => true,
                }
            }
            Link::Tag { holder, key } => {
                let (Some(h), Some(k)) =
                    (self.value(holder, candidate), self.value(key, candidate))
                else {
                    return true;
                };
                match (h, k) {
                    (Val::Entity(h), Val::Str(k)) => self.facts.tag(&h, &k).is_some(),
                    (Val::Fail, _) | (_, Val::Fail) => false,
                    _ => true,
                }
            }
        }
    }

    /// `e in any of sups`, as Cedar decides it on the stored hierarchy.
    fn is_in(&self, e: &EntityUid, sups: &[EntityUid]) -> bool {
        self.facts.is_in(e, sups)
    }

    fn targets(&self, vals: impl IntoIterator<Item = Val>) -> Vec<Target<S::Id>> {
        vals.into_iter()
            .filter_map(|v| match v {
                Val::Entity(u) => self.facts.id(&u).map(Target::Entity),
                Val::Str(s) => Some(Target::Str(s)),
                _ => None,
            })
            .collect()
    }

    fn entity_targets(&self, ids: impl IntoIterator<Item = S::Id>) -> Vec<Target<S::Id>> {
        ids.into_iter().map(Target::Entity).collect()
    }

    /// Keep the stored entities of the wanted type.
    fn of_type(&self, ids: Vec<S::Id>) -> Cand<S::Id> {
        let mut ids: Vec<S::Id> = ids
            .into_iter()
            .filter(|i| self.facts.is_stored_of_type(i, self.unknown_type))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Cand::Some(ids)
    }

    fn generate_link(&self, link: &Link) -> Cand<S::Id> {
        if !self.link_mentions_unknown(link) {
            return if self.check_link(link, None) {
                Cand::All
            } else {
                Cand::Some(Vec::new())
            };
        }
        match link {
            Link::Is { ty, .. } => {
                if ty == self.unknown_type {
                    Cand::All
                } else {
                    Cand::Some(Vec::new())
                }
            }
            Link::Rel { op, sub, sup } => {
                let unknown_is_sub = self.depends_on_unknown(sub);
                let (u, other) = if unknown_is_sub {
                    (sub, sup)
                } else {
                    (sup, sub)
                };
                if self.depends_on_unknown(other) {
                    return Cand::All;
                }
                let Term::Path(_, path) = u else {
                    return Cand::All;
                };
                let Some(known) = self.value(other, None) else {
                    return Cand::All;
                };
                let targets = match (op, unknown_is_sub, known) {
                    (_, _, Val::Fail) => return Cand::Some(Vec::new()),
                    // u in known: u is a known entity or below one.
                    (RelOp::In, true, Val::Entity(s)) => self.with_descendants(&[s]),
                    (RelOp::In, true, Val::Set(items)) => {
                        let sups: Vec<EntityUid> = items
                            .into_iter()
                            .filter_map(|v| match v {
                                Val::Entity(s) => Some(s),
                                _ => None,
                            })
                            .collect();
                        self.with_descendants(&sups)
                    }
                    // known in u: u holds the known entity or an ancestor of it.
                    (RelOp::In, false, Val::Entity(e)) => self.with_ancestors(&e),
                    (RelOp::In, _, Val::Str(_)) => return Cand::Some(Vec::new()),
                    (RelOp::Eq, _, v @ (Val::Entity(_) | Val::Str(_))) => self.targets([v]),
                    // u.contains(known) or u == an element of known.
                    (RelOp::Member, false, v @ (Val::Entity(_) | Val::Str(_))) => self.targets([v]),
                    (RelOp::Member, true, Val::Set(items)) => self.targets(items),
                    _ => return Cand::All,
                };
                self.of_type(self.facts.walk_back(&targets, path))
            }
            Link::Tag { holder, key } => {
                let unknown_holds = self.depends_on_unknown(holder);
                let (u, other) = if unknown_holds {
                    (holder, key)
                } else {
                    (key, holder)
                };
                if self.depends_on_unknown(other) {
                    return Cand::All;
                }
                let Term::Path(_, path) = u else {
                    return Cand::All;
                };
                let Some(known) = self.value(other, None) else {
                    return Cand::All;
                };
                let targets = match (unknown_holds, known) {
                    (_, Val::Fail) => return Cand::Some(Vec::new()),
                    (true, Val::Str(k)) => self.entity_targets(self.facts.tag_holders(&k)),
                    (false, Val::Entity(h)) => {
                        let keys: Vec<Val> =
                            self.facts.tag_keys(&h).into_iter().map(Val::Str).collect();
                        self.targets(keys)
                    }
                    (true, Val::Entity(_)) | (false, Val::Str(_)) => return Cand::Some(Vec::new()),
                    _ => return Cand::All,
                };
                self.of_type(self.facts.walk_back(&targets, path))
            }
        }
    }

    fn with_descendants(&self, sups: &[EntityUid]) -> Vec<Target<S::Id>> {
        let mut out = Vec::new();
        for s in sups {
            if let Some(id) = self.facts.id(s) {
                out.extend(self.facts.descendants(&id).into_iter().map(Target::Entity));
                out.push(Target::Entity(id));
            }
        }
        out
    }

    fn with_ancestors(&self, e: &EntityUid) -> Vec<Target<S::Id>> {
        let mut out: Vec<Target<S::Id>> =
            self.facts.id(e).map(Target::Entity).into_iter().collect();
        out.extend(
            self.facts
                .ancestors(e)
                .iter()
                .filter_map(|a| self.facts.id(a))
                .map(Target::Entity),
        );
        out
    }
}

fn to_val(v: &EvalResult) -> Val {
    match v {
        EvalResult::EntityUid(u) => Val::Entity(u.clone()),
        EvalResult::String(s) => Val::Str(s.clone()),
        EvalResult::Set(items) => Val::Set(items.iter().map(to_val).collect()),
        _ => Val::Other,
    }
}

fn same(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Entity(x), Val::Entity(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        _ => false,
    }
}

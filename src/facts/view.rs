//! The fact view: every entity at one revision, immutable, with its closed
//! ancestors and the indexes that let a batch be validated and applied in
//! proportion to its size.
//!
//! The maps are `imbl`'s persistent hash maps: deriving revision N+1 from N
//! copies only the paths to the changed entries (a clone is O(1), an insert
//! O(log n)), so readers keep deciding on N while N+1 is built, and the old
//! view is dropped when its last reader is done. A copy-on-write map of
//! `Arc` shards would give the same sharing at a coarser grain; a persistent
//! map gives it per entry with no tuning.
//!
//! Each entity is one `Arc<ast::Entity>` (Cedar's own representation): its
//! attributes, tags, direct parents, and, as Cedar's "indirect ancestors",
//! the rest of its transitively closed ancestor set, so that a
//! request-scoped slice can share it as it is ([`crate::facts::slice`]).
//!
//! Semantics, as a fresh load of [`FactView::to_json`] gives them:
//! * an entity's ancestors are its parents and, for each parent that
//!   exists, that parent's ancestors (a parent need not exist: Cedar allows
//!   dangling references, and so does the view);
//! * deleting an entity removes its data; references to it (parents,
//!   attributes, tags of others) stay as written, and the schema and domain
//!   checks then decide whether the result is acceptable (the domain
//!   forbids, for example, a tag naming a workspace that no longer exists);
//! * a batch that would give a world a load refuses is refused whole.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use cedar_policy::{Entity, EntityUid};
use cedar_policy_core::ast::{self, EntityUID, Literal, PartialValue, ValueKind};
use imbl::HashMap as PMap;
use serde::Serialize;
use serde_json::{Value, json};
use smol_str::SmolStr;

use super::Model;
use super::check::{self, DomainIndex, Lookup, reindex};
use super::ops::{Batch, Op};
use super::parse;
use super::uidset::SmallSet as PSet;

/// One entity at a revision.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its data, with its closed ancestors (parents and indirect ancestors).
    pub entity: Arc<ast::Entity>,
    /// The revision that last changed its data or its closed ancestors.
    pub rev: u64,
}

/// Why a batch (or a set of entities) was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Rejection {
    /// `invalid_batch`, `revision_mismatch`, `invalid_reference`,
    /// `not_found`, `invalid_entity` (schema), `cycle`, `domain`.
    pub code: &'static str,
    /// Where: `operations[3].parent`, `items[12]`.
    pub field: String,
    /// The domain rule broken (`R5`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        let rule = rule_of(&message);
        Rejection {
            code,
            field: field.into(),
            rule,
            message,
        }
    }
}

/// `R5` of a message that starts `R5: ...`.
fn rule_of(message: &str) -> Option<String> {
    let (head, _) = message.split_once(':')?;
    (head.len() >= 2 && head.starts_with('R') && head[1..].bytes().all(|b| b.is_ascii_digit()))
        .then(|| head.to_string())
}

/// What a batch changed, for a store to persist and for caches to drop.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The revision the batch produced.
    pub revision: u64,
    /// Entities whose data changed or that are new, each as entity JSON
    /// (uid, attrs, direct parents, tags): what an entity file holds.
    pub upserted: Vec<(EntityUid, Value)>,
    /// Entities whose only change is to some of their tags (not in
    /// `upserted`): `(entity, key, new value)` per changed tag, `None` for a
    /// removed one, values in Cedar's JSON value format.
    pub tags: Vec<(EntityUid, SmolStr, Option<Value>)>,
    /// Entities deleted.
    pub deleted: Vec<EntityUid>,
    /// Every entity whose data or closed ancestors changed (including the
    /// upserted and deleted ones): decisions that read them may change.
    pub changed: Vec<EntityUid>,
}

/// An immutable view of the facts at one revision.
#[derive(Debug, Clone, Default)]
pub struct FactView {
    revision: u64,
    pub(super) nodes: PMap<EntityUID, Node>,
    /// Parent -> the entities that name it as a direct parent (whether it
    /// exists or not).
    pub(super) children: PMap<EntityUID, PSet<EntityUID>>,
    /// Entity -> the entities whose attributes or tags name it.
    pub(super) referrers: PMap<EntityUID, PSet<EntityUID>>,
    /// Tag key -> the entities holding a tag with that key.
    pub(super) tag_holders: PMap<SmolStr, PSet<EntityUID>>,
    /// The domain's indexes (empty when the domain does not apply).
    pub(super) domain: DomainIndex,
}

/// The uids an entity's attributes or tags name, in `v`.
pub(super) fn collect_refs(v: &PartialValue, out: &mut HashSet<EntityUID>) {
    if let PartialValue::Value(v) = v {
        collect_value_refs(&v.value, out);
    }
}

fn collect_value_refs(v: &ValueKind, out: &mut HashSet<EntityUID>) {
    match v {
        ValueKind::Lit(Literal::EntityUID(u)) => {
            out.insert((**u).clone());
        }
        ValueKind::Set(s) => s
            .authoritative
            .iter()
            .for_each(|x| collect_value_refs(&x.value, out)),
        ValueKind::Record(r) => r.values().for_each(|x| collect_value_refs(&x.value, out)),
        _ => {}
    }
}

/// The distinct uids `e`'s attributes and tags name, in `out` (an entity
/// names few distinct entities however many tags it holds: a short list
/// deduplicated as it grows, sorted when long).
fn entity_refs<'a>(e: &'a ast::Entity, out: &mut Vec<&'a EntityUID>) {
    out.clear();
    for (_, v) in e.attrs().chain(e.tags()) {
        value_refs(v, out);
    }
    if out.len() > SHORT {
        out.sort_unstable();
        out.dedup();
    }
}

const SHORT: usize = 32;

fn value_refs<'a>(v: &'a PartialValue, out: &mut Vec<&'a EntityUID>) {
    fn walk<'a>(v: &'a ValueKind, out: &mut Vec<&'a EntityUID>) {
        match v {
            ValueKind::Lit(Literal::EntityUID(u))
                if out.len() > SHORT || !out.iter().any(|o| *o == &**u) =>
            {
                out.push(u);
            }
            ValueKind::Set(s) => s.authoritative.iter().for_each(|x| walk(&x.value, out)),
            ValueKind::Record(r) => r.values().for_each(|x| walk(&x.value, out)),
            _ => {}
        }
    }
    if let PartialValue::Value(v) = v {
        walk(&v.value, out);
    }
}

/// The entity a tag value names, when it is one entity reference.
fn named(v: &PartialValue) -> Option<&EntityUID> {
    match v {
        PartialValue::Value(v) => match &v.value {
            ValueKind::Lit(Literal::EntityUID(u)) => Some(u),
            _ => None,
        },
        PartialValue::Residual(_) => None,
    }
}

/// Do `e`'s attributes or tags name `uid`? (Stops at the first.)
fn names(e: &ast::Entity, uid: &EntityUID) -> bool {
    fn walk(v: &ValueKind, uid: &EntityUID) -> bool {
        match v {
            ValueKind::Lit(Literal::EntityUID(u)) => **u == *uid,
            ValueKind::Set(s) => s.authoritative.iter().any(|x| walk(&x.value, uid)),
            ValueKind::Record(r) => r.values().any(|x| walk(&x.value, uid)),
            _ => false,
        }
    }
    e.attrs().chain(e.tags()).any(|(_, v)| match v {
        PartialValue::Value(v) => walk(&v.value, uid),
        PartialValue::Residual(_) => false,
    })
}

fn refs_of(e: &ast::Entity) -> HashSet<EntityUID> {
    let mut out = HashSet::new();
    for (_, v) in e.attrs().chain(e.tags()) {
        collect_refs(v, &mut out);
    }
    out
}

pub(super) fn to_public(uid: &EntityUID) -> EntityUid {
    EntityUid::from(uid.clone())
}

fn uid_json(uid: &EntityUID) -> Value {
    let u = to_public(uid);
    json!({ "type": u.type_name().to_string(), "id": u.id().unescaped() })
}

/// The entity JSON of `e`: uid, attributes, direct parents, tags.
pub fn entity_json(e: &ast::Entity) -> Value {
    let mut data = e.clone();
    data.remove_all_indirect_ancestors();
    // Cedar's own serialization: explicit `__entity`/`__extn` escapes, which
    // any load reads back as the same values.
    data.to_json_value().unwrap_or_else(|_| json!({}))
}

/// The ancestors of every entity of `set` (which holds every entity below
/// any of them that exists), computed parents first from `nodes`; or a
/// member of a cycle.
fn close(
    nodes: &PMap<EntityUID, Node>,
    children: &PMap<EntityUID, PSet<EntityUID>>,
    set: &HashSet<EntityUID>,
) -> Result<HashMap<EntityUID, HashSet<EntityUID>>, EntityUID> {
    let mut indegree: HashMap<&EntityUID, usize> = HashMap::with_capacity(set.len());
    let mut queue: VecDeque<&EntityUID> = VecDeque::new();
    for uid in set {
        let Some(node) = nodes.get(uid) else { continue };
        let n = node
            .entity
            .parents()
            .filter(|p| set.contains(*p) && nodes.contains_key(*p))
            .count();
        indegree.insert(uid, n);
        if n == 0 {
            queue.push_back(uid);
        }
    }
    let mut out: HashMap<EntityUID, HashSet<EntityUID>> = HashMap::with_capacity(indegree.len());
    while let Some(uid) = queue.pop_front() {
        let node = &nodes[uid];
        let mut closure: HashSet<EntityUID> = HashSet::new();
        for p in node.entity.parents() {
            closure.insert(p.clone());
            if let Some(done) = out.get(p) {
                closure.extend(done.iter().cloned());
            } else if let Some(parent) = nodes.get(p) {
                closure.extend(parent.entity.ancestors().cloned());
            }
        }
        out.insert(uid.clone(), closure);
        if let Some(kids) = children.get(uid) {
            for c in kids {
                if let Some(d) = indegree.get_mut(c)
                    && *d > 0
                {
                    *d -= 1;
                    if *d == 0 {
                        queue.push_back(c);
                    }
                }
            }
        }
    }
    if out.len() < indegree.len() {
        let mut stuck: Vec<&EntityUID> = indegree
            .keys()
            .filter(|u| !out.contains_key(**u))
            .copied()
            .collect();
        stuck.sort_by_cached_key(|u| u.to_string());
        return Err(stuck[0].clone());
    }
    Ok(out)
}

/// `e` with `closure` as its ancestors (its parents kept).
fn with_closure(e: &ast::Entity, closure: &HashSet<EntityUID>) -> ast::Entity {
    let mut out = e.clone();
    out.remove_all_indirect_ancestors();
    for a in closure {
        if !out.is_child_of(a) {
            out.add_indirect_ancestor(a.clone());
        }
    }
    out
}

fn same_closure(e: &ast::Entity, closure: &HashSet<EntityUID>) -> bool {
    let mine: HashSet<&EntityUID> = e.ancestors().collect();
    mine.len() == closure.len() && closure.iter().all(|a| mine.contains(a))
}

impl Lookup for FactView {
    fn entity(&self, uid: &EntityUID) -> Option<&ast::Entity> {
        self.nodes.get(uid).map(|n| &*n.entity)
    }

    fn children(&self, uid: &EntityUID) -> Option<&PSet<EntityUID>> {
        self.children.get(uid)
    }

    fn referrers(&self, uid: &EntityUID) -> Option<&PSet<EntityUID>> {
        self.referrers.get(uid)
    }

    fn tag_holders(&self, key: &str) -> Option<&PSet<EntityUID>> {
        self.tag_holders.get(key)
    }

    fn domain(&self) -> &DomainIndex {
        &self.domain
    }
}

impl FactView {
    /// The principal holding the API key `key` in these facts, through the
    /// domain's digest index (kept with every write, never rebuilt): none
    /// when no principal or several declare its digest, or outside the
    /// domain.
    pub fn key_holder(&self, key: &str) -> Option<EntityUid> {
        if key.is_empty() || key.len() > crate::gateway::keys::MAX_KEY_BYTES {
            return None;
        }
        let digest = crate::gateway::keys::digest_hex(key);
        self.domain.digest_holder(&digest).map(to_public)
    }

    /// The revision of the view.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The same facts, said to be at `revision` (a store resuming).
    pub fn at_revision(mut self, revision: u64) -> Self {
        self.revision = revision;
        // A mutable walk copies every shared node: only when one is ahead.
        if self.nodes.values().any(|n| n.rev > revision) {
            for (_, node) in self.nodes.iter_mut() {
                node.rev = node.rev.min(revision);
            }
        }
        self
    }

    /// The same facts, each entity in `revs` said to be last changed at its
    /// revision there (a store's rows; at most the view's revision).
    pub fn with_revisions(mut self, revs: impl IntoIterator<Item = (EntityUid, u64)>) -> Self {
        let top = self.revision;
        for (uid, rev) in revs {
            if let Some(node) = self.nodes.get_mut(uid.as_ref()) {
                node.rev = rev.min(top);
            }
        }
        self
    }

    /// Whether `other` holds the same indexes (children, referrers, tag
    /// holders, the domain's): a view updated batch by batch against one
    /// built from its facts (the tests' check of the incremental updates).
    pub fn same_indexes(&self, other: &FactView) -> bool {
        self.children == other.children
            && self.referrers == other.referrers
            && self.tag_holders == other.tag_holders
            && self.domain == other.domain
    }

    /// Number of (non-action) entities.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// An entity, with its closed ancestors and its revision.
    pub fn get(&self, uid: &EntityUid) -> Option<&Node> {
        self.nodes.get(uid.as_ref())
    }

    pub(super) fn node(&self, uid: &EntityUID) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// An entity as entity JSON (direct parents), and the revision that last
    /// changed it.
    pub fn entity_json(&self, uid: &EntityUid) -> Option<(Value, u64)> {
        self.get(uid).map(|n| (entity_json(&n.entity), n.rev))
    }

    /// Every entity as entity JSON, sorted by uid: what an export writes.
    pub fn to_json(&self) -> Vec<Value> {
        let mut all: Vec<(String, &Node)> =
            self.nodes.iter().map(|(u, n)| (u.to_string(), n)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter()
            .map(|(_, n)| entity_json(&n.entity))
            .collect()
    }

    /// Every uid, in no particular order.
    pub fn uids(&self) -> impl Iterator<Item = EntityUid> + '_ {
        self.nodes.keys().map(to_public)
    }

    /// The view of `items` (entity JSON values, as an entity file or a store
    /// holds them), checked exactly as a load checks entity files: each item
    /// against the schema, no duplicate uids, no cycles, and the domain's
    /// checks when they apply. Action items are checked against the schema
    /// and left out, as the loader does. On error, every error found (each
    /// naming its item), as far as the first failing stage.
    pub fn from_json(model: &Model, items: Vec<Value>) -> Result<FactView, Vec<Rejection>> {
        Self::from_items(model, items, Ok)
    }

    /// [`FactView::from_json`] of items as JSON text (a store's rows): each
    /// parsed on a worker thread and dropped once it is an entity, so that
    /// the whole world is never held as JSON values.
    pub fn from_texts(model: &Model, items: Vec<String>) -> Result<FactView, Vec<Rejection>> {
        Self::from_items(model, items, |text| {
            serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
        })
    }

    fn from_items<T: Send>(
        model: &Model,
        items: Vec<T>,
        json: impl Fn(T) -> Result<Value, String> + Sync,
    ) -> Result<FactView, Vec<Rejection>> {
        let parsed = parse_items(model, items, &json);
        let mut errors = Vec::new();
        let mut entities: Vec<(usize, ast::Entity)> = Vec::with_capacity(parsed.len());
        for (i, item) in parsed.into_iter().enumerate() {
            match item {
                Ok(Some(e)) => entities.push((i, e)),
                Ok(None) => {}
                Err(r) => errors.push(r),
            }
        }
        let mut nodes: HashMap<EntityUID, Node> = HashMap::with_capacity(entities.len());
        for (i, e) in entities {
            let uid = e.uid().clone();
            if nodes.contains_key(&uid) {
                errors.push(Rejection::new(
                    "invalid_entity",
                    format!("items[{i}]"),
                    format!("duplicate entity {uid}"),
                ));
                continue;
            }
            nodes.insert(
                uid,
                Node {
                    entity: Arc::new(e),
                    rev: 0,
                },
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut view = FactView::default();
        // Two threads: tag holders (one entry per membership) beside the
        // rest. Each entity names a parent or holds a key once, so lists
        // need no dedup.
        let (holders, (children, referrers, domain)) = std::thread::scope(|s| {
            let holders = s.spawn(|| {
                let mut holders: HashMap<SmolStr, Vec<EntityUID>> = HashMap::new();
                for (uid, node) in &nodes {
                    for k in node.entity.tag_keys() {
                        holders.entry(k.clone()).or_default().push(uid.clone());
                    }
                }
                holders
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect::<PSet<_>>()))
                    .collect::<PMap<_, _>>()
            });
            let mut children: HashMap<EntityUID, Vec<EntityUID>> = HashMap::new();
            let mut referrers: HashMap<EntityUID, Vec<EntityUID>> = HashMap::new();
            let mut domain = DomainIndex::default();
            let mut refs: Vec<&EntityUID> = Vec::new();
            for (uid, node) in &nodes {
                for p in node.entity.parents() {
                    children.entry(p.clone()).or_default().push(uid.clone());
                }
                entity_refs(&node.entity, &mut refs);
                for r in &refs {
                    referrers.entry((*r).clone()).or_default().push(uid.clone());
                }
                if model.domain {
                    domain.update(uid, None, Some(&node.entity));
                }
            }
            let pmap = |m: HashMap<EntityUID, Vec<EntityUID>>| -> PMap<EntityUID, PSet<EntityUID>> {
                m.into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect()
            };
            let rest = (pmap(children), pmap(referrers), domain);
            let holders = holders
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (holders, rest)
        });
        let all: HashSet<EntityUID> = nodes.keys().cloned().collect();
        view.nodes = nodes.into_iter().collect();
        view.children = children;
        view.referrers = referrers;
        view.tag_holders = holders;
        view.domain = domain;
        let closures = close(&view.nodes, &view.children, &all).map_err(|member| {
            vec![Rejection::new(
                "cycle",
                "items",
                format!("the entity hierarchy has a cycle through {member}"),
            )]
        })?;
        for (uid, closure) in closures {
            if let Some(node) = view.nodes.get_mut(&uid)
                && !same_closure(&node.entity, &closure)
            {
                node.entity = Arc::new(with_closure(&node.entity, &closure));
            }
        }
        if model.domain {
            let found = check_all(&view, &all);
            if !found.is_empty() {
                let mut found: Vec<Rejection> = found
                    .into_iter()
                    .map(|(uid, message)| Rejection::new("domain", uid.to_string(), message))
                    .collect();
                found.sort_by(|a, b| (&a.field, &a.message).cmp(&(&b.field, &b.message)));
                return Err(found);
            }
        }
        Ok(view)
    }

    /// The same facts checked anew against `model` (a reloaded schema),
    /// exactly as a load of [`FactView::to_json`] checks them, at the same
    /// revision and with each entity's revision kept. On error, every error
    /// found, each naming its entity (parse errors name `items[i]`, the
    /// position in [`FactView::to_json`]).
    pub fn revalidated(&self, model: &Model) -> Result<FactView, Vec<Rejection>> {
        let mut view = FactView::from_json(model, self.to_json())?;
        view.revision = self.revision;
        for (uid, node) in view.nodes.iter_mut() {
            node.rev = self.nodes.get(uid).map_or(self.revision, |n| n.rev);
        }
        Ok(view)
    }

    /// Apply a batch: the next view and what changed, or why nothing did.
    /// The batch is validated as a load would validate the world it gives:
    /// the schema for every entity it changes, cycles, and the domain's
    /// checks for every entity it affects.
    pub fn apply(&self, model: &Model, batch: &Batch) -> Result<(FactView, Applied), Rejection> {
        if let Some(expected) = batch.if_revision
            && expected != self.revision
        {
            return Err(Rejection::new(
                "revision_mismatch",
                "if_revision",
                format!(
                    "the facts are at revision {}, not {expected}",
                    self.revision
                ),
            ));
        }
        if let Some(done) = self.apply_tags(model, batch) {
            return done;
        }
        let mut drafts = Drafts {
            view: self,
            model,
            by_uid: HashMap::new(),
            order: Vec::new(),
        };
        for (i, op) in batch.operations.iter().enumerate() {
            drafts.apply(i, op)?;
        }
        let revision = self.revision + 1;
        let mut next = self.clone();
        next.revision = revision;
        // The entities whose data changed, with the last operation on each.
        let mut changed: Vec<(EntityUID, Option<ast::Entity>, usize)> = Vec::new();
        for uid in std::mem::take(&mut drafts.order) {
            let draft = drafts.by_uid.remove(&uid).expect("drafted");
            let last = draft.last_op;
            let new = draft.finish(model)?;
            let old = self.nodes.get(&uid).map(|n| &n.entity);
            let same = match (old, &new) {
                (None, None) => true,
                (Some(o), Some(n)) => {
                    o.parents().collect::<HashSet<_>>() == n.parents().collect::<HashSet<_>>()
                        && o.attrs().collect::<BTreeMap<_, _>>()
                            == n.attrs().collect::<BTreeMap<_, _>>()
                        && o.tags().collect::<BTreeMap<_, _>>()
                            == n.tags().collect::<BTreeMap<_, _>>()
                }
                _ => false,
            };
            if !same {
                changed.push((uid, new, last));
            }
        }
        // Data and indexes.
        let mut dirty: HashMap<EntityUID, usize> = HashMap::new();
        for (uid, new, op) in &changed {
            let old = self.nodes.get(uid).map(|n| n.entity.clone());
            let old_parents: HashSet<&EntityUID> = old.iter().flat_map(|e| e.parents()).collect();
            let new_parents: HashSet<&EntityUID> = new.iter().flat_map(|e| e.parents()).collect();
            for p in old_parents.difference(&new_parents) {
                let empty = match next.children.get_mut(*p) {
                    Some(set) => {
                        set.remove(uid);
                        set.is_empty()
                    }
                    None => false,
                };
                if empty {
                    next.children.remove(*p);
                }
            }
            for p in new_parents.difference(&old_parents) {
                next.children
                    .entry((*p).clone())
                    .or_default()
                    .insert(uid.clone());
            }
            if old.is_none() || new.is_none() || old_parents != new_parents {
                dirty.insert(uid.clone(), *op);
            }
            let old_refs = old.as_deref().map(refs_of).unwrap_or_default();
            let new_refs = new.as_ref().map(refs_of).unwrap_or_default();
            reindex(&mut next.referrers, uid, &old_refs, &new_refs);
            let keys = |e: Option<&ast::Entity>| -> HashSet<SmolStr> {
                e.map(|e| e.tag_keys().cloned().collect())
                    .unwrap_or_default()
            };
            reindex(
                &mut next.tag_holders,
                uid,
                &keys(old.as_deref()),
                &keys(new.as_ref()),
            );
            if model.domain {
                next.domain.update(uid, old.as_deref(), new.as_ref());
            }
            match new {
                None => {
                    next.nodes.remove(uid);
                }
                Some(e) => {
                    // Its closed ancestors as they were, unless recomputed below.
                    let closure: HashSet<EntityUID> = match &old {
                        Some(o) if !dirty.contains_key(uid) => o.ancestors().cloned().collect(),
                        _ => e.parents().cloned().collect(),
                    };
                    next.nodes.insert(
                        uid.clone(),
                        Node {
                            entity: Arc::new(with_closure(e, &closure)),
                            rev: revision,
                        },
                    );
                }
            }
        }
        // Closed ancestors: the entities whose parents or existence changed,
        // and every entity below them.
        let mut below: HashMap<EntityUID, usize> = HashMap::new();
        let mut queue: VecDeque<(EntityUID, usize)> =
            dirty.iter().map(|(u, op)| (u.clone(), *op)).collect();
        while let Some((uid, op)) = queue.pop_front() {
            if below.contains_key(&uid) {
                continue;
            }
            below.insert(uid.clone(), op);
            if let Some(kids) = next.children.get(&uid) {
                for k in kids {
                    if !below.contains_key(k) {
                        queue.push_back((k.clone(), op));
                    }
                }
            }
        }
        let set: HashSet<EntityUID> = below.keys().cloned().collect();
        let closures = close(&next.nodes, &next.children, &set).map_err(|member| {
            let op = below.get(&member).copied().unwrap_or(0);
            Rejection::new(
                "cycle",
                op_field(batch, op),
                format!("the entity hierarchy would have a cycle through {member}"),
            )
        })?;
        let mut closure_changed: Vec<EntityUID> = Vec::new();
        for (uid, closure) in closures {
            if let Some(node) = next.nodes.get_mut(&uid)
                && !same_closure(&node.entity, &closure)
            {
                node.entity = Arc::new(with_closure(&node.entity, &closure));
                if node.rev != revision {
                    node.rev = revision;
                    closure_changed.push(uid);
                }
            }
        }
        if model.domain {
            let targets = check::targets(self, &next, &changed, &below);
            let mut found = check::check(&next, targets.keys());
            if !found.is_empty() {
                found.sort_by_cached_key(|(u, m)| (u.to_string(), m.clone()));
                let (uid, message) = found.swap_remove(0);
                let op = targets.get(&uid).copied().unwrap_or(0);
                return Err(Rejection::new("domain", op_field(batch, op), message));
            }
        }
        let mut applied = Applied {
            revision,
            ..Applied::default()
        };
        for (uid, new, _) in &changed {
            let public = to_public(uid);
            match new {
                Some(_) => {
                    let e = &next.nodes[uid].entity;
                    applied.upserted.push((public.clone(), entity_json(e)));
                }
                None => applied.deleted.push(public.clone()),
            }
            applied.changed.push(public);
        }
        applied
            .changed
            .extend(closure_changed.iter().map(to_public));
        Ok((next, applied))
    }
}

impl FactView {
    /// The view at `head`, from this one and the rows another writer
    /// committed since: `rows` are the entities written after this view's
    /// revision as they are at `head` (Cedar JSON, each with the revision
    /// that wrote it), `deleted` the uids removed. The result is validated
    /// as any batch is (schema, cycles, the domain's checks), so a sidecar
    /// whose schema no longer accepts the stored facts refuses them (and
    /// keeps this view) instead of diverging silently. Each written entity
    /// keeps its stored revision; entities whose closed ancestors changed
    /// take `head`.
    pub fn advance(
        &self,
        model: &Model,
        rows: &[(Value, u64)],
        deleted: &[String],
        head: u64,
    ) -> Result<(FactView, Applied), Rejection> {
        if head < self.revision {
            return Err(Rejection::new(
                "invalid_batch",
                "revision",
                format!(
                    "the store is at revision {head}, behind this view's {}",
                    self.revision
                ),
            ));
        }
        let mut operations: Vec<Op> = rows
            .iter()
            .map(|(entity, _)| Op::Upsert {
                entity: entity.clone(),
            })
            .collect();
        for uid in deleted {
            let known = uid
                .parse::<EntityUid>()
                .is_ok_and(|u| self.nodes.contains_key(u.as_ref()));
            if known {
                operations.push(Op::Delete {
                    uid: crate::names::EntityRef::Text(uid.clone()),
                });
            }
        }
        if operations.is_empty() {
            let mut next = self.clone();
            next.revision = head;
            return Ok((
                next,
                Applied {
                    revision: head,
                    ..Applied::default()
                },
            ));
        }
        let batch = Batch {
            operations,
            if_revision: None,
        };
        let (mut next, mut applied) = self.apply(model, &batch)?;
        let step = applied.revision;
        next.revision = head;
        applied.revision = head;
        let stored: HashMap<EntityUID, u64> = rows
            .iter()
            .filter_map(|(json, rev)| {
                let uid = json.get("uid")?;
                let uid = uid.get("__entity").unwrap_or(uid);
                let uid = EntityUid::from_json(uid.clone()).ok()?;
                Some((uid.as_ref().clone(), (*rev).min(head)))
            })
            .collect();
        for uid in &applied.changed {
            if let Some(node) = next.nodes.get_mut(uid.as_ref())
                && node.rev == step
            {
                node.rev = head;
            }
        }
        for (uid, rev) in stored {
            if let Some(node) = next.nodes.get_mut(&uid) {
                node.rev = rev;
            }
        }
        Ok((next, applied))
    }

    /// A batch of only `set_tag` and `remove_tag` operations on existing
    /// entities, applied at the cost of the tags it changes: each new value
    /// checked against the schema's tag type alone, the indexes updated for
    /// the changed keys, and only the domain rules a tag can break checked
    /// for those keys ([`check::check_tags`]). Parents, attributes and so
    /// closed ancestors and every other entity's checks are untouched. None
    /// (nothing done) when anything falls outside that (an unknown entity,
    /// a value not of the form `{"__entity": ...}`, a value the schema
    /// refuses, removing a tag that is not there): the general path then
    /// gives the answer and its error.
    fn apply_tags(
        &self,
        model: &Model,
        batch: &Batch,
    ) -> Option<Result<(FactView, Applied), Rejection>> {
        struct Edit {
            value: Option<(PartialValue, Value)>,
        }
        struct TagDraft {
            uid: EntityUID,
            base: Arc<ast::Entity>,
            edits: BTreeMap<SmolStr, Edit>,
            last_op: usize,
        }
        if batch.operations.is_empty()
            || !batch
                .operations
                .iter()
                .all(|op| matches!(op, Op::SetTag { .. } | Op::RemoveTag { .. }))
        {
            return None;
        }
        let mut drafts: Vec<TagDraft> = Vec::new();
        let mut index: HashMap<EntityUID, usize> = HashMap::new();
        for (i, op) in batch.operations.iter().enumerate() {
            let (r, key, value) = match op {
                Op::SetTag { uid, key, value } => (uid, key, Some(value)),
                Op::RemoveTag { uid, key } => (uid, key, None),
                _ => return None,
            };
            let uid: EntityUID = model.names.resolve_entity(r).ok()?.into();
            if uid.is_action() {
                return None;
            }
            let at = match index.get(&uid) {
                Some(&at) => at,
                None => {
                    let base = self.nodes.get(&uid)?.entity.clone();
                    drafts.push(TagDraft {
                        uid: uid.clone(),
                        base,
                        edits: BTreeMap::new(),
                        last_op: i,
                    });
                    index.insert(uid.clone(), drafts.len() - 1);
                    drafts.len() - 1
                }
            };
            let d = &mut drafts[at];
            d.last_op = i;
            let key = SmolStr::new(key);
            match value {
                Some(json) => {
                    let named = parse::entity_ref(json)?;
                    parse::tag_conforms(model, &d.base, &key, &named).ok()?;
                    let v = parse::ref_value(named);
                    d.edits.insert(
                        key,
                        Edit {
                            value: Some((v, json.clone())),
                        },
                    );
                }
                None => {
                    let present = match d.edits.get(&key) {
                        Some(e) => e.value.is_some(),
                        None => d.base.get_tag(&key).is_some(),
                    };
                    if !present {
                        return None;
                    }
                    d.edits.insert(key, Edit { value: None });
                }
            }
        }
        let revision = self.revision + 1;
        let mut next = self.clone();
        next.revision = revision;
        let mut applied = Applied {
            revision,
            ..Applied::default()
        };
        let mut to_check: Vec<(EntityUID, Vec<SmolStr>, usize)> = Vec::new();
        for d in drafts {
            let base = &d.base;
            let mut tags: BTreeMap<SmolStr, PartialValue> = BTreeMap::new();
            let mut changed: Vec<(SmolStr, Option<Value>)> = Vec::new();
            let mut set_keys: Vec<SmolStr> = Vec::new();
            for (k, edit) in &d.edits {
                let old = base.get_tag(k);
                match &edit.value {
                    Some((v, json)) => {
                        if old != Some(v) {
                            changed.push((k.clone(), Some(json.clone())));
                            set_keys.push(k.clone());
                        }
                    }
                    None => {
                        if old.is_some() {
                            changed.push((k.clone(), None));
                        }
                    }
                }
            }
            if changed.is_empty() {
                continue;
            }
            for (k, v) in base.tags() {
                if !d.edits.contains_key(k) {
                    tags.insert(k.clone(), v.clone());
                }
            }
            for (k, edit) in d.edits {
                if let Some((v, _)) = edit.value {
                    tags.insert(k, v);
                }
            }
            let new = Arc::new(ast::Entity::new_with_attr_partial_value(
                d.uid.clone(),
                base.attrs().map(|(k, v)| (k.clone(), v.clone())),
                base.indirect_ancestors().cloned().collect(),
                base.parents().cloned().collect(),
                tags,
            ));
            for (k, _) in &changed {
                let (was, is) = (base.get_tag(k).is_some(), new.get_tag(k).is_some());
                if was && !is {
                    let empty = match next.tag_holders.get_mut(k) {
                        Some(set) => {
                            set.remove(&d.uid);
                            set.is_empty()
                        }
                        None => false,
                    };
                    if empty {
                        next.tag_holders.remove(k);
                    }
                } else if is && !was {
                    next.tag_holders
                        .entry(k.clone())
                        .or_default()
                        .insert(d.uid.clone());
                }
            }
            // Referrers: only the entities the changed tags named before or
            // name now can enter or leave the entity's references.
            for (k, _) in &changed {
                if let Some(r) = base.get_tag(k).and_then(named)
                    && !names(&new, r)
                {
                    let empty = match next.referrers.get_mut(r) {
                        Some(set) => {
                            set.remove(&d.uid);
                            set.is_empty()
                        }
                        None => false,
                    };
                    if empty {
                        next.referrers.remove(r);
                    }
                }
                if let Some(r) = new.get_tag(k).and_then(named)
                    && !names(base, r)
                {
                    next.referrers
                        .entry(r.clone())
                        .or_default()
                        .insert(d.uid.clone());
                }
            }
            let public = to_public(&d.uid);
            for (k, v) in changed {
                applied.tags.push((public.clone(), k, v));
            }
            applied.changed.push(public);
            next.nodes.insert(
                d.uid.clone(),
                Node {
                    entity: new,
                    rev: revision,
                },
            );
            if !set_keys.is_empty() {
                to_check.push((d.uid, set_keys, d.last_op));
            }
        }
        if model.domain {
            let mut found: Vec<(EntityUID, String, usize)> = Vec::new();
            for (uid, keys, op) in &to_check {
                for (u, m) in check::check_tags(&next, uid, keys) {
                    found.push((u, m, *op));
                }
            }
            if !found.is_empty() {
                found.sort_by_cached_key(|(u, m, _)| (u.to_string(), m.clone()));
                let (_, message, op) = found.swap_remove(0);
                return Some(Err(Rejection::new("domain", op_field(batch, op), message)));
            }
        }
        Some(Ok((next, applied)))
    }
}

/// The domain's checks of every entity of `all`, on as many threads as
/// there are cores.
fn check_all(view: &FactView, all: &HashSet<EntityUID>) -> Vec<(EntityUID, String)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(all.len() / 1024 + 1);
    if threads <= 1 {
        return check::check(view, all.iter());
    }
    let uids: Vec<&EntityUID> = all.iter().collect();
    let chunk = uids.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = uids
            .chunks(chunk)
            .map(|c| s.spawn(move || check::check(view, c.iter().copied())))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The field an error about operation `i` names: the operation's main field.
fn op_field(batch: &Batch, i: usize) -> String {
    let field = match batch.operations.get(i) {
        Some(Op::Upsert { .. }) => "entity",
        Some(Op::Delete { .. }) => "uid",
        Some(Op::SetTag { .. } | Op::RemoveTag { .. }) => "key",
        Some(Op::AddParent { .. } | Op::RemoveParent { .. }) => "parent",
        Some(Op::SetAttr { .. } | Op::RemoveAttr { .. }) => "attr",
        None => return "operations".into(),
    };
    format!("operations[{i}].{field}")
}

/// Parse items on as many threads as there are cores; `Ok(None)` for an
/// action (checked against the schema, not kept).
fn parse_items<T: Send>(
    model: &Model,
    items: Vec<T>,
    json: &(impl Fn(T) -> Result<Value, String> + Sync),
) -> Vec<Result<Option<ast::Entity>, Rejection>> {
    let parse = |i: usize,
                 item: T,
                 interner: &mut parse::Interner|
     -> Result<Option<ast::Entity>, Rejection> {
        let parsed = json(item).and_then(|item| parse::entity(model, item, interner));
        match parsed {
            Ok(e) if e.uid().is_action() => Ok(None),
            Ok(e) => Ok(Some(e)),
            Err(message) => Err(Rejection::new(
                "invalid_entity",
                format!("items[{i}]"),
                message,
            )),
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len() / 256 + 1);
    if threads <= 1 {
        let mut interner = parse::Interner::default();
        return items
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse(i, v, &mut interner))
            .collect();
    }
    // Blocks dealt round-robin: entity types cluster in a store's order,
    // and their costs differ by 100x.
    const BLOCK: usize = 64;
    let mut chunks: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, v) in items.into_iter().enumerate() {
        chunks[(i / BLOCK) % threads].push((i, v));
    }
    let mut out: Vec<(usize, Result<Option<ast::Entity>, Rejection>)> = std::thread::scope(|s| {
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let mut interner = parse::Interner::default();
                    c.into_iter()
                        .map(|(i, v)| (i, parse(i, v, &mut interner)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_unstable_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The entities a batch touches, as they become operation by operation.
struct Drafts<'a> {
    view: &'a FactView,
    model: &'a Model,
    by_uid: HashMap<EntityUID, Draft>,
    /// Uids in the order first touched.
    order: Vec<EntityUID>,
}

struct Draft {
    uid: EntityUID,
    /// None: the entity does not exist (at this point of the batch).
    parts: Option<Parts>,
    last_op: usize,
}

struct Parts {
    attrs: BTreeMap<SmolStr, PartialValue>,
    /// JSON of attributes the schema accepts for the entity (for probes).
    valid_attrs: Option<Value>,
    /// Attribute edits not yet checked, and the last operation editing them.
    edited_attrs: Option<(serde_json::Map<String, Value>, usize)>,
    parents: HashSet<EntityUID>,
    tags: BTreeMap<SmolStr, PartialValue>,
}

impl Parts {
    fn of(e: &ast::Entity, valid_attrs: Option<Value>) -> Parts {
        Parts {
            attrs: e.attrs().map(|(k, v)| (k.clone(), v.clone())).collect(),
            valid_attrs,
            edited_attrs: None,
            parents: e.parents().cloned().collect(),
            tags: e.tags().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// JSON of attributes the schema accepts (the current checked ones).
    fn valid_attrs_json(&mut self, uid: &EntityUID) -> Value {
        if let Some(v) = &self.valid_attrs {
            return v.clone();
        }
        let probe = ast::Entity::new_with_attr_partial_value(
            uid.clone(),
            self.attrs.clone(),
            HashSet::new(),
            HashSet::new(),
            [],
        );
        let v = probe
            .to_json_value()
            .ok()
            .and_then(|mut v| v.get_mut("attrs").map(Value::take))
            .unwrap_or_else(|| json!({}));
        self.valid_attrs = Some(v.clone());
        v
    }
}

impl Draft {
    /// The entity the draft ends as, its attribute edits checked.
    fn finish(self, model: &Model) -> Result<Option<ast::Entity>, Rejection> {
        let Some(mut parts) = self.parts else {
            return Ok(None);
        };
        if let Some((attrs, op)) = parts.edited_attrs.take() {
            let probe = json!({ "uid": uid_json(&self.uid), "attrs": attrs, "parents": [] });
            let e = probe_entity(model, probe)
                .map_err(|m| Rejection::new("invalid_entity", format!("operations[{op}]"), m))?;
            parts.attrs = e.attrs().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        Ok(Some(ast::Entity::new_with_attr_partial_value(
            self.uid,
            parts.attrs,
            HashSet::new(),
            parts.parents,
            parts.tags,
        )))
    }
}

/// Parse an entity (or a probe holding part of one) with the schema.
fn probe_entity(model: &Model, json: Value) -> Result<ast::Entity, String> {
    match Entity::from_json_value(json.clone(), Some(&model.schema)) {
        Ok(e) => {
            let inner: &ast::Entity = e.as_ref();
            Ok(inner.clone())
        }
        Err(err) => Err(crate::domain::explain_entity_error(&json, &err)
            .unwrap_or_else(|| crate::diag::one_line(&err))),
    }
}

impl Drafts<'_> {
    fn resolve(
        &self,
        i: usize,
        field: &str,
        r: &crate::names::EntityRef,
    ) -> Result<EntityUID, Rejection> {
        let uid = self.model.names.resolve_entity(r).map_err(|e| {
            Rejection::new(
                "invalid_reference",
                format!("operations[{i}].{field}"),
                e.to_string(),
            )
        })?;
        let uid: EntityUID = uid.into();
        Ok(uid)
    }

    fn draft(&mut self, uid: &EntityUID, i: usize) -> &mut Draft {
        if !self.by_uid.contains_key(uid) {
            let parts = self.view.nodes.get(uid).map(|n| Parts::of(&n.entity, None));
            self.by_uid.insert(
                uid.clone(),
                Draft {
                    uid: uid.clone(),
                    parts,
                    last_op: i,
                },
            );
            self.order.push(uid.clone());
        }
        let d = self.by_uid.get_mut(uid).expect("inserted");
        d.last_op = i;
        d
    }

    /// The parts of an entity that must exist.
    fn existing(&mut self, i: usize, uid: &EntityUID) -> Result<&mut Parts, Rejection> {
        if uid.is_action() {
            return Err(Rejection::new(
                "invalid_entity",
                format!("operations[{i}].uid"),
                format!("{uid} is an action: actions are defined by the schema"),
            ));
        }
        let d = self.draft(uid, i);
        d.parts.as_mut().ok_or_else(|| {
            Rejection::new(
                "not_found",
                format!("operations[{i}].uid"),
                format!("no entity {uid}"),
            )
        })
    }

    fn apply(&mut self, i: usize, op: &Op) -> Result<(), Rejection> {
        let model = self.model;
        let at = |field: &str| format!("operations[{i}].{field}");
        match op {
            Op::Upsert { entity } => {
                let e = probe_entity(model, entity.clone()).map_err(|m| {
                    let field = r5_parent(entity, &m)
                        .map(|k| at(&format!("entity.parents[{k}]")))
                        .unwrap_or_else(|| at("entity"));
                    Rejection::new("invalid_entity", field, m)
                })?;
                if e.uid().is_action() {
                    return Err(Rejection::new(
                        "invalid_entity",
                        at("entity.uid"),
                        format!(
                            "{} is an action: actions are defined by the schema",
                            e.uid()
                        ),
                    ));
                }
                let uid = e.uid().clone();
                let valid = entity.get("attrs").cloned().unwrap_or_else(|| json!({}));
                let d = self.draft(&uid, i);
                d.parts = Some(Parts::of(&e, Some(valid)));
            }
            Op::Delete { uid } => {
                let uid = self.resolve(i, "uid", uid)?;
                self.existing(i, &uid)?;
                self.draft(&uid, i).parts = None;
            }
            Op::SetTag { uid, key, value } => {
                let uid = self.resolve(i, "uid", uid)?;
                let parts = self.existing(i, &uid)?;
                let attrs = parts.valid_attrs_json(&uid);
                let probe = json!({ "uid": uid_json(&uid), "attrs": attrs, "parents": [], "tags": { key.clone(): value.clone() } });
                let e = probe_entity(model, probe)
                    .map_err(|m| Rejection::new("invalid_entity", at("value"), m))?;
                let v = e.get_tag(key).cloned().ok_or_else(|| {
                    Rejection::new("invalid_entity", at("value"), "the tag was not kept")
                })?;
                parts.tags.insert(SmolStr::new(key), v);
            }
            Op::RemoveTag { uid, key } => {
                let uid = self.resolve(i, "uid", uid)?;
                let parts = self.existing(i, &uid)?;
                if parts.tags.remove(key.as_str()).is_none() {
                    return Err(Rejection::new(
                        "not_found",
                        at("key"),
                        format!("{uid} has no tag {key:?}"),
                    ));
                }
            }
            Op::AddParent { uid, parent } => {
                let uid = self.resolve(i, "uid", uid)?;
                let parent = self.resolve(i, "parent", parent)?;
                let parts = self.existing(i, &uid)?;
                if parts.parents.contains(&parent) {
                    return Ok(());
                }
                let attrs = parts.valid_attrs_json(&uid);
                let probe = json!({ "uid": uid_json(&uid), "attrs": attrs, "parents": [uid_json(&parent)] });
                probe_entity(model, probe)
                    .map_err(|m| Rejection::new("invalid_entity", at("parent"), m))?;
                parts.parents.insert(parent);
            }
            Op::RemoveParent { uid, parent } => {
                let uid = self.resolve(i, "uid", uid)?;
                let parent = self.resolve(i, "parent", parent)?;
                let parts = self.existing(i, &uid)?;
                if !parts.parents.remove(&parent) {
                    return Err(Rejection::new(
                        "not_found",
                        at("parent"),
                        format!("{parent} is not a parent of {uid}"),
                    ));
                }
            }
            Op::SetAttr { uid, attr, value } => {
                let uid = self.resolve(i, "uid", uid)?;
                let parts = self.existing(i, &uid)?;
                let mut attrs = match parts.edited_attrs.take() {
                    Some((a, _)) => a,
                    None => match parts.valid_attrs_json(&uid) {
                        Value::Object(m) => m,
                        _ => serde_json::Map::new(),
                    },
                };
                attrs.insert(attr.clone(), value.clone());
                parts.edited_attrs = Some((attrs, i));
            }
            Op::RemoveAttr { uid, attr } => {
                let uid = self.resolve(i, "uid", uid)?;
                let parts = self.existing(i, &uid)?;
                let mut attrs = match parts.edited_attrs.take() {
                    Some((a, _)) => a,
                    None => match parts.valid_attrs_json(&uid) {
                        Value::Object(m) => m,
                        _ => serde_json::Map::new(),
                    },
                };
                if attrs.remove(attr).is_none() {
                    return Err(Rejection::new(
                        "not_found",
                        at("attr"),
                        format!("{uid} has no attribute `{attr}`"),
                    ));
                }
                parts.edited_attrs = Some((attrs, i));
            }
        }
        Ok(())
    }
}

/// The index of the `OrgAdmins` parent an R5 explanation is about.
fn r5_parent(entity: &Value, message: &str) -> Option<usize> {
    if !message.starts_with("R5") {
        return None;
    }
    entity.get("parents")?.as_array()?.iter().position(|p| {
        let p = p.get("__entity").unwrap_or(p);
        p.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("::OrgAdmins"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::ops::Limits;
    use cedar_policy::Schema;

    fn model() -> Model {
        let src = r#"
            entity Group in [Group];
            entity User in [Group] = { name: String, n?: Long } tags String;
            entity Doc = { owner: User };
            action read appliesTo { principal: User, resource: Doc };
        "#;
        Model::new(&Schema::from_cedarschema_str(src).unwrap().0).unwrap()
    }

    fn view(model: &Model) -> FactView {
        FactView::from_json(
            model,
            vec![
                json!({"uid": {"type": "Group", "id": "g1"}, "attrs": {}, "parents": [{"type": "Group", "id": "g2"}]}),
                json!({"uid": {"type": "Group", "id": "g2"}, "attrs": {}, "parents": []}),
                json!({"uid": {"type": "Group", "id": "g3"}, "attrs": {}, "parents": []}),
                json!({"uid": {"type": "User", "id": "u"}, "attrs": {"name": "u"}, "parents": [{"type": "Group", "id": "g1"}], "tags": {"a": "x"}}),
                json!({"uid": {"type": "Doc", "id": "d"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u"}}}, "parents": []}),
            ],
        )
        .unwrap()
    }

    fn batch(ops: Value) -> Batch {
        Batch::from_json_value(json!({ "operations": ops }), &Limits::default()).unwrap()
    }

    fn ancestors(v: &FactView, uid: &str) -> Vec<String> {
        let uid: EntityUid = uid.parse().unwrap();
        let mut a: Vec<String> = v
            .get(&uid)
            .unwrap()
            .entity
            .ancestors()
            .map(ToString::to_string)
            .collect();
        a.sort();
        a.dedup();
        a
    }

    #[test]
    fn ancestors_follow_a_parent_change_above_and_only_what_changed_moves() {
        let m = model();
        let v = view(&m);
        assert_eq!(
            ancestors(&v, r#"User::"u""#),
            [r#"Group::"g1""#, r#"Group::"g2""#]
        );
        let (next, applied) = v
            .apply(&m, &batch(json!([{"op": "add_parent", "uid": "Group::\"g2\"", "parent": "Group::\"g3\""}])))
            .unwrap();
        assert_eq!(
            ancestors(&next, r#"User::"u""#),
            [r#"Group::"g1""#, r#"Group::"g2""#, r#"Group::"g3""#]
        );
        let mut changed: Vec<String> = applied.changed.iter().map(ToString::to_string).collect();
        changed.sort();
        assert_eq!(
            changed,
            [r#"Group::"g1""#, r#"Group::"g2""#, r#"User::"u""#]
        );
        assert_eq!(applied.upserted.len(), 1);
        let rev = |v: &FactView, u: &str| v.get(&u.parse().unwrap()).unwrap().rev;
        assert_eq!(rev(&next, r#"User::"u""#), 1);
        assert_eq!(rev(&next, r#"Doc::"d""#), 0);
        // The old view is untouched.
        assert_eq!(
            ancestors(&v, r#"User::"u""#),
            [r#"Group::"g1""#, r#"Group::"g2""#]
        );
    }

    #[test]
    fn a_deleted_parent_stays_an_ancestor_without_its_own() {
        let m = model();
        let v = view(&m);
        let (next, applied) = v
            .apply(
                &m,
                &batch(json!([{"op": "delete", "uid": "Group::\"g1\""}])),
            )
            .unwrap();
        assert_eq!(ancestors(&next, r#"User::"u""#), [r#"Group::"g1""#]);
        assert_eq!(applied.deleted.len(), 1);
        // Recreated under g3: the user's ancestors follow.
        let (again, _) = next
            .apply(&m, &batch(json!([{"op": "upsert", "entity": {"uid": {"type": "Group", "id": "g1"}, "attrs": {}, "parents": [{"type": "Group", "id": "g3"}]}}])))
            .unwrap();
        assert_eq!(
            ancestors(&again, r#"User::"u""#),
            [r#"Group::"g1""#, r#"Group::"g3""#]
        );
    }

    #[test]
    fn cycles_are_refused_naming_the_operation() {
        let m = model();
        let v = view(&m);
        let e = v
            .apply(
                &m,
                &batch(json!([
                    {"op": "add_parent", "uid": "Group::\"g3\"", "parent": "Group::\"g1\""},
                    {"op": "add_parent", "uid": "Group::\"g2\"", "parent": "Group::\"g3\""},
                ])),
            )
            .unwrap_err();
        assert_eq!(e.code, "cycle");
        assert!(e.field.starts_with("operations["), "{e}");
        let e = v
            .apply(&m, &batch(json!([{"op": "add_parent", "uid": "Group::\"g3\"", "parent": "Group::\"g3\""}])))
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("cycle", "operations[0].parent")
        );
    }

    #[test]
    fn bad_operations_name_their_field() {
        let m = model();
        let v = view(&m);
        let cases = [
            (
                json!([{"op": "set_tag", "uid": "User::\"u\"", "key": "b", "value": "y"}, {"op": "set_tag", "uid": "User::\"u\"", "key": "c", "value": 3}]),
                "invalid_entity",
                "operations[1].value",
            ),
            (
                json!([{"op": "set_attr", "uid": "User::\"u\"", "attr": "n", "value": "three"}]),
                "invalid_entity",
                "operations[0]",
            ),
            (
                json!([{"op": "remove_attr", "uid": "User::\"u\"", "attr": "name"}]),
                "invalid_entity",
                "operations[0]",
            ),
            (
                json!([{"op": "set_tag", "uid": "User::\"nobody\"", "key": "b", "value": "y"}]),
                "not_found",
                "operations[0].uid",
            ),
            (
                json!([{"op": "remove_tag", "uid": "User::\"u\"", "key": "zz"}]),
                "not_found",
                "operations[0].key",
            ),
            (
                json!([{"op": "remove_parent", "uid": "User::\"u\"", "parent": "Group::\"g3\""}]),
                "not_found",
                "operations[0].parent",
            ),
            (
                json!([{"op": "add_parent", "uid": "User::\"u\"", "parent": "Doc::\"d\""}]),
                "invalid_entity",
                "operations[0].parent",
            ),
            (
                json!([{"op": "delete", "uid": "Nope::\"x\""}]),
                "invalid_reference",
                "operations[0].uid",
            ),
            (
                json!([{"op": "delete", "uid": "Action::\"read\""}]),
                "invalid_reference",
                "operations[0].uid",
            ),
            (
                json!([{"op": "upsert", "entity": {"uid": {"type": "Doc", "id": "e"}, "attrs": {}, "parents": []}}]),
                "invalid_entity",
                "operations[0].entity",
            ),
        ];
        for (ops, code, field) in cases {
            let e = v.apply(&m, &batch(ops.clone())).unwrap_err();
            assert_eq!((e.code, e.field.as_str()), (code, field), "{ops}: {e}");
        }
        let stale = Batch {
            if_revision: Some(4),
            ..batch(json!([]))
        };
        assert_eq!(v.apply(&m, &stale).unwrap_err().code, "revision_mismatch");
    }

    #[test]
    fn edits_apply_in_order_and_the_result_reads_back() {
        let m = model();
        let v = view(&m);
        let (next, applied) = v
            .apply(
                &m,
                &batch(json!([
                    {"op": "set_attr", "uid": "User::\"u\"", "attr": "n", "value": 3},
                    {"op": "remove_attr", "uid": "User::\"u\"", "attr": "n"},
                    {"op": "set_attr", "uid": "User::\"u\"", "attr": "n", "value": 4},
                    {"op": "set_tag", "uid": "User::\"u\"", "key": "b", "value": "y"},
                    {"op": "remove_tag", "uid": "User::\"u\"", "key": "a"},
                    {"op": "remove_parent", "uid": "User::\"u\"", "parent": "Group::\"g1\""},
                    {"op": "add_parent", "uid": "User::\"u\"", "parent": "Group::\"g3\""},
                ])),
            )
            .unwrap();
        let (uid, json) = &applied.upserted[0];
        assert_eq!(uid.to_string(), r#"User::"u""#);
        let back = Entity::from_json_value(json.clone(), Some(&m.schema)).unwrap();
        assert_eq!(
            back.attr("n").unwrap().unwrap(),
            cedar_policy::EvalResult::Long(4)
        );
        assert_eq!(
            back.tag("b").unwrap().unwrap(),
            cedar_policy::EvalResult::String("y".into())
        );
        assert!(back.tag("a").is_none());
        assert_eq!(ancestors(&next, r#"User::"u""#), [r#"Group::"g3""#]);
        // A batch that changes nothing changes no entity.
        let (_, applied) = next
            .apply(
                &m,
                &batch(json!([{"op": "set_tag", "uid": "User::\"u\"", "key": "b", "value": "y"}])),
            )
            .unwrap();
        assert!(applied.changed.is_empty());
    }

    #[test]
    fn from_json_refuses_duplicates_bad_items_and_cycles() {
        let m = model();
        let g = |id: &str, p: &str| json!({"uid": {"type": "Group", "id": id}, "attrs": {}, "parents": [{"type": "Group", "id": p}]});
        let e = FactView::from_json(&m, vec![g("a", "b"), g("a", "b")]).unwrap_err();
        assert_eq!(e[0].field, "items[1]");
        let e = FactView::from_json(
            &m,
            vec![
                g("a", "b"),
                json!({"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []}),
            ],
        )
        .unwrap_err();
        assert_eq!(e[0].field, "items[1]");
        let e = FactView::from_json(&m, vec![g("a", "b"), g("b", "c"), g("c", "a")]).unwrap_err();
        assert_eq!(e[0].code, "cycle");
        assert!(FactView::from_json(&m, vec![g("a", "b"), g("b", "c")]).is_ok());
    }
}

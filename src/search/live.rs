//! Search on live facts: a [`Source`] over a [`FactView`] at one revision.
//!
//! Most relation lookups read the view's own indexes: the hierarchy
//! (children, walked down for descendants; each entity's closed
//! ancestors), the tag holders by key, and the entities themselves
//! (attributes, tags), with the schema's actions from the fact [`Model`].
//! What the view does not index is who holds a value at an attribute path
//! (`Workspace.key == "k"`, `Workspace.org == Organization::"acme"`), and
//! the entities of a type in listing order: [`LiveIndex`] holds both, in
//! persistent maps, so that a new revision of it costs the entities that
//! changed ([`LiveIndex::advance`]), never a rebuild. Candidates are
//! decided with [`crate::facts::slice::decide`] on the same view, so
//! answers are the ones a fresh load of the same facts gives (the
//! differential tests hold them to it).
//!
//! Ids are entity keys ordered by type, then id: the order of the
//! snapshot's relation index, so both list alike; a page cursor is the
//! last entity's uid.

use std::collections::{HashSet, VecDeque};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{EntityTypeName, EntityUid, EvalResult};
use cedar_policy_core::ast::{self, Literal, PartialValue, ValueKind};
use imbl::{HashMap as PMap, OrdSet};

use super::source::{Source, Target};
use crate::engine::{Outcome, Query};
use crate::facts::check::Lookup;
use crate::facts::uidset::SmallSet;
use crate::facts::{FactView, Model, SlicePlan};
use crate::snapshot::Snapshot;

/// An entity as a live search lists it: ordered by type name, then id (as
/// text), like the snapshot's relation index.
#[derive(Debug, Clone)]
pub struct Key {
    ty: Arc<str>,
    id: Arc<str>,
    uid: EntityUid,
}

impl Key {
    pub fn of(uid: &EntityUid) -> Key {
        Key {
            ty: uid.type_name().to_string().into(),
            id: uid.id().unescaped().into(),
            uid: uid.clone(),
        }
    }

    pub fn uid(&self) -> &EntityUid {
        &self.uid
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.ty == other.ty && self.id == other.id
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.ty, &self.id).cmp(&(&other.ty, &other.id))
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.ty.hash(state);
        self.id.hash(state);
    }
}

/// A value an attribute path holds, as the index keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Held {
    Entity(EntityUid),
    Str(String),
}

/// An attribute path and a value found there.
type Ref = (Vec<String>, Held);

/// Who holds which value at which attribute path, and the entities of
/// each type in order, for the facts at one revision.
#[derive(Debug, Clone, Default)]
pub struct LiveIndex {
    revision: u64,
    types: PMap<EntityTypeName, OrdSet<Key>>,
    /// Holders by value (iterated, never listed in order: most hold one
    /// or a few entities, which a small set keeps compact).
    refs: PMap<Ref, SmallSet<Key>>,
    /// What each entity was indexed under, to take it out again.
    held: PMap<EntityUid, Arc<Vec<Ref>>>,
}

/// The values an attribute holds at each path below it: record fields are
/// followed, set elements count as values of the set's path (as the
/// snapshot's relation index reads them).
fn refs_of(path: &mut Vec<String>, v: &ast::Value, out: &mut Vec<Ref>) {
    match &v.value {
        ValueKind::Lit(Literal::EntityUID(u)) => {
            out.push((path.clone(), Held::Entity(EntityUid::from((**u).clone()))))
        }
        ValueKind::Lit(Literal::String(s)) => out.push((path.clone(), Held::Str(s.to_string()))),
        ValueKind::Set(items) => {
            for item in items.iter() {
                if let ValueKind::Lit(Literal::EntityUID(_) | Literal::String(_)) = &item.value {
                    refs_of(path, item, out);
                }
            }
        }
        ValueKind::Record(fields) => {
            for (name, field) in fields.iter() {
                path.push(name.to_string());
                refs_of(path, field, out);
                path.pop();
            }
        }
        _ => {}
    }
}

impl LiveIndex {
    /// The index of every entity of `view`.
    pub fn build(view: &FactView) -> LiveIndex {
        let mut index = LiveIndex {
            revision: view.revision(),
            ..LiveIndex::default()
        };
        for uid in view.uids() {
            index.add(view, &uid);
        }
        index
    }

    /// The revision of the facts it indexes.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The index of `view`, from this one and the entities whose data
    /// changed since (every one of them: a missing one would be indexed
    /// as it was).
    pub fn advance<'a>(
        &self,
        view: &FactView,
        changed: impl IntoIterator<Item = &'a EntityUid>,
    ) -> LiveIndex {
        let mut next = self.clone();
        let mut seen: HashSet<&EntityUid> = HashSet::new();
        for uid in changed {
            if seen.insert(uid) {
                next.remove(uid);
                next.add(view, uid);
            }
        }
        next.revision = view.revision();
        next
    }

    fn add(&mut self, view: &FactView, uid: &EntityUid) {
        let Some(node) = view.get(uid) else { return };
        let key = Key::of(uid);
        let mut refs = Vec::new();
        for (name, value) in node.entity.attrs() {
            if let PartialValue::Value(v) = value {
                refs_of(&mut vec![name.to_string()], v, &mut refs);
            }
        }
        let mut unique: HashSet<Ref> = HashSet::with_capacity(refs.len());
        refs.retain(|r| unique.insert(r.clone()));
        for r in &refs {
            self.refs.entry(r.clone()).or_default().insert(key.clone());
        }
        self.held.insert(uid.clone(), Arc::new(refs));
        self.types
            .entry(uid.type_name().clone())
            .or_default()
            .insert(key);
    }

    fn remove(&mut self, uid: &EntityUid) {
        let Some(refs) = self.held.remove(uid) else {
            return;
        };
        let key = Key::of(uid);
        for r in refs.iter() {
            if let Some(set) = self.refs.get_mut(r) {
                set.remove(&key);
                if set.is_empty() {
                    self.refs.remove(r);
                }
            }
        }
        if let Some(set) = self.types.get_mut(uid.type_name()) {
            set.remove(&key);
        }
    }
}

/// Live facts as a search reads them: the view, what deciding on it needs,
/// and the index of the same revision.
pub struct LiveSource<'a> {
    pub view: &'a FactView,
    pub model: &'a Model,
    pub plan: &'a SlicePlan,
    pub index: &'a LiveIndex,
}

impl LiveSource<'_> {
    /// An entity of the view, or an action of the schema.
    fn entity(&self, uid: &EntityUid) -> Option<&ast::Entity> {
        match self.view.get(uid) {
            Some(n) => Some(&n.entity),
            None => self.model.actions.get(uid.as_ref()).map(|a| &**a),
        }
    }
}

fn eval(v: &PartialValue) -> Option<EvalResult> {
    match v {
        PartialValue::Value(v) => Some(EvalResult::from(v.clone())),
        PartialValue::Residual(_) => None,
    }
}

impl Source for LiveSource<'_> {
    type Id = Key;

    fn id(&self, uid: &EntityUid) -> Option<Key> {
        Some(Key::of(uid))
    }

    fn uid(&self, id: &Key) -> EntityUid {
        id.uid.clone()
    }

    fn of_type(&self, ty: &EntityTypeName) -> Vec<Key> {
        self.index
            .types
            .get(ty)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn is_stored_of_type(&self, id: &Key, ty: &EntityTypeName) -> bool {
        id.uid.type_name() == ty && self.view.get(&id.uid).is_some()
    }

    fn descendants(&self, id: &Key) -> Vec<Key> {
        let mut seen: HashSet<ast::EntityUID> = HashSet::new();
        let mut queue: VecDeque<ast::EntityUID> = VecDeque::new();
        queue.push_back(id.uid.as_ref().clone());
        while let Some(uid) = queue.pop_front() {
            if let Some(kids) = Lookup::children(self.view, &uid) {
                for kid in kids {
                    if seen.insert(kid.clone()) {
                        queue.push_back(kid.clone());
                    }
                }
            }
        }
        seen.remove(id.uid.as_ref());
        seen.into_iter()
            .map(|u| Key::of(&EntityUid::from(u)))
            .collect()
    }

    fn tag_holders(&self, key: &str) -> Vec<Key> {
        Lookup::tag_holders(self.view, key)
            .map(|s| {
                s.iter()
                    .map(|u| Key::of(&EntityUid::from(u.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn walk_back(&self, targets: &[Target<Key>], path: &[String]) -> Vec<Key> {
        let n = path.len();
        if n == 0 {
            let mut out: Vec<Key> = targets
                .iter()
                .filter_map(|t| match t {
                    Target::Entity(k) if self.view.get(&k.uid).is_some() => Some(k.clone()),
                    _ => None,
                })
                .collect();
            out.sort();
            out.dedup();
            return out;
        }
        let held = |t: &Target<Key>| match t {
            Target::Entity(k) => Held::Entity(k.uid.clone()),
            Target::Str(s) => Held::Str(s.clone()),
        };
        // frontier[j]: values that path[j..] must reach.
        let mut frontier: Vec<HashSet<Held>> = vec![HashSet::new(); n + 1];
        frontier[n] = targets.iter().map(held).collect();
        let mut holders: HashSet<Key> = HashSet::new();
        for i in (0..n).rev() {
            let mut found: HashSet<Held> = HashSet::new();
            for j in i + 1..=n {
                for t in &frontier[j] {
                    let key = (path[i..j].to_vec(), t.clone());
                    if let Some(set) = self.index.refs.get(&key) {
                        for k in set {
                            if i == 0 {
                                holders.insert(k.clone());
                            }
                            found.insert(Held::Entity(k.uid.clone()));
                        }
                    }
                }
            }
            frontier[i] = found;
        }
        let mut out: Vec<Key> = holders.into_iter().collect();
        out.sort();
        out
    }

    fn attr(&self, uid: &EntityUid, name: &str) -> Option<EvalResult> {
        eval(self.entity(uid)?.get(name)?)
    }

    fn tag(&self, uid: &EntityUid, key: &str) -> Option<EvalResult> {
        eval(self.entity(uid)?.get_tag(key)?)
    }

    fn tag_keys(&self, uid: &EntityUid) -> Vec<String> {
        self.entity(uid)
            .map(|e| e.tag_keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }

    fn is_in(&self, uid: &EntityUid, sups: &[EntityUid]) -> bool {
        sups.contains(uid)
            || self
                .entity(uid)
                .is_some_and(|e| e.ancestors().any(|a| sups.iter().any(|s| s.as_ref() == a)))
    }

    fn ancestors(&self, uid: &EntityUid) -> Vec<EntityUid> {
        self.entity(uid)
            .map(|e| e.ancestors().map(|a| EntityUid::from(a.clone())).collect())
            .unwrap_or_default()
    }

    fn cursor(&self, id: &Key) -> Vec<u8> {
        id.uid.to_string().into_bytes()
    }

    fn read_cursor(&self, bytes: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(bytes).ok()?;
        EntityUid::from_str(text).ok().map(|u| Key::of(&u))
    }

    fn decide(&self, snap: &Snapshot, q: &Query) -> Outcome {
        crate::facts::slice::decide(snap, self.plan, self.model, self.view, q)
    }
}

//! What a search reads of the facts and decides on: the [`Source`] trait,
//! which the candidate generator and the searches run over, and its
//! implementation on a snapshot's own entities and relation index
//! ([`Loaded`]). Live facts implement it in [`super::live`].
//!
//! A source numbers the entities it lists with ids whose order is the
//! listing order (by type, then id), answers the relation lookups of the
//! candidate generator (descendants, tag holders, who holds a value at an
//! attribute path), reads entity data as Cedar would, and decides a query
//! on the same facts.

use std::fmt::Debug;
use std::hash::Hash;

use cedar_policy::{Entities, EntityTypeName, EntityUid, EvalResult};

use crate::engine::{self, Outcome, Query};
use crate::search_index::relations::{self, Relations};
use crate::snapshot::Snapshot;

/// A value a relation lookup starts from: an entity or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target<Id> {
    Entity(Id),
    Str(String),
}

/// The facts a search reads and decides on.
pub trait Source {
    /// An entity's number: ordered as the listing is (type, then id).
    type Id: Clone + Ord + Eq + Hash + Debug;

    /// The id of `uid`, when the source can name it (a uid the facts never
    /// mention may have none: it is then related to nothing).
    fn id(&self, uid: &EntityUid) -> Option<Self::Id>;
    fn uid(&self, id: &Self::Id) -> EntityUid;
    /// Every stored entity of type `ty`, in order.
    fn of_type(&self, ty: &EntityTypeName) -> Vec<Self::Id>;
    /// Is `id` a stored entity of type `ty`?
    fn is_stored_of_type(&self, id: &Self::Id, ty: &EntityTypeName) -> bool;
    /// Stored entities below `id` in the hierarchy (not `id` itself).
    fn descendants(&self, id: &Self::Id) -> Vec<Self::Id>;
    /// Stored entities holding a tag keyed `key`.
    fn tag_holders(&self, key: &str) -> Vec<Self::Id>;
    /// The stored entities whose attribute path `path` can lead to one of
    /// `targets` (see `Relations::walk_back`), in order; a superset is
    /// allowed, never a subset.
    fn walk_back(&self, targets: &[Target<Self::Id>], path: &[String]) -> Vec<Self::Id>;
    /// The attribute `name` of entity `uid`; none when either is missing.
    fn attr(&self, uid: &EntityUid, name: &str) -> Option<EvalResult>;
    /// The tag `key` of entity `uid`; none when either is missing.
    fn tag(&self, uid: &EntityUid, key: &str) -> Option<EvalResult>;
    /// The tag keys of entity `uid`.
    fn tag_keys(&self, uid: &EntityUid) -> Vec<String>;
    /// Is `uid` in (or equal to) one of `sups`, as Cedar's `in` decides on
    /// these facts?
    fn is_in(&self, uid: &EntityUid, sups: &[EntityUid]) -> bool;
    /// The closed ancestors of `uid` (none when it is not stored).
    fn ancestors(&self, uid: &EntityUid) -> Vec<EntityUid>;
    /// `id` as the cursor of a page token, and back.
    fn cursor(&self, id: &Self::Id) -> Vec<u8>;
    fn read_cursor(&self, bytes: &[u8]) -> Option<Self::Id>;
    /// Decide `q` with the policies of `snap` on these facts.
    fn decide(&self, snap: &Snapshot, q: &Query) -> Outcome;
}

/// A snapshot's own entities and relation index.
pub struct Loaded<'a> {
    pub rel: &'a Relations,
    pub entities: &'a Entities,
}

impl<'a> Loaded<'a> {
    pub fn of(snap: &'a Snapshot) -> Self {
        Loaded {
            rel: &snap.search.relations,
            entities: &snap.entities,
        }
    }
}

impl Source for Loaded<'_> {
    type Id = u32;

    fn id(&self, uid: &EntityUid) -> Option<u32> {
        self.rel.id(uid)
    }

    fn uid(&self, id: &u32) -> EntityUid {
        self.rel.uid(*id).clone()
    }

    fn of_type(&self, ty: &EntityTypeName) -> Vec<u32> {
        self.rel.of_type(ty).collect()
    }

    fn is_stored_of_type(&self, id: &u32, ty: &EntityTypeName) -> bool {
        self.rel.of_type(ty).contains(id)
    }

    fn descendants(&self, id: &u32) -> Vec<u32> {
        self.rel.descendants(*id).to_vec()
    }

    fn tag_holders(&self, key: &str) -> Vec<u32> {
        match self.rel.str_id(key) {
            Some(k) => self.rel.tag_holders(k).to_vec(),
            None => Vec::new(),
        }
    }

    fn walk_back(&self, targets: &[Target<u32>], path: &[String]) -> Vec<u32> {
        let targets: Vec<relations::Target> = targets
            .iter()
            .filter_map(|t| match t {
                Target::Entity(e) => Some(relations::Target::Entity(*e)),
                Target::Str(s) => self.rel.str_id(s).map(relations::Target::Str),
            })
            .collect();
        self.rel.walk_back(&targets, path)
    }

    fn attr(&self, uid: &EntityUid, name: &str) -> Option<EvalResult> {
        self.entities.get(uid)?.attr(name)?.ok()
    }

    fn tag(&self, uid: &EntityUid, key: &str) -> Option<EvalResult> {
        self.entities.get(uid)?.tag(key)?.ok()
    }

    fn tag_keys(&self, uid: &EntityUid) -> Vec<String> {
        self.entities
            .get(uid)
            .map(|e| e.tags().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    fn is_in(&self, uid: &EntityUid, sups: &[EntityUid]) -> bool {
        sups.contains(uid)
            || self
                .entities
                .ancestors(uid)
                .is_some_and(|mut a| a.any(|x| sups.contains(x)))
    }

    fn ancestors(&self, uid: &EntityUid) -> Vec<EntityUid> {
        self.entities
            .ancestors(uid)
            .map(|a| a.cloned().collect())
            .unwrap_or_default()
    }

    fn cursor(&self, id: &u32) -> Vec<u8> {
        id.to_be_bytes().to_vec()
    }

    fn read_cursor(&self, bytes: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }

    fn decide(&self, snap: &Snapshot, q: &Query) -> Outcome {
        engine::decide(snap, q)
    }
}

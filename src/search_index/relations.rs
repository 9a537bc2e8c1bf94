//! The relation index: who refers to whom in the facts, built once per
//! snapshot and read by the candidate generator.
//!
//! It holds, for the entities of one store:
//!
//! * a dense numbering: the stored (non-action) entities first, sorted by
//!   type then id (so each type is one contiguous range, in the order search
//!   results are listed), then the uids the facts only mention (parents and
//!   attribute values that the store does not hold);
//! * `descendants`: for each entity, the stored entities that have it among
//!   their (transitively closed) ancestors;
//! * `referrers`: for each attribute path inside an entity (`org`,
//!   `meta.owner`: record fields are followed, set elements count as values
//!   of the set's path) and each value found there (an entity or a string),
//!   the entities holding that value at that path;
//! * `tag_holders`: for each tag key, the entities holding a tag with it.
//!
//! It knows nothing about policies and nothing about any domain.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use cedar_policy::{Entities, EntityTypeName, EntityUid, EvalResult};

use crate::names::is_action;

/// A value the index can look up: an entity or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Target {
    Entity(u32),
    Str(u32),
}

/// The relation index of one entity store.
#[derive(Debug, Default)]
pub struct Relations {
    uids: Vec<EntityUid>,
    ids: HashMap<EntityUid, u32>,
    /// `uids[..stored]` are the stored entities.
    stored: u32,
    types: HashMap<EntityTypeName, (u32, u32)>,
    descendants: HashMap<u32, Vec<u32>>,
    tag_holders: HashMap<u32, Vec<u32>>,
    referrers: HashMap<(u32, Target), Vec<u32>>,
    paths: HashMap<Vec<String>, u32>,
    strings: HashMap<String, u32>,
}

impl Relations {
    /// Index every non-action entity of `entities`. Fails when the facts
    /// hold more entities, strings or attribute paths than a `u32` numbers.
    pub fn build(entities: &Entities) -> Result<Self, String> {
        let mut keyed: Vec<(String, String, EntityUid)> = entities
            .iter()
            .map(|e| e.uid())
            .filter(|u| !is_action(u))
            .map(|u| (u.type_name().to_string(), u.id().unescaped().to_string(), u))
            .collect();
        keyed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut rel = Relations {
            stored: number(keyed.len(), "entities")?,
            ..Relations::default()
        };
        for (i, (_, _, uid)) in keyed.into_iter().enumerate() {
            let i = i as u32;
            let ty = uid.type_name().clone();
            rel.types
                .entry(ty)
                .and_modify(|r| r.1 = i + 1)
                .or_insert((i, i + 1));
            rel.ids.insert(uid.clone(), i);
            rel.uids.push(uid);
        }
        for i in 0..rel.stored {
            let uid = rel.uids[i as usize].clone();
            let Some(entity) = entities.get(&uid) else {
                continue;
            };
            for (name, value) in entity.attrs() {
                if let Ok(value) = value {
                    let mut path = vec![name.to_string()];
                    rel.index_value(&mut path, &value, i)?;
                }
            }
            for (key, _) in entity.tags() {
                let key = rel.intern_str(key)?;
                rel.tag_holders.entry(key).or_default().push(i);
            }
            if let Some(ancestors) = entities.ancestors(&uid) {
                let ancestors: Vec<EntityUid> = ancestors.cloned().collect();
                for a in ancestors {
                    let a = rel.intern_uid(&a)?;
                    rel.descendants.entry(a).or_default().push(i);
                }
            }
        }
        Ok(rel)
    }

    fn index_value(
        &mut self,
        path: &mut Vec<String>,
        value: &EvalResult,
        holder: u32,
    ) -> Result<(), String> {
        match value {
            EvalResult::EntityUid(_) | EvalResult::String(_) => {
                let target = self.intern_value(value)?;
                let key = self.intern_path(path)?;
                let list = self.referrers.entry((key, target)).or_default();
                if list.last() != Some(&holder) {
                    list.push(holder);
                }
            }
            EvalResult::Set(items) => {
                for item in items.iter() {
                    if matches!(item, EvalResult::EntityUid(_) | EvalResult::String(_)) {
                        self.index_value(path, item, holder)?;
                    }
                }
            }
            EvalResult::Record(fields) => {
                for (name, v) in fields.iter() {
                    path.push(name.clone());
                    self.index_value(path, v, holder)?;
                    path.pop();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn intern_value(&mut self, value: &EvalResult) -> Result<Target, String> {
        match value {
            EvalResult::EntityUid(u) => Ok(Target::Entity(self.intern_uid(u)?)),
            EvalResult::String(s) => Ok(Target::Str(self.intern_str(s)?)),
            _ => unreachable!("only entities and strings are indexed"),
        }
    }

    fn intern_uid(&mut self, uid: &EntityUid) -> Result<u32, String> {
        if let Some(id) = self.ids.get(uid) {
            return Ok(*id);
        }
        let id = number(self.uids.len(), "entities")?;
        self.uids.push(uid.clone());
        self.ids.insert(uid.clone(), id);
        Ok(id)
    }

    fn intern_str(&mut self, s: &str) -> Result<u32, String> {
        if let Some(id) = self.strings.get(s) {
            return Ok(*id);
        }
        let id = number(self.strings.len(), "strings")?;
        self.strings.insert(s.to_string(), id);
        Ok(id)
    }

    fn intern_path(&mut self, path: &[String]) -> Result<u32, String> {
        if let Some(id) = self.paths.get(path) {
            return Ok(*id);
        }
        let id = number(self.paths.len(), "attribute paths")?;
        self.paths.insert(path.to_vec(), id);
        Ok(id)
    }

    /// The number of a uid the facts mention.
    pub(crate) fn id(&self, uid: &EntityUid) -> Option<u32> {
        self.ids.get(uid).copied()
    }

    pub(crate) fn uid(&self, id: u32) -> &EntityUid {
        &self.uids[id as usize]
    }

    /// The number of a string the facts hold (as an attribute value or a tag key).
    pub(crate) fn str_id(&self, s: &str) -> Option<u32> {
        self.strings.get(s).copied()
    }

    /// The stored entities of type `ty`, as a range of numbers.
    pub(crate) fn of_type(&self, ty: &EntityTypeName) -> Range<u32> {
        self.types.get(ty).map(|(a, b)| *a..*b).unwrap_or(0..0)
    }

    /// Stored entities below `id` in the hierarchy (not `id` itself).
    pub(crate) fn descendants(&self, id: u32) -> &[u32] {
        self.descendants.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Stored entities holding a tag keyed `key`.
    pub(crate) fn tag_holders(&self, key: u32) -> &[u32] {
        self.tag_holders.get(&key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Number of stored (non-action) entities.
    pub fn stored(&self) -> usize {
        self.stored as usize
    }

    /// The stored entities whose attribute path `path` can lead to one of
    /// `targets`: every entity `e` with `e.path` equal to (or, for a set,
    /// containing) a target. A path step is either a field of a record
    /// inside the same entity or an attribute of the entity the previous
    /// steps reached; the walk tries every split of the path into such hops
    /// that the facts contain. An empty path gives the targets themselves.
    pub(crate) fn walk_back(&self, targets: &[Target], path: &[String]) -> Vec<u32> {
        let n = path.len();
        if n == 0 {
            let mut out: Vec<u32> = targets
                .iter()
                .filter_map(|t| match t {
                    Target::Entity(e) if *e < self.stored => Some(*e),
                    _ => None,
                })
                .collect();
            out.sort_unstable();
            out.dedup();
            return out;
        }
        // frontier[j]: values that path[j..] must reach.
        let mut frontier: Vec<HashSet<Target>> = vec![HashSet::new(); n + 1];
        frontier[n] = targets.iter().copied().collect();
        for i in (0..n).rev() {
            let mut found: HashSet<Target> = HashSet::new();
            for j in i + 1..=n {
                if frontier[j].is_empty() {
                    continue;
                }
                let Some(key) = self.paths.get(&path[i..j]) else {
                    continue;
                };
                for t in &frontier[j] {
                    if let Some(holders) = self.referrers.get(&(*key, *t)) {
                        found.extend(holders.iter().map(|h| Target::Entity(*h)));
                    }
                }
            }
            frontier[i] = found;
        }
        let mut out: Vec<u32> = frontier[0]
            .iter()
            .filter_map(|t| match t {
                Target::Entity(e) => Some(*e),
                Target::Str(_) => None,
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// The number of the `len`-th item of a kind, if a `u32` can hold it.
fn number(len: usize, what: &str) -> Result<u32, String> {
    u32::try_from(len).map_err(|_| format!("the search index holds at most {} {what}", u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::Schema;

    fn store() -> Entities {
        let json = serde_json::json!([
            { "uid": {"type": "G", "id": "g"}, "attrs": {}, "parents": [] },
            { "uid": {"type": "U", "id": "b"}, "attrs": {"name": "bee"}, "parents": [{"type": "G", "id": "g"}],
              "tags": {"k1": "x"} },
            { "uid": {"type": "U", "id": "a"}, "attrs": {"name": "ay"}, "parents": [{"type": "G", "id": "ghost"}] },
            { "uid": {"type": "D", "id": "d1"}, "attrs": {"meta": {"owner": {"__entity": {"type": "U", "id": "a"}}},
              "readers": [{"__entity": {"type": "U", "id": "b"}}], "key": "k1"}, "parents": [] },
            { "uid": {"type": "D", "id": "d2"}, "attrs": {"meta": {"owner": {"__entity": {"type": "U", "id": "b"}}},
              "readers": [], "key": "k2"}, "parents": [] },
        ]);
        Entities::from_json_value(json, None::<&Schema>).unwrap()
    }

    fn uid(s: &str) -> EntityUid {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_types_in_order_and_indexes_references() {
        let r = Relations::build(&store()).unwrap();
        assert_eq!(r.stored(), 5);
        let d = r.of_type(&"D".parse().unwrap());
        let names: Vec<String> = d.clone().map(|i| r.uid(i).to_string()).collect();
        assert_eq!(names, [r#"D::"d1""#, r#"D::"d2""#]);
        // Record fields are part of the path; set elements are values of the set's path.
        let a = Target::Entity(r.id(&uid(r#"U::"a""#)).unwrap());
        let b = Target::Entity(r.id(&uid(r#"U::"b""#)).unwrap());
        let d1 = r.id(&uid(r#"D::"d1""#)).unwrap();
        let d2 = r.id(&uid(r#"D::"d2""#)).unwrap();
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(r.walk_back(&[a], &path(&["meta", "owner"])), vec![d1]);
        assert_eq!(r.walk_back(&[b], &path(&["meta", "owner"])), vec![d2]);
        assert_eq!(r.walk_back(&[b], &path(&["readers"])), vec![d1]);
        assert!(r.walk_back(&[a], &path(&["owner"])).is_empty());
        let k1 = Target::Str(r.str_id("k1").unwrap());
        assert_eq!(r.walk_back(&[k1], &path(&["key"])), vec![d1]);
        // Tags and hierarchy, including a parent the store does not hold.
        let key = r.str_id("k1").unwrap();
        assert_eq!(r.tag_holders(key), &[r.id(&uid(r#"U::"b""#)).unwrap()]);
        let ghost = r.id(&uid(r#"G::"ghost""#)).unwrap();
        assert!(ghost >= r.stored);
        assert_eq!(r.descendants(ghost), &[r.id(&uid(r#"U::"a""#)).unwrap()]);
    }
}

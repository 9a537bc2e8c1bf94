//! The entities: files parsed on as many threads as there are cores,
//! merged in load order (so that the result and the diagnostics do not
//! depend on the threads), checked against the schema, with the digest of
//! every item kept for incremental reloads.

use std::collections::HashMap;
use std::panic::resume_unwind;
use std::sync::atomic::{AtomicUsize, Ordering};

use cedar_policy::{Entities, Entity, EntityUid, Schema};
use sha2::{Digest, Sha256};

use super::read::json_syntax;
use crate::diag::{Diagnostic, Diagnostics};
use crate::domain;
use crate::snapshot::{EntitySource, ItemDigest, Snapshot, is_action};
use crate::source::locate_raw;
use crate::source::{TextFile, locate_entity};

/// The entities of a build: parsed (from all or some of the files), or the
/// previous snapshot's as they are.
pub(super) enum Loaded<'a> {
    Parsed(ParsedEntities),
    Reused(&'a Snapshot),
}

/// The entities of every file, validated against the schema, with the
/// schema's action entities, and where each came from.
pub(super) struct ParsedEntities {
    pub(super) entities: Entities,
    /// The index (in the entity files) of the file defining each entity.
    pub(super) origin: HashMap<EntityUid, usize>,
    pub(super) sources: Vec<EntitySource>,
    /// Entity files parsed to get them.
    pub(super) parsed: usize,
}

/// One entity file's items in order: each an entity with the digest of its
/// JSON (actions left out: they come from the schema, and Cedar checked
/// that the file's agree with it), or the error of an item Cedar refused.
/// A file that is not a JSON array is one error.
pub(super) type ParsedFile = Vec<Result<(Entity, ItemDigest), Diagnostic>>;

pub(super) fn parse_entity_file(schema: &Schema, f: &TextFile) -> ParsedFile {
    let items = match serde_json::from_str(&f.text) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => {
            return vec![Err(Diagnostic::plain(
                Some(&f.path),
                Some((1, 1)),
                "an entities file must hold a JSON array of entities",
            ))];
        }
        Err(e) => return vec![Err(json_syntax(&f.path, &e))],
    };
    let mut out = Vec::with_capacity(items.len());
    // The items go into Cedar as they are: an error reads them again.
    let mut again: Option<Vec<serde_json::Value>> = None;
    for (i, item) in items.into_iter().enumerate() {
        let digest = item_digest(&item);
        match Entity::from_json_value(item, Some(schema)) {
            Ok(e) if is_action(&e.uid()) => {}
            Ok(e) => out.push(Ok((e, digest))),
            Err(e) => {
                let items = again.get_or_insert_with(|| match serde_json::from_str(&f.text) {
                    Ok(serde_json::Value::Array(items)) => items,
                    _ => Vec::new(),
                });
                out.push(Err(entity_error(f, i, items.get(i), &e)));
            }
        }
    }
    out
}

/// The digest of an entity's JSON (structure and values, not layout): the
/// same digest, the same entity (for the same schema).
pub(super) fn item_digest(item: &serde_json::Value) -> ItemDigest {
    fn feed(h: &mut Sha256, v: &serde_json::Value) {
        use serde_json::Value;
        let text = |h: &mut Sha256, s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        match v {
            Value::Null => h.update([0]),
            Value::Bool(b) => h.update([1, u8::from(*b)]),
            Value::Number(n) => {
                h.update([2]);
                text(h, &n.to_string());
            }
            Value::String(s) => {
                h.update([3]);
                text(h, s);
            }
            Value::Array(items) => {
                h.update([4]);
                h.update((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| feed(h, v));
            }
            Value::Object(map) => {
                h.update([5]);
                h.update((map.len() as u64).to_le_bytes());
                for (k, v) in map {
                    text(h, k);
                    feed(h, v);
                }
            }
        }
    }
    let mut h = Sha256::new();
    feed(&mut h, item);
    let mut digest = ItemDigest::default();
    let n = digest.len();
    digest.copy_from_slice(&h.finalize()[..n]);
    digest
}

/// The diagnostic of item `i` of `f`, which Cedar refused.
pub(super) fn entity_error(
    f: &TextFile,
    i: usize,
    item: Option<&serde_json::Value>,
    e: &cedar_policy::entities_errors::EntitiesError,
) -> Diagnostic {
    let raw_uid = item.and_then(raw_uid);
    let position = raw_uid.as_ref().and_then(|u| locate_raw(&f.text, u));
    let what = raw_uid
        .as_ref()
        .map(|(t, id)| format!("entity {t}::{id:?}"))
        .unwrap_or_else(|| format!("entity #{i}"));
    let message = item
        .and_then(|item| domain::explain_entity_error(item, e))
        .unwrap_or_else(|| format!("{what}: {}", crate::diag::one_line(e)));
    Diagnostic::plain(Some(&f.path), position, message)
}

/// Parse `files`, each on its own, on as many threads as there are cores
/// (each takes the next file when it is done with one); the results in
/// the order of `files`.
pub(super) fn parse_files(schema: &Schema, files: &[&TextFile]) -> Vec<ParsedFile> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if threads <= 1 {
        return files.iter().map(|f| parse_entity_file(schema, f)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut out: Vec<ParsedFile> = Vec::new();
    out.resize_with(files.len(), Vec::new);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = files.get(i) else { break };
                        mine.push((i, parse_entity_file(schema, f)));
                    }
                    mine
                })
            })
            .collect();
        for worker in workers {
            let mine = worker.join().unwrap_or_else(|p| resume_unwind(p));
            for (i, parsed) in mine {
                out[i] = parsed;
            }
        }
    });
    out
}

/// The definitions of the entity files, taken in load order: the first
/// definition of a uid holds, a later one is an error naming both files.
pub(super) struct Merge<'a> {
    pub(super) files: &'a [TextFile],
    pub(super) origin: HashMap<EntityUid, usize>,
    pub(super) ok: bool,
}

impl<'a> Merge<'a> {
    /// A merge of `files`, which define about `entities` entities.
    pub(super) fn new(files: &'a [TextFile], entities: usize) -> Self {
        Merge {
            files,
            origin: HashMap::with_capacity(entities),
            ok: true,
        }
    }

    /// `uid` is defined in file `fi`: false (and an error) when an earlier
    /// definition holds.
    pub(super) fn define(&mut self, fi: usize, uid: &EntityUid, diags: &mut Diagnostics) -> bool {
        if let Some(prev) = self.origin.get(uid) {
            let f = &self.files[fi];
            diags.push(Diagnostic::plain(
                Some(&f.path),
                locate_entity(&f.text, uid),
                format!(
                    "duplicate entity {uid}: already defined in {}",
                    self.files[*prev].path.display()
                ),
            ));
            self.ok = false;
            return false;
        }
        self.origin.insert(uid.clone(), fi);
        true
    }

    /// Take in file `fi` (whose text has the SHA-256 `digest`), parsed: its
    /// errors, and its entities (appended to `out`, in the order of the
    /// definitions of the source returned).
    pub(super) fn parsed(
        &mut self,
        fi: usize,
        digest: &str,
        items: ParsedFile,
        out: &mut Vec<Entity>,
        diags: &mut Diagnostics,
    ) -> EntitySource {
        let mut defined = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Ok((e, digest)) => {
                    let uid = e.uid();
                    if self.define(fi, &uid, diags) {
                        defined.push((uid, digest));
                        out.push(e);
                    }
                }
                Err(d) => {
                    diags.push(d);
                    self.ok = false;
                }
            }
        }
        EntitySource {
            path: self.files[fi].path.clone(),
            sha256: digest.to_string(),
            entities: defined.into(),
        }
    }
}

/// Parse every entity file (see [`parse_files`]) into one set of entities.
pub(super) fn parse_entities(
    schema: &Schema,
    files: &[TextFile],
    digests: &[String],
    diags: &mut Diagnostics,
) -> Option<ParsedEntities> {
    let parsed = parse_files(schema, &files.iter().collect::<Vec<_>>());
    let mut merge = Merge::new(files, parsed.iter().map(Vec::len).sum());
    let mut all: Vec<Entity> = Vec::new();
    let mut sources = Vec::with_capacity(files.len());
    for ((fi, items), digest) in parsed.into_iter().enumerate().zip(digests) {
        sources.push(merge.parsed(fi, digest, items, &mut all, diags));
    }
    if !merge.ok {
        return None;
    }
    Some(ParsedEntities {
        entities: closed(schema, all, diags)?,
        origin: merge.origin,
        sources,
        parsed: files.len(),
    })
}

/// `entities` and the schema's actions, with the transitive closure.
pub(super) fn closed(
    schema: &Schema,
    entities: Vec<Entity>,
    diags: &mut Diagnostics,
) -> Option<Entities> {
    let actions = match schema.action_entities() {
        Ok(a) => a,
        Err(e) => {
            diags.push(Diagnostic::from_error(None, &e));
            return None;
        }
    };
    let everything = entities.into_iter().chain(actions.iter().cloned());
    match Entities::from_entities(everything, None) {
        Ok(entities) => Some(entities),
        Err(e) => {
            diags.push(Diagnostic::from_error(None, &e));
            None
        }
    }
}

/// `(type, id)` of a raw entity JSON object, for error messages.
pub(super) fn raw_uid(item: &serde_json::Value) -> Option<(String, String)> {
    let uid = item.get("uid")?;
    let uid = uid.get("__entity").unwrap_or(uid);
    Some((
        uid.get("type")?.as_str()?.to_string(),
        uid.get("id")?.as_str()?.to_string(),
    ))
}

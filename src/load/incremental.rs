//! The incremental merge: a change of some entity files (same schema)
//! parses only those and applies the difference to the served snapshot's
//! entities, with the result of a full load.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use cedar_policy::{Entities, Entity, EntityUid, Schema};

use super::entities::{Merge, ParsedEntities, ParsedFile, closed, parse_entities, parse_files};
use crate::diag::Diagnostics;
use crate::snapshot::{EntitySource, ItemDigest, Snapshot};
use crate::source::TextFile;

/// Beyond this many entities to replace or remove, an incremental reload
/// costs about what a full one does: Cedar's upsert and removal scan every
/// entity for the descendants of each entity they replace or remove (some
/// 35 ms each among the 94,000 entities of 1M memberships, where parsing
/// everything again takes 5 s on two cores).
pub(super) const MAX_INCREMENTAL: usize = 128;

/// The entities of `files` from those of `previous`, built from the same
/// schema, parsing only the files whose digests differ from those
/// `previous` parsed (changed or added files):
///
/// 1. Every file takes part in the duplicate check, in load order (a kept
///    file with the uids it defined), so that the diagnostics are a full
///    load's.
/// 2. The entities that a changed or removed file defined and no file
///    defines any more are removed ([`Entities::remove_entities`]).
/// 3. The entities of the parsed files whose JSON differs from their
///    previous definition, or that are new, are upserted
///    ([`Entities::upsert_entities`]). Cedar repairs the transitive
///    closure of both.
/// 4. Cedar's removal also drops a removed entity as a parent of its
///    descendants, where a full load keeps it (a parent need not be an
///    entity): those descendants are upserted too, from their files (parsed
///    again when they were kept).
///
/// `previous` is not changed (its entities are shared, copied on write).
/// When more than [`MAX_INCREMENTAL`] existing entities would be replaced
/// or removed, or when Cedar refuses the result (a cycle), the entities are
/// built anew instead, as by a full load (parsing the kept files too), so
/// that the error is the full load's.
pub(super) fn apply_changes(
    schema: &Schema,
    files: &[TextFile],
    digests: &[String],
    previous: &Snapshot,
    diags: &mut Diagnostics,
) -> Option<ParsedEntities> {
    let full = |diags: &mut Diagnostics| parse_entities(schema, files, digests, diags);
    let before: HashMap<&Path, &EntitySource> = previous
        .entity_sources
        .iter()
        .map(|s| (s.path.as_path(), s))
        .collect();
    let kept: Vec<Option<&EntitySource>> = files
        .iter()
        .zip(digests)
        .map(|(f, digest)| {
            before
                .get(f.path.as_path())
                .copied()
                .filter(|s| s.sha256 == *digest)
        })
        .collect();
    let kept_paths: HashSet<&Path> = kept.iter().flatten().map(|s| s.path.as_path()).collect();
    // The definitions of the files changed or removed.
    let replaced: HashMap<&EntityUid, &ItemDigest> = previous
        .entity_sources
        .iter()
        .filter(|s| !kept_paths.contains(s.path.as_path()))
        .flat_map(|s| s.entities.iter().map(|(uid, digest)| (uid, digest)))
        .collect();
    let changed: Vec<usize> = (0..files.len()).filter(|&i| kept[i].is_none()).collect();
    let texts: Vec<&TextFile> = changed.iter().map(|&i| &files[i]).collect();
    let mut parsed: HashMap<usize, ParsedFile> = changed
        .iter()
        .copied()
        .zip(parse_files(schema, &texts))
        .collect();
    let mut merge = Merge::new(files, previous.entity_total + replaced.len());
    // The entities of the parsed files, and whether their JSON is that of
    // their previous definition.
    let mut candidates: Vec<(Entity, bool)> = Vec::new();
    let mut sources = Vec::with_capacity(files.len());
    for (fi, digest) in digests.iter().enumerate() {
        if let Some(source) = kept[fi] {
            for (uid, _) in source.entities.iter() {
                merge.define(fi, uid, diags);
            }
            sources.push(source.clone());
            continue;
        }
        let items = parsed.remove(&fi).unwrap_or_default();
        let mut entities = Vec::new();
        let source = merge.parsed(fi, digest, items, &mut entities, diags);
        for (e, (uid, digest)) in entities.into_iter().zip(source.entities.iter()) {
            let same = replaced.get(uid) == Some(&digest);
            candidates.push((e, same));
        }
        sources.push(source);
    }
    if !merge.ok {
        return None;
    }
    let stale: HashSet<EntityUid> = replaced
        .keys()
        .filter(|u| !merge.origin.contains_key(**u))
        .map(|u| (*u).clone())
        .collect();
    // The entities below a stale one, which lose it as a parent.
    let below: HashSet<EntityUid> = if stale.is_empty() {
        HashSet::new()
    } else {
        previous
            .entities
            .iter()
            .map(|e| e.uid())
            .filter(|uid| merge.origin.contains_key(uid))
            .filter(|uid| {
                previous
                    .entities
                    .ancestors(uid)
                    .is_some_and(|mut a| a.any(|a| stale.contains(a)))
            })
            .collect()
    };
    let mut upserts: Vec<Entity> = candidates
        .iter()
        .filter(|(e, same)| !same || below.contains(&e.uid()))
        .map(|(e, _)| e.clone())
        .collect();
    // The kept files defining an entity below a stale one: parsed again.
    let mut refresh: Vec<usize> = below
        .iter()
        .filter_map(|uid| merge.origin.get(uid).copied())
        .filter(|&fi| kept[fi].is_some())
        .collect();
    let refreshed = refresh.len();
    refresh.sort_unstable();
    refresh.dedup();
    let existing = upserts
        .iter()
        .filter(|e| previous.entities.get(&e.uid()).is_some())
        .count();
    let mut done = ParsedEntities {
        entities: Entities::empty(),
        origin: merge.origin,
        sources,
        parsed: changed.len() + refresh.len(),
    };
    // Built anew: the entities of the parsed files and of the kept ones.
    let anew = |mut done: ParsedEntities, diags: &mut Diagnostics| {
        let kept_files: Vec<&TextFile> = (0..files.len())
            .filter(|&fi| kept[fi].is_some())
            .map(|fi| &files[fi])
            .collect();
        let mut all: Vec<Entity> = candidates.into_iter().map(|(e, _)| e).collect();
        for item in parse_files(schema, &kept_files).into_iter().flatten() {
            match item {
                Ok((e, _)) => all.push(e),
                // It parsed when it was loaded: not expected.
                Err(_) => return full(diags),
            }
        }
        done.entities = closed(schema, all, diags)?;
        done.parsed = files.len();
        Some(done)
    };
    if stale.len() + existing + refreshed > MAX_INCREMENTAL {
        return anew(done, diags);
    }
    let texts: Vec<&TextFile> = refresh.iter().map(|&fi| &files[fi]).collect();
    for item in parse_files(schema, &texts).into_iter().flatten() {
        match item {
            Ok((e, _)) if below.contains(&e.uid()) => upserts.push(e),
            Ok(_) => {}
            Err(_) => return full(diags),
        }
    }
    let mut entities = previous.entities.clone();
    if !stale.is_empty() {
        entities = match entities.remove_entities(stale) {
            Ok(e) => e,
            Err(_) => return anew(done, diags),
        };
    }
    if !upserts.is_empty() {
        entities = match entities.upsert_entities(upserts, None) {
            Ok(e) => e,
            Err(_) => return anew(done, diags),
        };
    }
    done.entities = entities;
    Some(done)
}

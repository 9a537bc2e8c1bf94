//! Loading: files on disk to a validated [`Snapshot`], or diagnostics.
//!
//! The loader reads the policies, schema and entities paths (each a file or a
//! directory read recursively), parses every file on its own so that each
//! error names its file, validates the policies strictly against the schema
//! and the entities against the schema, and runs the domain's load-time
//! checks ([`crate::domain`]). It returns either a whole snapshot or every
//! error it found: never a partial set. When a routes path is configured, the
//! forward-auth routes ([`crate::gateway::routes`]) are compiled against the
//! schema and are part of the snapshot too.
//!
//! Entity files are parsed on as many threads as there are cores, and
//! merged in load order, so that the result and the diagnostics do not
//! depend on the threads. The domain's checks and the snapshot's indexes
//! run side by side. A reload ([`Inputs::build_after`]) starts from the
//! served snapshot: a change of policies reuses its entities, and a change
//! of some entity files (same schema) parses only those and applies the
//! difference to its entities, with the result of a full load.

use std::collections::{HashMap, HashSet};
use std::panic::resume_unwind;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use cedar_policy::{
    Entities, Entity, EntityUid, PolicyId, PolicySet, PolicySetError, Schema, SchemaFragment,
    ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, Diagnostics, line_col};
use crate::domain;
use crate::gateway::{self, KeyIndex, Routes};
use crate::index::PolicyIndex;
use crate::names::Names;
use crate::search_index::SearchIndex;
use crate::snapshot::{
    EntitySource, FileKind, ItemDigest, PolicyOrigin, Snapshot, SourceFile, is_action,
};
use crate::source::locate_raw;
pub use crate::source::{TextFile, locate_entity};

/// Where the inputs live. Each is a file or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub policies: PathBuf,
    pub schema: PathBuf,
    pub entities: PathBuf,
    /// Forward-auth routes (`*.yaml`, `*.yml`); none: no routes.
    pub routes: Option<PathBuf>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            policies: "policies".into(),
            schema: "schema".into(),
            entities: "entities".into(),
            routes: None,
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Load and validate everything under `paths` into a new snapshot.
pub fn load(paths: &Paths) -> Result<Snapshot, Diagnostics> {
    let started = Instant::now();
    let inputs = Inputs::read(paths)?;
    let files = inputs.source_files();
    inputs.build(files, started)
}

/// The texts of every input file, read once: the first half of [`load`].
/// A reloader reads them, compares their digests with the served
/// snapshot's, and builds only when something changed.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub schema: Vec<TextFile>,
    pub policies: Vec<TextFile>,
    pub entities: Vec<TextFile>,
    pub routes: Vec<TextFile>,
}

impl Inputs {
    /// Read the files under `paths` (each a file or a directory).
    pub fn read(paths: &Paths) -> Result<Inputs, Diagnostics> {
        let mut diags = Diagnostics::default();
        let schema = read_files(&paths.schema, FileKind::Schema, &mut diags);
        let policies = read_files(&paths.policies, FileKind::Policies, &mut diags);
        let entities = read_files(&paths.entities, FileKind::Entities, &mut diags);
        let routes = match &paths.routes {
            Some(r) => read_files(r, FileKind::Routes, &mut diags),
            None => Vec::new(),
        };
        if diags.has_errors() {
            return Err(diags);
        }
        Ok(Inputs {
            schema,
            policies,
            entities,
            routes,
        })
    }

    /// Every file with its kind, size and SHA-256, in load order.
    pub fn source_files(&self) -> Vec<SourceFile> {
        [
            (&self.schema, FileKind::Schema),
            (&self.policies, FileKind::Policies),
            (&self.entities, FileKind::Entities),
            (&self.routes, FileKind::Routes),
        ]
        .into_iter()
        .flat_map(|(fs, kind)| fs.iter().map(move |f| source_file(f, kind)))
        .collect()
    }

    /// Parse and validate into a snapshot listing `files` (from
    /// [`Inputs::source_files`]), its load time counted from `started`.
    pub fn build(&self, files: Vec<SourceFile>, started: Instant) -> Result<Snapshot, Diagnostics> {
        self.assemble(files, started, Reuse::Nothing)
    }

    /// [`Inputs::build`] after `previous`, reusing what it can of it:
    ///
    /// - when the schema and entity files are byte for byte those `previous`
    ///   was built from (a change of policies or routes only), its parsed
    ///   and checked entities are reused as they are, which is most of a
    ///   large world's load time;
    /// - when only the schema files are, its entities are the starting
    ///   point: only the entity files that changed or were added are parsed
    ///   (see `apply_changes`), and the domain's checks run over the whole
    ///   result.
    ///
    /// Either way the snapshot (or the diagnostics) is what [`Inputs::build`]
    /// of the same files gives.
    pub fn build_after(
        &self,
        files: Vec<SourceFile>,
        started: Instant,
        previous: &Snapshot,
    ) -> Result<Snapshot, Diagnostics> {
        let facts = |fs: &[SourceFile], entities: bool| -> Vec<(PathBuf, FileKind, String)> {
            fs.iter()
                .filter(|f| {
                    f.kind == FileKind::Schema || (entities && f.kind == FileKind::Entities)
                })
                .map(|f| (f.path.clone(), f.kind, f.sha256.clone()))
                .collect()
        };
        let reuse = if facts(&files, true) == facts(&previous.files, true) {
            Reuse::All(previous)
        } else if facts(&files, false) == facts(&previous.files, false) {
            Reuse::Changed(previous)
        } else {
            Reuse::Nothing
        };
        self.assemble(files, started, reuse)
    }

    fn assemble(
        &self,
        files: Vec<SourceFile>,
        started: Instant,
        reuse: Reuse<'_>,
    ) -> Result<Snapshot, Diagnostics> {
        let digests = entity_digests(&self.entities, &files);
        let mut snapshot = build_reusing(
            &self.schema,
            &self.policies,
            &self.entities,
            &digests,
            reuse,
        )?;
        snapshot.routes = gateway::routes::compile(&snapshot.names, &snapshot.schema, &self.routes)
            .map_err(|errors| {
                let mut d = Diagnostics::default();
                errors.into_iter().for_each(|e| d.push(e));
                d
            })?;
        snapshot.files = files;
        snapshot.load_duration = started.elapsed();
        Ok(snapshot)
    }
}

/// The SHA-256 of each entity file: those of `files` (from
/// [`Inputs::source_files`]) when they list exactly `entity_files`, else
/// computed.
fn entity_digests(entity_files: &[TextFile], files: &[SourceFile]) -> Vec<String> {
    let listed: Vec<&SourceFile> = files
        .iter()
        .filter(|f| f.kind == FileKind::Entities)
        .collect();
    let lines_up = listed.len() == entity_files.len()
        && listed
            .iter()
            .zip(entity_files)
            .all(|(s, t)| s.path == t.path && s.bytes == t.text.len() as u64);
    if lines_up {
        listed.iter().map(|s| s.sha256.clone()).collect()
    } else {
        entity_files.iter().map(|f| sha256(&f.text)).collect()
    }
}

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What a build may take from the snapshot built before it.
#[derive(Clone, Copy)]
enum Reuse<'a> {
    /// Nothing: parse every file.
    Nothing,
    /// Its entities and their warnings: same schema and entity files.
    All(&'a Snapshot),
    /// Its entities as the starting point: same schema files, some entity
    /// files changed, added or removed.
    Changed(&'a Snapshot),
}

/// Build a snapshot from texts already in memory (the loader's core, also
/// used by tests and by request-scoped replacements).
pub fn build(
    schema_files: &[TextFile],
    policy_files: &[TextFile],
    entity_files: &[TextFile],
) -> Result<Snapshot, Diagnostics> {
    let digests: Vec<String> = entity_files.iter().map(|f| sha256(&f.text)).collect();
    build_reusing(
        schema_files,
        policy_files,
        entity_files,
        &digests,
        Reuse::Nothing,
    )
}

/// [`build`], taking from `reuse` what it can (see [`Inputs::build_after`]).
/// `entity_digests` are the SHA-256 digests of `entity_files`.
fn build_reusing(
    schema_files: &[TextFile],
    policy_files: &[TextFile],
    entity_files: &[TextFile],
    entity_digests: &[String],
    reuse: Reuse<'_>,
) -> Result<Snapshot, Diagnostics> {
    let started = Instant::now();
    let mut diags = Diagnostics::default();
    let schema = parse_schema(schema_files, &mut diags).ok_or_else(|| diags.clone())?;
    let (policies, origins) = parse_policies(&schema, policy_files, &mut diags);
    let entities = match reuse {
        Reuse::All(previous) => Some(Loaded::Reused(previous)),
        Reuse::Changed(previous) => {
            apply_changes(&schema, entity_files, entity_digests, previous, &mut diags)
                .map(Loaded::Parsed)
        }
        Reuse::Nothing => {
            parse_entities(&schema, entity_files, entity_digests, &mut diags).map(Loaded::Parsed)
        }
    };
    let (Some(policies), Some(entities)) = (policies, entities) else {
        return Err(diags);
    };
    let (entities, origin, entity_sources, entity_files_parsed) = match entities {
        Loaded::Parsed(p) => (p.entities, Some(p.origin), p.sources, p.parsed),
        Loaded::Reused(previous) => {
            // The previous snapshot's warnings about its entities still hold.
            let from_policies = |d: &&Diagnostic| {
                previous.files.iter().any(|f| {
                    f.kind == FileKind::Policies && d.file.as_deref() == Some(f.path.as_path())
                })
            };
            let kept = previous.warnings.iter().filter(|d| !from_policies(d));
            diags.0.extend(kept.cloned());
            (
                previous.entities.clone(),
                None,
                previous.entity_sources.clone(),
                0,
            )
        }
    };
    if diags.has_errors() {
        return Err(diags);
    }
    let actions = schema.action_entities().map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(Diagnostic::from_error(None, &e));
        d
    })?;
    // The domain's checks and the indexes only read the entities: they run
    // side by side. The indexes of a world the checks refuse are dropped.
    let checked = origin.filter(|_| domain::applies(&schema));
    let (found, keys, search) = std::thread::scope(|s| {
        let check = checked
            .as_ref()
            .map(|origin| s.spawn(|| domain::check(&entities, origin, entity_files)));
        let keys = s.spawn(|| KeyIndex::build(&entities));
        let search = SearchIndex::build(&policies, &entities);
        let found = match check {
            Some(check) => check.join().unwrap_or_else(|p| resume_unwind(p)),
            None => Vec::new(),
        };
        (found, keys.join(), search)
    });
    for d in found {
        diags.push(d);
    }
    let search = search.unwrap_or_else(|e| {
        diags.push(Diagnostic::plain(
            None,
            None,
            format!("cannot index the entities: {e}"),
        ));
        SearchIndex::default()
    });
    if diags.has_errors() {
        return Err(diags);
    }
    let keys = keys.unwrap_or_else(|p| resume_unwind(p));
    let index = PolicyIndex::build(&policies, &actions);
    let mut policy_literals: Vec<EntityUid> = policies
        .policies()
        .flat_map(|p| p.entity_literals())
        .collect();
    policy_literals.sort_by_key(|u| u.to_string());
    policy_literals.dedup();
    let entity_total = entities.iter().filter(|e| !is_action(&e.uid())).count();
    Ok(Snapshot {
        generation: GENERATION.fetch_add(1, Ordering::SeqCst) + 1,
        names: Names::new(&schema),
        schema,
        policies,
        entities,
        index,
        policy_literals,
        origins,
        files: Vec::new(),
        entity_sources,
        entity_files_parsed,
        warnings: diags.0,
        loaded_at: SystemTime::now(),
        load_duration: started.elapsed(),
        entity_total,
        routes: Routes::default(),
        keys,
        search,
    })
}

fn source_file(f: &TextFile, kind: FileKind) -> SourceFile {
    SourceFile {
        path: f.path.clone(),
        kind,
        sha256: sha256(&f.text),
        bytes: f.text.len() as u64,
    }
}

/// Does `path` hold a file of `kind`, by its name?
pub fn has_extension(path: &Path, kind: FileKind) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') {
        return false;
    }
    match kind {
        FileKind::Policies => name.ends_with(".cedar"),
        FileKind::Schema => name.ends_with(".cedarschema") || name.ends_with(".cedarschema.json"),
        FileKind::Entities => name.ends_with(".json"),
        FileKind::Routes => name.ends_with(".yaml") || name.ends_with(".yml"),
    }
}

/// The files of `kind` at `root`: the file itself, or every matching file
/// below the directory (hidden entries skipped, symlinks followed), sorted.
pub fn list_files(root: &Path, kind: FileKind) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root)?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() && has_extension(&path, kind) => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read_files(root: &Path, kind: FileKind, diags: &mut Diagnostics) -> Vec<TextFile> {
    let paths = match list_files(root, kind) {
        Ok(p) => p,
        Err(e) => {
            diags.push(Diagnostic::plain(
                Some(root),
                None,
                format!("cannot read {kind:?} path: {e}").to_lowercase(),
            ));
            return Vec::new();
        }
    };
    if paths.is_empty() && kind == FileKind::Schema {
        diags.push(Diagnostic::plain(
            Some(root),
            None,
            "no schema file (*.cedarschema or *.cedarschema.json) found",
        ));
    }
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push(TextFile { path, text }),
            Err(e) => diags.push(Diagnostic::plain(
                Some(&path),
                None,
                format!("cannot read file: {e}"),
            )),
        }
    }
    files
}

fn parse_schema(files: &[TextFile], diags: &mut Diagnostics) -> Option<Schema> {
    let mut fragments = Vec::new();
    for f in files {
        let name = f.path.to_string_lossy();
        if name.ends_with(".json") {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&f.text) {
                diags.push(json_syntax(&f.path, &e));
                continue;
            }
            match SchemaFragment::from_json_str(&f.text) {
                Ok(frag) => fragments.push(frag),
                Err(e) => diags.push(Diagnostic::from_miette(&f.path, &f.text, &e)),
            }
        } else {
            match SchemaFragment::from_cedarschema_str(&f.text) {
                Ok((frag, _warnings)) => fragments.push(frag),
                Err(e) => diags.push(Diagnostic::from_miette(&f.path, &f.text, &e)),
            }
        }
    }
    if diags.has_errors() {
        return None;
    }
    match Schema::from_schema_fragments(fragments) {
        Ok(s) => Some(s),
        Err(e) => {
            let file = (files.len() == 1).then(|| files[0].path.as_path());
            match file {
                Some(p) if miette::Diagnostic::labels(&e).is_some() => {
                    diags.push(Diagnostic::from_miette(p, &files[0].text, &e))
                }
                _ => diags.push(Diagnostic::from_error(file, &e)),
            }
            None
        }
    }
}

/// Parse every policy file, give each policy its `@id` (or Cedar's default
/// `policyN`, numbered across files in load order as if the files were one),
/// and validate strictly.
fn parse_policies(
    schema: &Schema,
    files: &[TextFile],
    diags: &mut Diagnostics,
) -> (Option<PolicySet>, HashMap<PolicyId, PolicyOrigin>) {
    let validator = Validator::new(schema.clone());
    let mut all = PolicySet::new();
    let mut origins: HashMap<PolicyId, PolicyOrigin> = HashMap::new();
    let mut offset = 0usize;
    let mut ok = true;
    for f in files {
        let parsed = match PolicySet::from_str(&f.text) {
            Ok(p) => p,
            Err(errs) => {
                for e in errs.iter() {
                    diags.push(Diagnostic::from_miette(&f.path, &f.text, e));
                }
                ok = false;
                continue;
            }
        };
        let mut file_set = PolicySet::new();
        let count = parsed.policies().count() + parsed.templates().count();
        let renamed = |id: &PolicyId, annotation: Option<&str>| -> PolicyId {
            match annotation {
                Some(name) => PolicyId::new(name),
                None => {
                    let n: usize = id
                        .to_string()
                        .trim_start_matches("policy")
                        .parse()
                        .unwrap_or(0);
                    PolicyId::new(format!("policy{}", n + offset))
                }
            }
        };
        let mut add_origin =
            |new_id: &PolicyId, annotated: bool, diags: &mut Diagnostics| -> bool {
                let line = if annotated {
                    find_annotation_line(&f.text, new_id.as_ref())
                } else {
                    None
                };
                if let Some(prev) = origins.get(new_id) {
                    let here = location(&f.path, line);
                    let there = location(&prev.file, prev.line);
                    diags.push(Diagnostic::plain(
                        Some(&f.path),
                        line.map(|l| (l, 1)),
                        format!(
                            "duplicate policy id `{new_id}`: defined at {there} and again at {here}"
                        ),
                    ));
                    return false;
                }
                origins.insert(
                    new_id.clone(),
                    PolicyOrigin {
                        file: f.path.clone(),
                        line,
                    },
                );
                true
            };
        for t in parsed.templates() {
            let id = renamed(t.id(), t.annotation("id"));
            if !add_origin(&id, t.annotation("id").is_some(), diags) {
                ok = false;
                continue;
            }
            let added = file_set.add_template(t.new_id(id.clone()));
            let line = t
                .annotation("id")
                .and_then(|i| find_annotation_line(&f.text, i));
            ok &= added_or_reported(added, &id, f, line, diags);
        }
        for p in parsed.policies() {
            let id = renamed(p.id(), p.annotation("id"));
            if !add_origin(&id, p.annotation("id").is_some(), diags) {
                ok = false;
                continue;
            }
            let added = file_set.add(p.new_id(id.clone()));
            let line = p
                .annotation("id")
                .and_then(|i| find_annotation_line(&f.text, i));
            ok &= added_or_reported(added, &id, f, line, diags);
        }
        offset += count;
        let result = validator.validate(&file_set, ValidationMode::Strict);
        for e in result.validation_errors() {
            diags.push(Diagnostic::from_miette(&f.path, &f.text, e));
            ok = false;
        }
        for w in result.validation_warnings() {
            diags.push(Diagnostic::from_miette(&f.path, &f.text, w).warning());
        }
        for t in file_set.templates() {
            let added = all.add_template(t.clone());
            let line = origins.get(t.id()).and_then(|o| o.line);
            ok &= added_or_reported(added, t.id(), f, line, diags);
        }
        for p in file_set.policies() {
            let added = all.add(p.clone());
            let line = origins.get(p.id()).and_then(|o| o.line);
            ok &= added_or_reported(added, p.id(), f, line, diags);
        }
    }
    (ok.then_some(all), origins)
}

/// A policy that cannot be added to its set is a load error at its
/// `file:line` (never a policy silently absent: a missing `forbid` would
/// fail open). True when it was added.
fn added_or_reported(
    added: Result<(), PolicySetError>,
    id: &PolicyId,
    f: &TextFile,
    line: Option<usize>,
    diags: &mut Diagnostics,
) -> bool {
    let Err(e) = added else { return true };
    diags.push(Diagnostic::plain(
        Some(&f.path),
        line.map(|l| (l, 1)),
        format!(
            "policy `{id}` cannot be added to the policy set: {}",
            crate::diag::one_line(&e)
        ),
    ));
    false
}

fn location(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", file.display()),
        None => file.display().to_string(),
    }
}

/// The line of `@id("<id>")` in `text`.
fn find_annotation_line(text: &str, id: &str) -> Option<usize> {
    let escaped = serde_json::to_string(id).ok()?;
    let mut from = 0;
    while let Some(at) = text[from..].find("@id") {
        let start = from + at;
        let rest = text[start + 3..].trim_start();
        if let Some(rest) = rest.strip_prefix('(')
            && rest.trim_start().starts_with(&escaped)
        {
            return Some(line_col(text, start).0);
        }
        from = start + 3;
    }
    None
}

fn json_syntax(path: &Path, e: &serde_json::Error) -> Diagnostic {
    Diagnostic::plain(
        Some(path),
        Some((e.line(), e.column())),
        format!("invalid JSON: {e}"),
    )
}

/// The entities of a build: parsed (from all or some of the files), or the
/// previous snapshot's as they are.
enum Loaded<'a> {
    Parsed(ParsedEntities),
    Reused(&'a Snapshot),
}

/// The entities of every file, validated against the schema, with the
/// schema's action entities, and where each came from.
struct ParsedEntities {
    entities: Entities,
    /// The index (in the entity files) of the file defining each entity.
    origin: HashMap<EntityUid, usize>,
    sources: Vec<EntitySource>,
    /// Entity files parsed to get them.
    parsed: usize,
}

/// One entity file's items in order: each an entity with the digest of its
/// JSON (actions left out: they come from the schema, and Cedar checked
/// that the file's agree with it), or the error of an item Cedar refused.
/// A file that is not a JSON array is one error.
type ParsedFile = Vec<Result<(Entity, ItemDigest), Diagnostic>>;

fn parse_entity_file(schema: &Schema, f: &TextFile) -> ParsedFile {
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
fn item_digest(item: &serde_json::Value) -> ItemDigest {
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
fn entity_error(
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
fn parse_files(schema: &Schema, files: &[&TextFile]) -> Vec<ParsedFile> {
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
struct Merge<'a> {
    files: &'a [TextFile],
    origin: HashMap<EntityUid, usize>,
    ok: bool,
}

impl<'a> Merge<'a> {
    /// A merge of `files`, which define about `entities` entities.
    fn new(files: &'a [TextFile], entities: usize) -> Self {
        Merge {
            files,
            origin: HashMap::with_capacity(entities),
            ok: true,
        }
    }

    /// `uid` is defined in file `fi`: false (and an error) when an earlier
    /// definition holds.
    fn define(&mut self, fi: usize, uid: &EntityUid, diags: &mut Diagnostics) -> bool {
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

    /// Take in file `fi`, parsed: its errors, and its entities (appended to
    /// `out`, in the order of the definitions returned).
    fn parsed(
        &mut self,
        fi: usize,
        items: ParsedFile,
        out: &mut Vec<Entity>,
        diags: &mut Diagnostics,
    ) -> Vec<(EntityUid, ItemDigest)> {
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
        defined
    }
}

/// Parse every entity file (see [`parse_files`]) into one set of entities.
fn parse_entities(
    schema: &Schema,
    files: &[TextFile],
    digests: &[String],
    diags: &mut Diagnostics,
) -> Option<ParsedEntities> {
    let parsed = parse_files(schema, &files.iter().collect::<Vec<_>>());
    let mut merge = Merge::new(files, parsed.iter().map(Vec::len).sum());
    let mut all: Vec<Entity> = Vec::new();
    let mut sources = Vec::with_capacity(files.len());
    for ((fi, items), (f, digest)) in parsed
        .into_iter()
        .enumerate()
        .zip(files.iter().zip(digests))
    {
        let defined = merge.parsed(fi, items, &mut all, diags);
        sources.push(EntitySource {
            path: f.path.clone(),
            sha256: digest.clone(),
            entities: defined.into(),
        });
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
fn closed(schema: &Schema, entities: Vec<Entity>, diags: &mut Diagnostics) -> Option<Entities> {
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

/// Beyond this many entities to replace or remove, an incremental reload
/// costs about what a full one does: Cedar's upsert and removal scan every
/// entity for the descendants of each entity they replace or remove (some
/// 35 ms each among the 94,000 entities of 1M memberships, where parsing
/// everything again takes 5 s on two cores).
const MAX_INCREMENTAL: usize = 128;

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
fn apply_changes(
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
    for (fi, (f, digest)) in files.iter().zip(digests).enumerate() {
        if let Some(source) = kept[fi] {
            for (uid, _) in source.entities.iter() {
                merge.define(fi, uid, diags);
            }
            sources.push(source.clone());
            continue;
        }
        let items = parsed.remove(&fi).unwrap_or_default();
        let mut entities = Vec::new();
        let defined = merge.parsed(fi, items, &mut entities, diags);
        for (e, (uid, digest)) in entities.into_iter().zip(&defined) {
            let same = replaced.get(uid) == Some(&digest);
            candidates.push((e, same));
        }
        sources.push(EntitySource {
            path: f.path.clone(),
            sha256: digest.clone(),
            entities: defined.into(),
        });
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

/// `(type, id)` of a raw entity JSON object, for error messages.
fn raw_uid(item: &serde_json::Value) -> Option<(String, String)> {
    let uid = item.get("uid")?;
    let uid = uid.get("__entity").unwrap_or(uid);
    Some((
        uid.get("type")?.as_str()?.to_string(),
        uid.get("id")?.as_str()?.to_string(),
    ))
}

/// Cedar's JSON entities of a snapshot, as one array (for tools and tests).
pub fn entities_json(files: &[TextFile]) -> serde_json::Value {
    let mut out = Vec::new();
    for f in files {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&f.text) {
            out.extend(items);
        }
    }
    serde_json::Value::Array(out)
}

/// Read the files of `root` (for tools that need the raw texts).
pub fn read_texts(root: &Path, kind: FileKind) -> Result<Vec<TextFile>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let files = read_files(root, kind, &mut diags);
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_that_cannot_be_added_is_a_load_error_at_its_line() {
        let text = "@id(\"only\")\npermit(principal, action, resource);\n";
        let f = TextFile {
            path: "p.cedar".into(),
            text: text.into(),
        };
        let policy = PolicySet::from_str(text)
            .unwrap()
            .policies()
            .next()
            .unwrap()
            .clone();
        let id = PolicyId::new("only");
        let line = find_annotation_line(text, "only");
        let mut set = PolicySet::new();
        let mut diags = Diagnostics::default();
        let first = set.add(policy.new_id(id.clone()));
        assert!(added_or_reported(first, &id, &f, line, &mut diags));
        assert!(diags.0.is_empty());
        let again = set.add(policy.new_id(id.clone()));
        assert!(!added_or_reported(again, &id, &f, line, &mut diags));
        let d = &diags.0[0];
        assert_eq!(d.file.as_deref(), Some(std::path::Path::new("p.cedar")));
        assert_eq!(d.line, Some(1));
        assert!(
            d.message.contains("`only` cannot be added"),
            "{}",
            d.message
        );
    }
}

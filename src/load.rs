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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use cedar_policy::{
    Entities, Entity, EntityUid, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode,
    Validator,
};
use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, Diagnostics, line_col};
use crate::domain;
use crate::gateway::{self, KeyIndex, Routes};
use crate::index::PolicyIndex;
use crate::names::Names;
use crate::snapshot::{FileKind, PolicyOrigin, Snapshot, SourceFile, is_action};

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

/// A file read into memory.
#[derive(Debug, Clone)]
pub struct TextFile {
    pub path: PathBuf,
    pub text: String,
}

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
        self.assemble(files, started, None)
    }

    /// [`Inputs::build`] after `previous`: when the schema and entity files
    /// are byte for byte those `previous` was built from (a change of
    /// policies or routes only), its parsed and checked entities are reused
    /// instead of parsed again, which is most of a large world's load time.
    pub fn build_after(
        &self,
        files: Vec<SourceFile>,
        started: Instant,
        previous: &Snapshot,
    ) -> Result<Snapshot, Diagnostics> {
        let facts = |fs: &[SourceFile]| -> Vec<(PathBuf, FileKind, String)> {
            fs.iter()
                .filter(|f| matches!(f.kind, FileKind::Schema | FileKind::Entities))
                .map(|f| (f.path.clone(), f.kind, f.sha256.clone()))
                .collect()
        };
        let same_facts = facts(&files) == facts(&previous.files);
        self.assemble(files, started, same_facts.then_some(previous))
    }

    fn assemble(
        &self,
        files: Vec<SourceFile>,
        started: Instant,
        reuse: Option<&Snapshot>,
    ) -> Result<Snapshot, Diagnostics> {
        let mut snapshot = build_reusing(&self.schema, &self.policies, &self.entities, reuse)?;
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

/// Build a snapshot from texts already in memory (the loader's core, also
/// used by tests and by request-scoped replacements).
pub fn build(
    schema_files: &[TextFile],
    policy_files: &[TextFile],
    entity_files: &[TextFile],
) -> Result<Snapshot, Diagnostics> {
    build_reusing(schema_files, policy_files, entity_files, None)
}

/// [`build`], taking the entities (and their warnings) of `reuse`, a
/// snapshot built from the same schema and entity files, instead of
/// parsing and checking `entity_files` again.
fn build_reusing(
    schema_files: &[TextFile],
    policy_files: &[TextFile],
    entity_files: &[TextFile],
    reuse: Option<&Snapshot>,
) -> Result<Snapshot, Diagnostics> {
    let started = Instant::now();
    let mut diags = Diagnostics::default();
    let schema = parse_schema(schema_files, &mut diags).ok_or_else(|| diags.clone())?;
    let (policies, origins) = parse_policies(&schema, policy_files, &mut diags);
    let entities = match reuse {
        Some(previous) => Some((previous.entities.clone(), None)),
        None => parse_entities(&schema, entity_files, &mut diags).map(|(e, by)| (e, Some(by))),
    };
    let (Some(policies), Some((entities, entity_files_by_uid))) = (policies, entities) else {
        return Err(diags);
    };
    if let Some(by_uid) = entity_files_by_uid {
        if domain::applies(&schema) {
            for d in domain::check(&entities, &by_uid, entity_files) {
                diags.push(d);
            }
        }
    } else if let Some(previous) = reuse {
        // The previous snapshot's warnings about its entities still hold.
        let from_policies = |d: &&Diagnostic| {
            previous.files.iter().any(|f| {
                f.kind == FileKind::Policies && d.file.as_deref() == Some(f.path.as_path())
            })
        };
        let kept = previous.warnings.iter().filter(|d| !from_policies(d));
        diags.0.extend(kept.cloned());
    }
    if diags.has_errors() {
        return Err(diags);
    }
    let actions = schema.action_entities().map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(Diagnostic::from_error(None, &e));
        d
    })?;
    let index = PolicyIndex::build(&policies, &actions);
    let mut policy_literals: Vec<EntityUid> = policies
        .policies()
        .flat_map(|p| p.entity_literals())
        .collect();
    policy_literals.sort_by_key(|u| u.to_string());
    policy_literals.dedup();
    let entity_total = entities.iter().filter(|e| !is_action(&e.uid())).count();
    let keys = KeyIndex::build(&entities);
    let search = crate::search::SearchIndex::build(&policies, &entities);
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
        sha256: hex::encode(Sha256::digest(f.text.as_bytes())),
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
            let _ = file_set.add_template(t.new_id(id));
        }
        for p in parsed.policies() {
            let id = renamed(p.id(), p.annotation("id"));
            if !add_origin(&id, p.annotation("id").is_some(), diags) {
                ok = false;
                continue;
            }
            let _ = file_set.add(p.new_id(id));
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
            let _ = all.add_template(t.clone());
        }
        for p in file_set.policies() {
            let _ = all.add(p.clone());
        }
    }
    (ok.then_some(all), origins)
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

/// The entities of every file, validated against the schema, with the
/// schema's action entities, and the file each entity came from.
type EntitySet = (Entities, HashMap<EntityUid, usize>);

fn parse_entities(
    schema: &Schema,
    files: &[TextFile],
    diags: &mut Diagnostics,
) -> Option<EntitySet> {
    let mut all: Vec<Entity> = Vec::new();
    let mut origin: HashMap<EntityUid, usize> = HashMap::new();
    let mut ok = true;
    for (fi, f) in files.iter().enumerate() {
        let value: serde_json::Value = match serde_json::from_str(&f.text) {
            Ok(v) => v,
            Err(e) => {
                diags.push(json_syntax(&f.path, &e));
                ok = false;
                continue;
            }
        };
        let serde_json::Value::Array(items) = value else {
            diags.push(Diagnostic::plain(
                Some(&f.path),
                Some((1, 1)),
                "an entities file must hold a JSON array of entities",
            ));
            ok = false;
            continue;
        };
        for (i, item) in items.into_iter().enumerate() {
            let raw_uid = raw_uid(&item);
            match Entity::from_json_value(item.clone(), Some(schema)) {
                Ok(e) => {
                    let uid = e.uid();
                    if is_action(&uid) {
                        // Actions come from the schema; Cedar checked this one agrees.
                        continue;
                    }
                    if let Some(prev) = origin.get(&uid) {
                        diags.push(Diagnostic::plain(
                            Some(&f.path),
                            locate_entity(&f.text, &uid),
                            format!(
                                "duplicate entity {uid}: already defined in {}",
                                files[*prev].path.display()
                            ),
                        ));
                        ok = false;
                        continue;
                    }
                    origin.insert(uid, fi);
                    all.push(e);
                }
                Err(e) => {
                    let position = raw_uid.as_ref().and_then(|u| locate_raw(&f.text, u));
                    let what = raw_uid
                        .as_ref()
                        .map(|(t, id)| format!("entity {t}::{id:?}"))
                        .unwrap_or_else(|| format!("entity #{i}"));
                    let message = domain::explain_entity_error(&item, &e)
                        .unwrap_or_else(|| format!("{what}: {}", crate::diag::one_line(&e)));
                    diags.push(Diagnostic::plain(Some(&f.path), position, message));
                    ok = false;
                }
            }
        }
    }
    if !ok {
        return None;
    }
    let actions = match schema.action_entities() {
        Ok(a) => a,
        Err(e) => {
            diags.push(Diagnostic::from_error(None, &e));
            return None;
        }
    };
    let everything = all.into_iter().chain(actions.iter().cloned());
    match Entities::from_entities(everything, None) {
        Ok(entities) => Some((entities, origin)),
        Err(e) => {
            diags.push(Diagnostic::from_error(None, &e));
            None
        }
    }
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

/// Best-effort position of an entity's definition in a JSON file.
pub fn locate_entity(text: &str, uid: &EntityUid) -> Option<(usize, usize)> {
    locate_raw(
        text,
        &(
            uid.type_name().to_string(),
            uid.id().unescaped().to_string(),
        ),
    )
}

fn locate_raw(text: &str, (ty, id): &(String, String)) -> Option<(usize, usize)> {
    let id = serde_json::to_string(id).ok()?;
    let ty = serde_json::to_string(ty).ok()?;
    let mut from = 0;
    while let Some(at) = text[from..].find(&id) {
        let pos = from + at;
        let window_start = pos.saturating_sub(200);
        let window_end = (pos + 200).min(text.len());
        let window = text.get(window_start..window_end).unwrap_or("");
        if window.contains(&ty) {
            // Point at the start of the object holding the uid.
            let obj = text[..pos].rfind("\"uid\"").unwrap_or(pos);
            return Some(line_col(text, obj));
        }
        from = pos + id.len();
    }
    None
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

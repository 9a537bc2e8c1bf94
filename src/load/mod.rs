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
//!
//! Submodules: `read` (files into memory), `policies` (the schema and the
//! policies), `entities` (parsing and merging entity files) and
//! `incremental` (a reload's entity changes); this module assembles the
//! snapshot.

mod entities;
mod incremental;
mod policies;
mod read;

use std::panic::resume_unwind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use cedar_policy::EntityUid;

use crate::diag::{Diagnostic, Diagnostics};
use crate::domain;
use crate::gateway::keys::KeyIndex;
use crate::gateway::routes::{self, Routes};
use crate::index::PolicyIndex;
use crate::names::Names;
use crate::search_index::SearchIndex;
use crate::snapshot::{FileKind, Snapshot, SourceFile, is_action};
pub use crate::source::{TextFile, locate_entity};

use entities::*;
use incremental::*;
use policies::*;
pub use read::*;

/// Where the inputs live. Each is a file or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub policies: PathBuf,
    pub schema: PathBuf,
    pub entities: PathBuf,
    /// Forward-auth routes (`*.yaml`, `*.yml`); none: no routes.
    pub routes: Option<PathBuf>,
    /// Identity sources (`*.yaml`, `*.yml`); none: no bearer JWTs.
    pub identity: Option<PathBuf>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            policies: "policies".into(),
            schema: "schema".into(),
            entities: "entities".into(),
            routes: None,
            identity: None,
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
    pub identity: Vec<TextFile>,
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
        let identity = match &paths.identity {
            Some(r) => read_files(r, FileKind::Identity, &mut diags),
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
            identity,
        })
    }

    /// Every file with its kind, size and SHA-256, in load order.
    pub fn source_files(&self) -> Vec<SourceFile> {
        [
            (&self.schema, FileKind::Schema),
            (&self.policies, FileKind::Policies),
            (&self.entities, FileKind::Entities),
            (&self.routes, FileKind::Routes),
            (&self.identity, FileKind::Identity),
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
        snapshot.routes = routes::compile(&snapshot.names, &snapshot.schema, &self.routes)
            .map_err(|errors| {
                let mut d = Diagnostics::default();
                errors.into_iter().for_each(|e| d.push(e));
                d
            })?;
        snapshot.identity = crate::identity::config::compile(
            &snapshot.names,
            &snapshot.schema,
            &self.schema,
            &self.identity,
        )
        .map(std::sync::Arc::new)
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
        identity: Default::default(),
        keys,
        search,
    })
}

//! The snapshot: one immutable, validated set of schema, policies and
//! entities, with the indexes the engine needs.
//!
//! A snapshot is built once by [`crate::load`] and then only read: requests
//! share it behind an `Arc`, and a reload replaces it whole. It does no I/O.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cedar_policy::{Entities, EntityUid, PolicyId, PolicySet, Schema};
use serde::Serialize;

use crate::diag::Diagnostic;
use crate::index::PolicyIndex;
use crate::names::Names;

/// What a loaded file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Policies,
    Schema,
    Entities,
    /// Forward-auth routes ([`crate::gateway::routes`]).
    Routes,
    /// Identity sources ([`crate::identity::config`]).
    Identity,
}

/// A file that went into a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SourceFile {
    pub path: PathBuf,
    pub kind: FileKind,
    pub sha256: String,
    pub bytes: u64,
}

/// Where a policy came from.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyOrigin {
    pub file: PathBuf,
    /// Line of its `@id` annotation, or of the policy's start, when known.
    pub line: Option<usize>,
}

/// The entities one entity file defined, so that a reload can replace the
/// definitions of the files that changed and keep the others
/// ([`crate::load::Inputs::build_after`]). Shared between the snapshots
/// that kept the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitySource {
    pub path: PathBuf,
    /// SHA-256 (hex) of the text the entities were parsed from.
    pub sha256: String,
    /// The (non-action) entities it defines, in file order, each with the
    /// digest of its JSON.
    pub entities: Arc<[(EntityUid, ItemDigest)]>,
}

/// A digest of an entity's JSON (128 bits of SHA-256 over its structure
/// and values): the same digest, the same definition.
pub type ItemDigest = [u8; 16];

/// One immutable, validated set of schema, policies and entities.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every snapshot a process builds.
    pub generation: u64,
    pub schema: Schema,
    pub policies: PolicySet,
    pub entities: Entities,
    pub names: Names,
    /// The policies a request can match, by action.
    pub index: PolicyIndex,
    /// Entity references written in the policies themselves: a request-scoped
    /// slice of the entities always includes them.
    pub policy_literals: Vec<EntityUid>,
    pub origins: HashMap<PolicyId, PolicyOrigin>,
    pub files: Vec<SourceFile>,
    /// Every entity file (in load order) with the entities it defines.
    pub entity_sources: Vec<EntitySource>,
    /// Entity files parsed to build this snapshot: all of them on a full
    /// load (or a change too large to apply), the changed ones (and the
    /// files of entities below a removed one) on an incremental reload,
    /// none when the entities were reused.
    pub entity_files_parsed: usize,
    /// Warnings of the validator and loader (the snapshot has no errors).
    pub warnings: Vec<Diagnostic>,
    pub loaded_at: SystemTime,
    pub load_duration: Duration,
    /// Number of non-action entities (counted once, at load).
    pub entity_total: usize,
    /// The forward-auth routes; empty when no routes path is configured.
    pub routes: crate::gateway::routes::Routes,
    /// Trusted OIDC issuers for bearer JWTs; empty when none is configured.
    pub identity: Arc<crate::identity::Sources>,
    /// API key digest -> principal, for bearer keys.
    pub keys: crate::gateway::keys::KeyIndex,
    /// Relations of the facts and plans of the permit policies, for search.
    pub search: crate::search_index::SearchIndex,
}

impl Snapshot {
    /// Number of non-action entities.
    pub fn entity_count(&self) -> usize {
        self.entities
            .iter()
            .filter(|e| !is_action(&e.uid()))
            .count()
    }

    /// Number of static policies (templates are not counted).
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }
}

pub use crate::names::is_action;

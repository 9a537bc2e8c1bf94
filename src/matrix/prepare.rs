//! Preparing: a [`TestFile`] against a snapshot to a [`Suite`]: names
//! resolved in the schema, requests validated, principals and resources
//! checked to exist in the facts (a mistyped name is an error, never a
//! silent deny), other worlds loaded once ([`Worlds`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{Entity, EntityUid, PolicyId, Request};
use serde_json::{Value, json};

use super::format::*;
use crate::engine::{self, Decision, RequestError};
use crate::load::{self, Paths};
use crate::names::EntityRef;
use crate::snapshot::Snapshot;

/// Where a test sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    /// A cell of `matrix[matrix]`: row `row`, column `column`.
    Cell {
        matrix: usize,
        row: usize,
        column: usize,
    },
    /// `cases[index]`.
    Case { index: usize },
}

/// One request to decide, with its expectation.
#[derive(Debug, Clone)]
pub struct TestSpec {
    pub kind: TestKind,
    pub name: String,
    /// Field path of the expectation (the cell's decision, or the case).
    pub field: String,
    pub pos: Pos,
    /// Principal, action and resource as written in the file.
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub request: Request,
    pub principal_uid: EntityUid,
    pub action_uid: EntityUid,
    pub resource_uid: EntityUid,
    pub expect: Decision,
    /// Expected determining policies (sorted), when asserted.
    pub reasons: Option<Vec<String>>,
}

/// The layout of one matrix, for rendering it as a table.
#[derive(Debug, Clone)]
pub struct MatrixLayout {
    pub field: String,
    pub resource: String,
    pub context: Option<Value>,
    pub actions: Vec<String>,
    pub principals: Vec<String>,
}

/// A test file ready to run: its facts and its requests.
#[derive(Debug, Clone)]
pub struct Suite {
    pub file: PathBuf,
    pub name: String,
    pub snapshot: Arc<Snapshot>,
    /// Entities added to the snapshot's for this file.
    pub extra: Vec<Entity>,
    pub matrices: Vec<MatrixLayout>,
    pub tests: Vec<TestSpec>,
}

/// The snapshots test files decide against: the one loaded from the given
/// paths, and those with an `entities_path` of their own (loaded once each).
pub struct Worlds {
    pub base: Arc<Snapshot>,
    pub paths: Paths,
    replaced: HashMap<PathBuf, Arc<Snapshot>>,
}

impl Worlds {
    pub fn new(base: Arc<Snapshot>, paths: Paths) -> Self {
        Worlds {
            base,
            paths,
            replaced: HashMap::new(),
        }
    }

    /// The base snapshot's schema and policies with the entities at `entities`.
    pub fn with_entities(&mut self, entities: &Path) -> Result<Arc<Snapshot>, String> {
        let key = entities
            .canonicalize()
            .map_err(|e| format!("cannot read `{}`: {e}", entities.display()))?;
        if let Some(s) = self.replaced.get(&key) {
            return Ok(s.clone());
        }
        let paths = Paths {
            entities: entities.to_path_buf(),
            ..self.paths.clone()
        };
        let snap = load::load(&paths).map_err(|d| {
            let count = d.errors().count();
            let more = if count > 1 {
                format!(" (and {} more error(s))", count - 1)
            } else {
                String::new()
            };
            format!(
                "the entities at `{}` do not load: {}{more}",
                entities.display(),
                d.first_summary()
            )
        })?;
        let snap = Arc::new(snap);
        self.replaced.insert(key, snap.clone());
        Ok(snap)
    }
}

/// Collects a file's errors, once each.
struct Problems<'a> {
    file: &'a Path,
    errors: Vec<FileError>,
    seen: HashSet<(String, String)>,
}

impl Problems<'_> {
    fn add(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        let message = message.into();
        if self.seen.insert((field.to_string(), message.clone())) {
            self.errors
                .push(FileError::new(self.file, Some(pos), field, message));
        }
    }
}

/// A file's facts: the snapshot plus its extra entities.
struct FactsView<'a> {
    snap: &'a Snapshot,
    extra: HashSet<EntityUid>,
}

impl FactsView<'_> {
    fn contains(&self, uid: &EntityUid) -> bool {
        self.extra.contains(uid) || self.snap.entities.get(uid).is_some()
    }
}

fn resolve_entity(
    view: &FactsView<'_>,
    what: &str,
    written: &Item<String>,
    problems: &mut Problems<'_>,
) -> Option<EntityUid> {
    match view
        .snap
        .names
        .resolve_entity(&EntityRef::Text(written.value.clone()))
    {
        Ok(uid) if view.contains(&uid) => Some(uid),
        Ok(uid) => {
            problems.add(
                written.pos,
                &written.field,
                format!("{what} {uid} is not in the facts (no such entity is loaded)"),
            );
            None
        }
        Err(e) => {
            problems.add(written.pos, &written.field, format!("{what}: {e}"));
            None
        }
    }
}

fn resolve_action(
    snap: &Snapshot,
    written: &Item<String>,
    problems: &mut Problems<'_>,
) -> Option<EntityUid> {
    let uid = match snap
        .names
        .resolve_action(&EntityRef::Text(written.value.clone()))
    {
        Ok(uid) => uid,
        Err(e) => {
            problems.add(written.pos, &written.field, e.to_string());
            return None;
        }
    };
    let applies = snap
        .schema
        .principals_for_action(&uid)
        .is_some_and(|mut p| p.next().is_some());
    if !applies {
        problems.add(
            written.pos,
            &written.field,
            format!("action {uid} is an action group: it applies to no principal or resource"),
        );
        return None;
    }
    Some(uid)
}

/// Where a request error belongs in the file.
struct RequestFields<'a> {
    principal: (&'a str, Pos),
    action: (&'a str, Pos),
    resource: (&'a str, Pos),
    context: (&'a str, Pos),
}

fn request_error(
    e: &RequestError,
    fields: &RequestFields<'_>,
    action: &str,
    problems: &mut Problems<'_>,
) {
    let (field, pos) = match e.field.as_str() {
        "principal" => fields.principal,
        "resource" => fields.resource,
        f if f.starts_with("context") => fields.context,
        _ => fields.action,
    };
    problems.add(pos, field, format!("for action `{action}`: {}", e.message));
}

/// The uid of an entity's JSON, when it names one the schema knows.
fn raw_uid(snap: &Snapshot, entity: &Value) -> Option<EntityUid> {
    let uid = entity.get("uid")?;
    let uid = uid.get("__entity").unwrap_or(uid);
    let r = EntityRef::Object {
        type_name: uid.get("type")?.as_str()?.to_string(),
        id: uid.get("id")?.as_str()?.to_string(),
    };
    snap.names.resolve_entity(&r).ok()
}

/// Resolve and validate a parsed file against the snapshots.
pub fn prepare(file: &TestFile, worlds: &mut Worlds) -> Result<Suite, Vec<FileError>> {
    let mut problems = Problems {
        file: &file.path,
        errors: Vec::new(),
        seen: HashSet::new(),
    };
    let snapshot = match &file.entities_path {
        None => worlds.base.clone(),
        Some(p) => {
            let dir = file.path.parent().unwrap_or(Path::new("."));
            match worlds.with_entities(&dir.join(&p.value)) {
                Ok(s) => s,
                Err(message) => {
                    problems.add(p.pos, &p.field, message);
                    return Err(problems.errors);
                }
            }
        }
    };
    let snap = snapshot.as_ref();

    let mut extra = Vec::new();
    let mut extra_uids = HashSet::new();
    for e in &file.entities {
        match Entity::from_json_value(e.value.clone(), Some(&snap.schema)) {
            Ok(entity) if crate::snapshot::is_action(&entity.uid()) => {}
            Ok(entity) => {
                if !extra_uids.insert(entity.uid()) {
                    problems.add(
                        e.pos,
                        &e.field,
                        format!("entity {} is given twice", entity.uid()),
                    );
                }
                extra.push(entity);
            }
            Err(err) => {
                problems.add(e.pos, &e.field, crate::diag::one_line(&err));
                // Requests naming it are not also "not in the facts".
                if let Some(uid) = raw_uid(snap, &e.value) {
                    extra_uids.insert(uid);
                }
            }
        }
    }
    let view = FactsView {
        snap,
        extra: extra_uids,
    };

    let mut tests = Vec::new();
    let mut matrices = Vec::new();
    for (mi, m) in file.matrices.iter().enumerate() {
        let resource = resolve_entity(&view, "resource", &m.resource, &mut problems);
        let mut actions = Vec::new();
        let mut seen_actions: HashMap<EntityUid, &str> = HashMap::new();
        for a in &m.actions {
            let uid = resolve_action(snap, a, &mut problems);
            if let Some(uid) = &uid
                && let Some(first) = seen_actions.insert(uid.clone(), &a.value)
            {
                problems.add(
                    a.pos,
                    &a.field,
                    format!("`{}` is the same action as `{first}`", a.value),
                );
            }
            actions.push(uid);
        }
        let context = m
            .context
            .as_ref()
            .map_or_else(|| json!({}), |c| c.value.clone());
        let (context_field, context_pos) = m
            .context
            .as_ref()
            .map_or((m.field.clone(), m.pos), |c| (c.field.clone(), c.pos));
        let mut principals = Vec::new();
        for (ri, row) in m.rows.iter().enumerate() {
            principals.push(row.principal.value.clone());
            let principal = resolve_entity(&view, "principal", &row.principal, &mut problems);
            for (ci, (action, decision)) in actions.iter().zip(&row.decisions).enumerate() {
                let (Some(p), Some(a), Some(r)) = (&principal, action, &resource) else {
                    continue;
                };
                let fields = RequestFields {
                    principal: (&decision.field, decision.pos),
                    action: (&m.actions[ci].field, m.actions[ci].pos),
                    resource: (&m.resource.field, m.resource.pos),
                    context: (&context_field, context_pos),
                };
                match engine::build_query(snap, p.clone(), a.clone(), r.clone(), context.clone()) {
                    Ok(q) => tests.push(TestSpec {
                        kind: TestKind::Cell {
                            matrix: mi,
                            row: ri,
                            column: ci,
                        },
                        name: format!(
                            "{} {} {} on {}",
                            m.field, row.principal.value, m.actions[ci].value, m.resource.value
                        ),
                        field: decision.field.clone(),
                        pos: decision.pos,
                        principal: row.principal.value.clone(),
                        action: m.actions[ci].value.clone(),
                        resource: m.resource.value.clone(),
                        request: q.request,
                        principal_uid: q.principal,
                        action_uid: q.action,
                        resource_uid: q.resource,
                        expect: decision.value,
                        reasons: None,
                    }),
                    Err(e) => request_error(&e, &fields, &m.actions[ci].value, &mut problems),
                }
            }
        }
        // Rows for the same principal written two ways (`User::"a"` and
        // `Prefect::User::"a"`) would be two rows for one principal.
        let mut rows_seen: HashMap<EntityUid, &str> = HashMap::new();
        for row in &m.rows {
            if let Ok(uid) = snap
                .names
                .resolve_entity(&EntityRef::Text(row.principal.value.clone()))
                && let Some(first) = rows_seen.insert(uid, &row.principal.value)
            {
                problems.add(
                    row.principal.pos,
                    &row.principal.field,
                    format!("this is the same principal as the row `{first}`"),
                );
            }
        }
        matrices.push(MatrixLayout {
            field: m.field.clone(),
            resource: m.resource.value.clone(),
            context: m.context.as_ref().map(|c| c.value.clone()),
            actions: m.actions.iter().map(|a| a.value.clone()).collect(),
            principals,
        });
    }

    for (index, c) in file.cases.iter().enumerate() {
        let principal = resolve_entity(&view, "principal", &c.principal, &mut problems);
        let action = resolve_action(snap, &c.action, &mut problems);
        let resource = resolve_entity(&view, "resource", &c.resource, &mut problems);
        let reasons = c.reasons.as_ref().map(|rs| {
            for r in rs {
                if snap.policies.policy(&PolicyId::new(&r.value)).is_none() {
                    problems.add(
                        r.pos,
                        &r.field,
                        format!("no policy has the id `{}`", r.value),
                    );
                }
            }
            let set: BTreeSet<String> = rs.iter().map(|r| r.value.clone()).collect();
            set.into_iter().collect::<Vec<_>>()
        });
        let (Some(p), Some(a), Some(r)) = (principal, action, resource) else {
            continue;
        };
        let context = c
            .context
            .as_ref()
            .map_or_else(|| json!({}), |x| x.value.clone());
        let (context_field, context_pos) = c
            .context
            .as_ref()
            .map_or((c.field.clone(), c.pos), |x| (x.field.clone(), x.pos));
        let fields = RequestFields {
            principal: (&c.principal.field, c.principal.pos),
            action: (&c.action.field, c.action.pos),
            resource: (&c.resource.field, c.resource.pos),
            context: (&context_field, context_pos),
        };
        match engine::build_query(snap, p, a, r, context) {
            Ok(q) => tests.push(TestSpec {
                kind: TestKind::Case { index },
                name: c.name.clone().unwrap_or_else(|| {
                    format!(
                        "{} {} {}",
                        c.principal.value, c.action.value, c.resource.value
                    )
                }),
                field: c.field.clone(),
                pos: c.pos,
                principal: c.principal.value.clone(),
                action: c.action.value.clone(),
                resource: c.resource.value.clone(),
                request: q.request,
                principal_uid: q.principal,
                action_uid: q.action,
                resource_uid: q.resource,
                expect: c.expect.value,
                reasons,
            }),
            Err(e) => request_error(&e, &fields, &c.action.value, &mut problems),
        }
    }

    if !problems.errors.is_empty() {
        problems.errors.sort_by_key(|e| e.pos);
        return Err(problems.errors);
    }
    Ok(Suite {
        file: file.path.clone(),
        name: file.name.clone(),
        snapshot,
        extra,
        matrices,
        tests,
    })
}

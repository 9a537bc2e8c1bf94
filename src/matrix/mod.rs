//! Matrices: `orgwarden test`, allow/deny tables that policy authors and CI
//! assert about the policies.
//!
//! This module owns the test-file format (YAML files holding `matrix` tables
//! of principals x actions per resource, and single `cases`), and the four
//! steps of a run, each its own function:
//!
//! * [`parse`]: one file's text to a [`TestFile`], schema-free, every item
//!   with its line, column and field path (`matrix[0].expect."User::\"alice\""`);
//! * [`prepare`]: a [`TestFile`] against a snapshot to a [`Suite`]: names
//!   resolved in the schema, requests validated, principals and resources
//!   checked to exist in the facts. A mistyped name is an error, never a
//!   silent deny;
//! * [`run`]: every test of the suites through [`engine::decide`] (never a
//!   separate evaluator) to a [`Report`];
//! * [`render_pretty`], [`render_json`], [`render_junit`] and [`coverage`].
//!
//! [`execute`] ties them together for the CLI: exit code 0 when every test
//! passes, 1 when one fails, 2 when a file (or the policies) is invalid.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{Entity, EntityUid, PolicyId, Request};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::{Value, json};
use serde_saphyr::{MessageFormatter, Spanned};

use crate::engine::{self, Decision, Facts, Outcome, Query, RequestError};
use crate::load::{self, Paths};
use crate::names::EntityRef;
use crate::snapshot::Snapshot;

/// Exit code when every test passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code when at least one test failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when a test file, or the policies, schema or entities, are invalid.
pub const EXIT_INVALID: u8 = 2;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A problem with a test file: where it is, which field, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub pos: Option<Pos>,
    /// The field path (`matrix[0].actions[2]`); empty for the whole file.
    pub field: String,
    pub message: String,
}

impl FileError {
    fn new(file: &Path, pos: Option<Pos>, field: &str, message: impl Into<String>) -> Self {
        FileError {
            file: file.to_path_buf(),
            pos,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FileError {
    /// `file:line:col: field: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FileError {}

// ---------------------------------------------------------------------------
// The file format, parsed (no schema needed)
// ---------------------------------------------------------------------------

/// A 1-based line and column (in characters) in a test file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A value of a test file with its field path and position.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<T> {
    pub value: T,
    pub field: String,
    pub pos: Pos,
}

/// One test file, parsed.
#[derive(Debug, Clone)]
pub struct TestFile {
    pub path: PathBuf,
    /// The `name`, or the file name when there is none.
    pub name: String,
    /// Entities added to the facts for this file (Cedar entity JSON).
    pub entities: Vec<Item<Value>>,
    /// A replacement of the entities path, relative to the file.
    pub entities_path: Option<Item<String>>,
    pub matrices: Vec<MatrixSpec>,
    pub cases: Vec<CaseSpec>,
}

/// A table: principals (rows) x actions (columns) on one resource.
#[derive(Debug, Clone)]
pub struct MatrixSpec {
    pub field: String,
    pub pos: Pos,
    pub resource: Item<String>,
    pub context: Option<Item<Value>>,
    pub actions: Vec<Item<String>>,
    pub rows: Vec<RowSpec>,
}

/// One row of a matrix: a principal and one decision per action.
#[derive(Debug, Clone)]
pub struct RowSpec {
    pub principal: Item<String>,
    pub decisions: Vec<Item<Decision>>,
}

/// One single request with its expected decision.
#[derive(Debug, Clone)]
pub struct CaseSpec {
    pub field: String,
    pub pos: Pos,
    pub name: Option<String>,
    pub principal: Item<String>,
    pub action: Item<String>,
    pub resource: Item<String>,
    pub context: Option<Item<Value>>,
    pub expect: Item<Decision>,
    /// The exact set of determining policy ids, when asserted.
    pub reasons: Option<Vec<Item<String>>>,
}

/// A mapping read in document order (serde maps have no order).
#[derive(Debug)]
struct Pairs<K, V>(Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Pairs<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for PairsVisitor<K, V> {
            type Value = Pairs<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of principals to lists of decisions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(PairsVisitor(std::marker::PhantomData))
    }
}

/// The file as YAML. `K` is the type of a matrix row's key: a plain string
/// in the first pass (so that error paths name the row), spanned in the
/// second (so that the row's position is known).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile<K> {
    name: Option<Spanned<String>>,
    entities: Option<Vec<Spanned<Value>>>,
    entities_path: Option<Spanned<String>>,
    matrix: Option<Vec<Spanned<RawMatrix<K>>>>,
    cases: Option<Vec<Spanned<RawCase>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix<K> {
    resource: Spanned<String>,
    context: Option<Spanned<Value>>,
    actions: Vec<Spanned<String>>,
    expect: Pairs<K, Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Option<String>,
    principal: Spanned<String>,
    action: Spanned<String>,
    resource: Spanned<String>,
    context: Option<Spanned<Value>>,
    expect: Spanned<String>,
    reasons: Option<Vec<Spanned<String>>>,
}

fn pos_of(l: &serde_saphyr::Location) -> Pos {
    Pos {
        line: usize::try_from(l.line()).unwrap_or(usize::MAX),
        column: usize::try_from(l.column()).unwrap_or(usize::MAX),
    }
}

fn item<T>(s: Spanned<T>, field: String) -> Item<T> {
    Item {
        pos: pos_of(&s.referenced),
        value: s.value,
        field,
    }
}

/// `parent.key`, quoting keys that are not plain identifiers as JSON strings.
fn join_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    let key = if plain {
        key.to_string()
    } else {
        serde_json::to_string(key).unwrap_or_else(|_| key.to_string())
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A serde path as the field path users see. `Spanned` wrappers show up as
/// a `value` segment; they are not the user's.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } => out = join_key(&out, key),
            Segment::Enum { .. } => {}
            Segment::Unknown => out = join_key(&out, "?"),
        }
    }
    out
}

fn yaml_error(path: &Path, e: &serde_saphyr::Error, field: String) -> FileError {
    let message = serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet());
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let pos = e
        .location()
        .map(|l| pos_of(&l))
        .filter(|p| p.line > 0 && p.column > 0);
    FileError::new(path, pos, &field, message)
}

fn parse_decision(
    path: &Path,
    s: Spanned<String>,
    field: String,
) -> Result<Item<Decision>, FileError> {
    let word = s.value.trim().to_string();
    let at = item(s, field);
    let decision = if word.eq_ignore_ascii_case("allow") {
        Decision::Allow
    } else if word.eq_ignore_ascii_case("deny") {
        Decision::Deny
    } else {
        return Err(FileError::new(
            path,
            Some(at.pos),
            &at.field,
            format!("`{word}` is not a decision: write allow or deny"),
        ));
    };
    Ok(Item {
        value: decision,
        field: at.field,
        pos: at.pos,
    })
}

/// Parse one test file. `path` is only used to name the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<TestFile, FileError> {
    // First pass: the shape, with serde's path to any error.
    let mut failed_at = String::new();
    let shape: Result<RawFile<String>, _> = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            failed_at = field_path(e.path());
            e.into_inner()
        })
    });
    if let Err(e) = shape {
        return Err(yaml_error(path, &e, failed_at));
    }
    // Second pass: the same document, with the positions of row keys.
    let raw: RawFile<Spanned<String>> =
        serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e, String::new()))?;
    let name = raw
        .name
        .map(|n| n.value)
        .unwrap_or_else(|| path.display().to_string());
    let entities = raw
        .entities
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, e)| item(e, format!("entities[{i}]")))
        .collect();
    let entities_path = raw.entities_path.map(|p| item(p, "entities_path".into()));

    let mut matrices = Vec::new();
    for (mi, m) in raw.matrix.unwrap_or_default().into_iter().enumerate() {
        let field = format!("matrix[{mi}]");
        let pos = pos_of(&m.referenced);
        let m = m.value;
        let actions: Vec<Item<String>> = m
            .actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| item(a, format!("{field}.actions[{i}]")))
            .collect();
        if actions.is_empty() {
            return Err(FileError::new(
                path,
                Some(pos),
                &format!("{field}.actions"),
                "a matrix needs at least one action",
            ));
        }
        let mut seen = HashSet::new();
        for a in &actions {
            if !seen.insert(a.value.as_str()) {
                return Err(FileError::new(
                    path,
                    Some(a.pos),
                    &a.field,
                    format!("action `{}` appears twice in this matrix", a.value),
                ));
            }
        }
        if m.expect.0.is_empty() {
            return Err(FileError::new(
                path,
                Some(pos),
                &format!("{field}.expect"),
                "a matrix needs at least one row (principal: [decisions])",
            ));
        }
        let mut rows = Vec::new();
        for (key, decisions) in m.expect.0 {
            let row_field = join_key(&format!("{field}.expect"), &key.value);
            let principal = item(key, row_field.clone());
            if decisions.len() != actions.len() {
                return Err(FileError::new(
                    path,
                    Some(principal.pos),
                    &row_field,
                    format!(
                        "{} decision{} for {} action{}",
                        decisions.len(),
                        if decisions.len() == 1 { "" } else { "s" },
                        actions.len(),
                        if actions.len() == 1 { "" } else { "s" },
                    ),
                ));
            }
            let decisions = decisions
                .into_iter()
                .enumerate()
                .map(|(i, d)| parse_decision(path, d, format!("{row_field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(RowSpec {
                principal,
                decisions,
            });
        }
        matrices.push(MatrixSpec {
            pos,
            resource: item(m.resource, format!("{field}.resource")),
            context: m.context.map(|c| item(c, format!("{field}.context"))),
            actions,
            rows,
            field,
        });
    }

    let mut cases = Vec::new();
    for (ci, c) in raw.cases.unwrap_or_default().into_iter().enumerate() {
        let field = format!("cases[{ci}]");
        let pos = pos_of(&c.referenced);
        let c = c.value;
        let expect = parse_decision(path, c.expect, format!("{field}.expect"))?;
        cases.push(CaseSpec {
            pos,
            name: c.name,
            principal: item(c.principal, format!("{field}.principal")),
            action: item(c.action, format!("{field}.action")),
            resource: item(c.resource, format!("{field}.resource")),
            context: c.context.map(|x| item(x, format!("{field}.context"))),
            expect,
            reasons: c.reasons.map(|rs| {
                rs.into_iter()
                    .enumerate()
                    .map(|(i, r)| item(r, format!("{field}.reasons[{i}]")))
                    .collect()
            }),
            field,
        });
    }

    if matrices.is_empty() && cases.is_empty() {
        return Err(FileError::new(
            path,
            Some(Pos { line: 1, column: 1 }),
            "",
            "a test file needs a `matrix` or `cases` (or both), with at least one test",
        ));
    }
    Ok(TestFile {
        path: path.to_path_buf(),
        name,
        entities,
        entities_path,
        matrices,
        cases,
    })
}

// ---------------------------------------------------------------------------
// Preparing: names resolved, requests validated
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

/// One test's result.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub spec: TestSpec,
    pub outcome: Outcome,
    pub pass: bool,
}

impl TestResult {
    /// Did the decision match (whatever the reasons)?
    pub fn decision_matches(&self) -> bool {
        self.outcome.decision == self.spec.expect
    }
}

/// One file's results.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub file: PathBuf,
    pub name: String,
    pub matrices: Vec<MatrixLayout>,
    pub results: Vec<TestResult>,
}

impl FileReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.pass).count()
    }
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

/// The results of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<FileReport>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.files.iter().map(FileReport::passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.files.iter().map(FileReport::failed).sum()
    }
    pub fn results(&self) -> impl Iterator<Item = (&FileReport, &TestResult)> {
        self.files
            .iter()
            .flat_map(|f| f.results.iter().map(move |r| (f, r)))
    }
}

/// Decide one test with the engine.
pub fn decide(suite: &Suite, spec: &TestSpec) -> Outcome {
    let facts = if suite.extra.is_empty() {
        Facts::Loaded
    } else {
        Facts::Additional(suite.extra.clone())
    };
    let query = Query {
        request: spec.request.clone(),
        principal: spec.principal_uid.clone(),
        action: spec.action_uid.clone(),
        resource: spec.resource_uid.clone(),
        facts,
    };
    engine::decide(&suite.snapshot, &query)
}

/// Run every test of every suite.
pub fn run(suites: &[Suite]) -> Report {
    let files = suites
        .iter()
        .map(|suite| FileReport {
            file: suite.file.clone(),
            name: suite.name.clone(),
            matrices: suite.matrices.clone(),
            results: suite
                .tests
                .iter()
                .map(|spec| {
                    let outcome = decide(suite, spec);
                    let reasons_match = spec
                        .reasons
                        .as_ref()
                        .is_none_or(|want| *want == outcome.reasons);
                    TestResult {
                        pass: outcome.decision == spec.expect && reasons_match,
                        spec: spec.clone(),
                        outcome,
                    }
                })
                .collect(),
        })
        .collect();
    Report { files }
}

// ---------------------------------------------------------------------------
// Coverage
// ---------------------------------------------------------------------------

/// A policy that determined no decision of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedPolicy {
    pub id: String,
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
}

/// What a run did not exercise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Policies of the snapshot that appear in no decision's reasons.
    pub unused_policies: Vec<UnusedPolicy>,
    /// Actions of the schema (that apply to a principal) no test requests.
    pub unexercised_actions: Vec<String>,
    /// How many policies and requestable actions there are.
    pub policies: usize,
    pub actions: usize,
}

/// The bare id of an action when it names it alone, else its full name.
fn action_name(snap: &Snapshot, uid: &EntityUid) -> String {
    let id = uid.id().unescaped().to_string();
    match snap.names.resolve_action(&EntityRef::Text(id.clone())) {
        Ok(u) if u == *uid => id,
        _ => uid.to_string(),
    }
}

/// What the run left unexercised in `snap`'s policies and schema.
pub fn coverage(report: &Report, snap: &Snapshot) -> Coverage {
    let used: HashSet<&str> = report
        .results()
        .flat_map(|(_, r)| r.outcome.reasons.iter().map(String::as_str))
        .collect();
    let mut ids: Vec<String> = snap
        .policies
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    ids.sort();
    let unused_policies = ids
        .iter()
        .filter(|id| !used.contains(id.as_str()))
        .map(|id| {
            let origin = snap.origins.get(&PolicyId::new(id));
            UnusedPolicy {
                id: id.clone(),
                file: origin.map(|o| o.file.clone()),
                line: origin.and_then(|o| o.line),
            }
        })
        .collect();
    let exercised: HashSet<&EntityUid> =
        report.results().map(|(_, r)| &r.spec.action_uid).collect();
    let requestable: Vec<&EntityUid> = snap
        .names
        .actions()
        .into_iter()
        .filter(|a| {
            snap.schema
                .principals_for_action(a)
                .is_some_and(|mut p| p.next().is_some())
        })
        .collect();
    let unexercised_actions = requestable
        .iter()
        .filter(|a| !exercised.contains(*a))
        .map(|a| action_name(snap, a))
        .collect();
    Coverage {
        unused_policies,
        unexercised_actions,
        policies: ids.len(),
        actions: requestable.len(),
    }
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

const ALLOW_MARK: &str = "✓";
const DENY_MARK: &str = "✗";
const FAIL_MARK: &str = "FAIL";
/// Tables wider than this number their action columns and list them below.
const MAX_TABLE_WIDTH: usize = 140;

fn word(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    }
}

fn mark(d: Decision) -> &'static str {
    match d {
        Decision::Allow => ALLOW_MARK,
        Decision::Deny => DENY_MARK,
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, w: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(width(s))));
    out
}

fn list_or(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(", ")
    }
}

/// Why a test failed, on one line.
pub fn failure_message(r: &TestResult) -> String {
    if !r.decision_matches() {
        format!(
            "expected {}, got {}",
            word(r.spec.expect),
            word(r.outcome.decision)
        )
    } else {
        format!(
            "{} as expected, but determined by [{}] instead of [{}]",
            word(r.outcome.decision),
            r.outcome.reasons.join(", "),
            r.spec.reasons.as_deref().unwrap_or_default().join(", ")
        )
    }
}

/// The details of a failed test, several lines, no indentation.
fn failure_details(f: &FileReport, r: &TestResult) -> Vec<String> {
    let s = &r.spec;
    let mut lines = vec![
        format!("{}:{}: {}", f.file.display(), s.pos, s.field),
        format!("request:  {} {} {}", s.principal, s.action, s.resource),
        format!("expected: {}", word(s.expect)),
        format!("actual:   {}", word(r.outcome.decision)),
    ];
    if let Some(want) = &s.reasons {
        lines.push(format!(
            "expected determining policies: {}",
            list_or(want, "none")
        ));
    }
    lines.push(format!(
        "determining policies: {}",
        list_or(&r.outcome.reasons, "none (no policy applied: default deny)")
    ));
    if !r.outcome.errors.is_empty() {
        lines.push(format!("errors: {}", r.outcome.errors.join("; ")));
    }
    lines
}

fn render_table(out: &mut String, f: &FileReport, mi: usize, layout: &MatrixLayout) {
    let cells: HashMap<(usize, usize), &TestResult> = f
        .results
        .iter()
        .filter_map(|r| match r.spec.kind {
            TestKind::Cell {
                matrix,
                row,
                column,
            } if matrix == mi => Some(((row, column), r)),
            _ => None,
        })
        .collect();
    out.push_str(&format!("  {} on {}", layout.field, layout.resource));
    if let Some(ctx) = &layout.context
        && ctx.as_object().is_some_and(|o| !o.is_empty())
    {
        out.push_str(&format!(" with context {ctx}"));
    }
    out.push('\n');
    let text = |row: usize, col: usize| -> String {
        match cells.get(&(row, col)) {
            Some(r) if r.pass => mark(r.outcome.decision).to_string(),
            Some(r) => format!("{} {FAIL_MARK}", mark(r.outcome.decision)),
            None => "?".to_string(),
        }
    };
    let first = layout
        .principals
        .iter()
        .map(|p| width(p))
        .max()
        .unwrap_or(0);
    let cell_width = |c: usize| -> usize {
        (0..layout.principals.len())
            .map(|r| width(&text(r, c)))
            .max()
            .unwrap_or(1)
    };
    let full: usize = 4
        + first
        + layout
            .actions
            .iter()
            .enumerate()
            .map(|(c, a)| 2 + width(a).max(cell_width(c)))
            .sum::<usize>();
    let numbered = full > MAX_TABLE_WIDTH;
    let headers: Vec<String> = layout
        .actions
        .iter()
        .enumerate()
        .map(|(c, a)| {
            if numbered {
                format!("[{}]", c + 1)
            } else {
                a.clone()
            }
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(c, h)| width(h).max(cell_width(c)))
        .collect();
    let mut line = format!("    {}", pad("", first));
    for (h, w) in headers.iter().zip(&widths) {
        line.push_str("  ");
        line.push_str(&pad(h, *w));
    }
    out.push_str(line.trim_end());
    out.push('\n');
    for (ri, p) in layout.principals.iter().enumerate() {
        let mut line = format!("    {}", pad(p, first));
        for (ci, w) in widths.iter().enumerate() {
            line.push_str("  ");
            line.push_str(&pad(&text(ri, ci), *w));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if numbered {
        let mut line = String::from("    actions:");
        for (c, a) in layout.actions.iter().enumerate() {
            let entry = format!("  [{}] {a}", c + 1);
            if width(&line) + width(&entry) > MAX_TABLE_WIDTH {
                out.push_str(&line);
                out.push('\n');
                line = format!("{:14}{}", "", entry.trim_start());
            } else {
                line.push_str(&entry);
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
}

fn render_coverage_text(out: &mut String, cov: &Coverage) {
    out.push_str("coverage:\n");
    out.push_str(&format!(
        "  policies that determined no decision: {} of {}\n",
        cov.unused_policies.len(),
        cov.policies
    ));
    for p in &cov.unused_policies {
        let at = match (&p.file, p.line) {
            (Some(f), Some(l)) => format!("  ({}:{l})", f.display()),
            (Some(f), None) => format!("  ({})", f.display()),
            _ => String::new(),
        };
        out.push_str(&format!("    {}{at}\n", p.id));
    }
    out.push_str(&format!(
        "  actions no test exercises: {} of {}\n",
        cov.unexercised_actions.len(),
        cov.actions
    ));
    for a in &cov.unexercised_actions {
        out.push_str(&format!("    {a}\n"));
    }
}

/// The report for people: tables, case lines, failures, coverage, and the
/// closing `N passed, M failed` line.
pub fn render_pretty(report: &Report, cov: Option<&Coverage>) -> String {
    let mut out = String::new();
    if report.files.iter().any(|f| !f.matrices.is_empty()) {
        out.push_str(&format!(
            "cells: {ALLOW_MARK} allow, {DENY_MARK} deny; `{FAIL_MARK}` marks a cell whose decision (the mark) is not the expected one\n\n"
        ));
    }
    for f in &report.files {
        out.push_str(&format!(
            "{} ({}): {} passed, {} failed\n",
            f.file.display(),
            f.name,
            f.passed(),
            f.failed()
        ));
        for (mi, layout) in f.matrices.iter().enumerate() {
            render_table(&mut out, f, mi, layout);
        }
        let cases: Vec<&TestResult> = f
            .results
            .iter()
            .filter(|r| matches!(r.spec.kind, TestKind::Case { .. }))
            .collect();
        if !cases.is_empty() {
            out.push_str("  cases\n");
        }
        for r in cases {
            let s = &r.spec;
            let status = if r.pass { "ok  " } else { FAIL_MARK };
            let request = format!("{} {} {}", s.principal, s.action, s.resource);
            let label = if s.name == request {
                String::new()
            } else {
                format!("{}: ", s.name)
            };
            let mut line = format!(
                "    {status}  {label}{request} -> {}",
                word(r.outcome.decision)
            );
            if !r.pass {
                line.push_str(&format!(" ({})", failure_message(r)));
            }
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    let failures: Vec<(&FileReport, &TestResult)> =
        report.results().filter(|(_, r)| !r.pass).collect();
    if !failures.is_empty() {
        out.push_str("failures:\n");
        for (i, (f, r)) in failures.iter().enumerate() {
            let details = failure_details(f, r);
            out.push_str(&format!("  {}) {}\n", i + 1, details[0]));
            for d in &details[1..] {
                out.push_str(&format!("     {d}\n"));
            }
        }
        out.push('\n');
    }
    let with_errors = report
        .results()
        .filter(|(_, r)| r.pass && !r.outcome.errors.is_empty())
        .count();
    if with_errors > 0 {
        out.push_str(&format!(
            "note: {with_errors} passing decision(s) met evaluation errors (see --format json)\n\n"
        ));
    }
    if let Some(cov) = cov {
        render_coverage_text(&mut out, cov);
        out.push('\n');
    }
    out.push_str(&format!(
        "{} passed, {} failed\n",
        report.passed(),
        report.failed()
    ));
    out
}

/// The report for machines.
pub fn render_json(report: &Report, cov: Option<&Coverage>) -> Value {
    let files: Vec<Value> = report
        .files
        .iter()
        .map(|f| {
            let tests: Vec<Value> = f
                .results
                .iter()
                .map(|r| {
                    let s = &r.spec;
                    let (kind, at) = match s.kind {
                        TestKind::Cell {
                            matrix,
                            row,
                            column,
                        } => (
                            "cell",
                            json!({"matrix": matrix, "row": row, "column": column}),
                        ),
                        TestKind::Case { index } => ("case", json!({"case": index})),
                    };
                    json!({
                        "kind": kind,
                        "index": at,
                        "name": s.name,
                        "field": s.field,
                        "line": s.pos.line,
                        "column": s.pos.column,
                        "principal": s.principal,
                        "action": s.action,
                        "resource": s.resource,
                        "request": {
                            "principal": s.principal_uid.to_string(),
                            "action": s.action_uid.to_string(),
                            "resource": s.resource_uid.to_string(),
                        },
                        "expected": word(s.expect),
                        "expected_reasons": s.reasons,
                        "actual": word(r.outcome.decision),
                        "reasons": r.outcome.reasons,
                        "errors": r.outcome.errors,
                        "pass": r.pass,
                        "message": (!r.pass).then(|| failure_message(r)),
                    })
                })
                .collect();
            json!({
                "file": f.file.display().to_string(),
                "name": f.name,
                "passed": f.passed(),
                "failed": f.failed(),
                "tests": tests,
            })
        })
        .collect();
    let mut body = json!({
        "passed": report.passed(),
        "failed": report.failed(),
        "files": files,
    });
    if let Some(cov) = cov {
        body["coverage"] = json!({
            "unused_policies": cov.unused_policies.iter().map(|p| json!({
                "id": p.id,
                "file": p.file.as_ref().map(|f| f.display().to_string()),
                "line": p.line,
            })).collect::<Vec<_>>(),
            "unexercised_actions": cov.unexercised_actions,
            "policies": cov.policies,
            "actions": cov.actions,
        });
    }
    body
}

/// Text safe in XML 1.0 (which has no escape for most control characters).
fn xml_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// `tests/matrices/r03.yaml` -> `tests.matrices.r03`: a JUnit class name.
fn class_name(file: &Path) -> String {
    file.with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().replace('.', "_"))
        .filter(|c| !c.is_empty() && c != "_")
        .collect::<Vec<_>>()
        .join(".")
}

/// The report as JUnit XML: one `testsuite` per file, one `testcase` per
/// cell or case, a `failure` for each failed one. Coverage, when asked for,
/// is the `system-out` of a last, test-less `testsuite` named `coverage`.
pub fn render_junit(report: &Report, cov: Option<&Coverage>) -> String {
    use quick_xml::Writer;
    use quick_xml::events::{BytesDecl, BytesText, Event};

    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    let result: std::io::Result<()> = (|| {
        writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        let tests = (report.passed() + report.failed()).to_string();
        let failures = report.failed().to_string();
        writer
            .create_element("testsuites")
            .with_attribute(("name", "orgwarden test"))
            .with_attribute(("tests", tests.as_str()))
            .with_attribute(("failures", failures.as_str()))
            .with_attribute(("errors", "0"))
            .write_inner_content(|w| {
                for f in &report.files {
                    let tests = f.results.len().to_string();
                    let failures = f.failed().to_string();
                    let file = xml_text(&f.file.display().to_string());
                    let class = xml_text(&class_name(&f.file));
                    w.create_element("testsuite")
                        .with_attribute(("name", xml_text(&f.name).as_str()))
                        .with_attribute(("file", file.as_str()))
                        .with_attribute(("tests", tests.as_str()))
                        .with_attribute(("failures", failures.as_str()))
                        .with_attribute(("errors", "0"))
                        .with_attribute(("skipped", "0"))
                        .write_inner_content(|w| {
                            for r in &f.results {
                                let line = r.spec.pos.line.to_string();
                                let el = w
                                    .create_element("testcase")
                                    .with_attribute(("name", xml_text(&r.spec.name).as_str()))
                                    .with_attribute(("classname", class.as_str()))
                                    .with_attribute(("file", file.as_str()))
                                    .with_attribute(("line", line.as_str()));
                                if r.pass {
                                    el.write_empty()?;
                                } else {
                                    el.write_inner_content(|w| {
                                        w.create_element("failure")
                                            .with_attribute((
                                                "message",
                                                xml_text(&failure_message(r)).as_str(),
                                            ))
                                            .with_attribute(("type", "decision"))
                                            .write_text_content(BytesText::new(&xml_text(
                                                &failure_details(f, r).join("\n"),
                                            )))?;
                                        Ok(())
                                    })?;
                                }
                            }
                            Ok(())
                        })?;
                }
                if let Some(cov) = cov {
                    let mut text = String::new();
                    render_coverage_text(&mut text, cov);
                    w.create_element("testsuite")
                        .with_attribute(("name", "coverage"))
                        .with_attribute(("tests", "0"))
                        .with_attribute(("failures", "0"))
                        .with_attribute(("errors", "0"))
                        .with_attribute(("skipped", "0"))
                        .write_inner_content(|w| {
                            w.create_element("system-out")
                                .write_text_content(BytesText::new(&xml_text(&text)))?;
                            Ok(())
                        })?;
                }
                Ok(())
            })?;
        Ok(())
    })();
    // Writing to a Vec cannot fail.
    debug_assert!(result.is_ok());
    let mut xml = String::from_utf8(writer.into_inner()).unwrap_or_default();
    xml.push('\n');
    xml
}

// ---------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------

/// How to print the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Pretty,
    Json,
    Junit,
}

impl Format {
    pub const NAMES: &[&str] = &["pretty", "json", "junit"];
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pretty" => Ok(Format::Pretty),
            "json" => Ok(Format::Json),
            "junit" => Ok(Format::Junit),
            _ => Err(format!("unknown value `{s}` ({})", Self::NAMES.join(", "))),
        }
    }
}

/// What `orgwarden test` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Test files or directories (searched recursively for `*.yaml`, `*.yml`).
    pub inputs: Vec<PathBuf>,
    /// Policies, schema and entities.
    pub world: Paths,
    pub format: Format,
    pub coverage: bool,
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The test files under `inputs`: a file is taken as given, a directory is
/// searched recursively (hidden entries skipped). Sorted, each once.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, FileError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| FileError::new(input, None, "", format!("cannot read: {e}")))?;
        if meta.is_file() {
            out.push(input.clone());
            continue;
        }
        let mut found = Vec::new();
        let mut stack = vec![input.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| FileError::new(&dir, None, "", format!("cannot read: {e}")))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| FileError::new(&dir, None, "", format!("cannot read: {e}")))?
                    .path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                match std::fs::metadata(&path) {
                    _ if hidden => {}
                    Ok(m) if m.is_dir() => stack.push(path),
                    Ok(m) if m.is_file() && is_test_file(&path) => found.push(path),
                    _ => {}
                }
            }
        }
        if found.is_empty() {
            return Err(FileError::new(
                input,
                None,
                "",
                "no test files (*.yaml, *.yml) found here",
            ));
        }
        found.sort();
        out.extend(found);
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

/// Read, parse and prepare every test file, or every error found.
pub fn load_suites(files: &[PathBuf], worlds: &mut Worlds) -> Result<Vec<Suite>, Vec<FileError>> {
    let mut suites = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(FileError::new(path, None, "", format!("cannot read: {e}")));
                continue;
            }
        };
        let parsed = match parse(path, &text) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match prepare(&parsed, worlds) {
            Ok(s) => suites.push(s),
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(suites)
    } else {
        Err(errors)
    }
}

/// Run `orgwarden test`: the report on `out`, problems on `err`; returns
/// the exit code.
pub fn execute(opts: &Options, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let files = match discover(&opts.inputs) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_INVALID;
        }
    };
    let base = match load::load(&opts.world) {
        Ok(s) => Arc::new(s),
        Err(diags) => {
            let _ = writeln!(err, "{diags}");
            return EXIT_INVALID;
        }
    };
    let mut worlds = Worlds::new(base.clone(), opts.world.clone());
    let suites = match load_suites(&files, &mut worlds) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(err, "error: {e}");
            }
            let _ = writeln!(err, "{} invalid test file problem(s)", errors.len());
            return EXIT_INVALID;
        }
    };
    let report = run(&suites);
    let cov = opts.coverage.then(|| coverage(&report, &base));
    let text = match opts.format {
        Format::Pretty => render_pretty(&report, cov.as_ref()),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&render_json(&report, cov.as_ref()))
                .unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Junit => render_junit(&report, cov.as_ref()),
    };
    if out.write_all(text.as_bytes()).is_err() {
        return EXIT_INVALID;
    }
    if report.failed() == 0 {
        EXIT_PASSED
    } else {
        EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        namespace T {
          entity Group;
          entity User in [Group] = { email: String };
          entity Bot;
          entity Doc = { owner: User };
          action docs;
          action read in [docs] appliesTo { principal: [User, Bot], resource: [Doc], context: { ip?: ipaddr } };
          action write in [docs] appliesTo { principal: [User], resource: [Doc] };
          action delete appliesTo { principal: [User], resource: [Doc] };
        }
    "#;
    const POLICIES: &str = r#"
        @id("owner-writes")
        permit (principal, action in [T::Action::"read", T::Action::"write"], resource)
        when { resource.owner == principal };
        @id("readers-read")
        permit (principal in T::Group::"readers", action == T::Action::"read", resource);
        @id("never-deletes")
        permit (principal in T::Group::"nobody", action == T::Action::"delete", resource);
    "#;
    const ENTITIES: &str = r#"[
        {"uid": {"type": "T::Group", "id": "readers"}, "attrs": {}, "parents": []},
        {"uid": {"type": "T::User", "id": "ann"}, "attrs": {"email": "ann@x"}, "parents": []},
        {"uid": {"type": "T::User", "id": "ben"}, "attrs": {"email": "ben@x"},
         "parents": [{"type": "T::Group", "id": "readers"}]},
        {"uid": {"type": "T::Bot", "id": "b1"}, "attrs": {}, "parents": []},
        {"uid": {"type": "T::Doc", "id": "d1"},
         "attrs": {"owner": {"__entity": {"type": "T::User", "id": "ann"}}}, "parents": []}
    ]"#;

    /// A tiny world on disk, and the worlds of a run on it.
    struct World {
        dir: tempfile::TempDir,
        worlds: Worlds,
    }

    // `Paths` has more inputs than these three (optional ones); the rest keep
    // their defaults.
    #[allow(clippy::field_reassign_with_default)]
    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("schema/t.cedarschema", SCHEMA);
        write("policies/p.cedar", POLICIES);
        write("entities/e.json", ENTITIES);
        let mut paths = Paths::default();
        paths.policies = dir.path().join("policies");
        paths.schema = dir.path().join("schema");
        paths.entities = dir.path().join("entities");
        let base = Arc::new(load::load(&paths).expect("the test world loads"));
        World {
            worlds: Worlds::new(base, paths),
            dir,
        }
    }

    fn parse_str(text: &str) -> Result<TestFile, FileError> {
        parse(Path::new("t.yaml"), text)
    }

    fn prepare_str(w: &mut World, text: &str) -> Result<Suite, Vec<FileError>> {
        let path = w.dir.path().join("tests/t.yaml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = parse(&path, text).map_err(|e| vec![e])?;
        prepare(&file, &mut w.worlds)
    }

    fn errors_of(w: &mut World, text: &str) -> Vec<String> {
        prepare_str(w, text)
            .expect_err("the file is invalid")
            .iter()
            .map(|e| format!("{}: {}: {}", e.pos.unwrap(), e.field, e.message))
            .collect()
    }

    const GOOD: &str = r#"name: docs
matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, allow]
      User::"ben": [allow, deny]
      Bot::"b1": [deny]
cases:
  - name: ann reads her doc
    principal: User::"ann"
    action: read
    resource: T::Doc::"d1"
    expect: allow
    reasons: [owner-writes]
"#;

    #[test]
    fn a_row_with_the_wrong_number_of_decisions_names_file_line_and_field() {
        let e = parse_str(GOOD).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"t.yaml:8:7: matrix[0].expect."Bot::\"b1\"": 1 decision for 2 actions"#
        );
    }

    #[test]
    fn parsing_keeps_rows_in_order_with_their_positions() {
        let f = parse_str(&GOOD.replace("[deny]", "[deny, deny]")).unwrap();
        assert_eq!(f.name, "docs");
        let m = &f.matrices[0];
        let rows: Vec<(&str, Pos)> = m
            .rows
            .iter()
            .map(|r| (r.principal.value.as_str(), r.principal.pos))
            .collect();
        assert_eq!(
            rows,
            [
                ("User::\"ann\"", Pos { line: 6, column: 7 }),
                ("User::\"ben\"", Pos { line: 7, column: 7 }),
                ("Bot::\"b1\"", Pos { line: 8, column: 7 }),
            ]
        );
        assert_eq!(m.rows[1].decisions[1].value, Decision::Deny);
        assert_eq!(
            m.rows[1].decisions[1].field,
            r#"matrix[0].expect."User::\"ben\""[1]"#
        );
        assert_eq!(
            m.actions[1].pos,
            Pos {
                line: 4,
                column: 21
            }
        );
        assert_eq!(f.cases[0].field, "cases[0]");
        assert_eq!(
            f.cases[0].reasons.as_ref().unwrap()[0].value,
            "owner-writes"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let e = parse_str("matrix:\n  - resource: Doc::\"d1\"\n    actoins: [read]\n").unwrap_err();
        assert_eq!(e.field, "matrix[0].actoins");
        assert_eq!(e.pos, Some(Pos { line: 3, column: 5 }));
        assert!(e.message.contains("unknown field `actoins`"), "{e}");
        let e = parse_str("name: x\ncase: []\n").unwrap_err();
        assert_eq!(e.field, "case");
        let e = parse_str("cases:\n  - principal: User::\"ann\"\n    action: read\n    resource: Doc::\"d1\"\n    expect: allow\n    reason: []\n").unwrap_err();
        assert_eq!(e.field, "cases[0].reason");
    }

    #[test]
    fn shape_errors_inside_a_row_name_the_row() {
        let e = parse_str(
            "matrix:\n  - resource: D\n    actions: [a]\n    expect:\n      User::\"ann\": allow\n",
        )
        .unwrap_err();
        assert_eq!(e.field, r#"matrix[0].expect."User::\"ann\"""#);
        assert_eq!(e.pos.map(|p| p.line), Some(5));
    }

    #[test]
    fn decisions_are_allow_or_deny() {
        let e = parse_str("matrix:\n  - resource: D\n    actions: [a, b]\n    expect:\n      U::\"x\": [allow, alow]\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"t.yaml:5:23: matrix[0].expect."U::\"x\""[1]: `alow` is not a decision: write allow or deny"#
        );
        let e = parse_str(
            "cases:\n  - {principal: U::\"x\", action: a, resource: D::\"d\", expect: maybe}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "cases[0].expect");
    }

    #[test]
    fn a_file_without_tests_is_invalid() {
        assert!(parse_str("name: nothing\n").is_err());
        assert!(parse_str("").is_err());
        assert!(parse_str("matrix: []\ncases: []\n").is_err());
        let e =
            parse_str("matrix:\n  - resource: D\n    actions: []\n    expect: {}\n").unwrap_err();
        assert_eq!(e.field, "matrix[0].actions");
        let e = parse_str("matrix:\n  - resource: D\n    actions: [a, a]\n    expect: {}\n")
            .unwrap_err();
        assert_eq!(e.field, "matrix[0].actions[1]");
    }

    #[test]
    fn field_paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(join_key("", "matrix"), "matrix");
        assert_eq!(join_key("a", "entities_path"), "a.entities_path");
        assert_eq!(join_key("a", r#"User::"x""#), r#"a."User::\"x\"""#);
        assert_eq!(join_key("a", "1x"), r#"a."1x""#);
    }

    #[test]
    fn mistyped_names_are_errors_not_denials() {
        let mut w = world();
        let errors = errors_of(
            &mut w,
            r#"matrix:
  - resource: Doc::"d1"
    actions: [read, wirte, docs, Action::"read"]
    expect:
      User::"ann": [allow, allow, allow, allow]
      Usr::"ann": [allow, allow, allow, allow]
      User::"zoe": [allow, allow, allow, allow]
cases:
  - principal: Bot::"b1"
    action: write
    resource: Doc::"d1"
    expect: deny
  - principal: User::"ann"
    action: read
    resource: Doc::"d2"
    context: { ip: "nope" }
    expect: deny
  - principal: User::"ann"
    action: read
    resource: Doc::"d1"
    context: { ip: "nope" }
    expect: deny
    reasons: [owner-write]
"#,
        );
        let expected = [
            "3:21: matrix[0].actions[1]: unknown action `wirte`",
            "3:28: matrix[0].actions[2]: action T::Action::\"docs\" is an action group: it applies to no principal or resource",
            "3:34: matrix[0].actions[3]: `Action::\"read\"` is the same action as `read`",
            "6:7: matrix[0].expect.\"Usr::\\\"ann\\\"\": principal: unknown entity type `Usr`",
            "7:7: matrix[0].expect.\"User::\\\"zoe\\\"\": principal T::User::\"zoe\" is not in the facts (no such entity is loaded)",
            "9:16: cases[0].principal: for action `write`: principal type `T::Bot` is not valid for `T::Action::\"write\"`",
            "15:15: cases[1].resource: resource T::Doc::\"d2\" is not in the facts (no such entity is loaded)",
            "21:14: cases[2].context: for action `read`: error while evaluating `ipaddr` extension function: invalid IP address: nope",
            "23:15: cases[2].reasons[0]: no policy has the id `owner-write`",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (got, want) in errors.iter().zip(expected) {
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn a_principal_type_the_action_does_not_allow_names_the_cell() {
        let mut w = world();
        let errors = errors_of(
            &mut w,
            "matrix:\n  - resource: Doc::\"d1\"\n    actions: [read, write]\n    expect:\n      Bot::\"b1\": [deny, deny]\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "5:25: matrix[0].expect.\"Bot::\\\"b1\\\"\"[1]: for action `write`: principal type `T::Bot` is not valid"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn rows_written_two_ways_for_one_principal_are_rejected() {
        let mut w = world();
        let errors = errors_of(
            &mut w,
            "matrix:\n  - resource: Doc::\"d1\"\n    actions: [read]\n    expect:\n      User::\"ann\": [allow]\n      T::User::\"ann\": [allow]\n",
        );
        assert_eq!(
            errors,
            [
                "6:7: matrix[0].expect.\"T::User::\\\"ann\\\"\": this is the same principal as the row `User::\"ann\"`"
            ]
        );
    }

    #[test]
    fn runs_through_the_engine_and_reports_each_cell_and_case() {
        let mut w = world();
        let suite = prepare_str(
            &mut w,
            r#"matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, allow]
      User::"ben": [allow, allow]
      Bot::"b1": [deny, deny]
cases:
  - principal: User::"ann"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
  - principal: User::"ben"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
"#,
        );
        // Bot::"b1" cannot `write` (schema): fix the row and run.
        assert!(suite.is_err());
        let suite = prepare_str(
            &mut w,
            r#"matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, allow]
      User::"ben": [allow, allow]
cases:
  - principal: User::"ann"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
  - principal: User::"ben"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
  - principal: Bot::"b1"
    action: read
    resource: Doc::"d1"
    expect: deny
"#,
        )
        .unwrap();
        let report = run(&[suite]);
        let verdicts: Vec<(&str, bool)> = report
            .results()
            .map(|(_, r)| (r.spec.field.as_str(), r.pass))
            .collect();
        assert_eq!(
            verdicts,
            [
                (r#"matrix[0].expect."User::\"ann\""[0]"#, true),
                (r#"matrix[0].expect."User::\"ann\""[1]"#, true),
                (r#"matrix[0].expect."User::\"ben\""[0]"#, true),
                // ben is a reader, not the owner: write is denied.
                (r#"matrix[0].expect."User::\"ben\""[1]"#, false),
                ("cases[0]", true),
                // Allowed as expected, but by readers-read.
                ("cases[1]", false),
                ("cases[2]", true),
            ]
        );
        assert_eq!((report.passed(), report.failed()), (5, 2));
        let (_, ben_write) = report.results().nth(3).unwrap();
        assert_eq!(failure_message(ben_write), "expected allow, got deny");
        let (_, ben_read) = report.results().nth(5).unwrap();
        assert_eq!(
            failure_message(ben_read),
            "allow as expected, but determined by [readers-read] instead of [owner-writes]"
        );
    }

    #[test]
    fn file_entities_are_added_to_the_facts_for_that_file_only() {
        let mut w = world();
        let text = r#"entities:
  - uid: { type: T::User, id: cy }
    attrs: { email: cy@x }
    parents: [{ type: T::Group, id: readers }]
cases:
  - principal: User::"cy"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [readers-read]
"#;
        let report = run(&[prepare_str(&mut w, text).unwrap()]);
        assert_eq!((report.passed(), report.failed()), (1, 0));
        // Without the file's entities, cy does not exist.
        let without = text.split_once("cases:").unwrap().1;
        let errors = errors_of(&mut w, &format!("cases:{without}"));
        assert!(errors[0].contains("is not in the facts"), "{errors:?}");
        // An entity that does not conform to the schema is an error at its item.
        let errors = errors_of(&mut w, &text.replace("attrs: { email: cy@x }", "attrs: {}"));
        assert!(errors[0].starts_with("2:5: entities[0]: "), "{errors:?}");
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn entities_path_replaces_the_entities_relative_to_the_file() {
        let mut w = world();
        let other = w.dir.path().join("tests/fixtures/other");
        std::fs::create_dir_all(&other).unwrap();
        // Here ann is a reader and ben is not.
        let swapped = ENTITIES
            .replace(r#""id": "ann"}, "attrs": {"email": "ann@x"}, "parents": []"#, r#""id": "ann"}, "attrs": {"email": "ann@x"}, "parents": [{"type": "T::Group", "id": "readers"}]"#)
            .replace(r#"{"email": "ben@x"},
         "parents": [{"type": "T::Group", "id": "readers"}]"#, r#"{"email": "ben@x"}, "parents": []"#);
        assert_ne!(swapped, ENTITIES);
        std::fs::write(other.join("e.json"), swapped).unwrap();
        let suite = prepare_str(
            &mut w,
            r#"entities_path: fixtures/other
matrix:
  - resource: Doc::"d1"
    actions: [read]
    expect:
      User::"ben": [deny]
"#,
        )
        .unwrap();
        assert_eq!(run(&[suite]).failed(), 0);
        let errors = errors_of(
            &mut w,
            "entities_path: fixtures/none\ncases:\n  - {principal: User::\"ann\", action: read, resource: Doc::\"d1\", expect: allow}\n",
        );
        assert!(
            errors[0].starts_with("1:16: entities_path: cannot read"),
            "{errors:?}"
        );
    }

    fn sample_report(w: &mut World) -> Report {
        let suite = prepare_str(
            w,
            r#"name: "docs <&> \"quoted\""
matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, deny]
cases:
  - name: "a <case> & 'more'"
    principal: User::"ben"
    action: read
    resource: Doc::"d1"
    expect: allow
"#,
        )
        .unwrap();
        run(&[suite])
    }

    #[test]
    fn pretty_output_ends_with_the_counts_and_marks_failing_cells() {
        let mut w = world();
        let report = sample_report(&mut w);
        let text = render_pretty(&report, None);
        assert_eq!(text.lines().last(), Some("2 passed, 1 failed"));
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("User::\"ann\""))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["User::\"ann\"", "✓", "✓", "FAIL"]
        );
        assert!(text.contains("expected: deny"), "{text}");
        assert!(text.contains("actual:   allow"), "{text}");
        assert!(
            text.contains("determining policies: owner-writes"),
            "{text}"
        );
        assert!(
            text.contains("    ok    a <case> & 'more': User::\"ben\" read Doc::\"d1\" -> allow"),
            "{text}"
        );
    }

    #[test]
    fn junit_is_well_formed_and_counts_tests_and_failures() {
        use quick_xml::events::Event;
        let mut w = world();
        let report = sample_report(&mut w);
        let cov = coverage(&report, &w.worlds.base);
        let xml = render_junit(&report, Some(&cov));
        let mut reader = quick_xml::Reader::from_str(&xml);
        let (mut cases, mut failures) = (0, 0);
        let mut names = Vec::new();
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    "testcase" => cases += 1,
                    "failure" => failures += 1,
                    "testsuite" => {
                        let name = e.try_get_attribute("name").unwrap().unwrap();
                        let name = name
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .unwrap();
                        names.push(name.to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        assert_eq!((cases, failures), (3, 1), "{xml}");
        assert_eq!(names, ["docs <&> \"quoted\"", "coverage"]);
        assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
        assert!(
            xml.contains("a &lt;case&gt; &amp; &apos;more&apos;"),
            "{xml}"
        );
        assert!(
            xml.contains("never-deletes"),
            "coverage is in the report: {xml}"
        );
    }

    #[test]
    fn json_report_has_each_test_with_expected_actual_reasons_and_pass() {
        let mut w = world();
        let report = sample_report(&mut w);
        let v = render_json(&report, None);
        assert_eq!(
            (v["passed"].as_u64(), v["failed"].as_u64()),
            (Some(2), Some(1))
        );
        let t = &v["files"][0]["tests"][1];
        assert_eq!(t["kind"], "cell");
        assert_eq!(t["action"], "write");
        assert_eq!(t["request"]["principal"], "T::User::\"ann\"");
        assert_eq!(
            (t["expected"].as_str(), t["actual"].as_str()),
            (Some("deny"), Some("allow"))
        );
        assert_eq!(t["reasons"], json!(["owner-writes"]));
        assert_eq!(t["pass"], false);
        assert_eq!(t["line"], 6);
        assert!(v.get("coverage").is_none());
    }

    #[test]
    fn coverage_lists_unused_policies_and_unexercised_actions() {
        let mut w = world();
        let report = sample_report(&mut w);
        let cov = coverage(&report, &w.worlds.base);
        let unused: Vec<&str> = cov.unused_policies.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(unused, ["never-deletes"]);
        assert_eq!(cov.unused_policies[0].line, Some(7));
        assert_eq!(cov.unexercised_actions, ["delete"]);
        assert_eq!((cov.policies, cov.actions), (3, 3));
    }

    #[test]
    fn discover_finds_yaml_files_recursively_and_rejects_empty_directories() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "b.yaml",
            "a/c.yml",
            "a/d.json",
            ".hidden/e.yaml",
            "a/.f.yaml",
        ] {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let found = discover(&[dir.path().to_path_buf()]).unwrap();
        let rel: Vec<_> = found
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        assert_eq!(rel, [PathBuf::from("a/c.yml"), PathBuf::from("b.yaml")]);
        let empty = dir.path().join(".hidden");
        std::fs::remove_file(empty.join("e.yaml")).unwrap();
        assert!(discover(&[empty]).is_err());
        assert!(discover(&[dir.path().join("missing")]).is_err());
    }

    #[test]
    fn execute_exit_codes_are_0_1_and_2() {
        let w = world();
        let tests = w.dir.path().join("tests");
        std::fs::create_dir_all(&tests).unwrap();
        let file = tests.join("t.yaml");
        let opts = Options {
            inputs: vec![tests.clone()],
            world: w.worlds.paths.clone(),
            format: Format::Pretty,
            coverage: false,
        };
        let exec = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = execute(&opts, &mut out, &mut err);
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        };
        let case = |expect: &str| {
            format!(
                "cases:\n  - {{principal: User::\"ann\", action: read, resource: Doc::\"d1\", expect: {expect}}}\n"
            )
        };
        let (code, out, _) = exec(&case("allow"));
        assert_eq!(
            (code, out.lines().last()),
            (EXIT_PASSED, Some("1 passed, 0 failed"))
        );
        let (code, out, _) = exec(&case("deny"));
        assert_eq!(
            (code, out.lines().last()),
            (EXIT_FAILED, Some("0 passed, 1 failed"))
        );
        let (code, out, err) = exec(&case("perhaps"));
        assert_eq!(code, EXIT_INVALID);
        assert!(out.is_empty());
        assert!(
            err.contains("t.yaml:2:73: cases[0].expect: `perhaps` is not a decision"),
            "{err}"
        );
    }
}

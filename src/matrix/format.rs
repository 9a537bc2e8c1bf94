//! The test-file format: YAML files of `matrix` tables (principals x
//! actions per resource) and single `cases`, parsed without a schema into a
//! [`TestFile`], every item with its line, column and field path
//! (`matrix[0].expect."User::\"alice\""`); and [`FileError`], a problem
//! at such a place.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use serde_json::Value;
use serde_saphyr::Spanned;

use crate::yaml::{self, Pairs};

use crate::engine::Decision;

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
    pub(crate) fn new(
        file: &Path,
        pos: Option<Pos>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
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
pub(crate) fn join_key(parent: &str, key: &str) -> String {
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
    let pos = e
        .location()
        .as_ref()
        .and_then(yaml::position)
        .map(|(line, column)| Pos { line, column });
    FileError::new(path, pos, &field, yaml::message(e))
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

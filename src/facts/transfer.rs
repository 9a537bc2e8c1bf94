//! Moving facts between entity files and a store: `facts import` and
//! `facts export`.
//!
//! An import reads and validates the files exactly as a load does
//! ([`crate::load::load`]: schema, strict types, domain checks), then
//! writes every entity, in Cedar's JSON with its parents sorted, under its
//! canonical uid, as the next revision in one transaction. An export
//! writes the store's entities back as one file per entity type, sorted by
//! uid, which load to the same entities and so decide the same.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Entity, EntityUid};
use serde_json::{Value, json};

use super::store::{Commit, Store, StoreError};
use crate::diag::Diagnostics;
use crate::load::{self, Paths};
use crate::snapshot::{FileKind, is_action};

/// Why an import or export did nothing.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error(
        "the fact store already holds {entities} entities (revision {revision}): pass --replace to replace them in one revision"
    )]
    NotEmpty { entities: usize, revision: u64 },
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub revision: u64,
    pub entities: usize,
    pub deleted: usize,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    pub revision: u64,
    pub entities: usize,
    pub files: Vec<PathBuf>,
}

/// The entities of `paths.entities`, validated as a load validates them
/// (with `paths.policies` and `paths.schema`), as `(canonical uid, Cedar
/// JSON)` in file order.
pub fn read_entities(paths: &Paths) -> Result<Vec<(String, Value)>, Diagnostics> {
    let snapshot = load::load(paths)?;
    let texts = load::read_texts(&paths.entities, FileKind::Entities)?;
    let mut out = Vec::with_capacity(snapshot.entity_total);
    for file in &texts {
        // The load above parsed the same texts: these cannot fail.
        let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&file.text) else {
            continue;
        };
        for item in items {
            let Ok(entity) = Entity::from_json_value(item, Some(&snapshot.schema)) else {
                continue;
            };
            if is_action(&entity.uid()) {
                continue;
            }
            let Ok(json) = entity.to_json_value() else {
                continue;
            };
            out.push((entity.uid().to_string(), canonical(json)));
        }
    }
    Ok(out)
}

/// Cedar's JSON of an entity with its parents in uid order (Cedar writes
/// them in hash order).
pub fn canonical(mut json: Value) -> Value {
    if let Some(Value::Array(parents)) = json.get_mut("parents") {
        parents.sort_by_key(|p| {
            let p = p.get("__entity").unwrap_or(p);
            (
                p.get("type").and_then(Value::as_str).map(str::to_string),
                p.get("id").and_then(Value::as_str).map(str::to_string),
            )
        });
    }
    json
}

/// Write `entities` (from [`read_entities`]) into `store` as one revision
/// by `import`. A store that holds entities is refused unless `replace`:
/// then the same revision deletes every entity the import does not hold.
pub async fn import(
    store: &Store,
    entities: Vec<(String, Value)>,
    replace: bool,
) -> Result<ImportReport, TransferError> {
    let (head, existing) = store.snapshot().await?;
    if !existing.is_empty() && !replace {
        return Err(TransferError::NotEmpty {
            entities: existing.len(),
            revision: head,
        });
    }
    let imported: HashSet<&str> = entities.iter().map(|(u, _)| u.as_str()).collect();
    let deletes: Vec<String> = existing
        .into_iter()
        .filter(|e| !imported.contains(e.uid.as_str()))
        .map(|e| e.uid)
        .collect();
    let report = ImportReport {
        revision: head + 1,
        entities: entities.len(),
        deleted: deletes.len(),
    };
    let commit = Commit {
        actor: "import".into(),
        ops: json!([{
            "op": "import",
            "entities": report.entities,
            "deleted": report.deleted,
            "replace": replace,
        }]),
        upserts: entities,
        deletes,
        tags: Vec::new(),
    };
    let revisions = store.commit_group(head, &[commit]).await?;
    debug_assert_eq!(revisions, vec![report.revision]);
    Ok(report)
}

/// The file an entity type is exported to: its name in snake case
/// (`Prefect::ServiceAccount` -> `service_account.json`), with the
/// namespace in front when two types share a name.
fn file_names(types: &[String]) -> BTreeMap<String, String> {
    let snake = |s: &str| {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        }
        out
    };
    let base = |t: &str| t.rsplit("::").next().unwrap_or(t).to_string();
    let mut out = BTreeMap::new();
    for t in types {
        let shared = types.iter().filter(|o| base(o) == base(t)).count() > 1;
        let name = if shared {
            t.split("::").map(snake).collect::<Vec<_>>().join("_")
        } else {
            snake(&base(t))
        };
        out.insert(t.clone(), format!("{name}.json"));
    }
    out
}

/// Write the store's entities to `dir` (created; refused when it holds
/// anything) as one pretty-printed file per entity type, sorted by uid.
pub async fn export(store: &Store, dir: &Path) -> Result<ExportReport, TransferError> {
    let out_err = |path: &Path, message: String| TransferError::Output {
        path: path.to_path_buf(),
        message,
    };
    if dir.exists() {
        let mut listing = std::fs::read_dir(dir).map_err(|e| out_err(dir, e.to_string()))?;
        if listing.next().is_some() {
            return Err(out_err(
                dir,
                "the export directory is not empty (export writes into a new or empty directory)"
                    .into(),
            ));
        }
    }
    let (revision, entities) = store.snapshot().await?;
    let count = entities.len();
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in entities {
        let uid = EntityUid::from_str(&e.uid).map_err(|err| {
            StoreError::Corrupt(format!("stored uid `{}` does not parse: {err}", e.uid))
        })?;
        by_type
            .entry(uid.type_name().to_string())
            .or_default()
            .push(e.json);
    }
    let types: Vec<String> = by_type.keys().cloned().collect();
    let names = file_names(&types);
    std::fs::create_dir_all(dir).map_err(|e| out_err(dir, e.to_string()))?;
    let mut files = Vec::new();
    for (ty, items) in by_type {
        let path = dir.join(&names[&ty]);
        let mut text = serde_json::to_string_pretty(&Value::Array(items))
            .map_err(|e| out_err(&path, e.to_string()))?;
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| out_err(&path, e.to_string()))?;
        files.push(path);
    }
    Ok(ExportReport {
        revision,
        entities: count,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_snake_case_and_distinct() {
        let names = file_names(&[
            "Prefect::ServiceAccount".into(),
            "Prefect::User".into(),
            "Other::User".into(),
        ]);
        assert_eq!(names["Prefect::ServiceAccount"], "service_account.json");
        assert_eq!(names["Prefect::User"], "prefect_user.json");
        assert_eq!(names["Other::User"], "other_user.json");
    }

    #[test]
    fn canonical_sorts_parents() {
        let j = canonical(json!({"uid": {"type": "A", "id": "x"}, "parents": [
            {"type": "B", "id": "z"}, {"type": "B", "id": "a"}, {"type": "A", "id": "q"}
        ]}));
        assert_eq!(
            j["parents"],
            json!([{"type": "A", "id": "q"}, {"type": "B", "id": "a"}, {"type": "B", "id": "z"}])
        );
    }
}

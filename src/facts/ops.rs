//! The write batch: `{"operations": [...], "if_revision": N}`, an atomic list
//! of operations on the facts, each an object with an `op` field:
//!
//! | op | fields |
//! |----|--------|
//! | `upsert` | `entity`: a whole entity in Cedar's JSON format |
//! | `delete` | `uid` |
//! | `set_tag` / `remove_tag` | `uid`, `key`, and for `set_tag` a `value` |
//! | `add_parent` / `remove_parent` | `uid`, `parent` |
//! | `set_attr` / `remove_attr` | `uid`, `attr`, and for `set_attr` a `value` |
//!
//! Uids are written as the request API writes them (`"User::\"alice\""`, or
//! `{"type": "User", "id": "alice"}`; a type without its namespace resolves
//! in the schema, see [`crate::names`]). Values are in Cedar's JSON value
//! format. Parsing checks the shape only (every error names its field, as
//! `operations[3].uid`); the view checks the rest.

use serde::Deserialize;
use serde_json::Value;

use crate::names::EntityRef;

/// Bounds on a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most operations in one batch.
    pub max_operations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 1000,
        }
    }
}

/// An atomic batch of operations.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub operations: Vec<Op>,
    /// Apply only when the facts are at this revision.
    pub if_revision: Option<u64>,
}

/// One operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Upsert {
        entity: Value,
    },
    Delete {
        uid: EntityRef,
    },
    SetTag {
        uid: EntityRef,
        key: String,
        value: Value,
    },
    RemoveTag {
        uid: EntityRef,
        key: String,
    },
    AddParent {
        uid: EntityRef,
        parent: EntityRef,
    },
    RemoveParent {
        uid: EntityRef,
        parent: EntityRef,
    },
    SetAttr {
        uid: EntityRef,
        attr: String,
        value: Value,
    },
    RemoveAttr {
        uid: EntityRef,
        attr: String,
    },
}

impl Op {
    /// The wire name of the operation.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Upsert { .. } => "upsert",
            Op::Delete { .. } => "delete",
            Op::SetTag { .. } => "set_tag",
            Op::RemoveTag { .. } => "remove_tag",
            Op::AddParent { .. } => "add_parent",
            Op::RemoveParent { .. } => "remove_parent",
            Op::SetAttr { .. } => "set_attr",
            Op::RemoveAttr { .. } => "remove_attr",
        }
    }
}

/// A batch that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FormatError {
    /// The field at fault (`operations[3].uid`; empty for the whole body).
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FormatError {
    FormatError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    operations: Vec<Value>,
    #[serde(default)]
    if_revision: Option<u64>,
}

impl Batch {
    /// Parse a batch from JSON text.
    pub fn from_json_str(text: &str, limits: &Limits) -> Result<Batch, FormatError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawBatch = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        Self::from_raw(raw, limits)
    }

    /// Parse a batch from a JSON value.
    pub fn from_json_value(value: Value, limits: &Limits) -> Result<Batch, FormatError> {
        let raw: RawBatch = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            err(
                if path == "." { String::new() } else { path },
                e.into_inner().to_string(),
            )
        })?;
        Self::from_raw(raw, limits)
    }

    fn from_raw(raw: RawBatch, limits: &Limits) -> Result<Batch, FormatError> {
        if raw.operations.len() > limits.max_operations {
            return Err(err(
                "operations",
                format!(
                    "{} operations in one batch; at most {} are accepted",
                    raw.operations.len(),
                    limits.max_operations
                ),
            ));
        }
        let operations = raw
            .operations
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_op(&format!("operations[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch {
            operations,
            if_revision: raw.if_revision,
        })
    }
}

const KINDS: &str =
    "upsert, delete, set_tag, remove_tag, add_parent, remove_parent, set_attr, remove_attr";

fn parse_op(at: &str, value: Value) -> Result<Op, FormatError> {
    let Value::Object(mut map) = value else {
        return Err(err(at, "an operation is a JSON object with an `op` field"));
    };
    let kind = match map.remove("op") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(err(format!("{at}.op"), "`op` must be a string")),
        None => return Err(err(at, format!("missing field `op` (one of {KINDS})"))),
    };
    let allowed: &[&str] = match kind.as_str() {
        "upsert" => &["entity"],
        "delete" => &["uid"],
        "set_tag" => &["uid", "key", "value"],
        "remove_tag" => &["uid", "key"],
        "add_parent" | "remove_parent" => &["uid", "parent"],
        "set_attr" => &["uid", "attr", "value"],
        "remove_attr" => &["uid", "attr"],
        other => {
            return Err(err(
                format!("{at}.op"),
                format!("unknown operation `{other}` (one of {KINDS})"),
            ));
        }
    };
    let mut unknown: Vec<&String> = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    unknown.sort();
    if let Some(k) = unknown.first() {
        return Err(err(
            format!("{at}.{k}"),
            format!(
                "unknown field `{k}` for `{kind}` (expected {})",
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut take = |name: &str| -> Result<Value, FormatError> {
        map.remove(name)
            .ok_or_else(|| err(at, format!("missing field `{name}` for `{kind}`")))
    };
    let uid = |v: Value, name: &str| entity_ref(&format!("{at}.{name}"), v);
    let text = |v: Value, name: &str| match v {
        Value::String(s) => Ok(s),
        _ => Err(err(
            format!("{at}.{name}"),
            format!("`{name}` must be a string"),
        )),
    };
    Ok(match kind.as_str() {
        "upsert" => {
            let entity = take("entity")?;
            if !entity.is_object() {
                return Err(err(
                    format!("{at}.entity"),
                    "`entity` must be an entity object in Cedar's JSON format",
                ));
            }
            Op::Upsert { entity }
        }
        "delete" => Op::Delete {
            uid: uid(take("uid")?, "uid")?,
        },
        "set_tag" => Op::SetTag {
            uid: uid(take("uid")?, "uid")?,
            key: text(take("key")?, "key")?,
            value: take("value")?,
        },
        "remove_tag" => Op::RemoveTag {
            uid: uid(take("uid")?, "uid")?,
            key: text(take("key")?, "key")?,
        },
        "add_parent" => Op::AddParent {
            uid: uid(take("uid")?, "uid")?,
            parent: uid(take("parent")?, "parent")?,
        },
        "remove_parent" => Op::RemoveParent {
            uid: uid(take("uid")?, "uid")?,
            parent: uid(take("parent")?, "parent")?,
        },
        "set_attr" => Op::SetAttr {
            uid: uid(take("uid")?, "uid")?,
            attr: text(take("attr")?, "attr")?,
            value: take("value")?,
        },
        _ => Op::RemoveAttr {
            uid: uid(take("uid")?, "uid")?,
            attr: text(take("attr")?, "attr")?,
        },
    })
}

/// A uid: `"Type::\"id\""`, `{"type": ..., "id": ...}`, or Cedar's
/// `{"__entity": {"type": ..., "id": ...}}`.
fn entity_ref(at: &str, v: Value) -> Result<EntityRef, FormatError> {
    let shape = || {
        err(
            at,
            "an entity uid is `Type::\"id\"` or {\"type\": ..., \"id\": ...} (strings)",
        )
    };
    match v {
        Value::String(s) => Ok(EntityRef::Text(s)),
        Value::Object(mut m) => {
            if let Some(inner) = m.remove("__entity") {
                if !m.is_empty() {
                    return Err(shape());
                }
                return entity_ref(at, inner);
            }
            if m.len() != 2 {
                return Err(shape());
            }
            match (m.remove("type"), m.remove("id")) {
                (Some(Value::String(type_name)), Some(Value::String(id))) => {
                    Ok(EntityRef::Object { type_name, id })
                }
                _ => Err(shape()),
            }
        }
        _ => Err(shape()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Batch, FormatError> {
        Batch::from_json_value(v, &Limits::default())
    }

    #[test]
    fn parses_every_operation_kind_and_both_uid_forms() {
        let b = parse(json!({"if_revision": 7, "operations": [
            {"op": "upsert", "entity": {"uid": {"type": "T", "id": "a"}, "attrs": {}, "parents": []}},
            {"op": "delete", "uid": "T::\"a\""},
            {"op": "set_tag", "uid": {"type": "T", "id": "a"}, "key": "k", "value": 1},
            {"op": "remove_tag", "uid": {"__entity": {"type": "T", "id": "a"}}, "key": "k"},
            {"op": "add_parent", "uid": "T::\"a\"", "parent": "G::\"g\""},
            {"op": "remove_parent", "uid": "T::\"a\"", "parent": "G::\"g\""},
            {"op": "set_attr", "uid": "T::\"a\"", "attr": "x", "value": "y"},
            {"op": "remove_attr", "uid": "T::\"a\"", "attr": "x"},
        ]}))
        .unwrap();
        assert_eq!(b.if_revision, Some(7));
        let names: Vec<&str> = b.operations.iter().map(Op::name).collect();
        assert_eq!(
            names,
            [
                "upsert",
                "delete",
                "set_tag",
                "remove_tag",
                "add_parent",
                "remove_parent",
                "set_attr",
                "remove_attr"
            ]
        );
        assert_eq!(
            b.operations[3],
            Op::RemoveTag {
                uid: EntityRef::Object {
                    type_name: "T".into(),
                    id: "a".into()
                },
                key: "k".into()
            }
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"operations": [{"op": "delete"}]}), "operations[0]"),
            (json!({"operations": [{}, {"op": "nope"}]}), "operations[0]"),
            (json!({"operations": [{"op": "nope"}]}), "operations[0].op"),
            (
                json!({"operations": [{"op": "delete", "uid": "T::\"a\""}, {"op": "delete", "uid": 3}]}),
                "operations[1].uid",
            ),
            (
                json!({"operations": [{"op": "set_tag", "uid": "T::\"a\"", "key": 1, "value": 1}]}),
                "operations[0].key",
            ),
            (
                json!({"operations": [{"op": "delete", "uid": "T::\"a\"", "extra": 1}]}),
                "operations[0].extra",
            ),
            (
                json!({"operations": [{"op": "upsert", "entity": []}]}),
                "operations[0].entity",
            ),
            (json!({"operations": [], "if_revision": "x"}), "if_revision"),
            (json!({"operations": 1}), "operations"),
            (json!({"ops": []}), "ops"),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
    }

    #[test]
    fn batches_are_bounded() {
        let op = json!({"op": "delete", "uid": "T::\"a\""});
        let limits = Limits { max_operations: 2 };
        let ok = json!({"operations": [op.clone(), op.clone()]});
        assert!(Batch::from_json_value(ok, &limits).is_ok());
        let over = json!({"operations": [op.clone(), op.clone(), op]});
        let e = Batch::from_json_value(over, &limits).unwrap_err();
        assert_eq!(e.field, "operations");
        let text = r#"{"operations": [{"op": "delete", "uid": "T::\"a\""}]}"#;
        assert!(Batch::from_json_str(text, &limits).is_ok());
    }
}

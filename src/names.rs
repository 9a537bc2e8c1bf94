//! Names: how users write entity references, and how they resolve in a schema.
//!
//! A reference is a `Type::"id"` string or a `{"type": ..., "id": ...}` object.
//! A type written without its namespace (`User`) resolves to the one schema
//! type with that basename (`Prefect::User`); an action may be written as its
//! bare id (`see_flows`), as `Action::"see_flows"` or in full. Ambiguous and
//! unknown names are errors, never guesses. A basename that matches no type
//! exactly may match one type ignoring ASCII case (`user` for AuthZEN clients).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema};
use serde::{Deserialize, Serialize};

/// Is this the uid of an action?
pub fn is_action(uid: &EntityUid) -> bool {
    uid.type_name().basename() == "Action"
}

/// A reference as it arrives on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntityRef {
    /// `Type::"id"` (for actions also the bare action id).
    Text(String),
    /// `{"type": "Type", "id": "id"}`.
    Object {
        #[serde(rename = "type")]
        type_name: String,
        id: String,
    },
}

impl From<&str> for EntityRef {
    fn from(s: &str) -> Self {
        EntityRef::Text(s.to_string())
    }
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "`{0}` is not an entity reference: write `Type::\"id\"` or {{\"type\": ..., \"id\": ...}}"
    )]
    Malformed(String),
    #[error("unknown entity type `{0}`")]
    UnknownType(String),
    #[error("entity type `{name}` is ambiguous: it could be any of {candidates}")]
    AmbiguousType { name: String, candidates: String },
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    #[error("action `{name}` is ambiguous: it could be any of {candidates}")]
    AmbiguousAction { name: String, candidates: String },
}

/// The schema's names, indexed for resolution. Built once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Full type name -> type, for every entity type of the schema.
    types: HashMap<String, EntityTypeName>,
    /// Basename -> every full type with that basename.
    by_basename: HashMap<String, Vec<EntityTypeName>>,
    /// Action id -> every action with that id.
    actions_by_id: HashMap<String, Vec<EntityUid>>,
    /// Full action reference (`Ns::Action::"id"`) -> action.
    actions: HashMap<String, EntityUid>,
}

impl Names {
    pub fn new(schema: &Schema) -> Self {
        let mut names = Names::default();
        for ty in schema.entity_types() {
            names.types.insert(ty.to_string(), ty.clone());
            names
                .by_basename
                .entry(ty.basename().to_string())
                .or_default()
                .push(ty.clone());
        }
        for action in schema.actions() {
            names.actions.insert(action.to_string(), action.clone());
            names
                .actions_by_id
                .entry(action.id().unescaped().to_string())
                .or_default()
                .push(action.clone());
        }
        names
    }

    /// Every action of the schema, in a stable order.
    pub fn actions(&self) -> Vec<&EntityUid> {
        let sorted: BTreeMap<&String, &EntityUid> = self.actions.iter().collect();
        sorted.into_values().collect()
    }

    /// Resolve a type name, with or without namespace.
    pub fn resolve_type(&self, name: &str) -> Result<EntityTypeName, NameError> {
        if let Some(t) = self.types.get(name) {
            return Ok(t.clone());
        }
        if !name.contains("::") {
            match self.by_basename.get(name).map(Vec::as_slice) {
                Some([only]) => return Ok(only.clone()),
                Some(many) if many.len() > 1 => {
                    return Err(NameError::AmbiguousType {
                        name: name.to_string(),
                        candidates: join(many.iter().map(ToString::to_string)),
                    });
                }
                _ => {}
            }
            // AuthZEN clients often write types in lower case (`user`).
            let folded: Vec<&EntityTypeName> = self
                .by_basename
                .iter()
                .filter(|(base, _)| base.eq_ignore_ascii_case(name))
                .flat_map(|(_, types)| types)
                .collect();
            if let [only] = folded.as_slice() {
                return Ok((*only).clone());
            }
        }
        Err(NameError::UnknownType(name.to_string()))
    }

    /// Resolve a principal or resource reference.
    pub fn resolve_entity(&self, r: &EntityRef) -> Result<EntityUid, NameError> {
        let (ty, id) = match r {
            EntityRef::Object { type_name, id } => (type_name.clone(), id.clone()),
            EntityRef::Text(text) => split_reference(text)?,
        };
        let ty = self.resolve_type(&ty)?;
        Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
    }

    /// Resolve an action: a bare id, `Action::"id"`, or `Ns::Action::"id"`.
    pub fn resolve_action(&self, r: &EntityRef) -> Result<EntityUid, NameError> {
        let (ty, id) = match r {
            EntityRef::Object { type_name, id } => (Some(type_name.clone()), id.clone()),
            EntityRef::Text(text) if text.contains("::\"") => {
                let (t, i) = split_reference(text)?;
                (Some(t), i)
            }
            EntityRef::Text(text) => (None, text.clone()),
        };
        let shown = || match &ty {
            Some(t) => format!("{t}::{id:?}"),
            None => id.clone(),
        };
        let candidates: Vec<&EntityUid> = self
            .actions_by_id
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter(|a| match &ty {
                        None => true,
                        Some(t) if t == "Action" => true,
                        Some(t) => a.type_name().to_string() == *t,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match candidates.as_slice() {
            [only] => Ok((*only).clone()),
            [] => Err(NameError::UnknownAction(shown())),
            many => Err(NameError::AmbiguousAction {
                name: shown(),
                candidates: join(many.iter().map(ToString::to_string)),
            }),
        }
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    let mut v: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    v.sort();
    v.join(", ")
}

/// Split `Ns::Type::"id"` into its type and (unescaped) id, using Cedar's own
/// parser for the id's string escapes.
pub fn split_reference(text: &str) -> Result<(String, String), NameError> {
    let malformed = || NameError::Malformed(text.to_string());
    let at = text.find("::\"").ok_or_else(malformed)?;
    let ty = text[..at].trim();
    if ty.is_empty() {
        return Err(malformed());
    }
    // A plain quoted id (printable ASCII, no quote or backslash) is its own
    // unescaped text, as Cedar's parser would give it.
    let quoted = &text[at + 2..];
    if let Some(id) = plain_quoted(quoted) {
        return Ok((ty.to_string(), id.to_string()));
    }
    // Parse with a placeholder type so that the type need not be known yet.
    let probe = format!("Probe::{quoted}");
    let uid = EntityUid::from_str(&probe).map_err(|_| malformed())?;
    Ok((ty.to_string(), uid.id().unescaped().to_string()))
}

/// The id of `"id"` when it needs no unescaping: printable ASCII without a
/// quote, an apostrophe (which Cedar's unescaping refuses) or a backslash,
/// and nothing after the closing quote.
fn plain_quoted(quoted: &str) -> Option<&str> {
    let id = quoted.strip_prefix('"')?.strip_suffix('"')?;
    id.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && !b"\"'\\".contains(&b))
        .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let src = r#"
            namespace A { entity User; entity Doc; action read appliesTo { principal: User, resource: Doc }; }
            namespace B { entity User; action read appliesTo { principal: User, resource: A::Doc }; action write appliesTo { principal: User, resource: A::Doc }; }
        "#;
        Schema::from_cedarschema_str(src).unwrap().0
    }

    #[test]
    fn plain_ids_split_as_cedar_parses_them() {
        let cedar = |text: &str| -> Option<(String, String)> {
            let at = text.find("::\"")?;
            let uid = EntityUid::from_str(&format!("Probe::{}", &text[at + 2..])).ok()?;
            Some((
                text[..at].trim().to_string(),
                uid.id().unescaped().to_string(),
            ))
        };
        // Every pair of printable ASCII characters, inside an id.
        for a in 0x20u8..0x7f {
            for b in 0x20u8..0x7f {
                let text = format!("User::\"x{}{}y\"", a as char, b as char);
                assert_eq!(split_reference(&text).ok(), cedar(&text), "{text:?}");
            }
        }
        for text in [
            r#"User::"alice""#,
            r#"Prefect::User::"org1-u2""#,
            r#" User ::"a b c""#,
            r#"User::"""#,
            r#"User::"with space and !#$%&()*+,-./:;<=>?@[]^_`{|}~""#,
            r#"User::"it's""#,
            r#"User::"tab\there""#,
            r#"User::"quote\"inside""#,
            r#"User::"back\\slash""#,
            r#"User::"unicode \u{e9}""#,
            "User::\"é\"",
            "User::\"new\nline\"",
            r#"User::"a" "#,
            r#"User::"a"x"#,
            r#"User::"a"#,
            r#"User::"a"b""#,
        ] {
            let fast = split_reference(text).ok();
            assert_eq!(fast, cedar(text), "{text:?}");
        }
    }

    #[test]
    fn resolves_unique_basenames_and_rejects_ambiguous_ones() {
        let n = Names::new(&schema());
        assert_eq!(n.resolve_type("Doc").unwrap().to_string(), "A::Doc");
        assert_eq!(n.resolve_type("B::User").unwrap().to_string(), "B::User");
        assert!(matches!(
            n.resolve_type("User"),
            Err(NameError::AmbiguousType { .. })
        ));
        assert!(matches!(
            n.resolve_type("Nope"),
            Err(NameError::UnknownType(_))
        ));
    }

    #[test]
    fn resolves_entities_in_both_forms() {
        let n = Names::new(&schema());
        let a = n
            .resolve_entity(&EntityRef::from(r#"Doc::"x \"y\"""#))
            .unwrap();
        assert_eq!(a.type_name().to_string(), "A::Doc");
        assert_eq!(a.id().unescaped(), "x \"y\"");
        let b = n
            .resolve_entity(&EntityRef::Object {
                type_name: "A::User".into(),
                id: "u".into(),
            })
            .unwrap();
        assert_eq!(b.to_string(), r#"A::User::"u""#);
        assert!(matches!(
            n.resolve_entity(&EntityRef::from("alice")),
            Err(NameError::Malformed(_))
        ));
    }

    #[test]
    fn resolves_actions_by_id_when_unique() {
        let n = Names::new(&schema());
        assert_eq!(
            n.resolve_action(&"write".into()).unwrap().to_string(),
            r#"B::Action::"write""#
        );
        assert!(matches!(
            n.resolve_action(&"read".into()),
            Err(NameError::AmbiguousAction { .. })
        ));
        assert_eq!(
            n.resolve_action(&r#"A::Action::"read""#.into())
                .unwrap()
                .to_string(),
            r#"A::Action::"read""#
        );
        assert!(matches!(
            n.resolve_action(&"delete".into()),
            Err(NameError::UnknownAction(_))
        ));
    }
}

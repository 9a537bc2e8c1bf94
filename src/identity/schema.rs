//! The type of `context.token` in the schema: which actions' contexts
//! declare a `token` record, and the type of each of its attributes, so that
//! the claims an operator shows to policies are checked at load and written
//! into the context with the types the schema expects.
//!
//! It reads the schema's JSON form (a `.cedarschema` file is converted by
//! Cedar), resolving common types, and does no I/O.

use std::collections::HashMap;

use cedar_policy::SchemaFragment;
use serde_json::Value;

use crate::source::TextFile;

/// The Cedar type of a claim, among those a JWT claim can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimKind {
    String,
    Long,
    Bool,
    /// `Set<String>`: a JSON array of strings, or one string (a
    /// space-separated `scope` is split).
    StringSet,
    /// Any other type: a claim of it cannot be shown.
    Unsupported,
}

/// The `token` record of the schema's action contexts.
#[derive(Debug, Clone, Default)]
pub struct TokenSchema {
    attributes: HashMap<String, ClaimKind>,
    /// Actions (`Ns::Action::"name"`) whose context declares `token`.
    pub actions: Vec<String>,
}

impl TokenSchema {
    /// The kind of attribute `name` of the record, when declared.
    pub fn attribute(&self, name: &str) -> Option<ClaimKind> {
        self.attributes.get(name).copied()
    }

    /// The `token` record of the schema in `files`; none when no action's
    /// context declares one (or the schema cannot be read, which the
    /// loader reports on its own).
    pub fn read(files: &[TextFile]) -> Option<TokenSchema> {
        let mut out = TokenSchema::default();
        for f in files {
            let json = if f.path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str::<Value>(&f.text).ok()?
            } else {
                let (fragment, _) = SchemaFragment::from_cedarschema_str(&f.text).ok()?;
                fragment.to_json_value().ok()?
            };
            let Value::Object(namespaces) = json else {
                continue;
            };
            for (ns, body) in &namespaces {
                out.namespace(ns, body);
            }
        }
        (!out.actions.is_empty()).then_some(out)
    }

    fn namespace(&mut self, ns: &str, body: &Value) {
        let common = body
            .get("commonTypes")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let resolve = |t: &Value| -> Option<Value> {
            let mut t = t.clone();
            for _ in 0..8 {
                let kind = t.get("type")?.as_str()?;
                let name = match kind {
                    "EntityOrCommon" => t.get("name")?.as_str()?.to_string(),
                    "Record" | "Set" | "String" | "Long" | "Boolean" | "Entity" | "Extension" => {
                        return Some(t);
                    }
                    other => other.to_string(),
                };
                let short = name.rsplit("::").next().unwrap_or(&name);
                match common.get(short) {
                    Some(def) => t = def.clone(),
                    None => {
                        return Some(match short {
                            "String" => serde_json::json!({"type": "String"}),
                            "Long" => serde_json::json!({"type": "Long"}),
                            "Bool" | "Boolean" => serde_json::json!({"type": "Boolean"}),
                            _ => t,
                        });
                    }
                }
            }
            None
        };
        let kind_of = |t: &Value| -> ClaimKind {
            let Some(t) = resolve(t) else {
                return ClaimKind::Unsupported;
            };
            match t.get("type").and_then(Value::as_str) {
                Some("String") => ClaimKind::String,
                Some("Long") => ClaimKind::Long,
                Some("Boolean") => ClaimKind::Bool,
                Some("Set") => match t.get("element").and_then(&resolve) {
                    Some(e) if e.get("type").and_then(Value::as_str) == Some("String") => {
                        ClaimKind::StringSet
                    }
                    _ => ClaimKind::Unsupported,
                },
                _ => ClaimKind::Unsupported,
            }
        };
        let Some(actions) = body.get("actions").and_then(Value::as_object) else {
            return;
        };
        for (name, action) in actions {
            let Some(context) = action.pointer("/appliesTo/context") else {
                continue;
            };
            let Some(record) = resolve(context) else {
                continue;
            };
            let Some(token) = record.pointer("/attributes/token") else {
                continue;
            };
            let Some(token) = resolve(token) else {
                continue;
            };
            let Some(attrs) = token.get("attributes").and_then(Value::as_object) else {
                continue;
            };
            for (attr, t) in attrs {
                self.attributes.insert(attr.clone(), kind_of(t));
            }
            let prefix = if ns.is_empty() {
                String::new()
            } else {
                format!("{ns}::")
            };
            self.actions
                .push(format!("{prefix}Action::{}", serde_json::json!(name)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Option<TokenSchema> {
        TokenSchema::read(&[TextFile {
            path: "s.cedarschema".into(),
            text: text.into(),
        }])
    }

    #[test]
    fn the_token_record_is_read_through_common_types() {
        let t = schema(
            r#"namespace App {
                 entity User;
                 entity Doc;
                 type Token = { iss: String, sub: String, amr?: Set<String>, age?: Long, mfa?: Bool, x?: Set<Long> };
                 type Ctx = { ip?: ipaddr, token?: Token };
                 action read appliesTo { principal: [User], resource: [Doc], context: Ctx };
                 action "delete:doc" appliesTo { principal: [User], resource: [Doc], context: Ctx };
                 action other appliesTo { principal: [User], resource: [Doc] };
               }"#,
        )
        .unwrap();
        assert_eq!(t.attribute("iss"), Some(ClaimKind::String));
        assert_eq!(t.attribute("amr"), Some(ClaimKind::StringSet));
        assert_eq!(t.attribute("age"), Some(ClaimKind::Long));
        assert_eq!(t.attribute("mfa"), Some(ClaimKind::Bool));
        assert_eq!(t.attribute("x"), Some(ClaimKind::Unsupported));
        assert_eq!(t.attribute("email"), None);
        let mut actions = t.actions.clone();
        actions.sort();
        assert_eq!(
            actions,
            [r#"App::Action::"delete:doc""#, r#"App::Action::"read""#]
        );
    }

    #[test]
    fn a_schema_without_token_has_none() {
        assert!(
            schema(
                "entity User; entity Doc; action read appliesTo { principal: [User], resource: [Doc], context: { ip?: ipaddr } };"
            )
            .is_none()
        );
    }
}

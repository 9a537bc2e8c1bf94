//! Entity JSON to Cedar entities, checked against the schema, with a fast
//! path for the common shape of a principal: many tags, each naming an
//! entity (`{"__entity": {"type": ..., "id": ...}}`, a role in a
//! workspace).
//!
//! Cedar's parser turns every tag value into a restricted expression,
//! evaluates it and type-checks it (about 10 µs a tag here). The fast path
//! parses the entity without its tags with Cedar's parser, builds each tag
//! value directly (one shared value per distinct entity named, as Cedar's
//! parser would build it for that JSON), and runs Cedar's own schema
//! conformance check on the whole result. Anything else (another tag
//! shape, a conformance error) goes through Cedar's parser whole, so that
//! what is accepted, and every error message, is Cedar's. The property
//! tests hold the two paths to the same entities.

use std::collections::{BTreeMap, HashMap, HashSet};

use cedar_policy::Entity;
use cedar_policy_core::FromNormalizedStr;
use cedar_policy_core::ast::{self, EntityUID, Literal, PartialValue, Value as CValue};
use cedar_policy_core::entities::conformance::EntitySchemaConformanceChecker;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::CoreSchema;
use serde_json::Value;
use smol_str::SmolStr;

use super::Model;

/// The entity of `json` (a tag value) when it is exactly
/// `{"__entity": {"type": T, "id": I}}` with a well-formed `T`.
pub fn entity_ref(json: &Value) -> Option<EntityUID> {
    let (ty, id) = ref_parts(json)?;
    let name = ast::Name::from_normalized_str(ty).ok()?;
    Some(EntityUID::from_components(
        name.into(),
        ast::Eid::new(id),
        None,
    ))
}

/// `(T, I)` of `{"__entity": {"type": T, "id": I}}`.
fn ref_parts(json: &Value) -> Option<(&str, &str)> {
    let Value::Object(outer) = json else {
        return None;
    };
    if outer.len() != 1 {
        return None;
    }
    let Some(Value::Object(inner)) = outer.get("__entity") else {
        return None;
    };
    if inner.len() != 2 {
        return None;
    }
    let (Some(Value::String(ty)), Some(Value::String(id))) = (inner.get("type"), inner.get("id"))
    else {
        return None;
    };
    Some((ty, id))
}

/// The tag value naming `uid`, as Cedar's parser builds it.
pub fn ref_value(uid: EntityUID) -> PartialValue {
    PartialValue::Value(CValue::from(Literal::EntityUID(std::sync::Arc::new(uid))))
}

/// Does `e` conform to the schema (attributes, parents, tags)? Cedar's own
/// check; the message is Cedar's.
pub fn conforms(model: &Model, e: &ast::Entity) -> Result<(), String> {
    let schema = CoreSchema::new(model.schema.as_ref());
    let extensions = Extensions::all_available();
    EntitySchemaConformanceChecker::new(&schema, extensions)
        .validate_entity(e)
        .map_err(|err| err.to_string())
}

/// Does `value` (a tag naming an entity) conform as the tag `key` of `e`,
/// an entity whose attributes conform? Cedar's check of `e`'s attributes
/// with that one tag (what a load checks of it); successes are memoized per
/// entity type and value in the model, as the answer depends on nothing
/// else.
pub fn tag_conforms(
    model: &Model,
    e: &ast::Entity,
    key: &SmolStr,
    value: &EntityUID,
) -> Result<(), String> {
    let memo = (e.uid().entity_type().clone(), value.clone());
    if model
        .tag_values
        .lock()
        .is_ok_and(|known| known.contains(&memo))
    {
        return Ok(());
    }
    let probe = ast::Entity::new_with_attr_partial_value(
        e.uid().clone(),
        e.attrs().map(|(k, v)| (k.clone(), v.clone())),
        HashSet::new(),
        HashSet::new(),
        [(key.clone(), ref_value(value.clone()))],
    );
    conforms(model, &probe)?;
    if let Ok(mut known) = model.tag_values.lock() {
        known.insert(memo);
    }
    Ok(())
}

/// Shares one tag value per distinct entity named (a role is named by many
/// memberships).
#[derive(Default)]
pub struct Interner {
    /// Type as written -> the type (none: not a well-formed name).
    types: HashMap<String, Option<ast::EntityType>>,
    values: HashMap<EntityUID, PartialValue>,
}

impl Interner {
    /// The tag value of `json`, when it is a simple entity reference.
    fn value(&mut self, json: &Value) -> Option<PartialValue> {
        let (ty, id) = ref_parts(json)?;
        let ty = match self.types.get(ty) {
            Some(t) => t.clone()?,
            None => {
                let t = ast::Name::from_normalized_str(ty)
                    .ok()
                    .map(ast::EntityType::from);
                self.types.insert(ty.to_string(), t.clone());
                t?
            }
        };
        let uid = EntityUID::from_components(ty, ast::Eid::new(id), None);
        if let Some(v) = self.values.get(&uid) {
            return Some(v.clone());
        }
        let v = ref_value(uid.clone());
        self.values.insert(uid, v.clone());
        Some(v)
    }
}

/// Parse one entity as a load does (`Entity::from_json_value` with the
/// schema): the entity, or the error explained as the loader explains it.
pub fn entity(model: &Model, item: Value, interner: &mut Interner) -> Result<ast::Entity, String> {
    match fast(model, item, interner) {
        Ok(e) => Ok(e),
        Err(item) => slow(model, item),
    }
}

/// Cedar's parser on the whole item.
fn slow(model: &Model, item: Value) -> Result<ast::Entity, String> {
    match Entity::from_json_value(item.clone(), Some(&model.schema)) {
        Ok(e) => {
            let inner: &ast::Entity = e.as_ref();
            Ok(inner.clone())
        }
        Err(err) => Err(crate::domain::explain_entity_error(&item, &err)
            .unwrap_or_else(|| crate::diag::one_line(&err))),
    }
}

/// The fast path, or the item back (untouched) when it does not apply.
fn fast(model: &Model, mut item: Value, interner: &mut Interner) -> Result<ast::Entity, Value> {
    let simple = match item.get("tags") {
        Some(Value::Object(tags)) => !tags.is_empty() && tags.values().all(is_simple_ref),
        _ => false,
    };
    if !simple {
        return Err(item);
    }
    let Some(Value::Object(tag_json)) = item.as_object_mut().and_then(|o| o.remove("tags")) else {
        return Err(item);
    };
    let mut tags: BTreeMap<SmolStr, PartialValue> = BTreeMap::new();
    for (k, v) in &tag_json {
        match interner.value(v) {
            Some(value) => {
                tags.insert(SmolStr::new(k), value);
            }
            None => return Err(restore(item, tag_json)),
        }
    }
    let rest = match Entity::from_json_value(item.clone(), Some(&model.schema)) {
        Ok(e) => e,
        Err(_) => return Err(restore(item, tag_json)),
    };
    let inner: ast::Entity = AsRef::<ast::Entity>::as_ref(&rest).clone();
    if inner.uid().is_action() {
        return Err(restore(item, tag_json));
    }
    let (uid, attrs, _indirect, parents, _) = inner.into_inner();
    let e = ast::Entity::new_with_attr_partial_value(uid, attrs, HashSet::new(), parents, tags);
    if conforms(model, &e).is_err() {
        return Err(restore(item, tag_json));
    }
    Ok(e)
}

fn is_simple_ref(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.len() == 1 && o.get("__entity").is_some_and(Value::is_object))
}

fn restore(mut item: Value, tags: serde_json::Map<String, Value>) -> Value {
    if let Some(o) = item.as_object_mut() {
        o.insert("tags".into(), Value::Object(tags));
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> Model {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/prefect.cedarschema"),
        )
        .unwrap();
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(&text).unwrap();
        Model::new(&schema).unwrap()
    }

    fn shipped() -> Vec<Value> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("entities");
        let mut out = Vec::new();
        for f in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            if let Value::Array(items) = serde_json::from_str(&text).unwrap() {
                out.extend(items);
            }
        }
        out
    }

    /// Variants of a principal's tags: the shapes the fast path takes and
    /// the ones it must leave to Cedar.
    fn variants(item: &Value) -> Vec<Value> {
        let values = [
            json!({"__entity": {"type": "Prefect::Role", "id": "viewer"}}),
            json!({"__entity": {"type": "Prefect::Role", "id": "no-such-role"}}),
            json!({"__entity": {"type": "Prefect::Workspace", "id": "acme-prod"}}),
            json!({"__entity": {"type": "Prefect::Nope", "id": "x"}}),
            json!({"__entity": {"type": " Prefect::Role", "id": "viewer"}}),
            json!({"__entity": {"type": "Prefect::Role", "id": "viewer", "x": 1}}),
            json!({"type": "Prefect::Role", "id": "viewer"}),
            json!("viewer"),
            json!(3),
            json!({"__entity": {"type": "Action", "id": "see_flows"}}),
        ];
        let mut out = vec![item.clone()];
        for v in values {
            let mut e = item.clone();
            e["tags"]["some-key"] = v;
            out.push(e);
        }
        let mut e = item.clone();
        e["attrs"]["unknown"] = json!(1);
        out.push(e);
        out
    }

    #[test]
    fn the_fast_path_parses_as_cedar_does() {
        let model = model();
        let mut interner = Interner::default();
        let mut fast_taken = 0;
        for item in shipped() {
            for v in variants(&item) {
                let slow = slow(&model, v.clone());
                let fast_ok = fast(&model, v.clone(), &mut interner).is_ok();
                fast_taken += usize::from(fast_ok);
                let ours = entity(&model, v.clone(), &mut interner);
                match (&ours, &slow) {
                    (Ok(a), Ok(b)) => assert!(a.deep_eq(b), "{v}: {a} != {b}"),
                    (Err(a), Err(b)) => assert_eq!(a, b, "{v}"),
                    _ => panic!("{v}: fast {ours:?}, Cedar {slow:?}"),
                }
            }
        }
        assert!(
            fast_taken > 10,
            "the fast path was taken {fast_taken} times"
        );
    }
}

//! Request facts: the entities a decision request brings of its own
//! (`entities`, `additional_entities`, AuthZEN `properties`), and what the
//! server lets them do.
//!
//! [`RequestEntities`] is the operator's choice: `off` refuses them, `add`
//! (the default) accepts only facts that change nothing the loaded facts say,
//! `replace` gives cedar-agent's semantics (a request entity replaces the
//! loaded one with its uid; `entities` replaces every loaded fact). In
//! `add`, a request may not bring an entity the facts hold, give a new entity
//! a loaded parent (membership in a loaded organization, admin group or any
//! other group is a loaded fact), nor, in the platform's model, give a new
//! principal a role in a loaded workspace (a tag keyed by its `key`).
//!
//! Whatever the mode, the world a decision sees is checked as a load checks
//! files: the schema, every parent present (in the request or the facts), no
//! cycle, and the domain's rules ([`crate::domain`], evaluated on what the
//! request's entities affect, [`crate::facts::check`]). A refusal names the
//! field (`additional_entities[2].parents[0]`) and decides nothing.
//!
//! Both fact sources decide the same way: the request's entities are applied
//! to a fact view ([`FactView::apply`], in proportion to the request) and
//! the decision is made on a slice of the result ([`crate::facts::slice`]).
//! With a store that view is the published one; with files it is a view of
//! the served snapshot's entities, built the first time a request brings
//! facts after a reload and kept for that snapshot generation.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cedar_policy::{Entity, EntityUid};
use cedar_policy_core::ast;
use serde_json::Value;

use crate::engine::{RequestError, RequestInput};
use crate::facts::check::Lookup;
use crate::facts::{Batch, FactView, Model, Op, Rejection, SlicePlan};
use crate::live_facts::{At, FactsAt};
use crate::snapshot::Snapshot;

/// What request facts may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestEntities {
    /// Refused: a request decides on the loaded facts only.
    Off,
    /// New entities only; nothing the loaded facts say may change.
    #[default]
    Add,
    /// cedar-agent's semantics: request entities replace loaded ones.
    Replace,
}

crate::words::words!(RequestEntities { "off" => Off, "add" => Add, "replace" => Replace });

/// The facts of file mode as a view, for one snapshot generation.
struct FileWorld {
    generation: u64,
    facts: FactsAt,
}

/// The request-facts policy of a server, and file mode's view of the facts.
pub struct RequestFacts {
    pub mode: RequestEntities,
    files: Mutex<Option<Arc<FileWorld>>>,
}

/// The world one decision with request facts sees.
pub struct World {
    /// The facts with the request's entities applied.
    pub view: FactView,
    pub model: Arc<Model>,
    pub plan: Arc<SlicePlan>,
    /// The uids of the request's entities, sorted.
    pub uids: Vec<String>,
}

fn refused(field: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError::new("protected_fact", field, message)
}

/// One request entity: where it was, and what it says.
struct Item {
    /// Its index in the request's array.
    index: usize,
    json: Value,
    entity: Entity,
}

impl Item {
    fn inner(&self) -> &ast::Entity {
        self.entity.as_ref()
    }

    /// The index of `parent` in the item's `parents` array.
    fn parent_index(&self, parent: &EntityUid) -> Option<usize> {
        self.json
            .get("parents")?
            .as_array()?
            .iter()
            .position(|p| EntityUid::from_json(p.clone()).is_ok_and(|u| u == *parent))
    }

    /// The parents, in the order the request wrote them.
    fn parents(&self) -> Vec<EntityUid> {
        let mut out: Vec<EntityUid> = self
            .inner()
            .parents()
            .map(|p| EntityUid::from(p.clone()))
            .collect();
        out.sort_by_cached_key(|p| (self.parent_index(p).unwrap_or(usize::MAX), p.to_string()));
        out
    }

    fn parent_field(&self, field: &str, parent: &EntityUid) -> String {
        match self.parent_index(parent) {
            Some(j) => format!("{field}[{}].parents[{j}]", self.index),
            None => format!("{field}[{}].parents", self.index),
        }
    }
}

impl RequestFacts {
    pub fn new(mode: RequestEntities) -> Self {
        RequestFacts {
            mode,
            files: Mutex::new(None),
        }
    }

    /// The facts a request decides on before its own: the store's view, or
    /// a view of the snapshot's entities.
    fn base(&self, at: &At) -> Result<FactsAt, RequestError> {
        if let Some(f) = &at.facts {
            return Ok(f.clone());
        }
        let mut cached = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = cached.as_ref()
            && w.generation == at.generation
        {
            return Ok(w.facts.clone());
        }
        let facts = files_view(&at.snap).map_err(|m| {
            RequestError::new("request_facts_unavailable", "additional_entities", m)
        })?;
        *cached = Some(Arc::new(FileWorld {
            generation: at.generation,
            facts: facts.clone(),
        }));
        Ok(facts)
    }

    /// The world `input`'s own entities make with the facts of `at`, checked;
    /// or why the request is refused. `input` brings `entities` or
    /// `additional_entities`.
    pub fn world(&self, at: &At, input: &RequestInput) -> Result<World, RequestError> {
        let (field, value) = match (&input.entities, &input.additional_entities) {
            (Some(_), Some(_)) => {
                return Err(RequestError::new(
                    "invalid_request",
                    "entities",
                    "give either `entities` (replacing the loaded facts) or `additional_entities`, not both",
                ));
            }
            (Some(all), None) => ("entities", all),
            (None, Some(extra)) => ("additional_entities", extra),
            (None, None) => {
                return Err(RequestError::new(
                    "invalid_request",
                    "additional_entities",
                    "the request brings no entities",
                ));
            }
        };
        if self.mode == RequestEntities::Off {
            return Err(RequestError::new(
                "request_facts_disabled",
                field,
                "this server decides on its loaded facts only: request entities are refused (--request-entities off)",
            ));
        }
        if field == "entities" && self.mode == RequestEntities::Add {
            return Err(refused(
                field,
                "`entities` replaces every loaded fact, which this server does not allow (--request-entities add); send new entities in `additional_entities`",
            ));
        }
        let base = self.base(at)?;
        let items = parse(&base.model, value, field)?;
        let replacing = field == "entities";
        let new: HashSet<EntityUid> = items.iter().map(|i| i.entity.uid()).collect();
        if self.mode == RequestEntities::Add {
            protect(&base, &items, field)?;
        }
        // Every parent exists, in the request or (unless replaced) the facts.
        for item in &items {
            for parent in item.parents() {
                let loaded = !replacing && base.view.get(&parent).is_some();
                if !new.contains(&parent) && !loaded {
                    return Err(RequestError::new(
                        "missing_parent",
                        item.parent_field(field, &parent),
                        format!(
                            "{} names parent {parent}, which is neither in the request nor in the facts",
                            item.entity.uid()
                        ),
                    ));
                }
            }
        }
        let mut uids: Vec<String> = new.iter().map(ToString::to_string).collect();
        uids.sort();
        let remap = |r: Rejection, prefix: &str| -> RequestError {
            let field = match_field(&r.field, prefix, field, &items);
            let code = match r.code {
                "cycle" => "cycle",
                "domain" => "domain",
                _ => "invalid_entities",
            };
            RequestError::new(code, field, r.message)
        };
        let view = if replacing {
            let values = items.iter().map(|i| i.json.clone()).collect();
            FactView::from_json(&base.model, values).map_err(|mut errors| {
                let first = errors.swap_remove(0);
                remap(first, "items")
            })?
        } else {
            let batch = Batch {
                operations: items
                    .iter()
                    .map(|i| Op::Upsert {
                        entity: i.json.clone(),
                    })
                    .collect(),
                if_revision: None,
            };
            base.view
                .apply(&base.model, &batch)
                .map(|(view, _)| view)
                .map_err(|r| remap(r, "operations"))?
        };
        Ok(World {
            view,
            model: base.model,
            plan: base.plan,
            uids,
        })
    }

    /// The entity JSON the facts of `at` hold for `uid`, when they hold it
    /// (what an AuthZEN `properties` object would be merged over).
    pub fn loaded_json(&self, at: &At, uid: &EntityUid) -> Option<Value> {
        match &at.facts {
            Some(f) => f.view.entity_json(uid).map(|(json, _)| json),
            None => at.entities.get(uid).and_then(|e| e.to_json_value().ok()),
        }
    }
}

/// A view of the snapshot's entities, with the model and plan of its schema
/// and policies.
fn files_view(snap: &Snapshot) -> Result<FactsAt, String> {
    let model = Model::new(&snap.schema)?;
    let items: Vec<Value> = snap
        .entities
        .iter()
        .filter(|e| !crate::snapshot::is_action(&e.uid()))
        .map(|e| crate::facts::view::entity_json(e.as_ref()))
        .collect();
    let view = FactView::from_json(&model, items).map_err(|errors| {
        let first: Vec<String> = errors.iter().take(3).map(ToString::to_string).collect();
        format!("the loaded facts cannot be viewed: {}", first.join("; "))
    })?;
    Ok(FactsAt {
        view: Arc::new(view),
        model: Arc::new(model),
        plan: Arc::new(SlicePlan::new(&snap.policies)),
    })
}

/// The request's entities, each checked against the schema, actions left
/// out (as a load leaves them out), no uid twice.
fn parse(model: &Model, value: &Value, field: &str) -> Result<Vec<Item>, RequestError> {
    let list = value.as_array().ok_or_else(|| {
        RequestError::new(
            "invalid_entities",
            field,
            format!("`{field}` must be a JSON array of entities"),
        )
    })?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (index, json) in list.iter().enumerate() {
        let entity = Entity::from_json_value(json.clone(), Some(&model.schema)).map_err(|e| {
            let message = crate::domain::explain_entity_error(json, &e)
                .unwrap_or_else(|| crate::diag::one_line(&e));
            RequestError::new("invalid_entities", format!("{field}[{index}]"), message)
        })?;
        if crate::snapshot::is_action(&entity.uid()) {
            continue;
        }
        if !seen.insert(entity.uid()) {
            return Err(RequestError::new(
                "invalid_entities",
                format!("{field}[{index}]"),
                format!("duplicate entity {}", entity.uid()),
            ));
        }
        out.push(Item {
            index,
            json: json.clone(),
            entity,
        });
    }
    Ok(out)
}

/// `add` mode: nothing the loaded facts say may change.
fn protect(base: &FactsAt, items: &[Item], field: &str) -> Result<(), RequestError> {
    let view = &*base.view;
    for item in items {
        let uid = item.entity.uid();
        if view.get(&uid).is_some() {
            return Err(refused(
                format!("{field}[{}]", item.index),
                format!(
                    "{uid} is in the loaded facts: a request may not replace or change a loaded entity (--request-entities replace allows it)"
                ),
            ));
        }
        for parent in item.parents() {
            if view.get(&parent).is_some() {
                return Err(refused(
                    item.parent_field(field, &parent),
                    format!(
                        "{uid} claims {parent}, a loaded entity, as its parent: membership in a loaded entity is a loaded fact (--request-entities replace allows it)"
                    ),
                ));
            }
        }
        if base.model.domain {
            let mut keys: Vec<_> = item.inner().tag_keys().collect();
            keys.sort();
            for key in keys {
                if let Some(ws) = view
                    .domain()
                    .workspaces_with_key(key)
                    .and_then(|s| s.iter().next())
                {
                    let ws = EntityUid::from(ws.clone());
                    return Err(refused(
                        format!("{field}[{}].tags.{key}", item.index),
                        format!(
                            "{uid} claims a role in {ws}, a loaded workspace: its members and roles are loaded facts (--request-entities replace allows it)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The request field of a view's rejection field (`operations[3].entity.parents[0]`,
/// `items[3]`): `additional_entities[5].parents[0]`.
fn match_field(rejected: &str, prefix: &str, field: &str, items: &[Item]) -> String {
    let Some(rest) = rejected
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('['))
    else {
        return field.to_string();
    };
    let Some((n, tail)) = rest.split_once(']') else {
        return field.to_string();
    };
    let Some(item) = n.parse::<usize>().ok().and_then(|k| items.get(k)) else {
        return field.to_string();
    };
    let tail = tail.strip_prefix(".entity").unwrap_or(tail);
    format!("{field}[{}]{tail}", item.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_keep_the_request_order() {
        let json = serde_json::json!({"uid": {"type": "U", "id": "z"}, "attrs": {}, "parents": [
            {"type": "Prefect::Organization", "id": "acme"}, {"type": "Prefect::OrgAdmins", "id": "acme-admins"}]});
        let entity = Entity::from_json_value(json.clone(), None).unwrap();
        let item = Item {
            index: 0,
            json,
            entity,
        };
        let order: Vec<String> = item.parents().iter().map(ToString::to_string).collect();
        assert_eq!(
            order,
            [
                "Prefect::Organization::\"acme\"",
                "Prefect::OrgAdmins::\"acme-admins\""
            ]
        );
    }
}

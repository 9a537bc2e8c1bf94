//! The live fact view against the loader: random batches of operations
//! (valid and invalid) are applied to a view, and, independently, to the
//! entity JSON, which is then loaded fresh through the normal loader (schema
//! and domain checks). After every batch the view must have accepted exactly
//! when the fresh load accepts, hold exactly the loaded entities with the
//! same closed ancestors, and decide a sample of requests exactly as the
//! engine decides them on the fresh load (decision, reasons, errors).
//! `FactView::from_json` must accept exactly the worlds the loader accepts.
//! A rejected batch leaves the view as it was.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cedar_policy::EntityUid;
use orgwarden::Snapshot;
use orgwarden::engine;
use orgwarden::facts::{Batch, FactView, Limits, Model, SlicePlan, slice};
use orgwarden::load::{self, TextFile};
use orgwarden::names::{EntityRef, Names};
use orgwarden::world::{self, Rng, WorldSpec};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn texts(dir: &str) -> Vec<TextFile> {
    let kind = match dir {
        "schema" => orgwarden::snapshot::FileKind::Schema,
        "policies" => orgwarden::snapshot::FileKind::Policies,
        _ => orgwarden::snapshot::FileKind::Entities,
    };
    load::read_texts(&root().join(dir), kind).unwrap()
}

struct Fixed {
    schema: Vec<TextFile>,
    policies: Vec<TextFile>,
}

impl Fixed {
    fn new() -> Self {
        Fixed {
            schema: texts("schema"),
            policies: texts("policies"),
        }
    }

    /// A fresh load of `items` (one entity file).
    fn load(&self, items: &[Value]) -> Result<Snapshot, String> {
        let file = TextFile {
            path: PathBuf::from("entities.json"),
            text: serde_json::to_string(items).unwrap(),
        };
        load::build(&self.schema, &self.policies, &[file]).map_err(|d| format!("{d:?}"))
    }
}

fn shipped_items() -> Vec<Value> {
    texts("entities")
        .iter()
        .flat_map(|f| match serde_json::from_str(&f.text).unwrap() {
            Value::Array(items) => items,
            _ => panic!("entity file is not an array"),
        })
        .collect()
}

fn world_items(spec: &WorldSpec) -> Vec<Value> {
    world::generate(spec)
        .unwrap()
        .into_iter()
        .flat_map(|(_, v)| match v {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .collect()
}

fn small_world() -> WorldSpec {
    WorldSpec {
        orgs: 3,
        workspaces_per_org: 4,
        users_per_org: 5,
        service_accounts_per_org: 1,
        custom_roles_per_org: 1,
        memberships: 40,
        personal: 2,
        seed: 11,
    }
}

/// `(type, id)` of a uid as entity JSON writes it.
fn raw_uid(v: &Value) -> Option<(String, String)> {
    let v = v.get("__entity").unwrap_or(v);
    Some((
        v.get("type")?.as_str()?.to_string(),
        v.get("id")?.as_str()?.to_string(),
    ))
}

fn key(uid: &EntityUid) -> (String, String) {
    (
        uid.type_name().to_string(),
        uid.id().unescaped().to_string(),
    )
}

/// The batch applied to entity JSON, naively: the world it gives, or none
/// when an operation cannot apply (what the view must refuse too).
fn apply_naively(names: &Names, items: &[Value], batch: &Batch) -> Option<Vec<Value>> {
    let mut items: Vec<Value> = items.to_vec();
    let find = |items: &[Value], k: &(String, String)| {
        items
            .iter()
            .position(|e| raw_uid(&e["uid"]).as_ref() == Some(k))
    };
    let resolve = |r: &EntityRef| names.resolve_entity(r).ok().map(|u| key(&u));
    for op in &batch.operations {
        use orgwarden::facts::Op;
        let target = match op {
            Op::Upsert { entity } => {
                let k = raw_uid(entity.get("uid")?)?;
                if k.0.ends_with("Action") {
                    return None;
                }
                match find(&items, &k) {
                    Some(i) => items[i] = entity.clone(),
                    None => items.push(entity.clone()),
                }
                continue;
            }
            Op::Delete { uid }
            | Op::SetTag { uid, .. }
            | Op::RemoveTag { uid, .. }
            | Op::AddParent { uid, .. }
            | Op::RemoveParent { uid, .. }
            | Op::SetAttr { uid, .. }
            | Op::RemoveAttr { uid, .. } => resolve(uid)?,
        };
        let i = find(&items, &target)?;
        let e = items[i].as_object_mut()?;
        match op {
            Op::Delete { .. } => {
                items.remove(i);
            }
            Op::SetTag { key, value, .. } => {
                let tags = e.entry("tags").or_insert_with(|| json!({}));
                tags.as_object_mut()?.insert(key.clone(), value.clone());
            }
            Op::RemoveTag { key, .. } => {
                e.get_mut("tags")?.as_object_mut()?.remove(key)?;
            }
            Op::AddParent { parent, .. } => {
                let p = resolve(parent)?;
                let parents = e.entry("parents").or_insert_with(|| json!([]));
                let list = parents.as_array_mut()?;
                if !list.iter().any(|x| raw_uid(x).as_ref() == Some(&p)) {
                    list.push(json!({"type": p.0, "id": p.1}));
                }
            }
            Op::RemoveParent { parent, .. } => {
                let p = resolve(parent)?;
                let list = e.get_mut("parents")?.as_array_mut()?;
                let at = list.iter().position(|x| raw_uid(x).as_ref() == Some(&p))?;
                list.remove(at);
            }
            Op::SetAttr { attr, value, .. } => {
                let attrs = e.entry("attrs").or_insert_with(|| json!({}));
                attrs.as_object_mut()?.insert(attr.clone(), value.clone());
            }
            Op::RemoveAttr { attr, .. } => {
                e.get_mut("attrs")?.as_object_mut()?.remove(attr)?;
            }
            Op::Upsert { .. } => unreachable!(),
        }
    }
    Some(items)
}

fn uid_of(e: &Value) -> (String, String) {
    raw_uid(&e["uid"]).unwrap()
}

fn of_type<'a>(items: &'a [Value], ty: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|e| uid_of(e).0 == format!("Prefect::{ty}"))
        .collect()
}

fn uid_value(rng: &mut Rng, k: &(String, String)) -> Value {
    match rng.below(3) {
        0 => json!({"type": k.0, "id": k.1}),
        1 => json!(format!(
            "{}::{}",
            k.0.trim_start_matches("Prefect::"),
            json!(k.1)
        )),
        _ => json!({"__entity": {"type": k.0, "id": k.1}}),
    }
}

fn pick_uid(rng: &mut Rng, items: &[Value], ty: &str) -> (String, String) {
    let all = of_type(items, ty);
    match rng.pick(&all) {
        Some(e) if rng.below(12) != 0 => uid_of(e),
        _ => (format!("Prefect::{ty}"), format!("ghost{}", rng.below(3))),
    }
}

const DIGEST_A: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const DIGEST_B: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

/// One random operation on the world `items`.
fn random_op(rng: &mut Rng, items: &[Value]) -> Value {
    let principal_ty = if rng.below(4) == 0 {
        "ServiceAccount"
    } else {
        "User"
    };
    let principal = pick_uid(rng, items, principal_ty);
    let ws_keys: Vec<String> = of_type(items, "Workspace")
        .iter()
        .filter_map(|w| w["attrs"]["key"].as_str().map(String::from))
        .collect();
    // Mostly a workspace of one of the principal's organizations.
    let orgs: Vec<(String, String)> = items
        .iter()
        .find(|e| uid_of(e) == principal)
        .and_then(|e| e["parents"].as_array())
        .map(|ps| ps.iter().filter_map(raw_uid).collect())
        .unwrap_or_default();
    let own_keys: Vec<String> = of_type(items, "Workspace")
        .iter()
        .filter(|w| raw_uid(&w["attrs"]["org"]).is_some_and(|o| orgs.contains(&o)))
        .filter_map(|w| w["attrs"]["key"].as_str().map(String::from))
        .collect();
    let ws_key = match (rng.pick(&own_keys), rng.pick(&ws_keys)) {
        (Some(k), _) if rng.below(4) != 0 => k.clone(),
        (_, Some(k)) if rng.below(8) != 0 => k.clone(),
        _ => "no-such-workspace".into(),
    };
    let role = pick_uid(rng, items, "Role");
    let role_value = match rng.below(16) {
        0 => json!("viewer"),
        1 => json!({"__entity": {"type": "Prefect::User", "id": "bob"}}),
        3..=6 => {
            let id = ["viewer", "runner", "developer", "owner"][rng.below(4)];
            json!({"__entity": {"type": "Prefect::Role", "id": id}})
        }
        2 => json!({"type": role.0, "id": role.1}),
        _ => json!({"__entity": {"type": role.0, "id": role.1}}),
    };
    match rng.below(14) {
        0..=2 => {
            json!({"op": "set_tag", "uid": uid_value(rng, &principal), "key": ws_key, "value": role_value})
        }
        3 => {
            let held: Vec<String> = items
                .iter()
                .find(|e| uid_of(e) == principal)
                .and_then(|e| e.get("tags").and_then(Value::as_object))
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            let key = rng.pick(&held).cloned().unwrap_or(ws_key);
            json!({"op": "remove_tag", "uid": uid_value(rng, &principal), "key": key})
        }
        4 | 5 => {
            let parent = match rng.below(4) {
                0 => pick_uid(rng, items, "OrgAdmins"),
                1 => pick_uid(rng, items, "User"),
                _ => pick_uid(rng, items, "Organization"),
            };
            json!({"op": "add_parent", "uid": uid_value(rng, &principal), "parent": uid_value(rng, &parent)})
        }
        6 => {
            let held: Vec<(String, String)> = items
                .iter()
                .find(|e| uid_of(e) == principal)
                .and_then(|e| e["parents"].as_array())
                .map(|ps| ps.iter().filter_map(raw_uid).collect())
                .unwrap_or_default();
            let parent = rng
                .pick(&held)
                .cloned()
                .unwrap_or_else(|| pick_uid(rng, items, "Organization"));
            json!({"op": "remove_parent", "uid": uid_value(rng, &principal), "parent": uid_value(rng, &parent)})
        }
        7 => {
            let ws = pick_uid(rng, items, "Workspace");
            let (attr, value) = match rng.below(6) {
                0 => ("defaultRole", role_value),
                1 => ("handle", json!(format!("ws{}", rng.below(3)))),
                2 => (
                    "key",
                    json!(rng.pick(&ws_keys).cloned().unwrap_or_default()),
                ),
                3 => {
                    let org = pick_uid(rng, items, "Organization");
                    ("org", json!({"__entity": {"type": org.0, "id": org.1}}))
                }
                4 => ("transferTo", json!(7)),
                _ => {
                    let owner = pick_uid(rng, items, "User");
                    (
                        "owner",
                        json!({"__entity": {"type": owner.0, "id": owner.1}}),
                    )
                }
            };
            json!({"op": "set_attr", "uid": uid_value(rng, &ws), "attr": attr, "value": value})
        }
        8 => {
            let digests = match rng.below(4) {
                0 => json!([DIGEST_A]),
                1 => json!([DIGEST_B, DIGEST_A]),
                2 => json!(["not-a-digest"]),
                _ => json!([]),
            };
            json!({"op": "set_attr", "uid": uid_value(rng, &principal), "attr": "apiKeyDigests", "value": digests})
        }
        9 => {
            let (ty, attr) = match rng.below(4) {
                0 => ("Workspace", "defaultRole"),
                1 => ("Workspace", "org"),
                2 => ("User", "apiKeyDigests"),
                _ => ("User", "email"),
            };
            let target = pick_uid(rng, items, ty);
            json!({"op": "remove_attr", "uid": uid_value(rng, &target), "attr": attr})
        }
        10 => {
            let ty = ["User", "Workspace", "Role", "Organization", "OrgAdmins"][rng.below(5)];
            let target = pick_uid(rng, items, ty);
            json!({"op": "delete", "uid": uid_value(rng, &target)})
        }
        11 => {
            // A copy of an existing entity, possibly under a new id.
            let e = rng.pick(items).cloned().unwrap_or(json!({}));
            let mut e = e;
            if rng.below(2) == 0
                && let Some(id) = e.get_mut("uid").and_then(|u| u.get_mut("id"))
            {
                *id = json!(format!("copy{}", rng.below(4)));
            }
            json!({"op": "upsert", "entity": e})
        }
        12 => {
            let org = pick_uid(rng, items, "Organization");
            let id = format!("new{}", rng.below(4));
            let entity = match rng.below(3) {
                0 => {
                    json!({"uid": {"type": "Prefect::Workspace", "id": id}, "attrs": {"key": id, "handle": format!("ws{}", rng.below(3)), "org": {"__entity": {"type": org.0, "id": org.1}}}, "parents": []})
                }
                1 => {
                    json!({"uid": {"type": "Prefect::Role", "id": id}, "attrs": {"name": id, "builtin": false, "org": {"__entity": {"type": org.0, "id": org.1}}}, "parents": [{"type": "Prefect::Role", "id": "viewer"}]})
                }
                _ => {
                    json!({"uid": {"type": "Prefect::User", "id": id}, "attrs": {"email": format!("{id}@example.com")}, "parents": [{"type": org.0, "id": org.1}], "tags": {ws_key.clone(): role_value}})
                }
            };
            json!({"op": "upsert", "entity": entity})
        }
        _ => {
            // Organizations' admins groups and hierarchies of groups.
            let org = pick_uid(rng, items, "Organization");
            let admins = pick_uid(rng, items, "OrgAdmins");
            match rng.below(3) {
                0 => {
                    json!({"op": "set_attr", "uid": uid_value(rng, &org), "attr": "admins", "value": {"__entity": {"type": admins.0, "id": admins.1}}})
                }
                1 => {
                    json!({"op": "upsert", "entity": {"uid": {"type": "Prefect::OrgAdmins", "id": format!("{}-extra", org.1)}, "attrs": {}, "parents": []}})
                }
                _ => {
                    json!({"op": "add_parent", "uid": uid_value(rng, &org), "parent": uid_value(rng, &org)})
                }
            }
        }
    }
}

/// Every entity's closed ancestors in a loaded snapshot and in the view.
fn same_facts(snap: &Snapshot, view: &FactView) {
    let loaded: BTreeSet<String> = snap
        .entities
        .iter()
        .map(|e| e.uid())
        .filter(|u| !orgwarden::snapshot::is_action(u))
        .map(|u| u.to_string())
        .collect();
    let viewed: BTreeSet<String> = view.uids().map(|u| u.to_string()).collect();
    assert_eq!(loaded, viewed, "the same entities");
    for uid in view.uids() {
        let mut a: Vec<String> = snap
            .entities
            .ancestors(&uid)
            .unwrap()
            .map(ToString::to_string)
            .collect();
        a.sort();
        let node = view.get(&uid).unwrap();
        let mut b: Vec<String> = node.entity.ancestors().map(ToString::to_string).collect();
        b.sort();
        b.dedup();
        assert_eq!(a, b, "ancestors of {uid}");
        let loaded = snap.entities.get(&uid).unwrap().to_json_value().unwrap();
        let mine = cedar_policy::Entity::from(node.entity.as_ref().clone())
            .to_json_value()
            .unwrap();
        assert_eq!(normalize(loaded), normalize(mine), "data of {uid}");
    }
}

/// Entity JSON with its parents sorted.
fn normalize(mut v: Value) -> Value {
    if let Some(ps) = v.get_mut("parents").and_then(Value::as_array_mut) {
        ps.sort_by_key(|p| p.to_string());
    }
    v
}

/// A sample of requests decided by the engine on `snap` and by slices of
/// `view`: identical outcomes.
fn same_decisions(
    rng: &mut Rng,
    snap: &Snapshot,
    view: &FactView,
    model: &Model,
    plan: &SlicePlan,
    items: &[Value],
) -> usize {
    let principals: Vec<(String, String)> = items
        .iter()
        .map(uid_of)
        .filter(|(t, _)| t.ends_with("::User") || t.ends_with("::ServiceAccount"))
        .chain([("Prefect::User".to_string(), "ghost".to_string())])
        .collect();
    let resources: Vec<(String, String)> = items
        .iter()
        .map(uid_of)
        .filter(|(t, _)| {
            t.ends_with("::Workspace")
                || t.ends_with("::Organization")
                || t.ends_with("::Invitation")
        })
        .collect();
    let actions: Vec<EntityUid> = snap.names.actions().into_iter().cloned().collect();
    let mut decided = 0;
    for _ in 0..200 {
        if decided >= 25 {
            break;
        }
        let p = rng.pick(&principals).unwrap();
        let Some(r) = rng.pick(&resources) else { break };
        let a = rng.pick(&actions).unwrap().clone();
        let uid = |(t, i): &(String, String)| {
            EntityUid::from_type_name_and_id(t.parse().unwrap(), cedar_policy::EntityId::new(i))
        };
        let context = if rng.below(3) == 0 {
            json!({"ip": "10.0.0.1"})
        } else {
            json!({})
        };
        let Ok(q) = engine::build_query(snap, uid(p), a, uid(r), context) else {
            continue;
        };
        let expected = engine::decide(snap, &q);
        let got = slice::decide(snap, plan, model, view, &q);
        assert_eq!(expected, got, "{p:?} {:?} {r:?}", q.action);
        decided += 1;
    }
    decided
}

fn run(items: Vec<Value>, seed: u64, batches: usize) {
    run_with(items, seed, batches, false)
}

/// A random `set_tag` or `remove_tag` (the writes `FactView::apply` takes
/// on its per-tag path when a batch holds nothing else).
fn random_tag_op(rng: &mut Rng, items: &[Value]) -> Value {
    loop {
        let op = random_op(rng, items);
        if matches!(op["op"].as_str(), Some("set_tag" | "remove_tag")) {
            return op;
        }
    }
}

fn run_with(items: Vec<Value>, seed: u64, batches: usize, tags_only: bool) {
    let fixed = Fixed::new();
    let snap = fixed.load(&items).expect("the starting world loads");
    let model = Model::new(&snap.schema).unwrap();
    let plan = SlicePlan::new(&snap.policies);
    assert!(plan.projects(), "the shipped policies read tags by key");
    let mut view = FactView::from_json(&model, items.clone()).expect("the view takes the world");
    same_facts(&snap, &view);
    let mut items = items;
    let mut rng = Rng(seed);
    let (mut accepted, mut rejected, mut decided) = (0, 0, 0);
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for step in 0..batches {
        let n = 1 + rng.below(3);
        let ops: Vec<Value> = (0..n)
            .map(|_| {
                if tags_only {
                    random_tag_op(&mut rng, &items)
                } else {
                    random_op(&mut rng, &items)
                }
            })
            .collect();
        let body = json!({"operations": ops});
        let batch = Batch::from_json_value(body.clone(), &Limits::default())
            .unwrap_or_else(|e| panic!("step {step}: {body}: {e}"));
        let naive = apply_naively(&snap.names, &items, &batch);
        let fresh = naive.as_ref().map(|world| (world, fixed.load(world)));
        let before = view.revision();
        match (view.apply(&model, &batch), fresh) {
            (Ok((next, applied)), Some((world, Ok(loaded)))) => {
                assert_eq!(next.revision(), before + 1);
                assert_eq!(applied.revision, before + 1);
                same_facts(&loaded, &next);
                let rebuilt = FactView::from_json(&model, next.to_json()).unwrap();
                assert!(
                    next.same_indexes(&rebuilt),
                    "step {step}: {body}: the indexes differ from a fresh build"
                );
                decided += same_decisions(&mut rng, &loaded, &next, &model, &plan, world);
                items = world.clone();
                view = next;
                accepted += 1;
            }
            (Err(why), None) => {
                rejected += 1;
                *reasons.entry(format!("naive/{}", why.code)).or_insert(0) += 1;
            }
            (Err(why), Some((world, Err(load_errors)))) => {
                rejected += 1;
                *reasons
                    .entry(format!(
                        "{}/{}",
                        why.code,
                        why.rule.clone().unwrap_or_default()
                    ))
                    .or_insert(0) += 1;
                // The loader refuses the same world, and so does a view
                // built from it.
                assert!(
                    FactView::from_json(&model, world.clone()).is_err(),
                    "step {step}: from_json accepts what the loader refuses: {load_errors}"
                );
                assert!(why.field.starts_with("operations["), "{why}");
            }
            (Ok(_), fresh) => panic!(
                "step {step}: the view accepted {body}, the loader did not: {:?}",
                fresh.map(|(_, r)| r.err())
            ),
            (Err(why), Some((_, Ok(_)))) => {
                panic!("step {step}: the view refused {body} ({why}), the loader accepts it")
            }
        }
        assert_eq!(
            view.revision(),
            before + u64::from(view.revision() != before)
        );
    }
    eprintln!(
        "{batches} batches: {accepted} accepted, {rejected} rejected, {decided} decisions compared; refusals: {reasons:?}"
    );
    assert!(accepted > batches / 10, "accepted {accepted} of {batches}");
    assert!(rejected > batches / 10, "rejected {rejected} of {batches}");
    assert!(decided > 0);
}

#[test]
fn random_batches_on_the_shipped_model_match_fresh_loads() {
    run(shipped_items(), 1, 120);
}

#[test]
fn random_batches_on_a_generated_world_match_fresh_loads() {
    run(world_items(&small_world()), 2, 120);
}

#[test]
fn random_tag_batches_match_fresh_loads() {
    run_with(shipped_items(), 3, 150, true);
    run_with(world_items(&small_world()), 4, 150, true);
}

#[test]
fn from_json_refuses_what_the_loader_refuses() {
    let fixed = Fixed::new();
    let items = shipped_items();
    let model = Model::new(&fixed.load(&items).unwrap().schema).unwrap();
    let mut rng = Rng(3);
    let mut refused = 0;
    for _ in 0..60 {
        // A world with one random operation applied naively.
        let op = random_op(&mut rng, &items);
        let batch =
            Batch::from_json_value(json!({"operations": [op]}), &Limits::default()).unwrap();
        let names = Names::new(&model.schema);
        let Some(world) = apply_naively(&names, &items, &batch) else {
            continue;
        };
        let loaded = fixed.load(&world).is_ok();
        let viewed = FactView::from_json(&model, world.clone()).is_ok();
        assert_eq!(loaded, viewed, "{batch:?}");
        refused += usize::from(!loaded);
    }
    assert!(refused > 0);
    // Duplicates and cycles.
    let mut dup = items.clone();
    dup.push(items[0].clone());
    assert!(fixed.load(&dup).is_err());
    assert!(FactView::from_json(&model, dup).is_err());
}

/// Batches that break a domain rule on the shipped model are refused with
/// the rule and the operation's field, and change nothing.
#[test]
fn domain_rules_refuse_batches_naming_rule_and_field() {
    let fixed = Fixed::new();
    let items = shipped_items();
    let snap = fixed.load(&items).unwrap();
    let model = Model::new(&snap.schema).unwrap();
    let view = FactView::from_json(&model, items).unwrap();
    let cases = [
        // A service account among the admins (the schema forbids it too).
        (
            json!([{"op": "add_parent", "uid": "ServiceAccount::\"ci-bot\"", "parent": "OrgAdmins::\"acme-admins\""}]),
            "operations[0].parent",
            Some("R5"),
        ),
        (
            json!([{"op": "upsert", "entity": {"uid": {"type": "Prefect::ServiceAccount", "id": "sa2"}, "attrs": {"org": {"__entity": {"type": "Prefect::Organization", "id": "acme"}}}, "parents": [{"type": "Prefect::Organization", "id": "acme"}, {"type": "Prefect::OrgAdmins", "id": "acme-admins"}]}}]),
            "operations[0].entity.parents[1]",
            Some("R5"),
        ),
        // A role in a workspace of an organization it is not a member of.
        (
            json!([{"op": "set_tag", "uid": "User::\"gina\"", "key": "acme-prod", "value": {"__entity": {"type": "Prefect::Role", "id": "viewer"}}}]),
            "operations[0].key",
            Some("R6"),
        ),
        // Leaving the organization while holding roles in its workspaces.
        (
            json!([{"op": "remove_parent", "uid": "User::\"bob\"", "parent": "Organization::\"acme\""}]),
            "operations[0].parent",
            Some("R6"),
        ),
        // An admin that is not a member.
        (
            json!([{"op": "add_parent", "uid": "User::\"hank\"", "parent": "OrgAdmins::\"acme-admins\""}]),
            "operations[0].parent",
            Some("R1"),
        ),
        // A custom role of another organization.
        (
            json!([{"op": "set_tag", "uid": "User::\"hank\"", "key": "globex-main", "value": {"__entity": {"type": "Prefect::Role", "id": "acme-incident-responder"}}}]),
            "operations[0].key",
            Some("R9"),
        ),
        // Two workspaces with one handle in one organization.
        (
            json!([{"op": "set_attr", "uid": "Workspace::\"acme-staging\"", "attr": "handle", "value": "prod"}]),
            "operations[0].attr",
            Some("R11"),
        ),
        // Deleting a workspace whose memberships remain.
        (
            json!([{"op": "delete", "uid": "Workspace::\"acme-prod\""}]),
            "operations[0].uid",
            Some("R6"),
        ),
        // A malformed API key digest.
        (
            json!([{"op": "set_attr", "uid": "User::\"bob\"", "attr": "apiKeyDigests", "value": ["secret"]}]),
            "operations[0].attr",
            None,
        ),
    ];
    for (ops, field, rule) in cases {
        let batch = Batch::from_json_value(json!({"operations": ops}), &Limits::default()).unwrap();
        let e = view.apply(&model, &batch).unwrap_err();
        assert_eq!(e.field, field, "{ops}: {e}");
        assert_eq!(e.rule.as_deref(), rule, "{ops}: {e}");
        assert!(
            !e.message.contains("secret"),
            "a malformed digest is never echoed"
        );
    }
    // Deleting the workspace with its memberships is fine.
    let holders: Vec<Value> = view
        .to_json()
        .into_iter()
        .filter(|e| e["tags"].get("acme-prod").is_some())
        .map(|e| json!({"op": "remove_tag", "uid": e["uid"], "key": "acme-prod"}))
        .chain([json!({"op": "delete", "uid": "Workspace::\"acme-prod\""})])
        .collect();
    let batch = Batch::from_json_value(json!({"operations": holders}), &Limits::default()).unwrap();
    let (next, applied) = view.apply(&model, &batch).unwrap();
    assert_eq!(applied.deleted.len(), 1);
    assert!(fixed.load(&next.to_json()).is_ok(), "the export loads");
}

/// A follower brought forward with `FactView::advance` (the rows another
/// writer committed, as a store returns them: each entity's current JSON
/// and revision, and the uids deleted) holds exactly the leader's facts,
/// whatever batches the leader applied in between; rows its schema refuses
/// are refused whole.
#[test]
fn a_follower_advanced_with_stored_rows_holds_the_leaders_facts() {
    let fixed = Fixed::new();
    let items = shipped_items();
    let snap = fixed.load(&items).unwrap();
    let model = Model::new(&snap.schema).unwrap();
    let mut leader = FactView::from_json(&model, items.clone()).unwrap();
    let mut follower = leader.clone();
    let mut items = items;
    let mut rng = Rng(7);
    let mut touched: BTreeSet<EntityUid> = BTreeSet::new();
    let mut advances = 0;
    for step in 0..200 {
        let ops: Vec<Value> = (0..1 + rng.below(3))
            .map(|_| random_op(&mut rng, &items))
            .collect();
        let batch =
            Batch::from_json_value(json!({ "operations": ops }), &Limits::default()).unwrap();
        if let Ok((next, applied)) = leader.apply(&model, &batch) {
            touched.extend(applied.upserted.iter().map(|(u, _)| u.clone()));
            // Tag-only writes: the store lists them with the written ones.
            touched.extend(applied.tags.iter().map(|(u, _, _)| u.clone()));
            touched.extend(applied.deleted.iter().cloned());
            leader = next;
            items = leader.to_json();
        }
        if step % 7 == 6 {
            let mut rows = Vec::new();
            let mut deleted = Vec::new();
            for uid in std::mem::take(&mut touched) {
                match leader.entity_json(&uid) {
                    Some((json, rev)) => rows.push((json, rev)),
                    None => deleted.push(uid.to_string()),
                }
            }
            let (next, _) = follower
                .advance(&model, &rows, &deleted, leader.revision())
                .unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(next.revision(), leader.revision());
            let all =
                |v: &FactView| -> Vec<Value> { v.to_json().into_iter().map(normalize).collect() };
            assert!(
                all(&next) == all(&leader),
                "step {step}: the follower differs"
            );
            for (json, rev) in &rows {
                let uid = EntityUid::from_json(json["uid"].clone()).unwrap();
                assert_eq!(next.entity_json(&uid).unwrap().1, *rev);
            }
            follower = next;
            advances += 1;
        }
    }
    assert!(advances > 10);
    let loaded = fixed.load(&follower.to_json()).unwrap();
    same_facts(&loaded, &follower);

    // A row this schema refuses (an attribute of the wrong type): refused,
    // naming why; the follower is unchanged.
    let mut bad = follower
        .to_json()
        .into_iter()
        .find(|e| e["uid"]["type"] == "Prefect::User")
        .unwrap();
    bad["attrs"]["email"] = json!(42);
    let before: Vec<Value> = follower.to_json().into_iter().map(normalize).collect();
    let refused = follower.advance(
        &model,
        &[(bad, follower.revision() + 1)],
        &[],
        follower.revision() + 1,
    );
    assert!(refused.is_err());
    let after: Vec<Value> = follower.to_json().into_iter().map(normalize).collect();
    assert!(before == after);
}

//! Incremental entity reloads: after a change to some entity files, a
//! reload parses only those and applies the change to the served snapshot's
//! entities ([`Inputs::build_after`]). The result must be exactly what a
//! full load of the same files gives: the same entities with the same
//! ancestors, the same per-file records, the same errors.
//!
//! Each test generates a small world ([`orgwarden::world`]) with the shipped
//! schema and policies in a temporary directory, edits its entity files,
//! and loads both ways after every edit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use orgwarden::Snapshot;
use orgwarden::diag::Diagnostics;
use orgwarden::load::{self, Inputs, Paths};
use orgwarden::reload::Live;
use orgwarden::snapshot::FileKind;
use orgwarden::world::{self, Rng, WorldSpec};
use serde_json::{Value, json};

fn spec() -> WorldSpec {
    WorldSpec {
        orgs: 6,
        workspaces_per_org: 4,
        users_per_org: 5,
        service_accounts_per_org: 1,
        custom_roles_per_org: 2,
        memberships: 60,
        personal: 3,
        seed: 7,
    }
}

/// A generated world with the shipped schema and policies.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self::of(&spec())
    }

    fn of(spec: &WorldSpec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for sub in ["policies", "schema"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(root.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    let to = dir.path().join(sub).join(path.file_name().unwrap());
                    std::fs::copy(&path, to).unwrap();
                }
            }
        }
        world::write(spec, &dir.path().join("entities")).unwrap();
        World { dir }
    }

    fn paths(&self) -> Paths {
        Paths {
            policies: self.dir.path().join("policies"),
            schema: self.dir.path().join("schema"),
            entities: self.dir.path().join("entities"),
            routes: None,
            identity: None,
        }
    }

    fn entities(&self) -> PathBuf {
        self.dir.path().join("entities")
    }

    /// Every entity file: path relative to the entities directory -> text.
    fn texts(&self) -> BTreeMap<String, String> {
        load::list_files(&self.entities(), FileKind::Entities)
            .unwrap()
            .into_iter()
            .map(|p| {
                let rel = p.strip_prefix(self.entities()).unwrap();
                let text = std::fs::read_to_string(&p).unwrap();
                (rel.to_string_lossy().into_owned(), text)
            })
            .collect()
    }

    /// Make the entity files exactly `texts` (files not in it are removed).
    fn restore(&self, texts: &BTreeMap<String, String>) {
        for rel in self.texts().keys() {
            if !texts.contains_key(rel) {
                std::fs::remove_file(self.entities().join(rel)).unwrap();
            }
        }
        for (rel, text) in texts {
            if self.texts().get(rel) != Some(text) {
                self.write_text(rel, text);
            }
        }
    }

    fn write_text(&self, rel: &str, text: &str) {
        let path = self.entities().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn read(&self, rel: &str) -> Vec<Value> {
        serde_json::from_str(&std::fs::read_to_string(self.entities().join(rel)).unwrap()).unwrap()
    }

    fn write(&self, rel: &str, items: &[Value]) {
        self.write_text(rel, &serde_json::to_string_pretty(items).unwrap());
    }

    fn edit(&self, rel: &str, edit: impl FnOnce(&mut Vec<Value>)) {
        let mut items = self.read(rel);
        edit(&mut items);
        self.write(rel, &items);
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.entities().join(rel)).unwrap();
    }

    /// A hierarchy several levels deep across files, which the platform's
    /// model does not have: a second schema file declares `Test::Group in
    /// [Group]`, and `groups/` holds `top`, `mid` (in `top`) and two leaves
    /// (in `mid`), one file each.
    fn add_groups(&self) {
        std::fs::write(
            self.dir.path().join("schema").join("groups.cedarschema"),
            "namespace Test { entity Group in [Group]; }\n",
        )
        .unwrap();
        let group = |id: &str, parent: Option<&str>| {
            let parents: Vec<Value> = parent
                .map(|p| json!({ "type": "Test::Group", "id": p }))
                .into_iter()
                .collect();
            json!({ "uid": { "type": "Test::Group", "id": id }, "attrs": {}, "parents": parents })
        };
        self.write("groups/top.json", &[group("top", None)]);
        self.write("groups/mid.json", &[group("mid", Some("top"))]);
        self.write("groups/leaf-a.json", &[group("leaf-a", Some("mid"))]);
        self.write("groups/leaf-b.json", &[group("leaf-b", Some("mid"))]);
    }
}

/// The reloader's build: read the files, build after `previous`.
fn incremental(paths: &Paths, previous: &Snapshot) -> Result<Snapshot, Diagnostics> {
    let inputs = Inputs::read(paths)?;
    inputs.build_after(inputs.source_files(), Instant::now(), previous)
}

/// Every entity: uid -> (its JSON with its ancestors sorted, the sorted
/// ancestors Cedar answers for it).
fn facts(s: &Snapshot) -> BTreeMap<String, (Value, Vec<String>)> {
    s.entities
        .iter()
        .map(|e| {
            let uid = e.uid();
            let mut json = e.to_json_value().unwrap();
            if let Some(parents) = json.get_mut("parents").and_then(Value::as_array_mut) {
                parents.sort_by_key(|p| p.to_string());
            }
            let mut ancestors: Vec<String> = s
                .entities
                .ancestors(&uid)
                .unwrap()
                .map(ToString::to_string)
                .collect();
            ancestors.sort();
            (uid.to_string(), (json, ancestors))
        })
        .collect()
}

fn assert_same(full: &Snapshot, inc: &Snapshot) {
    assert!(
        full.entities.deep_eq(&inc.entities),
        "entities differ (deep_eq)"
    );
    let (f, i) = (facts(full), facts(inc));
    for (uid, fact) in &f {
        assert_eq!(Some(fact), i.get(uid), "entity {uid}");
    }
    assert_eq!(f.len(), i.len(), "entity count");
    assert_eq!(full.entity_sources, inc.entity_sources, "entity sources");
    assert_eq!(full.entity_total, inc.entity_total);
    assert_eq!(full.keys.len(), inc.keys.len());
    let warnings = |s: &Snapshot| s.warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    assert_eq!(warnings(full), warnings(inc));
}

/// The text of `diags`, but for the vertex that Cedar names in a cycle:
/// which one depends on the order of a hash map, from one full load to the
/// next.
fn comparable(diags: &Diagnostics) -> String {
    const CYCLE: &str = "has a cycle containing vertex `";
    let text = diags.to_string();
    match text.find(CYCLE) {
        Some(at) => {
            let from = at + CYCLE.len();
            let to = from + text[from..].find('`').unwrap_or(0);
            format!("{}<vertex>{}", &text[..from], &text[to..])
        }
        None => text,
    }
}

/// Load `w` fully and incrementally after `previous`; they must agree.
/// The incremental snapshot, or the errors.
fn both(w: &World, previous: &Snapshot, what: &str) -> Result<Snapshot, String> {
    let full = load::load(&w.paths());
    let inc = incremental(&w.paths(), previous);
    match (full, inc) {
        (Ok(f), Ok(i)) => {
            assert_same(&f, &i);
            Ok(i)
        }
        (Err(f), Err(i)) => {
            let (f, i) = (comparable(&f), comparable(&i));
            assert_eq!(f, i, "{what}: the errors differ");
            Err(f)
        }
        (Ok(_), Err(i)) => panic!("{what}: the full load succeeds, the incremental fails: {i}"),
        (Err(f), Ok(_)) => panic!("{what}: the full load fails ({f}), the incremental succeeds"),
    }
}

/// The role `who` holds by its tag `key`, in `s`.
fn tag_role(s: &Snapshot, who: &cedar_policy::EntityUid, key: &str) -> Option<String> {
    match s.entities.get(who)?.tag(key)? {
        Ok(cedar_policy::EvalResult::EntityUid(role)) => Some(role.id().unescaped().to_string()),
        other => panic!("{other:?}"),
    }
}

fn ty(item: &Value) -> &str {
    item["uid"]["type"].as_str().unwrap_or("")
}

fn id(item: &Value) -> &str {
    item["uid"]["id"].as_str().unwrap_or("")
}

fn uid(ty: &str, id: &str) -> Value {
    json!({ "type": format!("Prefect::{ty}"), "id": id })
}

fn role_ref(id: &str) -> Value {
    json!({ "__entity": uid("Role", id) })
}

/// The parsed entity files that are JSON arrays.
fn arrays(w: &World) -> Vec<(String, Vec<Value>)> {
    w.texts()
        .into_iter()
        .filter_map(|(rel, text)| Some((rel, serde_json::from_str(&text).ok()?)))
        .collect()
}

/// One random edit; whether it is one that must fail (and be undone).
fn random_edit(w: &World, rng: &mut Rng, n: usize) -> (String, bool) {
    let files = arrays(w);
    let Some((rel, items)) = rng.pick(&files).cloned() else {
        return ("nothing to edit".into(), false);
    };
    let principals: Vec<usize> = (0..items.len())
        .filter(|&i| matches!(ty(&items[i]), "Prefect::User" | "Prefect::ServiceAccount"))
        .collect();
    match rng.below(11) {
        0 => {
            // A user becomes or stops being an Admin of its (first) org.
            let Some(&i) = rng.pick(&principals) else {
                return (format!("no principal in {rel}"), false);
            };
            let who = id(&items[i]).to_string();
            w.edit(&rel, |items| {
                let parents = items[i]["parents"].as_array_mut().unwrap();
                let org = parents
                    .iter()
                    .find(|p| p["type"] == "Prefect::Organization")
                    .and_then(|p| p["id"].as_str())
                    .map(str::to_string);
                let admins = |p: &Value| p["type"] == "Prefect::OrgAdmins";
                if parents.iter().any(admins) {
                    parents.retain(|p| !admins(p));
                } else if let Some(org) = org {
                    parents.push(uid("OrgAdmins", &format!("{org}-admins")));
                }
            });
            (format!("toggle the admin parent of {who} in {rel}"), false)
        }
        1 => {
            // A principal gets a role in one of the file's workspaces, or loses one.
            let Some(&i) = rng.pick(&principals) else {
                return (format!("no principal in {rel}"), false);
            };
            let workspaces: Vec<String> = items
                .iter()
                .filter(|e| ty(e) == "Prefect::Workspace")
                .map(|e| id(e).to_string())
                .collect();
            let role = ["viewer", "runner", "developer", "owner"][rng.below(4)];
            let ws = rng.pick(&workspaces).cloned();
            let drop = rng.below(2) == 0;
            let who = id(&items[i]).to_string();
            w.edit(&rel, |items| {
                let tags = items[i]
                    .as_object_mut()
                    .unwrap()
                    .entry("tags")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .unwrap();
                match (drop, tags.keys().next().cloned(), ws) {
                    (true, Some(first), _) => {
                        tags.remove(&first);
                    }
                    (_, _, Some(ws)) => {
                        tags.insert(ws, role_ref(role));
                    }
                    _ => {}
                }
            });
            (format!("change the tags of {who} in {rel}"), false)
        }
        2 => {
            let i = rng.below(items.len());
            let what = items.get(i).map(|e| id(e).to_string()).unwrap_or_default();
            w.edit(&rel, |items| {
                if i < items.len() {
                    items.remove(i);
                }
            });
            (format!("remove {what} from {rel}"), false)
        }
        3 => {
            // Move an entity to another file, maybe a new one.
            if items.is_empty() {
                return (format!("{rel} is empty"), false);
            }
            let i = rng.below(items.len());
            let entity = items[i].clone();
            let others: Vec<&String> = files
                .iter()
                .map(|(r, _)| r)
                .filter(|r| **r != rel)
                .collect();
            let to = match rng.pick(&others) {
                Some(to) if rng.below(3) > 0 => (*to).clone(),
                _ => format!("moved/m{n}.json"),
            };
            w.edit(&rel, |items| {
                items.remove(i);
            });
            if w.entities().join(&to).exists() {
                w.edit(&to, |items| items.push(entity.clone()));
            } else {
                w.write(&to, std::slice::from_ref(&entity));
            }
            (format!("move {} from {rel} to {to}", id(&entity)), false)
        }
        4 => {
            w.remove(&rel);
            (format!("delete {rel}"), false)
        }
        5 => {
            // A new file with a new member of some organization.
            let orgs: Vec<String> = files
                .iter()
                .flat_map(|(_, items)| items)
                .filter(|e| ty(e) == "Prefect::Organization")
                .map(|e| id(e).to_string())
                .collect();
            let org = rng.pick(&orgs).cloned().unwrap_or_else(|| "org0".into());
            let user = json!({
                "uid": uid("User", &format!("new{n}")),
                "attrs": { "email": format!("new{n}@example.com") },
                "parents": [uid("Organization", &org)],
            });
            let to = format!("extra/x{n}.json");
            w.write(&to, &[user]);
            (format!("add {to}: a member of {org}"), false)
        }
        6 => {
            let text = std::fs::read_to_string(w.entities().join(&rel)).unwrap();
            w.write_text(&rel, &format!("{text}\n  oops"));
            (format!("break the JSON of {rel}"), true)
        }
        7 => {
            // The same entity, again, in another file before or after it.
            let Some(entity) = rng.pick(&items).cloned() else {
                return (format!("{rel} is empty"), false);
            };
            let to = if rng.below(2) == 0 {
                "0-first.json"
            } else {
                "zz-last.json"
            };
            w.write(to, std::slice::from_ref(&entity));
            (format!("define {} again in {to}", id(&entity)), true)
        }
        8 => {
            // Two roles in one another: the schema has no role hierarchy.
            let roles: Vec<usize> = (0..items.len())
                .filter(|&i| ty(&items[i]) == "Prefect::Role")
                .collect();
            if roles.len() < 2 {
                return (format!("fewer than two roles in {rel}"), false);
            }
            let (a, b) = (roles[0], roles[1]);
            let (ida, idb) = (id(&items[a]).to_string(), id(&items[b]).to_string());
            w.edit(&rel, |items| {
                items[a]["parents"]
                    .as_array_mut()
                    .unwrap()
                    .push(uid("Role", &idb));
                items[b]["parents"]
                    .as_array_mut()
                    .unwrap()
                    .push(uid("Role", &ida));
            });
            (format!("put {ida} and {idb} in one another"), true)
        }
        9 => {
            // A role grants one more scope, or one fewer.
            let roles: Vec<usize> = (0..items.len())
                .filter(|&i| ty(&items[i]) == "Prefect::Role")
                .collect();
            let Some(&i) = rng.pick(&roles) else {
                return (format!("no role in {rel}"), false);
            };
            let scope = ["see_flows", "manage_flows", "write_workers", "run_tasks"][rng.below(4)];
            let scope = json!({ "__entity": { "type": "Prefect::Action", "id": scope } });
            let what = id(&items[i]).to_string();
            w.edit(&rel, |items| {
                let grants = items[i]["attrs"]["grants"].as_array_mut().unwrap();
                match grants.iter().position(|g| *g == scope) {
                    Some(at) => {
                        grants.remove(at);
                    }
                    None => grants.push(scope),
                }
            });
            (format!("toggle a scope of {what} in {rel}"), false)
        }
        _ => {
            // A workspace's handle becomes that of another (R11 when they share an org).
            let ws: Vec<usize> = (0..items.len())
                .filter(|&i| ty(&items[i]) == "Prefect::Workspace")
                .collect();
            if ws.len() < 2 {
                return (format!("fewer than two workspaces in {rel}"), false);
            }
            let (a, b) = (ws[0], ws[1]);
            let handle = items[b]["attrs"]["handle"].clone();
            let what = id(&items[a]).to_string();
            w.edit(&rel, |items| items[a]["attrs"]["handle"] = handle);
            (format!("give {what} the handle of its neighbour"), false)
        }
    }
}

#[test]
fn random_edits_reload_incrementally_exactly_as_a_full_load() {
    let w = World::new();
    let mut served = load::load(&w.paths()).unwrap();
    let mut good = w.texts();
    let mut rng = Rng(0x5eed);
    let (mut incremental_builds, mut failures, mut in_a_row) = (0, 0, 0);
    for n in 0..120 {
        let before = w.texts();
        let (what, must_fail) = random_edit(&w, &mut rng, n);
        let what = format!("edit #{n}: {what}");
        match both(&w, &served, &what) {
            Ok(next) => {
                assert!(!must_fail, "{what}: loads");
                let files = next.entity_sources.len();
                if next.entity_files_parsed > 0 && next.entity_files_parsed < files {
                    incremental_builds += 1;
                }
                assert!(next.entity_files_parsed <= files);
                served = next;
                good = w.texts();
                in_a_row = 0;
            }
            Err(_) => {
                failures += 1;
                in_a_row += 1;
                if must_fail {
                    // Fixed by undoing the edit.
                    w.restore(&before);
                    if let Ok(next) = both(&w, &served, &format!("{what}, undone")) {
                        served = next;
                        good = w.texts();
                        in_a_row = 0;
                    }
                } else if in_a_row >= 3 || rng.below(3) == 0 {
                    w.restore(&good);
                    served = both(&w, &served, &format!("{what}, back to the last good files"))
                        .expect("the last good files load");
                    in_a_row = 0;
                }
            }
        }
    }
    assert!(
        incremental_builds >= 15,
        "only {incremental_builds} incremental builds"
    );
    assert!(failures >= 10, "only {failures} failed edits");
}

#[test]
fn an_edit_of_one_file_parses_that_file_only_and_loses_a_parent() {
    let w = World::new();
    let first = load::load(&w.paths()).unwrap();
    let rel = "orgs/org1.json";
    w.edit(rel, |items| {
        let admin = items.iter_mut().find(|e| id(e) == "org1-u0").unwrap();
        admin["parents"] = json!([uid("Organization", "org1")]);
    });
    let next = both(&w, &first, "demote org1-u0").unwrap();
    assert_eq!(next.entity_files_parsed, 1);
    let u0: cedar_policy::EntityUid = r#"Prefect::User::"org1-u0""#.parse().unwrap();
    let admins: cedar_policy::EntityUid = r#"Prefect::OrgAdmins::"org1-admins""#.parse().unwrap();
    assert!(first.entities.is_ancestor_of(&admins, &u0));
    assert!(!next.entities.is_ancestor_of(&admins, &u0));
}

#[test]
fn removing_a_parent_keeps_it_as_the_parent_of_its_descendants_as_a_full_load_does() {
    let w = World::new();
    w.add_groups();
    let first = load::load(&w.paths()).unwrap();
    // `mid` is below `top`, and the leaves (in two other files) below `mid`.
    let original = w.read("groups/mid.json");
    w.remove("groups/mid.json");
    let next = both(&w, &first, "remove mid").unwrap();
    let mid: cedar_policy::EntityUid = r#"Test::Group::"mid""#.parse().unwrap();
    let leaf: cedar_policy::EntityUid = r#"Test::Group::"leaf-a""#.parse().unwrap();
    assert!(next.entities.get(&mid).is_none());
    assert!(
        next.entities.is_ancestor_of(&mid, &leaf),
        "a dangling parent"
    );
    assert!(
        next.entity_files_parsed > 1,
        "the files below it parsed again"
    );
    // And back: the group returns above them.
    w.write("groups/mid.json", &original);
    let back = both(&w, &next, "restore mid").unwrap();
    assert_eq!(facts(&back), facts(&first));
}

#[test]
fn a_duplicate_across_a_kept_and_a_changed_file_names_both_in_either_order() {
    let w = World::new();
    let first = load::load(&w.paths()).unwrap();
    let user = w
        .read("orgs/org2.json")
        .into_iter()
        .find(|e| id(e) == "org2-u3")
        .unwrap();
    for (rel, here, there) in [
        ("0-first.json", "orgs/org2.json", "0-first.json"),
        ("zz-last.json", "zz-last.json", "orgs/org2.json"),
    ] {
        w.write(rel, std::slice::from_ref(&user));
        let errors = both(&w, &first, rel).unwrap_err();
        let at = w.entities().join(here);
        let expected = format!(
            "duplicate entity Prefect::User::\"org2-u3\": already defined in {}",
            w.entities().join(there).display()
        );
        assert!(
            errors.contains(&at.display().to_string()) && errors.contains(&expected),
            "{errors}"
        );
        w.remove(rel);
    }
}

#[test]
fn a_cycle_through_a_kept_file_is_refused_as_by_a_full_load() {
    let w = World::new();
    w.add_groups();
    let first = load::load(&w.paths()).unwrap();
    // A group below `leaf-a`, in the file of `leaf-b` (valid) ...
    w.edit("groups/leaf-b.json", |items| {
        items.push(json!({
            "uid": { "type": "Test::Group", "id": "extra" },
            "attrs": {},
            "parents": [{ "type": "Test::Group", "id": "leaf-a" }],
        }));
    });
    let next = both(&w, &first, "add extra").unwrap();
    assert_eq!(next.entity_files_parsed, 1);
    // ... then `leaf-a` below it, in its own file only.
    w.edit("groups/leaf-a.json", |items| {
        items[0]["parents"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "type": "Test::Group", "id": "extra" }));
    });
    let errors = both(&w, &next, "close the cycle").unwrap_err();
    assert!(
        errors.contains("cycle") || errors.contains("Cycle"),
        "{errors}"
    );
}

#[test]
fn the_reloader_keeps_its_snapshot_on_a_bad_entity_edit_and_applies_the_fix() {
    let w = World::new();
    let live = Live::load(w.paths()).unwrap();
    let first = live.snapshot();
    let first_facts = facts(&first);
    let rel = "orgs/org3.json";
    let original = w.read(rel);
    // R6: a role in a workspace of another organization.
    w.edit(rel, |items| {
        let user = items.iter_mut().find(|e| id(e) == "org3-u1").unwrap();
        user["tags"]["org4-ws0"] = role_ref("viewer");
    });
    let errors = live.reload().unwrap_err();
    assert!(errors.to_string().contains("R6"), "{errors}");
    assert!(
        Arc::ptr_eq(&first, &live.snapshot()),
        "the old snapshot serves"
    );
    assert!(live.last_error().is_some());
    // The fix: another role in a workspace of its own organization.
    let u1: cedar_policy::EntityUid = r#"Prefect::User::"org3-u1""#.parse().unwrap();
    let before = tag_role(&first, &u1, "org3-ws1");
    let role = if before.as_deref() == Some("owner") {
        "runner"
    } else {
        "owner"
    };
    w.write(rel, &original);
    w.edit(rel, |items| {
        let user = items.iter_mut().find(|e| id(e) == "org3-u1").unwrap();
        user["tags"]["org3-ws1"] = role_ref(role);
    });
    let next = live.reload().unwrap();
    assert!(live.last_error().is_none());
    assert_eq!(next.entity_files_parsed, 1);
    assert_same(&load::load(&w.paths()).unwrap(), &next);
    assert_eq!(tag_role(&next, &u1, "org3-ws1").as_deref(), Some(role));
    // The served snapshot was never changed in place.
    assert_eq!(facts(&first), first_facts);
    assert_eq!(tag_role(&first, &u1, "org3-ws1"), before);
    // Deleting a file and adding another, in one reload.
    w.remove("orgs/org5.json");
    let org5 = world::generate(&spec())
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "orgs/org5.json")
        .unwrap()
        .1;
    w.write("renamed/org5.json", org5.as_array().unwrap());
    let after = live.reload().unwrap();
    assert_eq!(after.entity_files_parsed, 1);
    assert_same(&load::load(&w.paths()).unwrap(), &after);
    let paths: BTreeSet<String> = after
        .entity_sources
        .iter()
        .map(|s| s.path.display().to_string())
        .collect();
    assert!(paths.iter().any(|p| p.ends_with("renamed/org5.json")));
    assert!(!paths.iter().any(|p| p.ends_with("orgs/org5.json")));
}

#[test]
fn a_change_of_many_entities_builds_them_anew_as_a_full_load_does() {
    let w = World::of(&WorldSpec {
        orgs: 8,
        users_per_org: 20,
        memberships: 200,
        ..spec()
    });
    let first = load::load(&w.paths()).unwrap();
    // A new email for every user of every org: more entities than an
    // incremental reload replaces.
    for o in 0..8 {
        w.edit(&format!("orgs/org{o}.json"), |items| {
            for e in items.iter_mut().filter(|e| ty(e) == "Prefect::User") {
                let email = format!("new-{}@example.com", id(e));
                e["attrs"]["email"] = json!(email);
            }
        });
    }
    let next = both(&w, &first, "new emails").unwrap();
    assert_eq!(next.entity_files_parsed, next.entity_sources.len());
    // One more: back to incremental.
    w.edit("orgs/org0.json", |items| {
        let e = items.iter_mut().find(|e| id(e) == "org0-u1").unwrap();
        e["attrs"]["email"] = json!("again@example.com");
    });
    let again = both(&w, &next, "one email").unwrap();
    assert_eq!(again.entity_files_parsed, 1);
}

//! World generator: large, deterministic sets of facts in the platform's
//! model, for benchmarks and scale tests (`orgwarden gen`).
//!
//! A world has `orgs` organizations, each with users (the first is its
//! Admin), service accounts, workspaces with assorted default roles, custom
//! roles, and explicit workspace memberships (tags) spread over its
//! principals and workspaces, plus personal workspaces with collaborators.
//! Scopes (the schema's workspace actions) and built-in roles are the
//! shipped ones; a custom role grants a built-in role's scopes and a few
//! more. The same spec and seed always give the same files.

use std::path::Path;

use serde_json::{Value, json};

const SCHEMA: &str = include_str!("../schema/prefect.cedarschema");
const ROLES: &str = include_str!("../entities/roles.json");
const BUILTIN: [&str; 5] = ["viewer", "runner", "developer", "owner", "worker"];
const DEFAULTS: [Option<&str>; 5] = [
    Some("viewer"),
    Some("runner"),
    Some("no-access"),
    Some("developer"),
    None,
];

/// The shape of a generated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldSpec {
    pub orgs: usize,
    pub workspaces_per_org: usize,
    pub users_per_org: usize,
    pub service_accounts_per_org: usize,
    pub custom_roles_per_org: usize,
    /// Explicit workspace memberships (tags), spread evenly over the orgs.
    pub memberships: usize,
    /// Users with a personal workspace (each with one collaborator).
    pub personal: usize,
    pub seed: u64,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            orgs: 10,
            workspaces_per_org: 10,
            users_per_org: 20,
            service_accounts_per_org: 2,
            custom_roles_per_org: 2,
            memberships: 1000,
            personal: 10,
            seed: 1,
        }
    }
}

/// SplitMix64: a tiny deterministic generator, stable across crate versions
/// (also what seeded tests use, so that a failure replays).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One of `items`, or none when it is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

fn uid(ty: &str, id: &str) -> Value {
    json!({ "type": format!("Prefect::{ty}"), "id": id })
}

fn entity_ref(ty: &str, id: &str) -> Value {
    json!({ "__entity": uid(ty, id) })
}

/// Names used by generated worlds, so that tests can address them.
pub fn org_id(o: usize) -> String {
    format!("org{o}")
}
pub fn user_id(o: usize, u: usize) -> String {
    format!("org{o}-u{u}")
}
pub fn service_account_id(o: usize, s: usize) -> String {
    format!("org{o}-sa{s}")
}
pub fn workspace_id(o: usize, w: usize) -> String {
    format!("org{o}-ws{w}")
}

/// The workspace scopes of the shipped schema (the actions in
/// `workspace_scope`), sorted.
fn scopes() -> Result<Vec<String>, String> {
    let (schema, _) =
        cedar_policy::Schema::from_cedarschema_str(SCHEMA).map_err(|e| e.to_string())?;
    let actions = schema.action_entities().map_err(|e| e.to_string())?;
    let group: cedar_policy::EntityUid = r#"Prefect::Action::"workspace_scope""#
        .parse()
        .map_err(|e: cedar_policy::ParseErrors| e.to_string())?;
    let mut ids: Vec<String> = actions
        .iter()
        .filter(|a| {
            actions
                .ancestors(&a.uid())
                .is_some_and(|mut up| up.any(|x| *x == group))
        })
        .map(|a| a.uid().id().unescaped().to_string())
        .collect();
    ids.sort();
    Ok(ids)
}

/// The world as entity files: `(relative path, JSON array)`.
pub fn generate(spec: &WorldSpec) -> Result<Vec<(String, Value)>, String> {
    let principals = spec.users_per_org + spec.service_accounts_per_org;
    let per_org = spec.memberships.div_ceil(spec.orgs.max(1));
    if spec.orgs == 0 || spec.users_per_org == 0 || spec.workspaces_per_org == 0 {
        return Err("orgs, users per org and workspaces per org must be at least 1".into());
    }
    if per_org > principals * spec.workspaces_per_org {
        return Err(format!(
            "{per_org} memberships per org exceed {principals} principals x {} workspaces",
            spec.workspaces_per_org
        ));
    }
    let scope_ids = scopes()?;
    let roles: Value = serde_json::from_str(ROLES).map_err(|e| e.to_string())?;
    let grants_of = |role: &str| -> Vec<Value> {
        roles
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["uid"]["id"] == role)
            .and_then(|r| r["attrs"]["grants"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut files = vec![("roles.json".to_string(), roles.clone())];
    let mut rng = Rng(spec.seed);
    let mut remaining = spec.memberships;
    for o in 0..spec.orgs {
        let org = org_id(o);
        let admins = format!("{org}-admins");
        let mut out = vec![
            json!({ "uid": uid("Organization", &org), "attrs": { "handle": org, "admins": entity_ref("OrgAdmins", &admins) }, "parents": [] }),
            json!({ "uid": uid("OrgAdmins", &admins), "attrs": {}, "parents": [] }),
        ];
        let custom: Vec<String> = (0..spec.custom_roles_per_org)
            .map(|r| format!("{org}-role{r}"))
            .collect();
        for id in &custom {
            // A built-in role's scopes (inherited) and three more.
            let mut grants = grants_of(BUILTIN[rng.below(2)]);
            for _ in 0..3 {
                let scope = entity_ref("Action", &scope_ids[rng.below(scope_ids.len())]);
                if !grants.contains(&scope) {
                    grants.push(scope);
                }
            }
            out.push(json!({ "uid": uid("Role", id), "attrs": { "name": id, "builtin": false, "org": entity_ref("Organization", &org), "grants": grants }, "parents": [] }));
        }
        for w in 0..spec.workspaces_per_org {
            let id = workspace_id(o, w);
            let mut attrs = json!({ "key": id, "handle": format!("ws{w}"), "org": entity_ref("Organization", &org) });
            if let Some(role) = DEFAULTS[rng.below(DEFAULTS.len())] {
                attrs["defaultRole"] = entity_ref("Role", role);
            }
            out.push(json!({ "uid": uid("Workspace", &id), "attrs": attrs, "parents": [] }));
        }
        // Memberships: pair index -> (principal, workspace), distinct per org.
        let count = per_org.min(remaining);
        remaining -= count;
        let mut tags: Vec<serde_json::Map<String, Value>> =
            vec![serde_json::Map::new(); principals];
        for idx in 0..count {
            let p = idx % principals;
            let w = (idx / principals + p) % spec.workspaces_per_org;
            let role = if !custom.is_empty() && rng.below(5) == 0 {
                custom[rng.below(custom.len())].clone()
            } else {
                BUILTIN[rng.below(BUILTIN.len())].to_string()
            };
            tags[p].insert(workspace_id(o, w), entity_ref("Role", &role));
        }
        for (p, tags) in tags.into_iter().enumerate() {
            if p < spec.users_per_org {
                let id = user_id(o, p);
                let mut parents = vec![uid("Organization", &org)];
                if p == 0 {
                    parents.push(uid("OrgAdmins", &admins));
                }
                out.push(json!({ "uid": uid("User", &id), "attrs": { "email": format!("{id}@example.com") }, "parents": parents, "tags": tags }));
            } else {
                let id = service_account_id(o, p - spec.users_per_org);
                out.push(json!({ "uid": uid("ServiceAccount", &id), "attrs": { "org": entity_ref("Organization", &org) }, "parents": [uid("Organization", &org)], "tags": tags }));
            }
        }
        files.push((format!("orgs/{org}.json"), Value::Array(out)));
    }
    let mut personal = Vec::new();
    for i in 0..spec.personal {
        let owner = format!("p{i}");
        let friend = format!("p{i}-friend");
        let ws = format!("{owner}-personal");
        personal.push(json!({ "uid": uid("User", &owner), "attrs": { "email": format!("{owner}@example.com") }, "parents": [] }));
        personal.push(json!({ "uid": uid("User", &friend), "attrs": { "email": format!("{friend}@example.com") }, "parents": [],
                              "tags": { ws.clone(): entity_ref("Role", "collaborator") } }));
        personal.push(json!({ "uid": uid("Workspace", &ws), "attrs": { "key": ws, "handle": "personal", "owner": entity_ref("User", &owner) }, "parents": [] }));
    }
    files.push(("personal.json".to_string(), Value::Array(personal)));
    Ok(files)
}

/// Write the world's entity files under `dir`.
pub fn write(spec: &WorldSpec, dir: &Path) -> Result<usize, String> {
    let files = generate(spec)?;
    for (name, value) in &files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_world_and_exact_membership_count() {
        let spec = WorldSpec {
            memberships: 333,
            ..WorldSpec::default()
        };
        let a = generate(&spec).unwrap();
        assert_eq!(a, generate(&spec).unwrap());
        let tags: usize = a
            .iter()
            .flat_map(|(_, v)| v.as_array().unwrap())
            .filter_map(|e| e.get("tags").and_then(Value::as_object))
            .map(|t| t.len())
            .sum();
        assert_eq!(tags, 333 + spec.personal);
    }

    #[test]
    fn custom_roles_grant_the_schema_s_workspace_scopes() {
        let scopes = scopes().unwrap();
        assert_eq!(scopes.len(), 46);
        assert!(scopes.iter().any(|s| s == "see_flows"));
        assert!(
            !scopes
                .iter()
                .any(|s| s == "workspace_scope" || s == "delete:workspace")
        );
        let world = generate(&WorldSpec::default()).unwrap();
        let custom: Vec<&Value> = world
            .iter()
            .flat_map(|(_, v)| v.as_array().unwrap())
            .filter(|e| e["uid"]["type"] == "Prefect::Role" && e["attrs"]["builtin"] == false)
            .collect();
        assert_eq!(custom.len(), 10 * 2);
        for role in custom {
            let grants = role["attrs"]["grants"].as_array().unwrap();
            assert!(grants.len() > 3, "{role}");
            for g in grants {
                let id = g["__entity"]["id"].as_str().unwrap();
                assert!(scopes.iter().any(|s| s == id), "{id}");
            }
        }
    }

    #[test]
    fn refuses_more_memberships_than_pairs() {
        let spec = WorldSpec {
            orgs: 1,
            users_per_org: 2,
            service_accounts_per_org: 0,
            workspaces_per_org: 2,
            memberships: 5,
            ..WorldSpec::default()
        };
        assert!(generate(&spec).is_err());
    }
}

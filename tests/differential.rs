//! Differential tests: the engine decides exactly as plain `cedar-policy`.
//!
//! The reference is Cedar used the plain way: one `PolicySet` parsed from the
//! policy files concatenated in load order (each policy renamed to its `@id`
//! when it has one), an `Entities` built by
//! `Entities::from_json_value(all_entities, Some(&schema))`, and
//! `Authorizer::is_authorized`. The engine evaluates only the policies its
//! index picks for the action and, for request-scoped entities, a slice of
//! the facts. Decisions, determining policies and error messages must agree.
//!
//! Three parts:
//! * the shipped model: every request of the sample world the schema allows;
//! * generated worlds and policy sets on a small generic schema (hierarchy,
//!   optional attributes, Longs, sets, records, `ip`/`decimal`/`datetime`,
//!   tags, action groups), with conditions that hold, fail or raise runtime
//!   errors; the seed is fixed, `ORGWARDEN_DIFF_SEED` and
//!   `ORGWARDEN_DIFF_SETS` explore further;
//! * request-scoped entities (`additional_entities` that add, reference,
//!   replace and re-parent loaded entities, and `entities` replacing all).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, EntityUid, PolicyId, PolicySet, Request, Response, Schema,
    ValidationMode, Validator,
};
use orgwarden::engine::{self, Outcome, RequestInput};
use orgwarden::load::{self, Paths, TextFile};
use orgwarden::names::EntityRef;
use orgwarden::world::Rng;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The reference: plain cedar-policy.

/// What a decision says, in a form both sides can be compared in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    allow: bool,
    reasons: BTreeSet<String>,
    errors: BTreeSet<String>,
}

impl Verdict {
    fn of_outcome(o: &Outcome) -> Self {
        Verdict {
            allow: o.allowed(),
            reasons: o.reasons.iter().cloned().collect(),
            errors: o.errors.iter().cloned().collect(),
        }
    }

    fn of_response(r: &Response) -> Self {
        Verdict {
            allow: r.decision() == cedar_policy::Decision::Allow,
            reasons: r.diagnostics().reason().map(ToString::to_string).collect(),
            errors: r.diagnostics().errors().map(ToString::to_string).collect(),
        }
    }
}

/// Plain Cedar over the same texts.
struct Reference {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
}

impl Reference {
    /// Parse the schema, the policy files concatenated (policies without
    /// `@id` keep Cedar's `policyN`), rename by `@id`, validate strictly.
    fn new(schema: &Schema, policy_files: &[TextFile]) -> Result<Self, String> {
        let schema = schema.clone();
        let text: Vec<&str> = policy_files.iter().map(|f| f.text.as_str()).collect();
        let parsed = PolicySet::from_str(&text.join("\n")).map_err(|e| e.to_string())?;
        let mut policies = PolicySet::new();
        for p in parsed.policies() {
            let id = p
                .annotation("id")
                .map(PolicyId::new)
                .unwrap_or_else(|| p.id().clone());
            policies.add(p.new_id(id)).map_err(|e| e.to_string())?;
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result
                .validation_errors()
                .map(ToString::to_string)
                .collect();
            return Err(errors.join("; "));
        }
        Ok(Reference {
            schema,
            policies,
            authorizer: Authorizer::new(),
        })
    }

    fn entities(&self, all: &[Value]) -> Result<Entities, String> {
        Entities::from_json_value(Value::Array(all.to_vec()), Some(&self.schema))
            .map_err(|e| e.to_string())
    }

    fn decide(
        &self,
        entities: &Entities,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: &Value,
    ) -> Result<Verdict, String> {
        let context = Context::from_json_value(context.clone(), Some((&self.schema, action)))
            .map_err(|e| e.to_string())?;
        let request = Request::new(
            principal.clone(),
            action.clone(),
            resource.clone(),
            context,
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, entities);
        Ok(Verdict::of_response(&response))
    }
}

/// The entities of JSON files (arrays), concatenated.
fn concat_entities(files: &[TextFile]) -> Vec<Value> {
    let mut all = Vec::new();
    for f in files {
        match serde_json::from_str(&f.text) {
            Ok(Value::Array(items)) => all.extend(items),
            other => panic!("{}: not an entity array: {other:?}", f.path.display()),
        }
    }
    all
}

fn uid_of(entity: &Value) -> EntityUid {
    EntityUid::from_json(entity["uid"].clone()).expect("entity uid")
}

/// The loaded entities minus the uids of `extra`, plus `extra`.
fn upserted(loaded: &[Value], extra: &[Value]) -> Vec<Value> {
    let replaced: HashSet<EntityUid> = extra.iter().map(uid_of).collect();
    loaded
        .iter()
        .filter(|e| !replaced.contains(&uid_of(e)))
        .chain(extra)
        .cloned()
        .collect()
}

/// Which facts a request brings.
#[derive(Debug, Clone)]
enum Facts {
    Loaded,
    Additional(Vec<Value>),
    Replaced(Vec<Value>),
}

/// One request on the wire.
#[derive(Clone)]
struct Req {
    principal: EntityUid,
    action: EntityUid,
    resource: EntityUid,
    context: Value,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} context {}",
            self.principal, self.action, self.resource, self.context
        )
    }
}

impl Req {
    fn input(&self, facts: &Facts) -> RequestInput {
        let (entities, additional_entities) = match facts {
            Facts::Loaded => (None, None),
            Facts::Additional(e) => (None, Some(Value::Array(e.clone()))),
            Facts::Replaced(e) => (Some(Value::Array(e.clone())), None),
        };
        RequestInput {
            principal: Some(EntityRef::Text(self.principal.to_string())),
            action: Some(EntityRef::Text(self.action.to_string())),
            resource: Some(EntityRef::Text(self.resource.to_string())),
            context: Some(self.context.clone()),
            entities,
            additional_entities,
            token: None,
        }
    }
}

/// The engine's verdict on the wire request, or its request error.
fn engine_verdict(snap: &orgwarden::Snapshot, req: &Req, facts: &Facts) -> Result<Verdict, String> {
    let query = engine::prepare(snap, &req.input(facts)).map_err(|e| e.to_string())?;
    Ok(Verdict::of_outcome(&engine::decide(snap, &query)))
}

/// Counts that show a run exercised what it claims to.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    allow: usize,
    deny: usize,
    with_errors: usize,
    forbid_reasons: usize,
    /// Runtime errors by kind (the message without the policy id and values).
    error_kinds: std::collections::BTreeMap<String, usize>,
}

impl Tally {
    fn add(&mut self, v: &Verdict, forbids: &HashSet<String>) {
        self.requests += 1;
        if v.allow {
            self.allow += 1;
        } else {
            self.deny += 1;
        }
        if !v.errors.is_empty() {
            self.with_errors += 1;
        }
        for e in &v.errors {
            *self.error_kinds.entry(error_kind(e)).or_default() += 1;
        }
        if v.reasons.iter().any(|r| forbids.contains(r)) {
            self.forbid_reasons += 1;
        }
    }
}

/// The kind of a runtime error: its message without the policy id, with
/// quoted names and numbers elided.
fn error_kind(message: &str) -> String {
    let rest = message.split_once("`: ").map_or(message, |(_, r)| r);
    let mut out = String::new();
    let mut quoted = false;
    for c in rest.chars() {
        match c {
            '`' => {
                if !quoted {
                    out.push('_');
                }
                quoted = !quoted;
            }
            _ if quoted => {}
            '0'..='9' | '-' if !out.ends_with('N') => out.push('N'),
            '0'..='9' => {}
            _ => out.push(c),
        }
    }
    out
}

fn forbid_ids(policies: &PolicySet) -> HashSet<String> {
    policies
        .policies()
        .filter(|p| p.effect() == cedar_policy::Effect::Forbid)
        .map(|p| p.id().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Part a: the shipped model.

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files with extension `ext` under `dir`, sorted by path (the loader's order).
fn read_dir_sorted(dir: &Path, ext: &str) -> Vec<TextFile> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| TextFile {
            text: std::fs::read_to_string(&path).expect("read file"),
            path,
        })
        .collect()
}

struct Shipped {
    snap: orgwarden::Snapshot,
    reference: Reference,
    entities: Vec<Value>,
}

fn shipped() -> Shipped {
    let root = manifest_dir();
    let paths = Paths {
        policies: root.join("policies"),
        schema: root.join("schema"),
        entities: root.join("entities"),
        routes: None,
        identity: None,
    };
    let snap = load::load(&paths).unwrap_or_else(|d| panic!("shipped model must load:\n{d}"));
    let schema_text = std::fs::read_to_string(root.join("schema/prefect.cedarschema")).unwrap();
    let schema = Schema::from_cedarschema_str(&schema_text).unwrap().0;
    let reference = Reference::new(&schema, &read_dir_sorted(&paths.policies, "cedar"))
        .expect("shipped policies validate");
    let entities = concat_entities(&read_dir_sorted(&paths.entities, "json"));
    Shipped {
        snap,
        reference,
        entities,
    }
}

/// Every (principal, action, resource) of the sample world that the schema
/// allows: principals and resources of the types each action applies to.
fn shipped_requests(s: &Shipped, entities: &Entities) -> Vec<Req> {
    let schema = &s.reference.schema;
    let mut out = Vec::new();
    let mut actions: Vec<&EntityUid> = schema.actions().collect();
    actions.sort_by_key(|a| a.to_string());
    for action in actions {
        let (Some(ptypes), Some(rtypes)) = (
            schema.principals_for_action(action),
            schema.resources_for_action(action),
        ) else {
            continue; // an action group: no request names it
        };
        let ptypes: HashSet<String> = ptypes.map(ToString::to_string).collect();
        let rtypes: HashSet<String> = rtypes.map(ToString::to_string).collect();
        let of_types = |types: &HashSet<String>| -> Vec<EntityUid> {
            let mut v: Vec<EntityUid> = entities
                .iter()
                .map(|e| e.uid())
                .filter(|u| types.contains(&u.type_name().to_string()))
                .collect();
            v.sort_by_key(|u| u.to_string());
            v
        };
        for (i, principal) in of_types(&ptypes).into_iter().enumerate() {
            for resource in of_types(&rtypes) {
                // Alternate an empty context with a full one.
                let context = if i % 2 == 0 {
                    json!({})
                } else {
                    json!({"ip": "10.1.2.3", "time": "2026-01-01T00:00:00Z"})
                };
                out.push(Req {
                    principal: principal.clone(),
                    action: action.clone(),
                    resource,
                    context,
                });
            }
        }
    }
    out
}

#[test]
fn shipped_model_decides_every_request_as_plain_cedar() {
    let s = shipped();
    let entities = s.reference.entities(&s.entities).expect("shipped entities");
    let requests = shipped_requests(&s, &entities);
    let forbids = forbid_ids(&s.reference.policies);
    let mut tally = Tally::default();
    let mut actions_seen = HashSet::new();
    for req in &requests {
        let expected = s
            .reference
            .decide(
                &entities,
                &req.principal,
                &req.action,
                &req.resource,
                &req.context,
            )
            .unwrap_or_else(|e| panic!("reference rejects {req:?}: {e}"));
        let got = engine_verdict(&s.snap, req, &Facts::Loaded)
            .unwrap_or_else(|e| panic!("engine rejects {req:?}: {e}"));
        assert_eq!(got, expected, "engine and cedar disagree on {req:?}");
        // The same request through `build_query` (the path matrices use).
        let q = engine::build_query(
            &s.snap,
            req.principal.clone(),
            req.action.clone(),
            req.resource.clone(),
            req.context.clone(),
        )
        .expect("build_query");
        assert_eq!(Verdict::of_outcome(&engine::decide(&s.snap, &q)), expected);
        tally.add(&expected, &forbids);
        actions_seen.insert(req.action.clone());
    }
    // Every concrete action of the schema was asked about, for every
    // principal of the types it applies to: 11 principals, the workspace
    // actions over 6 workspaces, the org actions over 2 orgs, one invitation.
    let users = entities
        .iter()
        .filter(|e| e.uid().type_name().basename() == "User")
        .count();
    let principals = users
        + entities
            .iter()
            .filter(|e| e.uid().type_name().basename() == "ServiceAccount")
            .count();
    let of = |t: &str| {
        entities
            .iter()
            .filter(|e| e.uid().type_name().basename() == t)
            .count()
    };
    let concrete = |group: &str| {
        s.reference
            .schema
            .actions()
            .filter(|a| {
                s.reference
                    .schema
                    .principals_for_action(a)
                    .is_some_and(|mut p| p.next().is_some())
                    && entities
                        .ancestors(a)
                        .is_some_and(|mut g| g.any(|g| g.id().unescaped() == group))
            })
            .count()
    };
    let workspace_actions = concrete("workspace");
    let org_actions = concrete("organization");
    assert!(workspace_actions > 0 && org_actions > 0);
    let expected_count = principals * (workspace_actions * of("Workspace"))
        + principals * (org_actions * of("Organization"))
        + principals * of("Workspace") // accept:workspace_transfer
        + users * of("Invitation");
    assert_eq!(tally.requests, expected_count, "{tally:?}");
    assert!(
        tally.allow > 100 && tally.deny > 100 && tally.forbid_reasons > 0,
        "{tally:?}"
    );
    eprintln!("shipped model: {tally:?}, {} actions", actions_seen.len());
}

/// Request-scoped entities on the shipped model: what-if facts a gateway
/// may send. Each scenario is compared with Cedar on the whole store with
/// the entities upserted.
#[test]
fn shipped_model_with_additional_entities_decides_as_plain_cedar() {
    let s = shipped();
    let user = |id: &str, parents: Value, tags: Value| {
        json!({
            "uid": {"type": "Prefect::User", "id": id},
            "attrs": {"email": format!("{id}@acme.example")},
            "parents": parents,
            "tags": tags,
        })
    };
    let action_ref = |id: &str| json!({"__entity": {"type": "Prefect::Action", "id": id}});
    let builtin = |id: &str, name: &str, grants: &[&str]| {
        let grants: Vec<Value> = grants.iter().map(|a| action_ref(a)).collect();
        json!({
            "uid": {"type": "Prefect::Role", "id": id},
            "attrs": {"name": name, "builtin": true, "grants": grants},
            "parents": [],
        })
    };
    let acme = json!({"type": "Prefect::Organization", "id": "acme"});
    let acme_admins = json!({"type": "Prefect::OrgAdmins", "id": "acme-admins"});
    let scenarios: Vec<(&str, Vec<Value>)> = vec![
        (
            "a new member with an explicit role",
            vec![user(
                "zoe",
                json!([acme]),
                json!({"acme-staging": {"__entity": {"type": "Prefect::Role", "id": "owner"}}}),
            )],
        ),
        (
            "a member replaced without its explicit roles",
            vec![user("bob", json!([acme]), json!({}))],
        ),
        (
            "a member promoted to admin",
            vec![user("carol", json!([acme, acme_admins]), json!({}))],
        ),
        (
            "an admin moved out of the organization",
            vec![user("alice", json!([]), json!({}))],
        ),
        (
            "a built-in role losing the scopes it inherited",
            vec![builtin(
                "runner",
                "Runner",
                &["run_flows", "run_deployments"],
            )],
        ),
        (
            // The weaker scopes follow through the schema's action groups.
            "a built-in role granting stronger scopes",
            vec![builtin(
                "viewer",
                "Viewer",
                &["manage_flows", "manage_events"],
            )],
        ),
        (
            "a new workspace with a new custom role",
            vec![
                json!({
                    "uid": {"type": "Prefect::Workspace", "id": "acme-new"},
                    "attrs": {
                        "key": "acme-new", "handle": "new",
                        "org": {"__entity": acme},
                        "defaultRole": {"__entity": {"type": "Prefect::Role", "id": "acme-new-role"}},
                    },
                    "parents": [],
                }),
                json!({
                    "uid": {"type": "Prefect::Role", "id": "acme-new-role"},
                    "attrs": {"name": "New", "builtin": false, "org": {"__entity": acme}, "grants": [
                        action_ref("run_flows"),
                        action_ref("see_blocks"),
                        action_ref("see_deployments"),
                        action_ref("write_workers"),
                        action_ref("manage_events"),
                    ]},
                    "parents": [],
                }),
            ],
        ),
    ];
    let loaded = s.reference.entities(&s.entities).unwrap();
    let mut all_requests = shipped_requests(&s, &loaded);
    // A slice of the matrix keeps this test fast: a few scopes of each
    // family, the lifecycle and organization actions, every principal.
    let keep = [
        "see_flows",
        "manage_flows",
        "see_events",
        "manage_events",
        "see_blocks",
        "delete:workspace",
        "create:workspace",
        "read:account",
        "accept:invitation",
    ];
    all_requests.retain(|r| keep.contains(&r.action.id().unescaped()));
    let forbids = forbid_ids(&s.reference.policies);
    // The decisions on the loaded facts, to count what each scenario changes.
    let before: Vec<bool> = all_requests
        .iter()
        .map(|r| {
            let v = s
                .reference
                .decide(&loaded, &r.principal, &r.action, &r.resource, &r.context);
            v.unwrap().allow
        })
        .collect();
    let mut differing_from_loaded = 0;
    for (name, extra) in &scenarios {
        let whole = s
            .reference
            .entities(&upserted(&s.entities, extra))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut requests = all_requests.clone();
        // Requests about the entities the scenario brings.
        let ws = |w: &str| EntityUid::from_str(&format!("Prefect::Workspace::{w:?}")).unwrap();
        let principal = |p: &str| {
            let ty = if p.ends_with("-bot") {
                "ServiceAccount"
            } else {
                "User"
            };
            EntityUid::from_str(&format!("Prefect::{ty}::{p:?}")).unwrap()
        };
        for e in extra {
            let uid = uid_of(e);
            for a in [
                "see_flows",
                "manage_events",
                "see_events",
                "delete:workspace",
            ] {
                let action = EntityUid::from_str(&format!("Prefect::Action::{a:?}")).unwrap();
                let pairs: Vec<(EntityUid, EntityUid)> = match uid.type_name().basename() {
                    "User" => ["acme-prod", "acme-staging", "acme-new"]
                        .map(|w| (uid.clone(), ws(w)))
                        .to_vec(),
                    "Workspace" => ["alice", "bob", "carol", "ci-bot", "gina"]
                        .map(|p| (principal(p), uid.clone()))
                        .to_vec(),
                    _ => Vec::new(),
                };
                for (p, r) in pairs {
                    requests.push(Req {
                        principal: p,
                        action: action.clone(),
                        resource: r,
                        context: json!({}),
                    });
                }
            }
        }
        let mut tally = Tally::default();
        for (i, req) in requests.iter().enumerate() {
            let expected = s
                .reference
                .decide(
                    &whole,
                    &req.principal,
                    &req.action,
                    &req.resource,
                    &req.context,
                )
                .unwrap_or_else(|e| panic!("{name}: reference rejects {req:?}: {e}"));
            let got = engine_verdict(&s.snap, req, &Facts::Additional(extra.clone()))
                .unwrap_or_else(|e| panic!("{name}: engine rejects {req:?}: {e}"));
            assert_eq!(
                got, expected,
                "scenario {name:?}: engine and cedar disagree on {req:?}"
            );
            if before.get(i).is_some_and(|b| *b != expected.allow) {
                differing_from_loaded += 1;
            }
            tally.add(&expected, &forbids);
        }
        assert!(tally.allow > 0 && tally.deny > 0, "{name}: {tally:?}");
    }
    // The scenarios change decisions (else they would prove nothing).
    assert!(differing_from_loaded > 20, "{differing_from_loaded}");
}

// ---------------------------------------------------------------------------
// Part b: generated worlds and policies on a generic schema.

const GEN_SCHEMA: &str = r#"
namespace Gen {
  entity Org = { name: String, level: Long };
  entity Group in [Group, Org] = { name: String, level: Long, quota?: Long };
  entity User in [Group, Org] = {
    name: String,
    level: Long,
    age: Long,
    manager?: User,
    roles: Set<String>,
    addr: ipaddr,
    balance: decimal,
    joined: datetime,
    profile: { nick?: String, score: Long },
    friends: Set<User>,
  } tags Long;
  entity Bot in [Org] = { name: String, level: Long, owner: User } tags Long;
  entity Folder in [Folder, Org] = {
    name: String,
    level: Long,
    owner: User,
    public: Bool,
    net?: ipaddr,
    created?: datetime,
  };
  entity Doc in [Folder] = {
    name: String,
    level: Long,
    owner: User,
    labels: Set<String>,
    limit: decimal,
    size: Long,
    expires?: datetime,
    editors: Set<User>,
  } tags String;
  type Ctx = {
    ip: ipaddr,
    n: Long,
    now: datetime,
    flag?: Bool,
    who?: User,
    words: Set<String>,
  };
  action all;
  action read, write in [all];
  action admin;
  action view in [read]
    appliesTo { principal: [User, Bot], resource: [Doc, Folder], context: Ctx };
  action comment in [read, write]
    appliesTo { principal: [User], resource: [Doc], context: Ctx };
  action edit in [write]
    appliesTo { principal: [User, Bot], resource: [Doc], context: Ctx };
  action share in [write, admin]
    appliesTo { principal: [User], resource: [Folder, Doc], context: Ctx };
  action purge in [admin]
    appliesTo { principal: [User], resource: [Folder], context: Ctx };
}
"#;

/// A concrete action of the generic schema.
#[derive(Debug, Clone, Copy)]
struct ActionSpec {
    id: &'static str,
    /// The groups it is in, transitively.
    groups: &'static [&'static str],
    principals: &'static [&'static str],
    resources: &'static [&'static str],
}

const fn action(
    id: &'static str,
    groups: &'static [&'static str],
    principals: &'static [&'static str],
    resources: &'static [&'static str],
) -> ActionSpec {
    ActionSpec {
        id,
        groups,
        principals,
        resources,
    }
}

const ACTIONS: &[ActionSpec] = &[
    action(
        "view",
        &["read", "all"],
        &["User", "Bot"],
        &["Doc", "Folder"],
    ),
    action("comment", &["read", "write", "all"], &["User"], &["Doc"]),
    action("edit", &["write", "all"], &["User", "Bot"], &["Doc"]),
    action(
        "share",
        &["write", "admin", "all"],
        &["User"],
        &["Folder", "Doc"],
    ),
    action("purge", &["admin"], &["User"], &["Folder"]),
];
const ACTION_GROUPS: &[&str] = &["all", "read", "write", "admin"];

// Entity ids. The last id of each pool is never loaded ("ghost"): policies,
// attributes and requests may still name it. `gx` is a group loaded
// entities name as a parent but that only request entities define.
const ORGS: &[&str] = &["o0", "o1", "o2"];
const GROUPS: &[&str] = &["g0", "g1", "g2", "g3"];
const USERS: &[&str] = &["u0", "u1", "u2", "u3", "u4", "u5", "u6"];
const BOTS: &[&str] = &["b0", "b1", "b2"];
const FOLDERS: &[&str] = &["f0", "f1", "f2", "f3", "f4"];
const DOCS: &[&str] = &["d0", "d1", "d2", "d3", "d4", "d5", "d6"];
const NAMES: &[&str] = &["a", "b", "alice", "bob", "ab"];
const WORDS: &[&str] = &["a", "b", "c", "ops"];
const TAG_KEYS: &[&str] = &["a", "b", "c"];
const PATTERNS: &[&str] = &["a*", "*b", "*o*", "bob", "*", "a"];
const IPS: &[&str] = &[
    "10.0.0.1",
    "10.2.3.4",
    "192.168.1.5",
    "127.0.0.1",
    "::1",
    "224.0.0.1",
];
const RANGES: &[&str] = &["10.0.0.0/8", "192.168.0.0/16", "::1/128", "0.0.0.0/0"];
const DECIMALS: &[&str] = &["0.5", "1.25", "-3.0", "100.0", "922337203685477.5807"];
const DATETIMES: &[&str] = &[
    "2024-01-01",
    "2023-06-15T10:30:00Z",
    "2025-12-31T23:59:59.999Z",
    "1970-01-01",
    "2024-02-29T12:00:00+0130",
];
const DURATIONS: &[&str] = &["1h", "-2d", "1d2h3m4s5ms", "0ms", "9223372036854775807ms"];

/// What the generators draw from the crate's seeded SplitMix64.
trait Draw {
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: usize) -> bool;
    /// One of `xs`, which is not empty.
    fn one<T: Copy>(&mut self, xs: &[T]) -> T;
    fn long(&mut self) -> i64;
    fn subset(&mut self, xs: &[&str], pct: usize) -> Vec<String>;
}

impl Draw for Rng {
    fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    fn one<T: Copy>(&mut self, xs: &[T]) -> T {
        *self.pick(xs).expect("a non-empty list")
    }
    fn long(&mut self) -> i64 {
        if self.pct(85) {
            self.below(13) as i64 - 3
        } else {
            self.one(&[
                i64::MAX,
                i64::MIN,
                1 << 62,
                -(1 << 62),
                1 << 40,
                9_223_372_036_854_775_000,
            ])
        }
    }
    fn subset(&mut self, xs: &[&str], pct: usize) -> Vec<String> {
        xs.iter()
            .filter(|_| self.pct(pct))
            .map(|s| s.to_string())
            .collect()
    }
}

fn gen_uid(ty: &str, id: &str) -> Value {
    json!({"type": format!("Gen::{ty}"), "id": id})
}
fn gen_ref(ty: &str, id: &str) -> Value {
    json!({"__entity": gen_uid(ty, id)})
}
fn ext(f: &str, arg: &str) -> Value {
    json!({"__extn": {"fn": f, "arg": arg}})
}

/// Generated entities: JSON objects in Cedar's entity format.
struct WorldGen<'a> {
    rng: &'a mut Rng,
}

impl WorldGen<'_> {
    fn user_ref(&mut self) -> Value {
        gen_ref("User", self.rng.one(USERS))
    }

    /// Parents among `pool` (types and ids), each with probability `pct`.
    fn parents(&mut self, pool: &[(&str, &str)], pct: usize) -> Vec<Value> {
        pool.iter()
            .filter(|_| self.rng.pct(pct))
            .map(|(t, id)| gen_uid(t, id))
            .collect()
    }

    fn org(&mut self, id: &str) -> Value {
        json!({"uid": gen_uid("Org", id), "attrs": {"name": self.rng.one(NAMES), "level": self.rng.long()}, "parents": []})
    }

    /// Group `i`: parents among earlier groups, the orgs, and `gx`.
    fn group(&mut self, i: usize, parents: Option<Vec<Value>>) -> Value {
        let parents = parents.unwrap_or_else(|| self.group_parents(i));
        let mut attrs = json!({"name": self.rng.one(NAMES), "level": self.rng.long()});
        if self.rng.pct(50) {
            attrs["quota"] = json!(self.rng.long());
        }
        json!({"uid": gen_uid("Group", GROUPS[i]), "attrs": attrs, "parents": parents})
    }

    fn group_parents(&mut self, i: usize) -> Vec<Value> {
        let mut pool: Vec<(&str, &str)> = GROUPS[..i].iter().map(|g| ("Group", *g)).collect();
        pool.extend(ORGS.iter().map(|o| ("Org", *o)));
        let mut p = self.parents(&pool, 35);
        if self.rng.pct(15) {
            p.push(gen_uid("Group", "gx"));
        }
        p
    }

    fn user_parents(&mut self) -> Vec<Value> {
        let mut pool: Vec<(&str, &str)> = GROUPS.iter().map(|g| ("Group", *g)).collect();
        pool.extend(ORGS.iter().map(|o| ("Org", *o)));
        let mut p = self.parents(&pool, 30);
        if self.rng.pct(15) {
            p.push(gen_uid("Group", "gx"));
        }
        p
    }

    fn user(&mut self, id: &str, parents: Option<Vec<Value>>) -> Value {
        let parents = parents.unwrap_or_else(|| self.user_parents());
        let mut profile = json!({"score": self.rng.long()});
        if self.rng.pct(50) {
            profile["nick"] = json!(self.rng.one(NAMES));
        }
        let mut attrs = json!({
            "name": self.rng.one(NAMES),
            "level": self.rng.long(),
            "age": self.rng.long(),
            "roles": self.rng.subset(WORDS, 40),
            "addr": ext("ip", self.rng.one(IPS)),
            "balance": ext("decimal", self.rng.one(DECIMALS)),
            "joined": ext("datetime", self.rng.one(DATETIMES)),
            "profile": profile,
            "friends": (0..self.rng.below(3)).map(|_| self.user_ref()).collect::<Vec<_>>(),
        });
        if self.rng.pct(60) {
            attrs["manager"] = self.user_ref();
        }
        json!({"uid": gen_uid("User", id), "attrs": attrs, "parents": parents, "tags": self.long_tags()})
    }

    fn long_tags(&mut self) -> Value {
        let mut tags = serde_json::Map::new();
        for k in TAG_KEYS {
            if self.rng.pct(40) {
                tags.insert(k.to_string(), json!(self.rng.long()));
            }
        }
        Value::Object(tags)
    }

    fn bot(&mut self, id: &str) -> Value {
        let pool: Vec<(&str, &str)> = ORGS.iter().map(|o| ("Org", *o)).collect();
        let parents = self.parents(&pool, 50);
        json!({
            "uid": gen_uid("Bot", id),
            "attrs": {"name": self.rng.one(NAMES), "level": self.rng.long(), "owner": self.user_ref()},
            "parents": parents,
            "tags": self.long_tags(),
        })
    }

    fn folder_parents(&mut self, i: usize) -> Vec<Value> {
        let mut pool: Vec<(&str, &str)> = FOLDERS[..i].iter().map(|f| ("Folder", *f)).collect();
        pool.extend(ORGS.iter().map(|o| ("Org", *o)));
        self.parents(&pool, 35)
    }

    fn folder(&mut self, i: usize, parents: Option<Vec<Value>>) -> Value {
        let parents = parents.unwrap_or_else(|| self.folder_parents(i));
        let mut attrs = json!({
            "name": self.rng.one(NAMES),
            "level": self.rng.long(),
            "owner": self.user_ref(),
            "public": self.rng.pct(50),
        });
        if self.rng.pct(50) {
            attrs["net"] = ext("ip", self.rng.one(RANGES));
        }
        if self.rng.pct(50) {
            attrs["created"] = ext("datetime", self.rng.one(DATETIMES));
        }
        json!({"uid": gen_uid("Folder", FOLDERS[i]), "attrs": attrs, "parents": parents})
    }

    fn doc(&mut self, id: &str) -> Value {
        let pool: Vec<(&str, &str)> = FOLDERS.iter().map(|f| ("Folder", *f)).collect();
        let parents = self.parents(&pool, 35);
        let mut attrs = json!({
            "name": self.rng.one(NAMES),
            "level": self.rng.long(),
            "owner": self.user_ref(),
            "labels": self.rng.subset(WORDS, 40),
            "limit": ext("decimal", self.rng.one(DECIMALS)),
            "size": self.rng.long(),
            "editors": (0..self.rng.below(3)).map(|_| self.user_ref()).collect::<Vec<_>>(),
        });
        if self.rng.pct(50) {
            attrs["expires"] = ext("datetime", self.rng.one(DATETIMES));
        }
        let mut tags = serde_json::Map::new();
        for k in TAG_KEYS {
            if self.rng.pct(40) {
                tags.insert(k.to_string(), json!(self.rng.one(&["x", "y", "secret"])));
            }
        }
        json!({"uid": gen_uid("Doc", id), "attrs": attrs, "parents": parents, "tags": tags})
    }

    /// A world: every entity of the pools but the last of each (and `gx`).
    fn world(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for o in &ORGS[..ORGS.len() - 1] {
            out.push(self.org(o));
        }
        for i in 0..GROUPS.len() {
            out.push(self.group(i, None));
        }
        for u in &USERS[..USERS.len() - 1] {
            out.push(self.user(u, None));
        }
        for b in &BOTS[..BOTS.len() - 1] {
            out.push(self.bot(b));
        }
        for i in 0..FOLDERS.len() - 1 {
            out.push(self.folder(i, None));
        }
        for d in &DOCS[..DOCS.len() - 1] {
            out.push(self.doc(d));
        }
        out
    }

    fn context(&mut self) -> Value {
        let mut c = json!({
            "ip": ext("ip", self.rng.one(IPS)),
            "n": self.rng.long(),
            "now": ext("datetime", self.rng.one(DATETIMES)),
            "words": self.rng.subset(WORDS, 40),
        });
        if self.rng.pct(50) {
            c["flag"] = json!(self.rng.pct(50));
        }
        if self.rng.pct(50) {
            c["who"] = self.user_ref();
        }
        c
    }

    fn request(&mut self) -> Req {
        let spec = self.rng.one(ACTIONS);
        let a = spec.id;
        let pt = self.rng.one(spec.principals);
        let rt = self.rng.one(spec.resources);
        let pid = self.rng.one(if pt == "User" { USERS } else { BOTS });
        let rid = self.rng.one(if rt == "Doc" { DOCS } else { FOLDERS });
        Req {
            principal: EntityUid::from_str(&format!("Gen::{pt}::{pid:?}")).unwrap(),
            action: EntityUid::from_str(&format!("Gen::Action::{a:?}")).unwrap(),
            resource: EntityUid::from_str(&format!("Gen::{rt}::{rid:?}")).unwrap(),
            context: self.context(),
        }
    }
}

/// The principal and resource types a policy's conditions are checked
/// with, over-approximated from its scope (the validator checks each
/// request environment the scope allows).
#[derive(Debug, Clone, Default)]
struct Env {
    p: Vec<&'static str>,
    r: Vec<&'static str>,
}

impl Env {
    fn p_is(&self, t: &str) -> bool {
        !self.p.is_empty() && self.p.iter().all(|x| *x == t)
    }
    fn r_is(&self, t: &str) -> bool {
        !self.r.is_empty() && self.r.iter().all(|x| *x == t)
    }
}

/// Cedar text of generated policies, typed for strict validation.
struct PolicyGen<'a> {
    rng: &'a mut Rng,
    env: Env,
    /// Policies deliberately made invalid (the loader must reject them as
    /// the validator does).
    invalid: usize,
}

fn lit(ty: &str, id: &str) -> String {
    format!("Gen::{ty}::{id:?}")
}

impl PolicyGen<'_> {
    fn choose(&mut self, options: Vec<String>) -> String {
        let i = self.rng.below(options.len());
        options.into_iter().nth(i).expect("non-empty")
    }

    /// A scope and the environment it allows.
    fn scope(&mut self) -> (String, Env) {
        let (principal, ptypes): (String, Vec<&'static str>) = match self.rng.below(20) {
            0..=5 => ("principal".into(), vec!["User", "Bot"]),
            6..=8 => (
                format!("principal == {}", lit("User", self.rng.one(USERS))),
                vec!["User"],
            ),
            9 => (
                format!("principal == {}", lit("Bot", self.rng.one(BOTS))),
                vec!["Bot"],
            ),
            10..=12 => (
                format!(
                    "principal in {}",
                    lit("Group", self.rng.one(&["g0", "g1", "g2", "g3", "gx"]))
                ),
                vec!["User"],
            ),
            13..=14 => (
                format!("principal in {}", lit("Org", self.rng.one(ORGS))),
                vec!["User", "Bot"],
            ),
            15..=16 => ("principal is Gen::User".into(), vec!["User"]),
            17 => (
                format!(
                    "principal is Gen::User in {}",
                    lit("Group", self.rng.one(GROUPS))
                ),
                vec!["User"],
            ),
            _ => ("principal is Gen::Bot".into(), vec!["Bot"]),
        };
        let concrete: Vec<&str> = ACTIONS.iter().map(|a| a.id).collect();
        let (action, matched): (String, Vec<&str>) = match self.rng.below(10) {
            0..=1 => ("action".into(), concrete.clone()),
            2..=4 => {
                let a = self.rng.one(&concrete);
                (format!("action == {}", lit("Action", a)), vec![a])
            }
            5..=6 => {
                let g = if self.rng.pct(70) {
                    self.rng.one(ACTION_GROUPS)
                } else {
                    self.rng.one(&concrete)
                };
                (format!("action in {}", lit("Action", g)), vec![g])
            }
            _ => {
                let mut names: Vec<&str> = Vec::new();
                for _ in 0..1 + self.rng.below(3) {
                    let n = if self.rng.pct(50) {
                        self.rng.one(ACTION_GROUPS)
                    } else {
                        self.rng.one(&concrete)
                    };
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                let list: Vec<String> = names.iter().map(|n| lit("Action", n)).collect();
                (format!("action in [{}]", list.join(", ")), names)
            }
        };
        let (resource, rtypes): (String, Vec<&'static str>) = match self.rng.below(20) {
            0..=5 => ("resource".into(), vec!["Doc", "Folder"]),
            6..=7 => (
                format!("resource == {}", lit("Doc", self.rng.one(DOCS))),
                vec!["Doc"],
            ),
            8 => (
                format!("resource == {}", lit("Folder", self.rng.one(FOLDERS))),
                vec!["Folder"],
            ),
            9..=12 => (
                format!("resource in {}", lit("Folder", self.rng.one(FOLDERS))),
                vec!["Doc", "Folder"],
            ),
            13..=14 => ("resource is Gen::Doc".into(), vec!["Doc"]),
            15 => (
                format!(
                    "resource is Gen::Folder in {}",
                    lit("Org", self.rng.one(ORGS))
                ),
                vec!["Folder"],
            ),
            16..=17 => (
                format!(
                    "resource is Gen::Doc in {}",
                    lit("Folder", self.rng.one(FOLDERS))
                ),
                vec!["Doc"],
            ),
            _ => (
                format!("resource in {}", lit("Org", self.rng.one(ORGS))),
                vec!["Doc", "Folder"],
            ),
        };
        // The environments: concrete actions the action scope matches, their
        // principal and resource types, narrowed by the scope's types.
        let mut env = Env::default();
        for a in ACTIONS {
            if !matched.iter().any(|m| *m == a.id || a.groups.contains(m)) {
                continue;
            }
            for p in a.principals {
                if ptypes.contains(p) && !env.p.contains(p) {
                    env.p.push(p);
                }
            }
            for r in a.resources {
                if rtypes.contains(r) && !env.r.contains(r) {
                    env.r.push(r);
                }
            }
        }
        (format!("{principal},\n  {action},\n  {resource}"), env)
    }

    /// An expression of type `User`.
    fn user(&mut self) -> String {
        let mut o = vec![lit("User", self.rng.one(USERS))];
        if !self.env.r.is_empty() {
            o.push("resource.owner".into());
            o.push("resource.owner".into());
        }
        if self.env.p_is("User") {
            o.push("principal".into());
            o.push("principal".into());
        }
        if self.env.p_is("Bot") {
            o.push("principal.owner".into());
        }
        self.choose(o)
    }

    /// A `User` expression rooted at a variable (for `has` guards).
    fn var_user(&mut self) -> Option<String> {
        let mut o = Vec::new();
        if !self.env.r.is_empty() {
            o.push("resource.owner".to_string());
        }
        if self.env.p_is("User") {
            o.push("principal".to_string());
        }
        (!o.is_empty()).then(|| self.choose(o))
    }

    fn long(&mut self, depth: usize) -> String {
        if depth == 0 || self.rng.pct(55) {
            let mut o = vec![
                self.rng.long().to_string(),
                (self.rng.below(6) as i64 - 1).to_string(),
                "context.n".into(),
            ];
            if !self.env.p.is_empty() {
                o.push("principal.level".into());
            }
            if self.env.p_is("User") {
                o.push("principal.age".into());
                o.push("principal.profile.score".into());
            }
            if !self.env.r.is_empty() {
                o.push("resource.level".into());
            }
            if self.env.r_is("Doc") {
                o.push("resource.size".into());
            }
            let u = self.user();
            o.push(format!("{u}.level"));
            o.push(format!("{u}.age"));
            return self.choose(o);
        }
        let (a, b) = (self.long(depth - 1), self.long(depth - 1));
        match self.rng.below(6) {
            0 => format!("({a} + {b})"),
            1 => format!("({a} - {b})"),
            2 => format!("({a} * {b})"),
            3 => format!("(-({a}))"),
            4 => {
                let c = self.bool(depth - 1);
                format!("(if {c} then {a} else {b})")
            }
            _ => format!("({a} + 9223372036854775800)"),
        }
    }

    fn string(&mut self) -> String {
        let mut o = vec![format!("{:?}", self.rng.one(NAMES))];
        if !self.env.p.is_empty() {
            o.push("principal.name".into());
        }
        if !self.env.r.is_empty() {
            o.push("resource.name".into());
        }
        let u = self.user();
        o.push(format!("{u}.name"));
        self.choose(o)
    }

    fn str_set(&mut self) -> String {
        let words = self.rng.subset(WORDS, 40);
        let mut o = vec![format!("{words:?}"), "context.words".into()];
        if self.env.p_is("User") {
            o.push("principal.roles".into());
        }
        if self.env.r_is("Doc") {
            o.push("resource.labels".into());
        }
        let u = self.user();
        o.push(format!("{u}.roles"));
        self.choose(o)
    }

    fn ip(&mut self) -> String {
        let mut o = vec![
            "context.ip".to_string(),
            format!("ip({:?})", self.rng.one(IPS)),
            format!("ip({:?})", self.rng.one(RANGES)),
        ];
        let u = self.user();
        o.push(format!("{u}.addr"));
        self.choose(o)
    }

    fn decimal(&mut self) -> String {
        let mut o = vec![format!("decimal({:?})", self.rng.one(DECIMALS))];
        let u = self.user();
        o.push(format!("{u}.balance"));
        if self.env.r_is("Doc") {
            o.push("resource.limit".into());
        }
        self.choose(o)
    }

    fn datetime(&mut self) -> String {
        let mut o = vec![
            "context.now".to_string(),
            format!("datetime({:?})", self.rng.one(DATETIMES)),
        ];
        let u = self.user();
        o.push(format!("{u}.joined"));
        if self.rng.pct(30) {
            let d = self.duration(0);
            let base = self.choose(o.clone());
            o.push(format!("{base}.offset({d})"));
        }
        self.choose(o)
    }

    fn duration(&mut self, depth: usize) -> String {
        if depth == 0 || self.rng.pct(60) {
            return format!("duration({:?})", self.rng.one(DURATIONS));
        }
        let (a, b) = (self.datetime(), self.datetime());
        if self.rng.pct(50) {
            format!("{a}.durationSince({b})")
        } else {
            format!("{a}.toTime()")
        }
    }

    fn cmp(&mut self) -> &'static str {
        self.rng.one(&["<", "<=", ">", ">=", "==", "!="])
    }

    /// A Boolean condition.
    fn bool(&mut self, depth: usize) -> String {
        loop {
            if let Some(b) = self.bool_once(depth) {
                return b;
            }
        }
    }

    fn bool_once(&mut self, depth: usize) -> Option<String> {
        let d = depth.saturating_sub(1);
        let has_p = !self.env.p.is_empty();
        let has_r = !self.env.r.is_empty();
        let k = self.rng.one(&[
            0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
        ]);
        let k = if depth == 0 && k >= 20 { k % 20 } else { k };
        Some(match k {
            0 => self.rng.one(&["true", "false"]).to_string(),
            1 => {
                let (a, op, b) = (self.long(d.min(2)), self.cmp(), self.long(d.min(2)));
                format!("{a} {op} {b}")
            }
            2 => {
                let (a, b) = (self.string(), self.string());
                match self.rng.below(3) {
                    0 => format!("{a} == {b}"),
                    1 => format!("{a} != {b}"),
                    _ => format!("{a} like \"{}\"", self.rng.one(PATTERNS)),
                }
            }
            3 => {
                // Membership: the principal (in a group only when it is a
                // user) or a user expression, in a group or organization.
                let group = lit("Group", self.rng.one(&["g0", "g1", "g2", "g3", "gx"]));
                let org = lit("Org", self.rng.one(ORGS));
                let (s, t) = if has_p && self.rng.pct(50) {
                    let t = if self.env.p_is("User") && self.rng.pct(60) {
                        group
                    } else {
                        org
                    };
                    ("principal".to_string(), t)
                } else {
                    let t = if self.rng.pct(60) { group } else { org };
                    (self.user(), t)
                };
                format!("{s} in {t}")
            }
            4 if has_r => {
                let t = if self.rng.pct(70) {
                    lit("Folder", self.rng.one(FOLDERS))
                } else {
                    lit("Org", self.rng.one(ORGS))
                };
                format!("resource in {t}")
            }
            5 => {
                let mut o = Vec::new();
                if has_p {
                    o.push("principal is Gen::User".to_string());
                    o.push(format!(
                        "principal is Gen::User in {}",
                        lit("Org", self.rng.one(ORGS))
                    ));
                }
                if has_r {
                    o.push("resource is Gen::Doc".to_string());
                    o.push(format!(
                        "resource is Gen::Folder in {}",
                        lit("Folder", self.rng.one(FOLDERS))
                    ));
                }
                if o.is_empty() {
                    return None;
                }
                self.choose(o)
            }
            6 => {
                let (a, b) = (self.user(), self.user());
                format!("{a} == {b}")
            }
            7 => {
                let s = self.str_set();
                match self.rng.below(4) {
                    0 => format!("{s}.contains({})", self.string()),
                    1 => format!("{s}.containsAny({})", self.str_set()),
                    2 => format!("{s}.containsAll({})", self.str_set()),
                    _ => format!("{s}.isEmpty()"),
                }
            }
            8 => {
                let (a, b, c) = (self.long(0), self.long(0), self.long(1));
                format!("[{a}, {b}].contains({c})")
            }
            9 => {
                let mut sets = vec![];
                if self.env.r_is("Doc") {
                    sets.push("resource.editors".to_string());
                }
                if self.env.p_is("User") {
                    sets.push("principal.friends".to_string());
                }
                let u = self.user();
                sets.push(format!("{u}.friends"));
                let (a, b) = (self.user(), self.user());
                sets.push(format!("[{a}, {b}]"));
                let s = self.choose(sets);
                let m = self.user();
                format!("{s}.contains({m})")
            }
            10 => {
                let a = self.ip();
                match self.rng.below(5) {
                    0 | 1 => format!("{a}.isInRange({})", self.ip()),
                    2 => format!("{a}.isLoopback()"),
                    3 => format!("{a}.isIpv4()"),
                    _ => format!("{a}.isMulticast()"),
                }
            }
            11 => {
                let (a, b) = (self.decimal(), self.decimal());
                let f = self.rng.one(&[
                    "lessThan",
                    "lessThanOrEqual",
                    "greaterThan",
                    "greaterThanOrEqual",
                ]);
                format!("{a}.{f}({b})")
            }
            12 => {
                let op = self.cmp();
                match self.rng.below(5) {
                    0 => format!("{} {op} {}", self.datetime(), self.datetime()),
                    4 => format!(
                        "{}.offset({}) {op} {}",
                        self.datetime(),
                        self.duration(0),
                        self.datetime()
                    ),
                    1 => format!("{}.toDate() == {}", self.datetime(), self.datetime()),
                    2 => format!("{} {op} {}", self.duration(1), self.duration(1)),
                    _ => format!("{}.toDays() {op} {}", self.duration(1), self.long(0)),
                }
            }
            13 => {
                // An optional attribute behind its `has` guard.
                let mut o: Vec<String> = vec![
                    "(context has flag && context.flag)".into(),
                    format!("(context has who && context.who == {})", self.user()),
                    format!(
                        "(context has who && context.who.level {} {})",
                        self.cmp(),
                        self.long(0)
                    ),
                ];
                if self.env.p_is("User") {
                    o.push(format!(
                        "(principal has manager && principal.manager.level {} {})",
                        self.cmp(),
                        self.long(0)
                    ));
                    o.push(format!(
                        "(principal has manager && principal.manager == {})",
                        self.user()
                    ));
                    o.push(format!(
                        "(principal has manager && principal.manager in {})",
                        lit("Group", self.rng.one(GROUPS))
                    ));
                }
                if has_r {
                    o.push(format!(
                        "(resource.owner has manager && resource.owner.manager.age {} {})",
                        self.cmp(),
                        self.long(0)
                    ));
                }
                if self.env.r_is("Doc") {
                    o.push(format!(
                        "(resource has expires && resource.expires {} {})",
                        self.cmp(),
                        self.datetime()
                    ));
                }
                if self.env.r_is("Folder") {
                    o.push(format!(
                        "(resource has created && resource.created {} {})",
                        self.cmp(),
                        self.datetime()
                    ));
                    o.push(format!(
                        "(resource has net && {}.isInRange(resource.net))",
                        self.ip()
                    ));
                    o.push("resource.public".into());
                }
                if let Some(u) = self.var_user() {
                    o.push(format!(
                        "({u}.profile has nick && {u}.profile.nick like \"{}\")",
                        self.rng.one(PATTERNS)
                    ));
                }
                self.choose(o)
            }
            14 => {
                // Tags behind `hasTag`.
                let key = if self.rng.pct(70) {
                    format!("{:?}", self.rng.one(TAG_KEYS))
                } else {
                    self.string()
                };
                let mut o = Vec::new();
                if has_p {
                    o.push(format!(
                        "(principal.hasTag({key}) && principal.getTag({key}) {} {})",
                        self.cmp(),
                        self.long(0)
                    ));
                    o.push(format!("principal.hasTag({key})"));
                }
                if self.env.r_is("Doc") {
                    o.push(format!(
                        "(resource.hasTag({key}) && resource.getTag({key}) like \"{}\")",
                        self.rng.one(&["s*", "x", "*"])
                    ));
                }
                if has_r {
                    o.push(format!(
                        "(resource.owner.hasTag({key}) && resource.owner.getTag({key}) {} {})",
                        self.cmp(),
                        self.long(1)
                    ));
                }
                if o.is_empty() {
                    return None;
                }
                self.choose(o)
            }
            15 => format!(
                "{}.profile.score {} {}",
                self.user(),
                self.cmp(),
                self.long(1)
            ),
            16 => {
                // Rarely, what strict validation rejects: the loader must
                // reject it too.
                if !self.rng.pct(4) {
                    return None;
                }
                self.invalid += 1;
                self.choose(vec![
                    "(principal.hasTag(\"a\") || principal.getTag(\"a\") > 0)".into(),
                    "resource.owner.manager.level > 0".into(),
                    "decimal(\"1.23456\").lessThan(decimal(\"1.0\"))".into(),
                    "context.n == \"a\"".into(),
                ])
            }
            17..=19 => format!("!({})", self.bool(d)),
            20 => format!("({} && {})", self.bool(d), self.bool(d)),
            21 => format!("({} || {})", self.bool(d), self.bool(d)),
            _ => format!(
                "(if {} then {} else {})",
                self.bool(d),
                self.bool(d),
                self.bool(d)
            ),
        })
    }

    fn policy(&mut self, id: Option<String>) -> String {
        let effect = if self.rng.pct(70) { "permit" } else { "forbid" };
        let (scope, env) = self.scope();
        self.env = env;
        let mut text = String::new();
        if let Some(id) = id {
            text.push_str(&format!("@id({id:?})\n"));
        }
        if self.rng.pct(10) {
            text.push_str("@reason(\"generated\")\n");
        }
        text.push_str(&format!("{effect} (\n  {scope}\n)"));
        for _ in 0..self.rng.below(3) {
            let kw = if self.rng.pct(75) { "when" } else { "unless" };
            let depth = 1 + self.rng.below(3);
            let b = self.bool(depth);
            text.push_str(&format!("\n{kw} {{ {b} }}"));
        }
        text.push_str(";\n");
        text
    }
}

/// A generated policy set: policies in files.
#[derive(Debug, Clone)]
struct PolicyFiles {
    /// (file index, policy text), in load order.
    policies: Vec<(usize, String)>,
    files: usize,
}

impl PolicyFiles {
    fn texts(&self) -> Vec<TextFile> {
        (0..self.files)
            .map(|i| {
                let mut text = format!("// generated file {i}\n");
                for (f, p) in &self.policies {
                    if *f == i {
                        text.push_str(p);
                        text.push('\n');
                    }
                }
                TextFile {
                    path: PathBuf::from(format!("gen/{i:02}.cedar")),
                    text,
                }
            })
            .collect()
    }

    fn without(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.policies.remove(i);
        p
    }
}

fn gen_policies(rng: &mut Rng, set: usize) -> (PolicyFiles, usize) {
    let files = 1 + rng.below(3);
    let count = 3 + rng.below(8);
    let mut g = PolicyGen {
        rng,
        env: Env::default(),
        invalid: 0,
    };
    let mut policies = Vec::new();
    for i in 0..count {
        let id = g.rng.pct(60).then(|| format!("s{set}-rule-{i}"));
        let p = g.policy(id);
        let file = (i * files / count).min(files - 1);
        policies.push((file, p));
    }
    (PolicyFiles { policies, files }, g.invalid)
}

/// The generic schema in Cedar's JSON schema format (the loader reads both
/// formats; JSON also parses several times faster in a debug build).
static GEN_SCHEMA_JSON: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    cedar_policy::SchemaFragment::from_cedarschema_str(GEN_SCHEMA)
        .expect("generic schema")
        .0
        .to_json_string()
        .expect("schema as JSON")
});

/// Which form of the generic schema the engine loads.
#[derive(Debug, Clone, Copy)]
enum SchemaForm {
    Text,
    Json,
}

/// Build both sides for one case; `None` when the policies do not validate
/// (and then the engine must refuse them too).
fn build_both(
    policies: &PolicyFiles,
    world: &[Value],
    form: SchemaForm,
) -> Result<Option<(orgwarden::Snapshot, Reference)>, String> {
    let texts = policies.texts();
    let schema = [match form {
        SchemaForm::Text => TextFile {
            path: PathBuf::from("gen/gen.cedarschema"),
            text: GEN_SCHEMA.to_string(),
        },
        SchemaForm::Json => TextFile {
            path: PathBuf::from("gen/gen.cedarschema.json"),
            text: GEN_SCHEMA_JSON.clone(),
        },
    }];
    // The world split over two entity files.
    let half = world.len() / 2;
    let entity_files = [
        TextFile {
            path: PathBuf::from("gen/a.json"),
            text: Value::Array(world[..half].to_vec()).to_string(),
        },
        TextFile {
            path: PathBuf::from("gen/b.json"),
            text: Value::Array(world[half..].to_vec()).to_string(),
        },
    ];
    let snap = load::build(&schema, &texts, &entity_files);
    static SCHEMA: std::sync::LazyLock<Schema> =
        std::sync::LazyLock::new(|| Schema::from_cedarschema_str(GEN_SCHEMA).unwrap().0);
    match (Reference::new(&SCHEMA, &texts), snap) {
        (Ok(r), Ok(s)) => Ok(Some((s, r))),
        (Err(_), Err(_)) => Ok(None),
        (Ok(_), Err(d)) => Err(format!("the engine refuses what cedar accepts:\n{d}")),
        (Err(e), Ok(_)) => Err(format!("the engine accepts what cedar refuses: {e}")),
    }
}

/// Compare one request; `Err` describes a difference.
fn compare(
    snap: &orgwarden::Snapshot,
    reference: &Reference,
    store: &Entities,
    req: &Req,
    facts: &Facts,
) -> Result<Verdict, String> {
    let expected = reference.decide(
        store,
        &req.principal,
        &req.action,
        &req.resource,
        &req.context,
    );
    let got = engine_verdict(snap, req, facts);
    match (expected, got) {
        (Ok(e), Ok(g)) if e == g => Ok(e),
        (Ok(e), Ok(g)) => Err(format!("cedar: {e:?}\nengine: {g:?}")),
        (Err(e), Ok(g)) => Err(format!("cedar rejects the request ({e}); engine: {g:?}")),
        (Ok(e), Err(g)) => Err(format!("engine rejects the request ({g}); cedar: {e:?}")),
        (Err(_), Err(_)) => Err("both reject a generated request (generator bug)".into()),
    }
}

/// The entities plain Cedar decides a request with `facts` against.
fn reference_store(reference: &Reference, world: &[Value], facts: &Facts) -> Entities {
    let store = match facts {
        Facts::Loaded => world.to_vec(),
        Facts::Additional(extra) => upserted(world, extra),
        Facts::Replaced(all) => all.clone(),
    };
    reference
        .entities(&store)
        .unwrap_or_else(|e| panic!("reference entities (generator bug): {e}"))
}

/// `compare` from scratch (for shrinking).
fn differs(policies: &PolicyFiles, world: &[Value], req: &Req, facts: &Facts) -> Option<String> {
    match build_both(policies, world, SchemaForm::Json) {
        Ok(Some((s, r))) => {
            let store = reference_store(&r, world, facts);
            compare(&s, &r, &store, req, facts).err()
        }
        _ => None,
    }
}

/// Drop policies while the difference stays, to report a small case.
fn shrink(policies: &PolicyFiles, world: &[Value], req: &Req, facts: &Facts) -> PolicyFiles {
    let mut cur = policies.clone();
    let mut i = 0;
    while i < cur.policies.len() {
        let smaller = cur.without(i);
        if differs(&smaller, world, req, facts).is_some() {
            cur = smaller;
        } else {
            i += 1;
        }
    }
    cur
}

fn report(policies: &PolicyFiles, world: &[Value], req: &Req, facts: &Facts, why: &str) -> String {
    let small = shrink(policies, world, req, facts);
    let texts: Vec<String> = small
        .texts()
        .iter()
        .map(|f| format!("--- {}\n{}", f.path.display(), f.text))
        .collect();
    let why_small = differs(&small, world, req, facts).unwrap_or_default();
    format!(
        "{why}\n\nminimized policies:\n{}\nrequest: {req:?}\nfacts: {}\nworld: {}\nminimized difference:\n{why_small}",
        texts.join("\n"),
        serde_json::to_string(&facts_json(facts)).unwrap(),
        serde_json::to_string(world).unwrap(),
    )
}

fn facts_json(f: &Facts) -> Value {
    match f {
        Facts::Loaded => json!("loaded"),
        Facts::Additional(e) => json!({"additional_entities": e}),
        Facts::Replaced(e) => json!({"entities": e}),
    }
}

/// Request-scoped entities for a world: new ones, ones referencing loaded
/// entities, replacements, re-parentings, and the dangling group `gx`.
/// Each call adds one to three of them.
fn gen_extra(rng: &mut Rng, world: &[Value]) -> Vec<Value> {
    let mut w = WorldGen { rng };
    let mut out: Vec<Value> = Vec::new();
    let find = |ty: &str, id: &str| -> Option<Value> {
        world.iter().find(|e| e["uid"] == gen_uid(ty, id)).cloned()
    };
    for _ in 0..1 + w.rng.below(3) {
        let e = match w.rng.below(9) {
            // A new user (the ghost id), possibly under `gx`.
            0 => w.user(USERS[USERS.len() - 1], None),
            // A new document in loaded folders, owned by a loaded user.
            1 => w.doc(DOCS[DOCS.len() - 1]),
            // A loaded user with new attributes and tags, same parents.
            2 => {
                let id = w.rng.one(&USERS[..USERS.len() - 1]);
                let parents =
                    find("User", id).map(|e| e["parents"].as_array().cloned().unwrap_or_default());
                w.user(id, parents)
            }
            // A loaded user re-parented.
            3 => {
                let id = w.rng.one(&USERS[..USERS.len() - 1]);
                let mut e = find("User", id).expect("loaded user");
                e["parents"] = Value::Array(w.user_parents());
                e
            }
            // A loaded group re-parented (its members' ancestors change).
            4 | 5 => {
                let i = 1 + w.rng.below(GROUPS.len() - 1);
                let mut e = find("Group", GROUPS[i]).expect("loaded group");
                let parents = if w.rng.pct(30) {
                    Vec::new()
                } else {
                    w.group_parents(i)
                };
                e["parents"] = Value::Array(parents);
                e
            }
            // A loaded folder re-parented (its documents' ancestors change).
            6 => {
                let i = 1 + w.rng.below(FOLDERS.len() - 2);
                let mut e = find("Folder", FOLDERS[i]).expect("loaded folder");
                let parents = if w.rng.pct(30) {
                    Vec::new()
                } else {
                    w.folder_parents(i)
                };
                e["parents"] = Value::Array(parents);
                e
            }
            // The group loaded entities name but nobody loaded.
            7 => {
                let pool: Vec<(&str, &str)> = ORGS.iter().map(|o| ("Org", *o)).collect();
                let parents = w.parents(&pool, 60);
                let mut g = w.group(0, Some(parents));
                g["uid"] = gen_uid("Group", "gx");
                g
            }
            // A new bot owned by a loaded user, in a ghost org.
            _ => {
                let mut b = w.bot(BOTS[BOTS.len() - 1]);
                b["parents"] = json!([gen_uid("Org", "o2")]);
                b
            }
        };
        let uid = e["uid"].clone();
        if !out.iter().any(|x| x["uid"] == uid) {
            out.push(e);
        }
    }
    out
}

/// A request about what `extra` touches: a new or changed principal or
/// resource, or anyone below a re-parented group or folder.
fn targeted_request(rng: &mut Rng, extra: &[Value]) -> Req {
    let mut req = WorldGen { rng }.request();
    let e = &extra[rng.below(extra.len())];
    let uid = uid_of(e);
    let spec = ACTIONS
        .iter()
        .find(|x| x.id == req.action.id().unescaped())
        .expect("a generated action");
    let t = uid.type_name().basename();
    if spec.principals.contains(&t) {
        req.principal = uid;
    } else if spec.resources.contains(&t) {
        req.resource = uid;
    }
    req
}

struct GenRun {
    sets: usize,
    skipped: usize,
    deliberately_invalid: usize,
    tally: Tally,
    additional: usize,
    additional_changed: usize,
    replaced: usize,
    index_excluded: usize,
}

/// Requests on the loaded facts per generated set (cheap next to building a set).
const LOADED_REQUESTS: usize = 20;

fn run_generated(seed: u64, sets: usize) -> GenRun {
    let mut rng = Rng(seed);
    let mut run = GenRun {
        sets,
        skipped: 0,
        deliberately_invalid: 0,
        tally: Tally::default(),
        additional: 0,
        additional_changed: 0,
        replaced: 0,
        index_excluded: 0,
    };
    for set in 0..sets {
        let world = WorldGen { rng: &mut rng }.world();
        let (policies, invalid) = gen_policies(&mut rng, set);
        let fail = |req: &Req, facts: &Facts, why: &str| -> ! {
            panic!(
                "seed {seed} set {set}: {}",
                report(&policies, &world, req, facts, why)
            )
        };
        // Every eighth set loads the schema as text, the others as JSON.
        let form = if set % 8 == 0 {
            SchemaForm::Text
        } else {
            SchemaForm::Json
        };
        let (snap, reference) = match build_both(&policies, &world, form) {
            Ok(Some(both)) => both,
            Ok(None) => {
                run.skipped += 1;
                run.deliberately_invalid += usize::from(invalid > 0);
                continue;
            }
            Err(why) => panic!(
                "seed {seed} set {set}: {why}\n{}",
                policies
                    .texts()
                    .iter()
                    .map(|f| f.text.clone())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        };
        // The snapshot holds the reference's policies under the same ids
        // (`@id`, else `policyN` numbered across files).
        let ids = |ps: &PolicySet| -> BTreeSet<(String, String)> {
            ps.policies()
                .map(|p| (p.id().to_string(), p.to_string()))
                .collect()
        };
        assert_eq!(
            ids(&snap.policies),
            ids(&reference.policies),
            "seed {seed} set {set}"
        );
        let total = snap.policy_count();
        for a in ACTIONS {
            let uid = EntityUid::from_str(&format!("Gen::Action::{:?}", a.id)).unwrap();
            if snap.index.len_for(&uid).is_some_and(|n| n < total) {
                run.index_excluded += 1;
            }
        }
        let forbids = forbid_ids(&reference.policies);
        let loaded = reference.entities(&world).expect("world entities");
        for _ in 0..LOADED_REQUESTS {
            let req = WorldGen { rng: &mut rng }.request();
            let expected = reference
                .decide(
                    &loaded,
                    &req.principal,
                    &req.action,
                    &req.resource,
                    &req.context,
                )
                .unwrap_or_else(|e| panic!("generated request rejected: {e}"));
            match engine_verdict(&snap, &req, &Facts::Loaded) {
                Ok(got) if got == expected => run.tally.add(&expected, &forbids),
                Ok(got) => fail(
                    &req,
                    &Facts::Loaded,
                    &format!("cedar: {expected:?}\nengine: {got:?}"),
                ),
                Err(e) => fail(&req, &Facts::Loaded, &format!("engine rejects: {e}")),
            }
        }
        // Request-scoped entities.
        for _ in 0..2 {
            let extra = gen_extra(&mut rng, &world);
            let facts = Facts::Additional(extra.clone());
            let store = reference_store(&reference, &world, &facts);
            for j in 0..3 {
                let req = if j % 2 == 0 {
                    targeted_request(&mut rng, &extra)
                } else {
                    WorldGen { rng: &mut rng }.request()
                };
                match compare(&snap, &reference, &store, &req, &facts) {
                    Ok(v) => {
                        run.additional += 1;
                        let before = reference
                            .decide(
                                &loaded,
                                &req.principal,
                                &req.action,
                                &req.resource,
                                &req.context,
                            )
                            .unwrap();
                        if before != v {
                            run.additional_changed += 1;
                        }
                        run.tally.add(&v, &forbids);
                    }
                    Err(why) => fail(&req, &facts, &why),
                }
            }
        }
        // Replaced facts (every other set): some entities dropped, some
        // replaced or re-parented.
        if set % 2 == 1 {
            continue;
        }
        let mut all: Vec<Value> = world.iter().filter(|_| rng.pct(80)).cloned().collect();
        all = upserted(&all, &gen_extra(&mut rng, &world));
        let facts = Facts::Replaced(all);
        let store = reference_store(&reference, &world, &facts);
        for _ in 0..2 {
            let req = WorldGen { rng: &mut rng }.request();
            match compare(&snap, &reference, &store, &req, &facts) {
                Ok(v) => {
                    run.replaced += 1;
                    run.tally.add(&v, &forbids);
                }
                Err(why) => fail(&req, &facts, &why),
            }
        }
    }
    run
}

#[test]
fn generated_worlds_and_policies_decide_as_plain_cedar() {
    let seed = std::env::var("ORGWARDEN_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0516_2026);
    let sets = std::env::var("ORGWARDEN_DIFF_SETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(160);
    let started = std::time::Instant::now();
    let run = run_generated(seed, sets);
    let t = &run.tally;
    eprintln!(
        "seed {seed}: {} sets ({} skipped, {} of them with a deliberately invalid policy), \
         {} requests ({} with additional entities, {} of which changed the decision; {} with replaced entities), \
         {} allow, {} deny, {} with errors, {} denied by a forbid, {} action indexes smaller than the set, in {:?}",
        run.sets,
        run.skipped,
        run.deliberately_invalid,
        t.requests,
        run.additional,
        run.additional_changed,
        run.replaced,
        t.allow,
        t.deny,
        t.with_errors,
        t.forbid_reasons,
        run.index_excluded,
        started.elapsed()
    );
    eprintln!("runtime errors by kind: {:#?}", t.error_kinds);
    // The generator stays within the validator's rules: few sets skipped.
    assert!(
        run.skipped * 5 <= run.sets,
        "too many invalid sets: {}",
        run.skipped
    );
    // And it exercises what it claims to.
    assert!(
        t.allow * 10 >= t.requests && t.deny * 10 >= t.requests,
        "{t:?}"
    );
    assert!(
        t.with_errors * 20 >= t.requests,
        "too few runtime errors: {t:?}"
    );
    for kind in ["integer overflow", "does not exist"] {
        let seen = t.error_kinds.keys().any(|k| k.contains(kind));
        assert!(seen, "no {kind:?} error");
    }
    assert!(t.forbid_reasons > 0 && run.index_excluded > 0);
    // Request entities change decisions (else the comparison proves little).
    assert!(
        run.additional_changed * 50 >= run.additional,
        "request entities rarely matter"
    );
}

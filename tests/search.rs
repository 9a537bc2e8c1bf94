//! Search against per-pair decisions: resource, subject and action search
//! must list exactly the pairs `engine::decide` allows (with the same
//! policies), over the sample world, generated worlds and a generic model
//! that forces the scan fallback; and the AuthZEN search endpoints in the
//! specification's shapes, pagination and page tokens included.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cedar_policy::{EntityTypeName, EntityUid};
use common::{TestServer, shipped};
use orgwarden::decision_log::DecisionLog;
use orgwarden::http::HttpConfig;
use orgwarden::load::{self, TextFile};
use orgwarden::search::{self, PageRequest, Strategy};
use orgwarden::snapshot::{FileKind, Snapshot};
use orgwarden::{engine, world};
use proptest::prelude::*;
use serde_json::{Value, json};

type Key = (EntityUid, EntityUid, EntityUid);
/// (action, policies) pairs.
type Grants = Vec<(EntityUid, Vec<String>)>;

/// Every allowed (principal, action, resource) of the store, with its policies.
fn brute_force(snap: &Snapshot) -> BTreeMap<Key, Vec<String>> {
    let stored: Vec<EntityUid> = snap
        .entities
        .iter()
        .map(|e| e.uid())
        .filter(|u| !orgwarden::snapshot::is_action(u))
        .collect();
    let mut out = BTreeMap::new();
    for action in snap.names.actions() {
        let (Some(ps), Some(rs)) = (
            snap.schema.principals_for_action(action),
            snap.schema.resources_for_action(action),
        ) else {
            continue;
        };
        let ps: BTreeSet<&EntityTypeName> = ps.collect();
        let rs: BTreeSet<&EntityTypeName> = rs.collect();
        for p in stored.iter().filter(|u| ps.contains(u.type_name())) {
            for r in stored.iter().filter(|u| rs.contains(u.type_name())) {
                let q = engine::build_query(snap, p.clone(), action.clone(), r.clone(), json!({}))
                    .unwrap();
                let o = engine::decide(snap, &q);
                if o.allowed() {
                    out.insert((p.clone(), action.clone(), r.clone()), o.reasons);
                }
            }
        }
    }
    out
}

fn everything() -> PageRequest {
    PageRequest {
        token: None,
        limit: Some(search::MAX_LIMIT),
    }
}

/// Compare every search with the brute force; return the strategies used.
fn compare(snap: &Snapshot) -> BTreeSet<Strategy> {
    let allowed = brute_force(snap);
    let stored: Vec<EntityUid> = snap
        .entities
        .iter()
        .map(|e| e.uid())
        .filter(|u| !orgwarden::snapshot::is_action(u))
        .collect();
    let ctx = json!({});
    let mut strategies = BTreeSet::new();
    let mut searches = 0;
    for action in snap.names.actions() {
        let (Some(ps), Some(rs)) = (
            snap.schema.principals_for_action(action),
            snap.schema.resources_for_action(action),
        ) else {
            continue;
        };
        let ps: Vec<EntityTypeName> = ps.cloned().collect();
        let rs: Vec<EntityTypeName> = rs.cloned().collect();
        for rt in &rs {
            for p in stored.iter().filter(|u| ps.contains(u.type_name())) {
                let page = search::resources(snap, p, action, rt, &ctx, &everything()).unwrap();
                assert!(page.next_token.is_none());
                strategies.insert(page.strategy);
                searches += 1;
                let got: Vec<(EntityUid, Vec<String>)> = page
                    .items
                    .into_iter()
                    .map(|h| (h.uid, h.policies))
                    .collect();
                let want: Vec<(EntityUid, Vec<String>)> = allowed
                    .iter()
                    .filter(|((pp, a, r), _)| pp == p && a == action && r.type_name() == rt)
                    .map(|((_, _, r), reasons)| (r.clone(), reasons.clone()))
                    .collect();
                assert_eq!(
                    sorted(got),
                    sorted(want),
                    "resource search {p} {action} {rt}"
                );
            }
        }
        for pt in &ps {
            for r in stored.iter().filter(|u| rs.contains(u.type_name())) {
                let page = search::subjects(snap, pt, action, r, &ctx, &everything()).unwrap();
                strategies.insert(page.strategy);
                searches += 1;
                let got: Vec<(EntityUid, Vec<String>)> = page
                    .items
                    .into_iter()
                    .map(|h| (h.uid, h.policies))
                    .collect();
                let want: Vec<(EntityUid, Vec<String>)> = allowed
                    .iter()
                    .filter(|((p, a, rr), _)| rr == r && a == action && p.type_name() == pt)
                    .map(|((p, _, _), reasons)| (p.clone(), reasons.clone()))
                    .collect();
                assert_eq!(
                    sorted(got),
                    sorted(want),
                    "subject search {pt} {action} {r}"
                );
            }
        }
    }
    assert!(searches > 0);
    // Action search on every pair that has at least one applicable action.
    let pairs: BTreeSet<(EntityUid, EntityUid)> = allowed
        .keys()
        .map(|(p, _, r)| (p.clone(), r.clone()))
        .collect();
    let mut principal_types = BTreeSet::new();
    let mut resource_types = BTreeSet::new();
    for action in snap.names.actions() {
        if let Some(ps) = snap.schema.principals_for_action(action) {
            principal_types.extend(ps.cloned());
        }
        if let Some(rs) = snap.schema.resources_for_action(action) {
            resource_types.extend(rs.cloned());
        }
    }
    for p in stored
        .iter()
        .filter(|u| principal_types.contains(u.type_name()))
    {
        for r in stored
            .iter()
            .filter(|u| resource_types.contains(u.type_name()))
        {
            let page = search::actions(snap, p, r, &ctx, &everything()).unwrap();
            let got: Vec<(EntityUid, Vec<String>)> = page
                .items
                .into_iter()
                .map(|g| (g.action, g.policies))
                .collect();
            let want: Vec<(EntityUid, Vec<String>)> = allowed
                .iter()
                .filter(|((pp, _, rr), _)| pp == p && rr == r)
                .map(|((_, a, _), reasons)| (a.clone(), reasons.clone()))
                .collect();
            assert_eq!(!got.is_empty(), pairs.contains(&(p.clone(), r.clone())));
            assert_eq!(sorted(got), sorted(want), "action search {p} {r}");
        }
    }
    // Every resource of a type with at least one allowed action, with all of them.
    for p in stored
        .iter()
        .filter(|u| principal_types.contains(u.type_name()))
    {
        for rt in &resource_types {
            let Ok(page) = search::accessible(snap, p, rt, &ctx, &everything()) else {
                continue;
            };
            strategies.insert(page.strategy);
            let got: Vec<(EntityUid, Grants)> = page
                .items
                .into_iter()
                .map(|a| {
                    let grants = a.grants.into_iter().map(|g| (g.action, g.policies));
                    (a.resource, sorted(grants.collect()))
                })
                .collect();
            let mut want: BTreeMap<EntityUid, Grants> = BTreeMap::new();
            for ((pp, a, r), reasons) in &allowed {
                if pp == p && r.type_name() == rt {
                    want.entry(r.clone())
                        .or_default()
                        .push((a.clone(), reasons.clone()));
                }
            }
            let want: Vec<_> = want.into_iter().map(|(r, g)| (r, sorted(g))).collect();
            assert_eq!(sorted(got), want, "accessible {p} {rt}");
        }
    }
    strategies
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn texts(dir: &str, kind: FileKind) -> Vec<TextFile> {
    load::read_texts(&common::root().join(dir), kind).unwrap()
}

fn world_snapshot(spec: &world::WorldSpec) -> Snapshot {
    let entities: Vec<TextFile> = world::generate(spec)
        .unwrap()
        .into_iter()
        .map(|(name, value)| TextFile {
            path: PathBuf::from(name),
            text: value.to_string(),
        })
        .collect();
    load::build(
        &texts("schema", FileKind::Schema),
        &texts("policies", FileKind::Policies),
        &entities,
    )
    .unwrap()
}

fn uid(s: &str) -> EntityUid {
    s.parse().unwrap()
}

#[test]
fn sample_world_search_equals_per_pair_decisions_through_the_index() {
    let snap = load::load(&shipped()).unwrap();
    let strategies = compare(&snap);
    assert_eq!(strategies, BTreeSet::from([Strategy::Index]));
}

#[test]
fn index_narrows_candidates_to_related_entities() {
    let snap = load::load(&shipped()).unwrap();
    let ws: EntityTypeName = "Prefect::Workspace".parse().unwrap();
    let user: EntityTypeName = "Prefect::User".parse().unwrap();
    let see_flows = uid(r#"Prefect::Action::"see_flows""#);
    // carol is a plain member of acme: only acme's workspaces are candidates.
    let page = search::resources(
        &snap,
        &uid(r#"Prefect::User::"carol""#),
        &see_flows,
        &ws,
        &json!({}),
        &PageRequest::default(),
    )
    .unwrap();
    assert_eq!(page.strategy, Strategy::Index);
    let ids: Vec<String> = page.items.iter().map(|h| h.uid.to_string()).collect();
    assert_eq!(
        ids,
        [
            r#"Prefect::Workspace::"acme-prod""#,
            r#"Prefect::Workspace::"acme-sandbox""#
        ]
    );
    assert!(page.candidates <= 3, "{} candidates", page.candidates);
    // No role carol holds (the defaults Viewer, Runner and No Access) grants
    // manage_flows: the roles' grants leave no candidate.
    let page = search::resources(
        &snap,
        &uid(r#"Prefect::User::"carol""#),
        &uid(r#"Prefect::Action::"manage_flows""#),
        &ws,
        &json!({}),
        &PageRequest::default(),
    )
    .unwrap();
    assert_eq!((page.candidates, page.items.len()), (0, 0));
    // ivan belongs to nothing: no candidate at all.
    let page = search::resources(
        &snap,
        &uid(r#"Prefect::User::"ivan""#),
        &see_flows,
        &ws,
        &json!({}),
        &PageRequest::default(),
    )
    .unwrap();
    assert_eq!((page.candidates, page.items.len()), (0, 0));
    // Who may run deployments in prod, and through which policy.
    let page = search::subjects(
        &snap,
        &user,
        &uid(r#"Prefect::Action::"run_deployments""#),
        &uid(r#"Prefect::Workspace::"acme-prod""#),
        &json!({}),
        &PageRequest::default(),
    )
    .unwrap();
    let got: Vec<(String, Vec<String>)> = page
        .items
        .iter()
        .map(|h| (h.uid.id().unescaped().to_string(), h.policies.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("alice".to_string(), vec!["admin-overrides".to_string()]),
            (
                "bob".to_string(),
                vec!["union-of-default-and-explicit".to_string()]
            ),
            (
                "dana".to_string(),
                vec!["union-of-default-and-explicit".to_string()]
            ),
        ]
    );
    assert!(page.candidates < 8, "{} candidates", page.candidates);
}

#[test]
fn pages_partition_the_answer_and_tokens_are_checked() {
    let snap = load::load(&shipped()).unwrap();
    let ws: EntityTypeName = "Prefect::Workspace".parse().unwrap();
    let alice = uid(r#"Prefect::User::"alice""#);
    let see_flows = uid(r#"Prefect::Action::"see_flows""#);
    let ctx = json!({});
    let full = search::resources(&snap, &alice, &see_flows, &ws, &ctx, &everything()).unwrap();
    assert_eq!(full.items.len(), 3);
    let mut token = None;
    let mut paged = Vec::new();
    loop {
        let page = search::resources(
            &snap,
            &alice,
            &see_flows,
            &ws,
            &ctx,
            &PageRequest {
                token: token.clone(),
                limit: Some(2),
            },
        )
        .unwrap();
        assert!(page.items.len() <= 2);
        paged.extend(page.items);
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(paged, full.items);
    // A token for another search, a tampered one and garbage are refused.
    let first = search::resources(
        &snap,
        &alice,
        &see_flows,
        &ws,
        &ctx,
        &PageRequest {
            token: None,
            limit: Some(1),
        },
    )
    .unwrap();
    let t = first.next_token.unwrap();
    let other = search::resources(
        &snap,
        &alice,
        &uid(r#"Prefect::Action::"run_flows""#),
        &ws,
        &ctx,
        &PageRequest {
            token: Some(t.clone()),
            limit: Some(1),
        },
    )
    .unwrap_err();
    assert_eq!(other.code, "invalid_page_token");
    let mut tampered = t.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    for bad in [String::from_utf8(tampered).unwrap(), "zz".to_string()] {
        let e = search::resources(
            &snap,
            &alice,
            &see_flows,
            &ws,
            &ctx,
            &PageRequest {
                token: Some(bad),
                limit: Some(1),
            },
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_page_token");
    }
    // A newer snapshot (same files) rejects the older generation's token.
    let newer = load::load(&shipped()).unwrap();
    let e = search::resources(
        &newer,
        &alice,
        &see_flows,
        &ws,
        &ctx,
        &PageRequest {
            token: Some(t),
            limit: Some(1),
        },
    )
    .unwrap_err();
    assert!(e.message.contains("expired"), "{e}");
}

const GENERIC_SCHEMA: &str = r#"
entity Group;
entity User in [Group] = { dept: String };
entity Doc = { owner: User, public: Bool, readers: Set<User>, meta: { dept: String } };
action read, edit, audit appliesTo { principal: [User], resource: [Doc] };
"#;

const GENERIC_POLICIES: &str = r#"
@id("public-read")
permit (principal, action == Action::"read", resource) when { resource.public };
@id("owner-or-reader")
permit (principal, action in [Action::"read", Action::"edit"], resource)
when { resource.owner == principal || resource.readers.contains(principal) };
@id("same-dept-audit")
permit (principal, action == Action::"audit", resource)
when { principal.dept == resource.meta.dept };
@id("auditors")
permit (principal in Group::"auditors", action == Action::"audit", resource);
@id("no-interns")
forbid (principal in Group::"interns", action, resource) unless { resource.owner == principal };
"#;

fn generic_snapshot(docs: usize, users: usize, seed: u64) -> Snapshot {
    let mut rng = seed;
    let mut next = move |n: usize| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 33) as usize) % n
    };
    let mut entities = vec![
        json!({"uid": {"type": "Group", "id": "auditors"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "Group", "id": "interns"}, "attrs": {}, "parents": []}),
    ];
    let depts = ["eng", "ops"];
    for u in 0..users {
        let parents = match next(4) {
            0 => vec![json!({"type": "Group", "id": "auditors"})],
            1 => vec![json!({"type": "Group", "id": "interns"})],
            _ => vec![],
        };
        entities.push(json!({"uid": {"type": "User", "id": format!("u{u}")},
            "attrs": {"dept": depts[next(2)]}, "parents": parents}));
    }
    for d in 0..docs {
        let readers: Vec<Value> = (0..next(3))
            .map(|_| json!({"__entity": {"type": "User", "id": format!("u{}", next(users))}}))
            .collect();
        entities.push(
            json!({"uid": {"type": "Doc", "id": format!("d{d}")}, "attrs": {
            "owner": {"__entity": {"type": "User", "id": format!("u{}", next(users))}},
            "public": next(4) == 0,
            "readers": readers,
            "meta": {"dept": depts[next(2)]},
        }, "parents": []}),
        );
    }
    let file = |name: &str, text: String| TextFile {
        path: PathBuf::from(name),
        text,
    };
    load::build(
        &[file("generic.cedarschema", GENERIC_SCHEMA.to_string())],
        &[file("generic.cedar", GENERIC_POLICIES.to_string())],
        &[file("generic.json", Value::Array(entities).to_string())],
    )
    .unwrap()
}

#[test]
fn generic_model_falls_back_to_a_scan_only_where_a_policy_can_allow_anyone() {
    let snap = generic_snapshot(12, 8, 7);
    let strategies = compare(&snap);
    assert_eq!(
        strategies,
        BTreeSet::from([Strategy::Index, Strategy::Scan])
    );
    let doc: EntityTypeName = "Doc".parse().unwrap();
    let user: EntityTypeName = "User".parse().unwrap();
    let ctx = json!({});
    // `public-read` reads only the resource: every document is a candidate.
    let read = search::resources(
        &snap,
        &uid(r#"User::"u0""#),
        &uid(r#"Action::"read""#),
        &doc,
        &ctx,
        &everything(),
    )
    .unwrap();
    assert_eq!(read.strategy, Strategy::Scan);
    assert_eq!(read.unindexed, ["public-read"]);
    assert_eq!(read.candidates, 12);
    // `edit` relates owner and readers to the principal: the index answers.
    let edit = search::resources(
        &snap,
        &uid(r#"User::"u0""#),
        &uid(r#"Action::"edit""#),
        &doc,
        &ctx,
        &everything(),
    )
    .unwrap();
    assert_eq!(edit.strategy, Strategy::Index);
    // Auditors (a group literal) and same-department (a string relation
    // through a record) are indexed in both directions.
    for d in 0..12 {
        let r = uid(&format!(r#"Doc::"d{d}""#));
        let audit = search::subjects(
            &snap,
            &user,
            &uid(r#"Action::"audit""#),
            &r,
            &ctx,
            &everything(),
        )
        .unwrap();
        assert_eq!(audit.strategy, Strategy::Index);
        // Who may read a public document: anyone, so a scan.
        let read = search::subjects(
            &snap,
            &user,
            &uid(r#"Action::"read""#),
            &r,
            &ctx,
            &everything(),
        )
        .unwrap();
        assert_eq!(read.strategy, Strategy::Scan);
    }
}

/// Roles carrying the actions they grant, with an action hierarchy (`edit`
/// implies `view`), as the platform's model has them.
const GRANTS_SCHEMA: &str = r#"
entity Role = { grants: Set<Action> };
entity User = { role: Role };
entity Doc = { open: Role };
action edit appliesTo { principal: [User], resource: [Doc] };
action view in [edit] appliesTo { principal: [User], resource: [Doc] };
"#;

const GRANTS_POLICIES: &str = r#"
@id("both-roles-grant")
permit (principal, action, resource)
when { action in principal.role.grants && action in resource.open.grants };
"#;

/// Role `r{i}` grants: nothing, `view`, `edit` (and so `view`), both.
const ROLE_GRANTS: [&[&str]; 4] = [&[], &["view"], &["edit"], &["view", "edit"]];

fn grants_snapshot(docs: usize, users: usize, seed: u64) -> (Snapshot, Vec<usize>, Vec<usize>) {
    let mut rng = world::Rng(seed);
    let mut entities = Vec::new();
    for (i, grants) in ROLE_GRANTS.iter().enumerate() {
        let grants: Vec<Value> = grants
            .iter()
            .map(|a| json!({"__entity": {"type": "Action", "id": a}}))
            .collect();
        entities.push(json!({"uid": {"type": "Role", "id": format!("r{i}")},
            "attrs": {"grants": grants}, "parents": []}));
    }
    let user_roles: Vec<usize> = (0..users).map(|_| rng.below(4)).collect();
    let doc_roles: Vec<usize> = (0..docs).map(|_| rng.below(4)).collect();
    for (u, r) in user_roles.iter().enumerate() {
        entities.push(json!({"uid": {"type": "User", "id": format!("u{u}")},
            "attrs": {"role": {"__entity": {"type": "Role", "id": format!("r{r}")}}}, "parents": []}));
    }
    for (d, r) in doc_roles.iter().enumerate() {
        entities.push(json!({"uid": {"type": "Doc", "id": format!("d{d}")},
            "attrs": {"open": {"__entity": {"type": "Role", "id": format!("r{r}")}}}, "parents": []}));
    }
    let file = |name: &str, text: String| TextFile {
        path: PathBuf::from(name),
        text,
    };
    let snap = load::build(
        &[file("grants.cedarschema", GRANTS_SCHEMA.to_string())],
        &[file("grants.cedar", GRANTS_POLICIES.to_string())],
        &[file("grants.json", Value::Array(entities).to_string())],
    )
    .unwrap();
    (snap, user_roles, doc_roles)
}

#[test]
fn action_in_a_role_s_grants_is_answered_from_the_index_exactly() {
    let (snap, user_roles, doc_roles) = grants_snapshot(24, 8, 11);
    assert_eq!(compare(&snap), BTreeSet::from([Strategy::Index]));
    // Role r{i} grants `view` unless it grants nothing, and `edit` when it
    // lists `edit`.
    let grants = |role: usize, action: &str| match action {
        "view" => role != 0,
        _ => role >= 2,
    };
    let doc: EntityTypeName = "Doc".parse().unwrap();
    let user: EntityTypeName = "User".parse().unwrap();
    let ctx = json!({});
    for action in ["view", "edit"] {
        let a = uid(&format!(r#"Action::"{action}""#));
        // The candidates are exactly the documents whose role grants the
        // action (directly or through `edit`), or none when the
        // principal's own role does not.
        for (u, role) in user_roles.iter().enumerate() {
            let p = uid(&format!(r#"User::"u{u}""#));
            let page = search::resources(&snap, &p, &a, &doc, &ctx, &everything()).unwrap();
            let want = if grants(*role, action) {
                doc_roles.iter().filter(|r| grants(**r, action)).count()
            } else {
                0
            };
            assert_eq!(page.strategy, Strategy::Index);
            assert_eq!(page.candidates, want, "{p} {action}");
            assert_eq!(page.items.len(), want, "{p} {action}");
        }
        for (d, role) in doc_roles.iter().enumerate() {
            let r = uid(&format!(r#"Doc::"d{d}""#));
            let page = search::subjects(&snap, &user, &a, &r, &ctx, &everything()).unwrap();
            let want = if grants(*role, action) {
                user_roles.iter().filter(|r| grants(**r, action)).count()
            } else {
                0
            };
            assert_eq!(page.strategy, Strategy::Index);
            assert_eq!(page.candidates, want, "{r} {action}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_worlds_search_equals_per_pair_decisions(
        seed in 0u64..1_000_000,
        orgs in 1usize..=2,
        workspaces in 1usize..=3,
        users in 1usize..=3,
        service_accounts in 0usize..=1,
        density in 0usize..=100,
        personal in 0usize..=2,
    ) {
        let pairs = (users + service_accounts) * workspaces;
        let spec = world::WorldSpec {
            orgs,
            workspaces_per_org: workspaces,
            users_per_org: users,
            service_accounts_per_org: service_accounts,
            custom_roles_per_org: 1,
            memberships: orgs * pairs * density / 100,
            personal,
            seed,
        };
        let snap = world_snapshot(&spec);
        prop_assert_eq!(compare(&snap), BTreeSet::from([Strategy::Index]));
    }

    #[test]
    fn generic_worlds_search_equals_per_pair_decisions(seed in 0u64..1_000_000, docs in 1usize..10, users in 1usize..8) {
        let snap = generic_snapshot(docs, users, seed);
        compare(&snap);
    }
}

// ---- HTTP ---------------------------------------------------------------

#[tokio::test]
async fn metadata_advertises_the_search_endpoints() {
    let s = TestServer::shipped().await;
    let (status, body) = s.get_json("/.well-known/authzen-configuration").await;
    assert_eq!(status, 200);
    for (key, path) in [
        ("search_subject_endpoint", "/access/v1/search/subject"),
        ("search_resource_endpoint", "/access/v1/search/resource"),
        ("search_action_endpoint", "/access/v1/search/action"),
    ] {
        assert!(
            body[key].as_str().unwrap().ends_with(path),
            "{key}: {}",
            body[key]
        );
    }
}

#[tokio::test]
async fn subject_search_in_the_specification_shape() {
    let s = TestServer::shipped().await;
    let (status, body) = s
        .post(
            "/access/v1/search/subject",
            json!({
                "subject": { "type": "user" },
                "action": { "name": "run_deployments" },
                "resource": { "type": "workspace", "id": "acme-prod" },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"],
        json!([
            { "type": "user", "id": "alice" },
            { "type": "user", "id": "bob" },
            { "type": "user", "id": "dana" },
        ])
    );
    assert_eq!(body["page"]["next_token"], "");
    assert_eq!(body["context"]["strategy"], "index");
    assert_eq!(
        body["context"]["reason_admin"]["policies"]["alice"],
        json!(["admin-overrides"])
    );
    // Service accounts are their own type.
    let (_, body) = s
        .post(
            "/access/v1/search/subject",
            json!({
                "subject": { "type": "ServiceAccount" },
                "action": { "name": "run_deployments" },
                "resource": { "type": "Workspace", "id": "acme-prod" },
            }),
        )
        .await;
    assert_eq!(
        body["results"],
        json!([{ "type": "ServiceAccount", "id": "ci-bot" }])
    );
}

#[tokio::test]
async fn resource_search_pages_across_requests() {
    let (dir, paths) = common::copy_of_shipped();
    let s = TestServer::start(paths, HttpConfig::default(), 1000, DecisionLog::off()).await;
    let request = |token: Option<&str>| {
        let mut body = json!({
            "subject": { "type": "user", "id": "alice" },
            "action": { "name": "see_flows" },
            "resource": { "type": "workspace" },
            "page": { "limit": 2 },
        });
        if let Some(t) = token {
            body["page"]["token"] = json!(t);
        }
        body
    };
    let (status, first) = s.post("/access/v1/search/resource", request(None)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        first["results"],
        json!([
            { "type": "workspace", "id": "acme-prod" },
            { "type": "workspace", "id": "acme-sandbox" },
        ])
    );
    assert_eq!(first["page"]["count"], 2);
    let token = first["page"]["next_token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    let (status, second) = s
        .post("/access/v1/search/resource", request(Some(&token)))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        second["results"],
        json!([{ "type": "workspace", "id": "acme-staging" }])
    );
    assert_eq!(second["page"]["next_token"], "");

    // Garbage is a 400 naming the token.
    let (status, body) = s
        .post("/access/v1/search/resource", request(Some("not-a-token")))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_page_token");
    assert_eq!(body["error"]["field"], "page.token");

    // After a reload (a new generation) the old token has expired.
    let policy = dir.path().join("policies/admin-overrides.cedar");
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{text}\n// edited\n")).unwrap();
    let reloaded = s.app.pdp.live.reload().unwrap();
    assert!(reloaded.generation > first["context"]["generation"].as_u64().unwrap());
    let (status, body) = s
        .post("/access/v1/search/resource", request(Some(&token)))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_page_token");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    // And the search restarts cleanly without it.
    let (status, again) = s.post("/access/v1/search/resource", request(None)).await;
    assert_eq!(status, 200);
    assert_eq!(again["results"], first["results"]);
}

#[tokio::test]
async fn action_search_lists_effective_scopes() {
    let s = TestServer::shipped().await;
    let (status, body) = s
        .post(
            "/access/v1/search/action",
            json!({
                "subject": { "type": "user", "id": "carol" },
                "resource": { "type": "workspace", "id": "acme-prod" },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let names: BTreeSet<String> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    // carol has the default role Viewer only.
    assert!(names.contains("see_flows"));
    assert!(!names.contains("run_deployments"));
    assert!(!names.contains("see_workspace_users"));
    assert_eq!(names.len(), 13, "{names:?}");
    assert_eq!(
        body["context"]["reason_admin"]["policies"]["see_flows"],
        json!(["union-of-default-and-explicit"])
    );
}

#[tokio::test]
async fn search_requests_are_validated() {
    let s = TestServer::shipped().await;
    let cases = [
        (
            json!({ "subject": { "type": "user" }, "action": { "name": "nope" },
                    "resource": { "type": "workspace", "id": "acme-prod" } }),
            "/access/v1/search/subject",
            "action.name",
        ),
        (
            json!({ "subject": { "type": "user" }, "action": { "name": "see_flows" },
                    "resource": { "type": "workspace" } }),
            "/access/v1/search/subject",
            "resource.id",
        ),
        (
            json!({ "subject": { "type": "user", "id": "bob" }, "action": { "name": "see_flows" },
                    "resource": { "type": "organization" } }),
            "/access/v1/search/resource",
            "resource.type",
        ),
        (
            json!({ "subject": { "type": "user", "id": "bob", "properties": { "email": "x" } },
                    "action": { "name": "see_flows" }, "resource": { "type": "workspace" } }),
            "/access/v1/search/resource",
            "subject.properties",
        ),
        (
            json!({ "subject": { "type": "user", "id": "bob" }, "action": { "name": "see_flows" },
                    "resource": { "type": "workspace" }, "page": { "limit": 0 } }),
            "/access/v1/search/resource",
            "page.limit",
        ),
    ];
    for (body, path, field) in cases {
        let (status, answer) = s.post(path, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
}

#[tokio::test]
async fn workspace_switcher_lists_personal_shared_and_organization_workspaces() {
    let s = TestServer::shipped().await;
    let (status, body) = s.get_json("/v1/principals/User:erin/workspaces").await;
    assert_eq!(status, 200, "{body}");
    let ws = body["workspaces"].as_array().unwrap();
    assert_eq!(ws.len(), 1, "{body}");
    assert_eq!(ws[0]["id"], "dave-personal");
    assert_eq!(ws[0]["kind"], "shared");
    assert_eq!(ws[0]["owner"], "dave");
    assert!(
        ws[0]["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("run_flows"))
    );
    assert!(
        ws[0]["why"][0]["fact"]
            .as_str()
            .unwrap()
            .contains("collaborator"),
        "{body}"
    );

    let (_, body) = s
        .get_json("/v1/principals/User%3A%3A%22dave%22/workspaces")
        .await;
    let kinds: Vec<(String, String)> = body["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("dave-etl".to_string(), "personal".to_string()),
            ("dave-personal".to_string(), "personal".to_string())
        ]
    );

    // bob: prod (developer + default viewer), sandbox (default runner),
    // staging (owner); never globex.
    let (_, body) = s.get_json("/v1/principals/User:bob/workspaces").await;
    let ws = body["workspaces"].as_array().unwrap();
    let ids: Vec<&str> = ws.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme-prod", "acme-sandbox", "acme-staging"]);
    assert!(
        ws.iter()
            .all(|w| w["kind"] == "organization" && w["organization"] == "acme")
    );
    let facts: Vec<&str> = ws[0]["why"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["fact"].as_str().unwrap())
        .collect();
    assert!(
        facts
            .iter()
            .any(|f| f.contains("explicit role `developer`")),
        "{facts:?}"
    );
    assert!(
        facts.iter().any(|f| f.contains("default role `viewer`")),
        "{facts:?}"
    );
    assert_eq!(body["strategy"], "index");

    // Paged with the query string; an unknown type is a 400.
    let (_, first) = s
        .get_json("/v1/principals/User:bob/workspaces?limit=2")
        .await;
    assert_eq!(first["workspaces"].as_array().unwrap().len(), 2);
    let token = first["page"]["next_token"].as_str().unwrap();
    let (_, rest) = s
        .get_json(&format!(
            "/v1/principals/User:bob/workspaces?limit=2&token={token}"
        ))
        .await;
    assert_eq!(rest["workspaces"][0]["id"], "acme-staging");
    let (status, _) = s.get_json("/v1/principals/Nope:x/workspaces").await;
    assert_eq!(status, 400);
}

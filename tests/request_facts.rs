//! Request facts: what the entities a decision request brings of its own may
//! do, with facts from files and from a store alike.
//!
//! By default (`--request-entities add`) nothing in a request may change
//! what the loaded facts say; every attempt to (each of the reproductions
//! below once turned a Deny into an Allow) is refused with the field at
//! fault and decides nothing. `replace` gives cedar-agent's semantics, still
//! checked as a load (cycles, missing parents, the domain's rules), and every
//! answer and decision-log line says which request facts were used.

mod common;

use std::sync::Arc;

use common::TestServer;
use orgwarden::decision_log::{DecisionLog, LogTarget};
use orgwarden::http::{App, HttpConfig};
use orgwarden::live_facts::LiveFacts;
use orgwarden::metrics::Metrics;
use orgwarden::pdp::Pdp;
use orgwarden::reload::Live;
use orgwarden::request_facts::RequestEntities;
use serde_json::{Value, json};

const AUTHZ: &str = "/v1/is_authorized";
const EVAL: &str = "/access/v1/evaluation";

fn req(principal: &str, action: &str, resource: &str) -> Value {
    json!({"principal": principal, "action": action, "resource": resource})
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": format!("Prefect::{ty}"), "id": id})
}

fn user(id: &str, parents: Value, tags: Value) -> Value {
    json!({
        "uid": uid("User", id),
        "attrs": {"email": format!("{id}@example.com")},
        "parents": parents,
        "tags": tags,
    })
}

fn with(mut r: Value, field: &str, entities: Value) -> Value {
    r[field] = entities;
    r
}

/// Where the facts come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    Files,
    Store,
}

/// A server on the shipped model in `mode`; with a store, a fresh one
/// holding the shipped entities (kept alive by the returned dir).
async fn server(
    source: Source,
    mode: RequestEntities,
    log: DecisionLog,
) -> (TestServer, Option<tempfile::TempDir>) {
    server_of(common::shipped(), source, mode, log).await
}

/// [`server`] on the model at `paths`.
async fn server_of(
    paths: orgwarden::Paths,
    source: Source,
    mode: RequestEntities,
    log: DecisionLog,
) -> (TestServer, Option<tempfile::TempDir>) {
    let config = HttpConfig {
        request_entities: mode,
        ..HttpConfig::default()
    };
    match source {
        Source::Files => (TestServer::start(paths, config, 100, log).await, None),
        Source::Store => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite:{}", dir.path().join("facts.db").display());
            let store = orgwarden::facts::store::Store::open(&url).await.unwrap();
            let entities = orgwarden::facts::transfer::read_entities(&paths).unwrap();
            orgwarden::facts::transfer::import(&store, entities, false)
                .await
                .unwrap();
            store.close().await;
            let live = Arc::new(Live::load(paths).unwrap());
            let facts = LiveFacts::start(&url, live.clone(), Default::default())
                .await
                .unwrap();
            let pdp =
                Pdp::new(live, Arc::new(Metrics::new()), 100, log).with_facts(Arc::new(facts));
            let app = Arc::new(App::new(pdp, config));
            (TestServer::serve(app).await, Some(dir))
        }
    }
}

/// Every override the default refuses: (what, request, endpoint, field).
fn overrides() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    let acme = uid("Organization", "acme");
    let acme_admins = uid("OrgAdmins", "acme-admins");
    let globex = uid("Organization", "globex");
    let all_scopes: Vec<Value> = ["manage_deployments", "manage_flows"]
        .iter()
        .map(|a| json!({"__entity": {"type": "Prefect::Action", "id": a}}))
        .collect();
    vec![
        (
            "carol redefined as an acme admin",
            AUTHZ,
            with(
                req(
                    r#"User::"carol""#,
                    "manage_deployments",
                    r#"Workspace::"acme-prod""#,
                ),
                "additional_entities",
                json!([user("carol", json!([acme, acme_admins]), json!({}))]),
            ),
            "additional_entities[0]",
        ),
        (
            "carol moved into globex",
            AUTHZ,
            with(
                req(
                    r#"User::"carol""#,
                    "see_flows",
                    r#"Workspace::"globex-main""#,
                ),
                "additional_entities",
                json!([user("carol", json!([globex]), json!({}))]),
            ),
            "additional_entities[0]",
        ),
        (
            "a new user with acme admin parents",
            AUTHZ,
            with(
                req(
                    r#"User::"zed""#,
                    "delete:workspace",
                    r#"Workspace::"acme-prod""#,
                ),
                "additional_entities",
                json!([user("zed", json!([acme, acme_admins]), json!({}))]),
            ),
            "additional_entities[0].parents[0]",
        ),
        (
            "a new user claiming the admin group second",
            AUTHZ,
            with(
                req(
                    r#"User::"zed""#,
                    "delete:workspace",
                    r#"Workspace::"acme-prod""#,
                ),
                "additional_entities",
                json!([
                    {"uid": uid("Organization", "zed-org"), "attrs": {"handle": "z", "admins": {"__entity": uid("OrgAdmins", "zed-admins")}}, "parents": []},
                    {"uid": uid("OrgAdmins", "zed-admins"), "attrs": {}, "parents": []},
                    user("zed", json!([uid("Organization", "zed-org"), acme_admins]), json!({}))
                ]),
            ),
            "additional_entities[2].parents[1]",
        ),
        (
            "the built-in viewer role redefined",
            AUTHZ,
            with(
                req(
                    r#"User::"carol""#,
                    "manage_deployments",
                    r#"Workspace::"acme-prod""#,
                ),
                "additional_entities",
                json!([{
                    "uid": uid("Role", "viewer"),
                    "attrs": {"name": "Viewer", "builtin": true, "grants": all_scopes},
                    "parents": [],
                }]),
            ),
            "additional_entities[0]",
        ),
        (
            "a new user with a role in a loaded personal workspace",
            AUTHZ,
            with(
                req(
                    r#"User::"mallory""#,
                    "see_flows",
                    r#"Workspace::"dave-personal""#,
                ),
                "additional_entities",
                json!([user(
                    "mallory",
                    json!([]),
                    json!({"dave-personal": {"__entity": uid("Role", "collaborator")}})
                )]),
            ),
            "additional_entities[0].tags.dave-personal",
        ),
        (
            "every loaded fact replaced",
            AUTHZ,
            with(
                req(
                    r#"User::"carol""#,
                    "manage_deployments",
                    r#"Workspace::"acme-prod""#,
                ),
                "entities",
                json!([]),
            ),
            "entities",
        ),
        (
            "AuthZEN resource properties moving globex-main into acme",
            EVAL,
            json!({
                "subject": {"type": "user", "id": "carol"},
                "action": {"name": "see_flows"},
                "resource": {"type": "workspace", "id": "globex-main",
                             "properties": {"org": {"__entity": uid("Organization", "acme")}}},
            }),
            "resource.properties",
        ),
        (
            "AuthZEN subject properties taking ivan's email",
            EVAL,
            json!({
                "subject": {"type": "user", "id": "carol", "properties": {"email": "ivan@example.com"}},
                "action": {"name": "accept:invitation"},
                "resource": {"type": "invitation", "id": "acme-ivan"},
            }),
            "subject.properties",
        ),
    ]
}

/// The decision the request gets without its request facts.
async fn plain(s: &TestServer, path: &str, body: &Value) -> Value {
    let mut bare = body.clone();
    if let Some(o) = bare.as_object_mut() {
        o.remove("additional_entities");
        o.remove("entities");
        for side in ["subject", "resource"] {
            if let Some(e) = o.get_mut(side).and_then(Value::as_object_mut) {
                e.remove("properties");
            }
        }
    }
    let (status, answer) = s.post(path, bare).await;
    assert_eq!(status, 200, "{answer}");
    answer["decision"].clone()
}

async fn overrides_are_refused(source: Source) {
    let (s, _dir) = server(source, RequestEntities::Add, DecisionLog::off()).await;
    for (what, path, body, field) in overrides() {
        let (status, answer) = s.post(path, body.clone()).await;
        assert_eq!(status, 403, "{source:?} {what}: {answer}");
        assert_eq!(
            answer["error"]["code"], "protected_fact",
            "{what}: {answer}"
        );
        assert_eq!(answer["error"]["field"], field, "{what}: {answer}");
        assert!(answer.get("decision").is_none(), "{what}: nothing decided");
        // The loaded facts still say no.
        let decision = plain(&s, path, &body).await;
        assert!(
            decision == json!("Deny") || decision == json!(false),
            "{what}: {decision}"
        );
    }
    // The refusals are counted among the request errors, by code.
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("code=\"protected_fact\""),
        "refusals are counted by code"
    );
}

#[tokio::test]
async fn overrides_of_loaded_facts_are_refused_from_files() {
    overrides_are_refused(Source::Files).await;
}

#[tokio::test]
async fn overrides_of_loaded_facts_are_refused_from_a_store() {
    overrides_are_refused(Source::Store).await;
}

/// New facts that change nothing loaded are decided on, marked as request
/// facts, and never cached or kept.
async fn new_facts_are_decided_on(source: Source) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::start(&LogTarget::File(path.clone()), false).unwrap();
    let (s, _store) = server(source, RequestEntities::Add, log).await;
    let newco = json!([
        {"uid": uid("Organization", "newco"), "attrs": {"handle": "newco", "admins": {"__entity": uid("OrgAdmins", "newco-admins")}}, "parents": []},
        {"uid": uid("OrgAdmins", "newco-admins"), "attrs": {}, "parents": []},
        user("nina", json!([uid("Organization", "newco"), uid("OrgAdmins", "newco-admins")]), json!({})),
        {"uid": uid("Workspace", "newco-main"), "attrs": {"key": "newco-main", "handle": "main", "org": {"__entity": uid("Organization", "newco")}}, "parents": []},
    ]);
    let body = with(
        req(
            r#"User::"nina""#,
            "delete:workspace",
            r#"Workspace::"newco-main""#,
        ),
        "additional_entities",
        newco.clone(),
    );
    let (status, answer) = s.post(AUTHZ, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], "Allow", "{answer}");
    assert_eq!(answer["diagnostics"]["reason"], json!(["admin-overrides"]));
    let used = json!([
        r#"Prefect::OrgAdmins::"newco-admins""#,
        r#"Prefect::Organization::"newco""#,
        r#"Prefect::User::"nina""#,
        r#"Prefect::Workspace::"newco-main""#,
    ]);
    assert_eq!(answer["request_facts"], used);
    // Not kept: without them nina is nobody.
    assert_eq!(
        plain(&s, AUTHZ, &body).await,
        "Deny",
        "request facts must not persist"
    );
    // The tenant boundary holds on the new world: nina is not in acme.
    let (status, answer) = s
        .post(
            AUTHZ,
            with(
                req(r#"User::"nina""#, "see_flows", r#"Workspace::"acme-prod""#),
                "additional_entities",
                newco.clone(),
            ),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision"], "Deny");
    // A new workspace may name a loaded organization (a resource being
    // created): acme's default role applies to acme's members there.
    let draft = json!([{"uid": uid("Workspace", "acme-draft"), "attrs": {
        "key": "acme-draft", "handle": "draft",
        "org": {"__entity": uid("Organization", "acme")},
        "defaultRole": {"__entity": uid("Role", "viewer")}}, "parents": []}]);
    let (status, answer) = s
        .post(
            AUTHZ,
            with(
                req(
                    r#"User::"carol""#,
                    "see_flows",
                    r#"Workspace::"acme-draft""#,
                ),
                "additional_entities",
                draft,
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], "Allow");
    assert_eq!(
        answer["request_facts"],
        json!([r#"Prefect::Workspace::"acme-draft""#])
    );
    // AuthZEN properties of an entity the facts do not hold describe it.
    let (status, answer) = s
        .post(
            EVAL,
            json!({
                "subject": {"type": "user", "id": "carol"},
                "action": {"name": "see_flows"},
                "resource": {"type": "workspace", "id": "acme-next", "properties": {
                    "key": "acme-next", "handle": "next",
                    "org": {"__entity": uid("Organization", "acme")},
                    "defaultRole": {"__entity": uid("Role", "viewer")}}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], true, "{answer}");
    assert_eq!(
        answer["context"]["request_facts"],
        json!([r#"Prefect::Workspace::"acme-next""#])
    );
    // The decision log says which request facts an answer used.
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..200 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["request_facts"], used);
    assert!(
        lines[1].get("request_facts").is_none(),
        "a decision on the loaded facts only: {}",
        lines[1]
    );
    assert_eq!(
        lines[4]["request_facts"],
        json!([r#"Prefect::Workspace::"acme-next""#])
    );
}

#[tokio::test]
async fn new_facts_are_decided_on_and_marked_from_files() {
    new_facts_are_decided_on(Source::Files).await;
}

#[tokio::test]
async fn new_facts_are_decided_on_and_marked_from_a_store() {
    new_facts_are_decided_on(Source::Store).await;
}

/// A general Cedar model whose groups may nest (so a hierarchy can cycle).
fn nesting_model() -> (tempfile::TempDir, orgwarden::Paths) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("s.cedarschema"),
        "entity G in [G]; entity U in [G]; action go appliesTo { principal: U, resource: G };",
    )
    .unwrap();
    std::fs::write(
        p.join("p.cedar"),
        "@id(\"member\") permit(principal, action, resource) when { principal in resource };",
    )
    .unwrap();
    std::fs::write(
        p.join("e.json"),
        r#"[{"uid": {"type": "G", "id": "top"}, "attrs": {}, "parents": []},
            {"uid": {"type": "U", "id": "u"}, "attrs": {}, "parents": [{"type": "G", "id": "top"}]}]"#,
    )
    .unwrap();
    let paths = orgwarden::Paths {
        policies: p.join("p.cedar"),
        schema: p.join("s.cedarschema"),
        entities: p.join("e.json"),
        routes: None,
        identity: None,
    };
    (dir, paths)
}

/// Cycles and missing parents are refused in every mode, naming the field.
async fn malformed_worlds_are_refused(source: Source) {
    let (_model, paths) = nesting_model();
    for mode in [RequestEntities::Add, RequestEntities::Replace] {
        let (s, _dir) = server_of(paths.clone(), source, mode, DecisionLog::off()).await;
        let g = |id: &str| json!({"type": "G", "id": id});
        let group =
            |id: &str, parent: &str| json!({"uid": g(id), "attrs": {}, "parents": [g(parent)]});
        let r = req(r#"U::"u""#, "go", r#"G::"a""#);
        let (status, answer) = s
            .post(
                AUTHZ,
                with(
                    r.clone(),
                    "additional_entities",
                    json!([group("a", "b"), group("b", "a")]),
                ),
            )
            .await;
        assert_eq!(status, 400, "{mode:?}: {answer}");
        assert_eq!(answer["error"]["code"], "cycle", "{answer}");
        assert!(
            answer["error"]["field"]
                .as_str()
                .unwrap()
                .starts_with("additional_entities["),
            "{answer}"
        );
        let (status, answer) = s
            .post(
                AUTHZ,
                with(r.clone(), "additional_entities", json!([group("a", "a")])),
            )
            .await;
        assert_eq!(status, 400, "{mode:?}: {answer}");
        assert_eq!(answer["error"]["code"], "cycle", "{answer}");
        assert_eq!(answer["error"]["field"], "additional_entities[0]");
        let (status, answer) = s
            .post(
                AUTHZ,
                with(
                    r.clone(),
                    "additional_entities",
                    json!([group("a", "nowhere")]),
                ),
            )
            .await;
        assert_eq!(status, 400, "{mode:?}: {answer}");
        assert_eq!(answer["error"]["code"], "missing_parent");
        assert_eq!(
            answer["error"]["field"],
            "additional_entities[0].parents[0]"
        );
        // A new group under a new group decides (the user is not in it).
        let (status, answer) = s
            .post(
                AUTHZ,
                with(
                    r.clone(),
                    "additional_entities",
                    json!([group("a", "b"), {"uid": g("b"), "attrs": {}, "parents": []}]),
                ),
            )
            .await;
        assert_eq!(status, 200, "{mode:?}: {answer}");
        assert_eq!(answer["decision"], "Deny");
        if mode == RequestEntities::Replace {
            // With `entities`, the world is the request's alone.
            let (status, answer) = s
                .post(
                    AUTHZ,
                    with(
                        r.clone(),
                        "entities",
                        json!([{"uid": {"type": "U", "id": "u"}, "attrs": {}, "parents": [g("top")]}]),
                    ),
                )
                .await;
            assert_eq!(status, 400, "{answer}");
            assert_eq!(answer["error"]["code"], "missing_parent");
            assert_eq!(answer["error"]["field"], "entities[0].parents[0]");
            // A user re-parented under a new group reaches it.
            let (status, answer) = s
                .post(
                    AUTHZ,
                    with(
                        r.clone(),
                        "additional_entities",
                        json!([{"uid": {"type": "U", "id": "u"}, "attrs": {}, "parents": [g("a")]},
                               group("a", "top")]),
                    ),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["decision"], "Allow");
        }
    }
}

#[tokio::test]
async fn cycles_and_missing_parents_are_refused_from_files() {
    malformed_worlds_are_refused(Source::Files).await;
}

#[tokio::test]
async fn cycles_and_missing_parents_are_refused_from_a_store() {
    malformed_worlds_are_refused(Source::Store).await;
}

/// `replace`: cedar-agent's semantics, on a world that must still pass the
/// domain's checks, and marked.
async fn replace_mode_checks_the_world(source: Source) {
    let (s, _dir) = server(source, RequestEntities::Replace, DecisionLog::off()).await;
    let acme = uid("Organization", "acme");
    let acme_admins = uid("OrgAdmins", "acme-admins");
    let body = with(
        req(
            r#"User::"carol""#,
            "manage_deployments",
            r#"Workspace::"acme-prod""#,
        ),
        "additional_entities",
        json!([user("carol", json!([acme, acme_admins]), json!({}))]),
    );
    let (status, answer) = s.post(AUTHZ, body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], "Allow");
    assert_eq!(
        answer["request_facts"],
        json!([r#"Prefect::User::"carol""#])
    );
    assert_eq!(plain(&s, AUTHZ, &body).await, "Deny");

    // R1: an admin who is not a member.
    let (status, answer) = s
        .post(
            AUTHZ,
            with(
                req(
                    r#"User::"carol""#,
                    "manage_deployments",
                    r#"Workspace::"acme-prod""#,
                ),
                "additional_entities",
                json!([user("carol", json!([acme_admins]), json!({}))]),
            ),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "domain");
    assert_eq!(answer["error"]["field"], "additional_entities[0]");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("R1:"),
        "{answer}"
    );
    // R6: a role in acme-prod for someone moved out of acme.
    let (status, answer) = s
        .post(
            AUTHZ,
            with(
                req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#),
                "additional_entities",
                json!([user(
                    "bob",
                    json!([uid("Organization", "globex")]),
                    json!({"acme-prod": {"__entity": uid("Role", "developer")}})
                )]),
            ),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "domain");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("R6"),
        "{answer}"
    );
    // R9: a custom role of acme in globex.
    let (status, answer) = s
        .post(
            AUTHZ,
            with(
                req(
                    r#"User::"hank""#,
                    "see_flows",
                    r#"Workspace::"globex-main""#,
                ),
                "additional_entities",
                json!([{
                    "uid": uid("Workspace", "globex-main"),
                    "attrs": {"key": "globex-main", "handle": "main",
                              "org": {"__entity": uid("Organization", "globex")},
                              "defaultRole": {"__entity": uid("Role", "acme-incident-responder")}},
                    "parents": [],
                }]),
            ),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("R9"),
        "{answer}"
    );
    // AuthZEN properties merge over the loaded entity in this mode.
    let (status, answer) = s
        .post(
            EVAL,
            json!({
                "subject": {"type": "user", "id": "carol"},
                "action": {"name": "see_flows"},
                "resource": {"type": "workspace", "id": "acme-staging",
                             "properties": {"defaultRole": {"__entity": uid("Role", "viewer")}}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["decision"], true);
    assert_eq!(
        answer["context"]["request_facts"],
        json!([r#"Prefect::Workspace::"acme-staging""#])
    );
}

#[tokio::test]
async fn replace_mode_checks_the_world_it_decides_on_from_files() {
    replace_mode_checks_the_world(Source::Files).await;
}

#[tokio::test]
async fn replace_mode_checks_the_world_it_decides_on_from_a_store() {
    replace_mode_checks_the_world(Source::Store).await;
}

#[tokio::test]
async fn off_refuses_every_request_fact() {
    let (s, _dir) = server(Source::Files, RequestEntities::Off, DecisionLog::off()).await;
    let r = req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#);
    for field in ["additional_entities", "entities"] {
        let (status, answer) = s.post(AUTHZ, with(r.clone(), field, json!([]))).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], "request_facts_disabled");
        assert_eq!(answer["error"]["field"], field);
    }
    let (status, answer) = s
        .post(
            EVAL,
            json!({
                "subject": {"type": "user", "id": "newbie", "properties": {"email": "n@example.com"}},
                "action": {"name": "see_flows"},
                "resource": {"type": "workspace", "id": "acme-prod"},
            }),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["field"], "subject.properties");
    let (status, answer) = s.post(AUTHZ, r).await;
    assert_eq!(status, 200);
    assert_eq!(answer["decision"], "Allow");
}

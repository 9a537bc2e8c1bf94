//! Engine benchmarks on the shipped model.
//!
//! * `decide/*`: one decision on the loaded facts, for representative
//!   requests (the query is prepared once, outside the measurement);
//! * `decide_additional/*`: the same requests with `additional_entities`
//!   (the slice of the facts, or the whole store when an entity is
//!   re-parented);
//! * `prepare/*`: turning a wire request (JSON text) into a query;
//! * `load/shipped_model`: loading and validating the whole model.
//!
//! Run: `cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use orgwarden::engine::{self, RequestInput};
use orgwarden::load::{self, Paths};
use orgwarden::{Decision, Snapshot};
use serde_json::{Value, json};

fn paths() -> Paths {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Paths {
        policies: root.join("policies"),
        schema: root.join("schema"),
        entities: root.join("entities"),
        ..Paths::default()
    }
}

fn snapshot() -> Snapshot {
    load::load(&paths()).unwrap_or_else(|d| panic!("the shipped model must load:\n{d}"))
}

/// Representative requests, with the decision each must get.
const REQUESTS: &[(&str, &str, &str, &str, Decision)] = &[
    // alice is an acme Admin; acme-staging's default role is No Access.
    (
        "admin_override",
        r#"User::"alice""#,
        "manage_deployments",
        r#"Workspace::"acme-staging""#,
        Decision::Allow,
    ),
    // carol has no explicit role; acme-prod's default role is Viewer.
    (
        "default_role",
        r#"User::"carol""#,
        "see_flows",
        r#"Workspace::"acme-prod""#,
        Decision::Allow,
    ),
    // bob is a Developer in acme-prod.
    (
        "explicit_role",
        r#"User::"bob""#,
        "manage_deployments",
        r#"Workspace::"acme-prod""#,
        Decision::Allow,
    ),
    // gina (globex Admin) in an acme workspace: the tenant boundary forbids.
    (
        "tenant_boundary_deny",
        r#"User::"gina""#,
        "see_flows",
        r#"Workspace::"acme-prod""#,
        Decision::Deny,
    ),
    // An org-level Admin action.
    (
        "org_action",
        r#"User::"alice""#,
        "create:workspace",
        r#"Organization::"acme""#,
        Decision::Allow,
    ),
];

fn wire(principal: &str, action: &str, resource: &str, extra: Option<&Value>) -> String {
    let mut body = json!({
        "principal": principal,
        "action": action,
        "resource": resource,
        "context": {"ip": "10.0.0.1"},
    });
    if let Some(extra) = extra {
        body["additional_entities"] = extra.clone();
    }
    body.to_string()
}

/// Request-scoped facts a gateway might send: a new member with an explicit
/// role in acme-prod, holding a new custom role.
fn new_member() -> Value {
    // Runner's scopes, run_deployments raised to manage_deployments.
    let grants: Vec<Value> = [
        "run_flows",
        "see_blocks",
        "manage_deployments",
        "see_notifications",
        "see_work_queues",
        "see_concurrency_limits",
        "see_events",
        "see_automations",
        "see_work_pools",
        "see_workers",
        "see_artifacts",
        "see_variables",
        "see_incidents",
    ]
    .iter()
    .map(|a| json!({"__entity": {"type": "Prefect::Action", "id": a}}))
    .collect();
    json!([
        {
            "uid": {"type": "Prefect::User", "id": "zoe"},
            "attrs": {"email": "zoe@acme.example"},
            "parents": [{"type": "Prefect::Organization", "id": "acme"}],
            "tags": {"acme-prod": {"__entity": {"type": "Prefect::Role", "id": "acme-release"}}},
        },
        {
            "uid": {"type": "Prefect::Role", "id": "acme-release"},
            "attrs": {"name": "Release", "builtin": false,
                      "org": {"__entity": {"type": "Prefect::Organization", "id": "acme"}},
                      "grants": grants},
            "parents": [],
        },
    ])
}

/// A re-parented loaded entity: alice, acme's Admin, no longer in its admin
/// group, which changes her ancestors (decided on the whole store).
fn reparented_admin() -> Value {
    json!([{
        "uid": {"type": "Prefect::User", "id": "alice"},
        "attrs": {"email": "alice@acme.example"},
        "parents": [{"type": "Prefect::Organization", "id": "acme"}],
    }])
}

fn prepared(snap: &Snapshot, body: &str) -> engine::Query {
    let input: RequestInput = serde_json::from_str(body).expect("request JSON");
    engine::prepare(snap, &input).expect("a valid request")
}

fn bench_decide(c: &mut Criterion) {
    let snap = snapshot();
    let mut group = c.benchmark_group("decide");
    for (name, p, a, r, expected) in REQUESTS {
        let q = prepared(&snap, &wire(p, a, r, None));
        assert_eq!(engine::decide(&snap, &q).decision, *expected, "{name}");
        group.bench_function(*name, |b| b.iter(|| engine::decide(&snap, black_box(&q))));
    }
    group.finish();

    let mut group = c.benchmark_group("decide_additional");
    let extra = new_member();
    for (name, p, a, r, expected) in REQUESTS {
        let q = prepared(&snap, &wire(p, a, r, Some(&extra)));
        assert_eq!(engine::decide(&snap, &q).decision, *expected, "{name}");
        group.bench_function(*name, |b| b.iter(|| engine::decide(&snap, black_box(&q))));
    }
    // The new member's own request: its explicit custom role grants it.
    let q = prepared(
        &snap,
        &wire(
            r#"User::"zoe""#,
            "manage_deployments",
            r#"Workspace::"acme-prod""#,
            Some(&extra),
        ),
    );
    assert_eq!(engine::decide(&snap, &q).decision, Decision::Allow);
    group.bench_function("new_member", |b| {
        b.iter(|| engine::decide(&snap, black_box(&q)))
    });
    // Re-parenting: alice, no longer an Admin, loses the admin override on
    // acme-staging (default No Access, no role of hers).
    let q = prepared(
        &snap,
        &wire(
            r#"User::"alice""#,
            "delete:workspace",
            r#"Workspace::"acme-staging""#,
            Some(&reparented_admin()),
        ),
    );
    assert_eq!(engine::decide(&snap, &q).decision, Decision::Deny);
    group.bench_function("reparented_admin", |b| {
        b.iter(|| engine::decide(&snap, black_box(&q)))
    });
    group.finish();
}

fn bench_prepare(c: &mut Criterion) {
    let snap = snapshot();
    let mut group = c.benchmark_group("prepare");
    let (_, p, a, r, _) = REQUESTS[2];
    let plain = wire(p, a, r, None);
    group.bench_function("wire_request", |b| {
        b.iter(|| {
            let input: RequestInput = serde_json::from_str(black_box(&plain)).unwrap();
            engine::prepare(&snap, &input).unwrap()
        })
    });
    let with_extra = wire(p, a, r, Some(&new_member()));
    group.bench_function("wire_request_additional", |b| {
        b.iter(|| {
            let input: RequestInput = serde_json::from_str(black_box(&with_extra)).unwrap();
            engine::prepare(&snap, &input).unwrap()
        })
    });
    group.finish();
}

fn bench_load(c: &mut Criterion) {
    let paths = paths();
    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    group.bench_function("shipped_model", |b| {
        b.iter(|| load::load(black_box(&paths)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_prepare, bench_load);
criterion_main!(benches);

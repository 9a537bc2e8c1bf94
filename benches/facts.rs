//! Live facts at scale: applying a write to a fact view, and deciding
//! against it, on a generated world of 1M memberships (`orgwarden::world`,
//! the shape of `benches/scale.rs`).
//!
//! * `facts/apply_set_tag`: one `set_tag` batch (a membership's role
//!   changed), validated (schema, hierarchy, domain checks) and applied to
//!   the view, from the same view each time; the `PERCENTILES` line times a
//!   chain of such writes, each applied to the previous one's view.
//! * `facts/decide_slice`: a decision against the view (request-scoped
//!   slice, see `orgwarden::facts::slice`), beside `facts/decide_engine`:
//!   `engine::decide` on the snapshot loaded from the same world's files.
//!   Every slice decision is first checked against the engine's.
//!
//! Run: `cargo bench --bench facts -- --warm-up-time 1 --measurement-time 3`.
//! `ORGWARDEN_FACTS_MEMBERSHIPS=100000` runs a smaller world.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orgwarden::engine::{self, Query};
use orgwarden::facts::{Batch, FactView, Limits, Model, SlicePlan, slice};
use orgwarden::load::{self, Paths};
use orgwarden::world::{self, Rng, WorldSpec};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const SCOPES: &[&str] = &[
    "see_flows",
    "run_deployments",
    "manage_deployments",
    "see_work_pools",
    "manage_blocks",
    "see_variables",
];

const ROLES: &[&str] = &["viewer", "runner", "developer", "owner", "worker"];

fn spec(memberships: usize) -> WorldSpec {
    WorldSpec {
        orgs: memberships.div_ceil(1000),
        workspaces_per_org: 50,
        users_per_org: 38,
        service_accounts_per_org: 2,
        custom_roles_per_org: 2,
        memberships,
        personal: 100.min(memberships / 10),
        seed: 1,
    }
}

fn percentiles(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let n = times.len();
    let at = |p: f64| times[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e6;
    println!(
        "PERCENTILES {name}: n {n}, p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us",
        at(0.50),
        at(0.99),
        at(0.999),
        times[n - 1].as_secs_f64() * 1e6
    );
}

/// A valid `set_tag`: a member of organization `o` gets `role` in one of
/// its workspaces.
fn set_tag(spec: &WorldSpec, rng: &mut Rng) -> Batch {
    let o = rng.below(spec.orgs);
    let user = world::user_id(o, 1 + rng.below(spec.users_per_org - 1));
    let ws = world::workspace_id(o, rng.below(spec.workspaces_per_org));
    let role = ROLES[rng.below(ROLES.len())];
    let body = json!({"operations": [{
        "op": "set_tag",
        "uid": {"type": "Prefect::User", "id": user},
        "key": ws,
        "value": {"__entity": {"type": "Prefect::Role", "id": role}},
    }]});
    Batch::from_json_value(body, &Limits::default()).unwrap()
}

fn facts(c: &mut Criterion) {
    let memberships: usize = std::env::var("ORGWARDEN_FACTS_MEMBERSHIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let spec = spec(memberships);
    let files = world::generate(&spec).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    world::write(&spec, tmp.path()).unwrap();
    let started = Instant::now();
    let snap = load::load(&Paths {
        policies: root().join("policies"),
        schema: root().join("schema"),
        entities: PathBuf::from(tmp.path()),
        ..Paths::default()
    })
    .unwrap_or_else(|d| panic!("the world must load:\n{d}"));
    eprintln!(
        "{memberships} memberships: {} entities loaded (files) in {:.1?}",
        snap.entity_count(),
        started.elapsed()
    );
    let items: Vec<Value> = files
        .into_iter()
        .flat_map(|(_, v)| match v {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .collect();
    let model = Model::new(&snap.schema).unwrap();
    let plan = SlicePlan::new(&snap.policies);
    let started = Instant::now();
    let view = FactView::from_json(&model, items).expect("the view takes the world");
    eprintln!(
        "fact view of {} entities built in {:.1?}",
        view.len(),
        started.elapsed()
    );

    let mut group = c.benchmark_group("facts");
    let mut rng = Rng(5);
    let batches: Vec<Batch> = (0..256).map(|_| set_tag(&spec, &mut rng)).collect();
    group.bench_function("apply_set_tag", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % batches.len();
            view.apply(&model, black_box(&batches[i])).unwrap()
        })
    });
    let mut times = Vec::with_capacity(5000);
    let mut chained = view.clone();
    for _ in 0..5000 {
        let batch = set_tag(&spec, &mut rng);
        let started = Instant::now();
        let (next, _) = chained.apply(&model, &batch).unwrap();
        times.push(started.elapsed());
        chained = next;
    }
    percentiles("facts/apply_set_tag (chained)", times);

    // A rotation of (member, workspace) pairs, as benches/scale.rs.
    let mut queries: Vec<Query> = Vec::new();
    for k in 0..64usize {
        let o = (k * 7919) % spec.orgs;
        let input = serde_json::from_value(json!({
            "principal": format!("Prefect::User::{:?}", world::user_id(o, 1 + k % (spec.users_per_org - 1))),
            "action": SCOPES[k % SCOPES.len()],
            "resource": format!("Prefect::Workspace::{:?}", world::workspace_id(o, k % spec.workspaces_per_org)),
        }))
        .unwrap();
        let q = engine::prepare(&snap, &input).expect("a valid request");
        assert_eq!(
            engine::decide(&snap, &q),
            slice::decide(&snap, &plan, &model, &view, &q),
            "the slice decides as the engine"
        );
        queries.push(q);
    }
    group.bench_function("decide_slice", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % queries.len();
            slice::decide(&snap, &plan, &model, &view, black_box(&queries[i]))
        })
    });
    group.bench_function("decide_engine", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % queries.len();
            engine::decide(&snap, black_box(&queries[i]))
        })
    });
    for (name, by_slice) in [("facts/decide_slice", true), ("facts/decide_engine", false)] {
        let mut times = Vec::with_capacity(200_000);
        for i in 0..200_000 {
            let q = &queries[i % queries.len()];
            let started = Instant::now();
            let outcome = if by_slice {
                slice::decide(&snap, &plan, &model, &view, black_box(q))
            } else {
                engine::decide(&snap, black_box(q))
            };
            times.push(started.elapsed());
            black_box(outcome);
        }
        percentiles(name, times);
    }
    group.finish();
}

criterion_group!(benches, facts);
criterion_main!(benches);

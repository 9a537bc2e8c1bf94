//! Search latency on a large generated world (default: 1000 organizations x
//! 50 workspaces x 40 principals, 1,000,000 explicit memberships), loaded
//! once with `load::load`:
//!
//! * `search/resource_member`: the workspaces where a plain member may
//!   `see_flows` (resource search of one user);
//! * `search/resource_admin`: the same for an org Admin (every workspace of
//!   the org);
//! * `search/subject_workspace`: the users who may `run_deployments` in one
//!   workspace the member can see (subject search);
//! * `search/action_pair`: the effective scopes of the member in that
//!   workspace (action search over every workspace action);
//! * `search/workspace_switcher`: every workspace a user can open, with its
//!   scopes (`search::accessible`).
//!
//! The world is written to a temporary directory, or reused from
//! `ORGWARDEN_BENCH_WORLD` when that directory exists (it is written there
//! when it does not). `ORGWARDEN_BENCH_MEMBERSHIPS` and
//! `ORGWARDEN_BENCH_ORGS` shrink it. Load time, peak RSS, candidate counts and
//! strategies go to stderr.
//!
//! Run: `cargo bench --bench search -- --warm-up-time 1 --measurement-time 5`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cedar_policy::{EntityTypeName, EntityUid};
use criterion::{Criterion, criterion_group, criterion_main};
use orgwarden::load::{self, Paths};
use orgwarden::search::{self, PageRequest, Strategy};
use orgwarden::world::{self, WorldSpec};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmHWM` (peak resident set) of this process, in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn uid(ty: &str, id: &str) -> EntityUid {
    format!("Prefect::{ty}::{id:?}").parse().unwrap()
}

fn bench(c: &mut Criterion) {
    let spec = WorldSpec {
        orgs: env_usize("ORGWARDEN_BENCH_ORGS", 1000),
        workspaces_per_org: 50,
        users_per_org: 38,
        service_accounts_per_org: 2,
        custom_roles_per_org: 2,
        memberships: env_usize("ORGWARDEN_BENCH_MEMBERSHIPS", 1_000_000),
        personal: 100,
        seed: 1,
    };
    let tmp;
    let dir: PathBuf = match std::env::var_os("ORGWARDEN_BENCH_WORLD") {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    if !dir.join("personal.json").exists() {
        let started = Instant::now();
        world::write(&spec, &dir).unwrap();
        eprintln!("wrote {spec:?} in {:.1?}", started.elapsed());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paths = Paths {
        policies: root.join("policies"),
        schema: root.join("schema"),
        entities: dir.clone(),
        ..Paths::default()
    };
    let started = Instant::now();
    let snap = load::load(&paths).unwrap_or_else(|d| panic!("the world must load:\n{d}"));
    eprintln!(
        "loaded {} entities ({} memberships) in {:.1?}; peak RSS {:.0} MiB",
        snap.entity_count(),
        spec.memberships,
        started.elapsed(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );

    let started = Instant::now();
    let index = search::SearchIndex::build(&snap.policies, &snap.entities).unwrap();
    eprintln!(
        "of which the search index: {:.1?} ({} entities indexed)",
        started.elapsed(),
        index.relations.stored()
    );
    drop(index);

    let o = spec.orgs / 2;
    let member = uid("User", &world::user_id(o, 5));
    let admin = uid("User", &world::user_id(o, 0));
    let see_flows = uid("Action", "see_flows");
    let run_deployments = uid("Action", "run_deployments");
    let workspace: EntityTypeName = "Prefect::Workspace".parse().unwrap();
    let user: EntityTypeName = "Prefect::User".parse().unwrap();
    let ctx = json!({});
    let all = PageRequest {
        token: None,
        limit: Some(search::MAX_LIMIT),
    };

    let report = |name: &str, strategy: Strategy, candidates: usize, results: usize| {
        assert_eq!(strategy, Strategy::Index, "{name} must use the index");
        eprintln!("{name}: {results} result(s) from {candidates} candidate(s)");
    };
    let p = search::resources(&snap, &member, &see_flows, &workspace, &ctx, &all).unwrap();
    report("resource_member", p.strategy, p.candidates, p.items.len());
    // A workspace the member can see: subject and action search there.
    let ws = p
        .items
        .first()
        .expect("the member sees a workspace")
        .uid
        .clone();
    eprintln!("subject and action search on {ws}");
    let p = search::resources(&snap, &admin, &see_flows, &workspace, &ctx, &all).unwrap();
    report("resource_admin", p.strategy, p.candidates, p.items.len());
    let p = search::subjects(&snap, &user, &run_deployments, &ws, &ctx, &all).unwrap();
    report("subject_workspace", p.strategy, p.candidates, p.items.len());
    let p = search::actions(&snap, &member, &ws, &ctx, &all).unwrap();
    eprintln!("action_pair: {} action(s)", p.items.len());
    let p = search::accessible(&snap, &member, &workspace, &ctx, &all).unwrap();
    report(
        "workspace_switcher",
        p.strategy,
        p.candidates,
        p.items.len(),
    );

    let mut g = c.benchmark_group("search");
    g.bench_function("resource_member", |b| {
        b.iter(|| search::resources(&snap, &member, &see_flows, &workspace, &ctx, &all).unwrap())
    });
    g.bench_function("resource_admin", |b| {
        b.iter(|| search::resources(&snap, &admin, &see_flows, &workspace, &ctx, &all).unwrap())
    });
    g.bench_function("subject_workspace", |b| {
        b.iter(|| search::subjects(&snap, &user, &run_deployments, &ws, &ctx, &all).unwrap())
    });
    g.bench_function("action_pair", |b| {
        b.iter(|| search::actions(&snap, black_box(&member), &ws, &ctx, &all).unwrap())
    });
    g.bench_function("workspace_switcher", |b| {
        b.iter(|| search::accessible(&snap, &member, &workspace, &ctx, &all).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Decision latency as the policies and the facts grow.
//!
//! * `policies/keyed/{54,1000,10000}`: the shipped model, plus generated
//!   policies up to the count: per-workspace and per-user policies as a
//!   platform accumulates them (`principal == ...` / `resource == ...` in
//!   the head), spread over the workspace scopes.
//!   `policies/general10/{1000,10000}`: the same with every tenth generated
//!   policy a general one (`principal in Organization::...` with a
//!   condition), which every request of its action must evaluate. Two generated policies name principals
//!   of the benchmarked requests, so a request evaluates its action's
//!   shipped policies plus the generated ones that can apply to it.
//! * `memberships/{1k,100k,1M}`: the shipped policies on generated worlds
//!   (`orgwarden::world`, 50 workspaces and 40 principals per
//!   organization), decided for a fixed rotation of member/workspace pairs.
//!
//! Besides criterion's figures, each case times 200,000 single decisions
//! one by one and prints their p50, p99 and p99.9 (`PERCENTILES` lines),
//! since a sidecar's tail matters as much as its median.
//!
//! Run: `cargo bench --bench scale -- --warm-up-time 1 --measurement-time 3`.
//! `ORGWARDEN_SCALE_MAX=100000` stops at 100k memberships (the 1M world takes
//! about a minute to write and load); `ORGWARDEN_BENCH_WORLD1M=DIR` reuses a
//! world written by `orgwarden gen` with the same shape.

use std::fmt::Write;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use orgwarden::engine::{self, Query};
use orgwarden::load::{self, Paths, TextFile};
use orgwarden::world::{self, WorldSpec};
use orgwarden::{Decision, Snapshot};
use serde_json::json;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn texts(dir: &str, ext: &str) -> Vec<TextFile> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| TextFile {
            text: std::fs::read_to_string(&path).unwrap(),
            path,
        })
        .collect()
}

const SCOPES: &[&str] = &[
    "see_flows",
    "run_deployments",
    "manage_deployments",
    "see_work_pools",
    "manage_blocks",
    "see_variables",
];

/// `n` generated policies (see the module doc); with `general`, every
/// tenth is a general policy.
fn generated_policies(n: usize, general: bool) -> String {
    let mut out = String::new();
    for i in 0..n {
        let scope = SCOPES[i % SCOPES.len()];
        let action = format!("Prefect::Action::{scope:?}");
        let kind = if i % 10 == 9 && !general {
            i % 9
        } else {
            i % 10
        };
        let _ = match kind {
            // Per-workspace grants and denials.
            0..=3 => writeln!(
                out,
                "@id(\"gen/{i}\") permit(principal == Prefect::User::\"gen-u{}\", action == {action}, resource == Prefect::Workspace::\"gen-ws{i}\");",
                i % 997
            ),
            4..=6 => writeln!(
                out,
                "@id(\"gen/{i}\") forbid(principal, action == {action}, resource == Prefect::Workspace::\"gen-ws{i}\") unless {{ resource has org && principal in resource.org }};"
            ),
            // Per-user grants on every workspace of their organization.
            7 | 8 => {
                // Two of them name the benchmarked principals.
                let user = match i {
                    7 => "bob".to_string(),
                    8 => "carol".to_string(),
                    _ => format!("gen-u{i}"),
                };
                writeln!(
                    out,
                    "@id(\"gen/{i}\") permit(principal == Prefect::User::{user:?}, action == {action}, resource is Prefect::Workspace) when {{ resource has org && principal in resource.org && resource.handle == \"gen-{i}\" }};"
                )
            }
            // General policies: evaluated by every request of their action.
            _ => writeln!(
                out,
                "@id(\"gen/{i}\") forbid(principal in Prefect::Organization::\"gen-org{i}\", action == {action}, resource is Prefect::Workspace) when {{ resource has org && !(principal in resource.org) }};"
            ),
        };
    }
    out
}

fn snapshot_with_policies(total: usize, general: bool) -> Snapshot {
    let mut policies = texts("policies", ".cedar");
    let shipped: usize = policies
        .iter()
        .map(|f| f.text.matches("@id(").count())
        .sum();
    if total > shipped {
        policies.push(TextFile {
            path: PathBuf::from("generated.cedar"),
            text: generated_policies(total - shipped, general),
        });
    }
    let snap = load::build(
        &texts("schema", ".cedarschema"),
        &policies,
        &texts("entities", ".json"),
    )
    .unwrap_or_else(|d| panic!("generated policies must load:\n{d}"));
    assert_eq!(snap.policy_count(), total.max(shipped));
    snap
}

fn query(snap: &Snapshot, principal: &str, action: &str, resource: &str) -> Query {
    let input = serde_json::from_value(json!({
        "principal": principal, "action": action, "resource": resource,
    }))
    .unwrap();
    engine::prepare(snap, &input).expect("a valid request")
}

/// Time `n` decisions one by one over `queries`; print p50/p99/p99.9.
fn percentiles(name: &str, snap: &Snapshot, queries: &[(Query, Decision)], n: usize) {
    let mut times: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n {
        let (q, want) = &queries[i % queries.len()];
        let started = Instant::now();
        let outcome = engine::decide(snap, black_box(q));
        times.push(started.elapsed());
        assert_eq!(outcome.decision, *want);
    }
    times.sort();
    let at = |p: f64| times[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e6;
    println!(
        "PERCENTILES {name}: n {n}, p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us",
        at(0.50),
        at(0.99),
        at(0.999),
        times[n - 1].as_secs_f64() * 1e6
    );
}

fn by_policy_count(c: &mut Criterion) {
    let mut group = c.benchmark_group("policies");
    let cases = [
        ("keyed", 54usize, false),
        ("keyed", 1_000, false),
        ("keyed", 10_000, false),
        ("general10", 1_000, true),
        ("general10", 10_000, true),
    ];
    for (mix, total, general) in cases {
        let name = format!("{mix}/{total}");
        let snap = snapshot_with_policies(total, general);
        let queries = vec![
            // Explicit Developer role; one generated policy names bob for
            // this action.
            (
                query(
                    &snap,
                    r#"User::"bob""#,
                    "run_deployments",
                    r#"Workspace::"acme-prod""#,
                ),
                Decision::Allow,
            ),
            // Default role (Viewer); carol's generated policy is for
            // another action.
            (
                query(
                    &snap,
                    r#"User::"carol""#,
                    "see_flows",
                    r#"Workspace::"acme-prod""#,
                ),
                Decision::Allow,
            ),
            // Tenant boundary.
            (
                query(
                    &snap,
                    r#"User::"gina""#,
                    "see_flows",
                    r#"Workspace::"acme-prod""#,
                ),
                Decision::Deny,
            ),
        ];
        let evaluated: Vec<usize> = queries
            .iter()
            .map(|(q, _)| {
                snap.index
                    .for_action(&q.action)
                    .map(|ap| {
                        ap.sets_for(&q.principal, &q.resource, &snap.entities)
                            .iter()
                            .map(|s| s.policies().count())
                            .sum()
                    })
                    .unwrap_or(total)
            })
            .collect();
        eprintln!("{name} policies: the requests evaluate {evaluated:?} policies");
        group.bench_function(&name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % queries.len();
                engine::decide(&snap, black_box(&queries[i].0))
            })
        });
        percentiles(&format!("policies/{name}"), &snap, &queries, 200_000);
    }
    group.finish();
}

fn world_spec(memberships: usize) -> WorldSpec {
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

fn by_memberships(c: &mut Criterion) {
    let max: usize = std::env::var("ORGWARDEN_SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut group = c.benchmark_group("memberships");
    for (name, memberships) in [("1k", 1_000usize), ("100k", 100_000), ("1M", 1_000_000)] {
        if memberships > max {
            continue;
        }
        let spec = world_spec(memberships);
        let tmp = tempfile::tempdir().unwrap();
        let dir = match std::env::var_os("ORGWARDEN_BENCH_WORLD1M") {
            Some(d) if memberships == 1_000_000 => PathBuf::from(d),
            _ => {
                world::write(&spec, tmp.path()).unwrap();
                tmp.path().to_path_buf()
            }
        };
        let started = Instant::now();
        let snap = load::load(&Paths {
            policies: root().join("policies"),
            schema: root().join("schema"),
            entities: dir,
            ..Paths::default()
        })
        .unwrap_or_else(|d| panic!("the world must load:\n{d}"));
        eprintln!(
            "{name}: {} entities loaded in {:.1?}",
            snap.entity_count(),
            started.elapsed()
        );
        // A rotation of (principal, workspace) pairs across organizations,
        // each decided once up front for its expected decision.
        let mut queries = Vec::new();
        for k in 0..64usize {
            let o = (k * 7919) % spec.orgs;
            let principal = format!(
                "Prefect::User::{:?}",
                world::user_id(o, 1 + k % (spec.users_per_org - 1))
            );
            let resource = format!(
                "Prefect::Workspace::{:?}",
                world::workspace_id(o, k % spec.workspaces_per_org)
            );
            let action = SCOPES[k % SCOPES.len()];
            let q = query(&snap, &principal, action, &resource);
            let want = engine::decide(&snap, &q).decision;
            queries.push((q, want));
        }
        let allowed = queries
            .iter()
            .filter(|(_, d)| *d == Decision::Allow)
            .count();
        eprintln!("{name}: {allowed} of {} pairs allowed", queries.len());
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % queries.len();
                engine::decide(&snap, black_box(&queries[i].0))
            })
        });
        percentiles(&format!("memberships/{name}"), &snap, &queries, 200_000);
    }
    group.finish();
}

criterion_group!(benches, by_policy_count, by_memberships);
criterion_main!(benches);

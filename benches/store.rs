//! The durable fact store on a real SQLite file (WAL, `synchronous=FULL`).
//!
//! * `store/commit_one`: one revision writing one user entity of realistic
//!   size (a generated user with about 260 workspace memberships as tags,
//!   from `orgwarden::world`), its change row and the revision counter,
//!   fsync included: the latency floor of an acknowledged write.
//! * `store/group_commit_16_writers`: 16 concurrent writers, each changing
//!   one tag of its own user per write, through the group-commit writer
//!   (validate in order, one transaction and one fsync per group).
//!   Criterion's throughput line is acknowledged writes per second.
//!
//! Run: `cargo bench --bench store -- --warm-up-time 1 --measurement-time 5`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orgwarden::facts::store::{Commit, Store};
use orgwarden::facts::writer::{Apply, Writer, WriterOptions};
use orgwarden::world::{self, WorldSpec};
use serde_json::{Value, json};

const WRITERS: usize = 16;

/// The generated user with the most memberships (about 260 tags).
fn big_user() -> Value {
    let spec = WorldSpec {
        orgs: 1,
        workspaces_per_org: 300,
        users_per_org: WRITERS,
        service_accounts_per_org: 0,
        custom_roles_per_org: 2,
        memberships: WRITERS * 260,
        personal: 0,
        seed: 7,
    };
    let files = world::generate(&spec).expect("world");
    files
        .into_iter()
        .flat_map(|(_, v)| v.as_array().cloned().unwrap_or_default())
        .filter(|e| e["uid"]["type"] == "Prefect::User")
        .max_by_key(|e| e["tags"].as_object().map_or(0, |t| t.len()))
        .expect("a user")
}

/// `template` as user `i`, with workspace `ws` set to `role`.
fn user(template: &Value, i: usize, ws: usize, role: &str) -> (String, Value) {
    let mut u = template.clone();
    let id = format!("bench-u{i}");
    u["uid"]["id"] = json!(id);
    u["tags"][format!("org0-ws{ws}")] = json!({"__entity": {"type": "Prefect::Role", "id": role}});
    (format!("Prefect::User::\"{id}\""), u)
}

fn set_tag_commit(template: &Value, i: usize, n: usize) -> Commit {
    let role = if n.is_multiple_of(2) {
        "developer"
    } else {
        "viewer"
    };
    let ws = n % 300;
    let (uid, entity) = user(template, i, ws, role);
    Commit {
        actor: "bench".into(),
        ops: json!([{"op": "set_tag", "uid": uid, "tag": format!("org0-ws{ws}"),
                     "value": {"__entity": {"type": "Prefect::Role", "id": role}}}]),
        upserts: vec![(uid, entity)],
        deletes: vec![],
        tags: vec![],
    }
}

/// A set_tag write: user `i` (one per writer), its `n`-th change.
struct SetTag {
    user: usize,
    n: usize,
}

/// Builds each write's whole user entity from a template (as an apply step
/// that edits one entity does) and tracks the revision.
struct BenchApply {
    template: Arc<Value>,
    revision: u64,
    /// Groups committed.
    groups: Arc<AtomicU64>,
}

impl Apply for BenchApply {
    type Request = SetTag;
    type Rejection = String;
    fn revision(&self) -> u64 {
        self.revision
    }
    fn apply(&mut self, r: &SetTag, _revision: u64) -> Result<Commit, String> {
        Ok(set_tag_commit(&self.template, r.user, r.n))
    }
    fn publish(&mut self, revisions: &[u64]) {
        self.revision = *revisions.last().expect("a revision");
        self.groups.fetch_add(1, Ordering::Relaxed);
    }
    fn rollback(&mut self) {}
    // Its state is only the revision.
    fn catch_up(&mut self, delta: orgwarden::facts::store::Delta) -> Result<(), String> {
        self.revision = delta.head;
        Ok(())
    }
    fn rebootstrap(
        &mut self,
        head: u64,
        _: Vec<orgwarden::facts::store::StoredEntity>,
    ) -> Result<(), String> {
        self.revision = head;
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let template = Arc::new(big_user());
    let bytes = template.to_string().len();
    let tags = template["tags"].as_object().map_or(0, |t| t.len());
    eprintln!("user entity: {tags} tags, {bytes} bytes of JSON");

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));

    let dir = tempfile::tempdir().expect("tempdir");
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("sqlite:{}", dir.path().join("one.db").display());
    let store = one.block_on(Store::open(&url)).expect("store");
    let mut head = one.block_on(store.head()).expect("head");
    let mut n = 0usize;
    group.bench_function("commit_one", |b| {
        b.iter(|| {
            n += 1;
            let c = set_tag_commit(&template, 0, n);
            let revs = one
                .block_on(store.commit_group(head, std::slice::from_ref(&c)))
                .expect("commit");
            head = black_box(revs[0]);
        })
    });

    let many = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("sqlite:{}", dir.path().join("group.db").display());
    let store = many.block_on(Store::open(&url)).expect("store");
    let revision = many.block_on(store.head()).expect("head");
    let groups = Arc::new(AtomicU64::new(0));
    let (writer, _task) = {
        let _guard = many.enter();
        Writer::spawn(
            store.clone(),
            BenchApply {
                template: template.clone(),
                revision,
                groups: groups.clone(),
            },
            WriterOptions::default(),
        )
    };
    let mut groups_seen = (0u64, 0u64);
    group.bench_function("group_commit_16_writers", |b| {
        b.iter_custom(|iters| {
            let before = many.block_on(store.head()).expect("head");
            let started = Instant::now();
            many.block_on(async {
                let mut tasks = Vec::new();
                for w in 0..WRITERS {
                    let writer = writer.clone();
                    let count =
                        iters as usize / WRITERS + usize::from(w < iters as usize % WRITERS);
                    tasks.push(tokio::spawn(async move {
                        for n in 0..count {
                            writer
                                .write(SetTag { user: w, n })
                                .await
                                .expect("acknowledged");
                        }
                    }));
                }
                for t in tasks {
                    t.await.expect("writer task");
                }
            });
            let elapsed = started.elapsed();
            let after = many.block_on(store.head()).expect("head");
            assert_eq!(after - before, iters, "one revision per write");
            groups_seen.0 += iters;
            groups_seen.1 += elapsed.as_micros() as u64;
            elapsed
        })
    });
    group.finish();
    if groups_seen.1 > 0 {
        let commits = groups.load(Ordering::Relaxed).max(1);
        eprintln!(
            "group commit: {} writes in {:.2} s overall = {:.0} writes/s, {:.1} writes per group",
            groups_seen.0,
            groups_seen.1 as f64 / 1e6,
            groups_seen.0 as f64 / (groups_seen.1 as f64 / 1e6),
            groups_seen.0 as f64 / commits as f64
        );
    }
    drop(writer);
}

criterion_group!(benches, bench);
criterion_main!(benches);

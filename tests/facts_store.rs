//! The durable fact store on a real SQLite file: revisions, conflicts,
//! the change log and its retention, migrations, the group-commit writer
//! with a real (small) validator, `facts import` / `facts export` round
//! trips on the shipped model, and durability under `kill -9`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cedar_policy::EntityUid;
use orgwarden::Snapshot;
use orgwarden::engine;
use orgwarden::facts::store::{Commit, Delta, SCHEMA_VERSION, Store, StoreError, StoredEntity};
use orgwarden::facts::transfer;
use orgwarden::facts::writer::{Apply, WriteError, Writer, WriterOptions};
use orgwarden::load::{self, Paths};
use serde_json::{Value, json};

fn url(dir: &Path, name: &str) -> String {
    format!("sqlite:{}", dir.join(name).display())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One thread: a spawned task runs only when the test awaits.
fn single() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn entity(ty: &str, id: &str, parents: &[(&str, &str)]) -> (String, Value) {
    let uid = format!("Prefect::{ty}::\"{id}\"");
    let parents: Vec<Value> = parents
        .iter()
        .map(|(t, i)| json!({"type": format!("Prefect::{t}"), "id": i}))
        .collect();
    (
        uid,
        json!({"uid": {"type": format!("Prefect::{ty}"), "id": id}, "attrs": {}, "parents": parents}),
    )
}

fn commit(actor: &str, upserts: Vec<(String, Value)>, deletes: Vec<String>) -> Commit {
    let ops: Vec<Value> = upserts
        .iter()
        .map(|(_, e)| json!({"op": "upsert", "entity": e}))
        .chain(deletes.iter().map(|u| json!({"op": "delete", "uid": u})))
        .collect();
    Commit {
        actor: actor.into(),
        ops: Value::Array(ops),
        upserts,
        deletes,
        tags: Vec::new(),
    }
}

#[test]
fn revisions_are_gap_free_and_a_stale_base_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(revisions_case(url(dir.path(), "facts.db")));
}

async fn revisions_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    assert_eq!(store.head().await.unwrap(), 0);
    assert!(store.is_empty().await.unwrap());

    let group = vec![
        commit("a", vec![entity("Organization", "acme", &[])], vec![]),
        commit(
            "b",
            vec![
                entity("User", "alice", &[("Organization", "acme")]),
                entity("User", "bob", &[]),
            ],
            vec![],
        ),
    ];
    assert_eq!(store.commit_group(0, &group).await.unwrap(), vec![1, 2]);
    let third = commit(
        "c",
        vec![entity("User", "carol", &[])],
        vec!["Prefect::User::\"bob\"".into()],
    );
    assert_eq!(
        store
            .commit_group(2, std::slice::from_ref(&third))
            .await
            .unwrap(),
        vec![3]
    );

    // A writer that read revision 2 loses, and nothing of its group lands.
    let stale = vec![commit("d", vec![entity("User", "dave", &[])], vec![])];
    match store.commit_group(2, &stale).await {
        Err(StoreError::Conflict { expected, actual }) => {
            assert_eq!((expected, actual), (2, 3));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 3);
    assert!(
        store
            .entity("Prefect::User::\"dave\"")
            .await
            .unwrap()
            .is_none()
    );

    let (head, entities) = store.snapshot().await.unwrap();
    assert_eq!(head, 3);
    let uids: Vec<(&str, u64)> = entities
        .iter()
        .map(|e| (e.uid.as_str(), e.revision))
        .collect();
    assert_eq!(
        uids,
        vec![
            ("Prefect::Organization::\"acme\"", 1),
            ("Prefect::User::\"alice\"", 2),
            ("Prefect::User::\"carol\"", 3),
        ]
    );
    let alice = store
        .entity("Prefect::User::\"alice\"")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        alice.json,
        entity("User", "alice", &[("Organization", "acme")]).1
    );

    let log = store.changes_since(0, 100).await.unwrap();
    let revs: Vec<u64> = log.iter().map(|c| c.revision).collect();
    assert_eq!(revs, vec![1, 2, 3]);
    assert_eq!(log[1].actor, "b");
    assert_eq!(log[2].deleted, vec!["Prefect::User::\"bob\"".to_string()]);
    assert_eq!(
        log[2].upserted,
        vec!["Prefect::User::\"carol\"".to_string()]
    );
    assert_eq!(log[2].ops, third.ops);
    // RFC 3339, UTC: `2026-11-29T10:26:33.123456Z`.
    let at = &log[0].at;
    assert!(
        at.len() >= 20 && &at[4..5] == "-" && &at[10..11] == "T" && at.ends_with('Z'),
        "{at}"
    );
    assert_eq!(
        store.changes_since(1, 1).await.unwrap()[0].revision,
        2,
        "limit and order"
    );

    // A commit naming a uid twice is refused whole.
    let twice = commit(
        "e",
        vec![entity("User", "erin", &[])],
        vec!["Prefect::User::\"erin\"".into()],
    );
    assert!(matches!(
        store.commit_group(3, &[twice]).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.head().await.unwrap(), 3);

    // One group writing the same uids several times: each row ends as the
    // group's last write left it, with that write's revision.
    let group = vec![
        commit(
            "f",
            vec![entity("User", "x", &[]), entity("User", "y", &[])],
            vec![],
        ),
        commit(
            "g",
            vec![entity("User", "y", &[("Organization", "acme")])],
            vec!["Prefect::User::\"x\"".into()],
        ),
        commit(
            "h",
            vec![entity("User", "x", &[("Organization", "acme")])],
            vec!["Prefect::User::\"carol\"".into()],
        ),
        commit("i", vec![], vec!["Prefect::User::\"y\"".into()]),
    ];
    assert_eq!(
        store.commit_group(3, &group).await.unwrap(),
        vec![4, 5, 6, 7]
    );
    let x = store.entity("Prefect::User::\"x\"").await.unwrap().unwrap();
    assert_eq!(x.revision, 6);
    assert_eq!(x.json, entity("User", "x", &[("Organization", "acme")]).1);
    assert!(
        store
            .entity("Prefect::User::\"y\"")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .entity("Prefect::User::\"carol\"")
            .await
            .unwrap()
            .is_none()
    );
    let log = store.changes_since(3, 10).await.unwrap();
    let actors: Vec<&str> = log.iter().map(|c| c.actor.as_str()).collect();
    assert_eq!(actors, vec!["f", "g", "h", "i"]);
    assert_eq!(log[1].deleted, vec!["Prefect::User::\"x\"".to_string()]);
    assert_eq!(log[0].upserted.len(), 2);
    assert!(
        log.iter().all(|c| c.at == log[0].at),
        "one group, one commit time"
    );
}

#[test]
fn pruned_changes_send_readers_back_to_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(pruning_case(url(dir.path(), "facts.db")));
}

async fn pruning_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    for i in 0..5u64 {
        let c = commit("w", vec![entity("User", &format!("u{i}"), &[])], vec![]);
        store.commit_group(i, &[c]).await.unwrap();
    }
    assert_eq!(store.oldest_change().await.unwrap(), Some(1));
    assert_eq!(store.prune_changes(3).await.unwrap(), 3);
    assert_eq!(store.oldest_change().await.unwrap(), Some(4));
    assert_eq!(store.pruned_through().await.unwrap(), 3);
    // Pruning less than what is already gone does nothing.
    assert_eq!(store.prune_changes(2).await.unwrap(), 0);
    match store.changes_since(2, 10).await {
        Err(StoreError::Pruned {
            since,
            pruned_through,
        }) => assert_eq!((since, pruned_through), (2, 3)),
        other => panic!("expected Pruned, got {other:?}"),
    }
    let rest: Vec<u64> = store
        .changes_since(3, 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect();
    assert_eq!(rest, vec![4, 5]);
    // Beyond the head: everything goes, and a reader at the head is fine.
    assert_eq!(store.prune_changes(99).await.unwrap(), 2);
    assert_eq!(store.oldest_change().await.unwrap(), None);
    assert_eq!(store.pruned_through().await.unwrap(), 5);
    assert!(store.changes_since(5, 10).await.unwrap().is_empty());
    assert!(store.changes_since(4, 10).await.is_err());
    // The entities are untouched by retention.
    assert_eq!(store.snapshot().await.unwrap().1.len(), 5);
}

#[test]
fn migrations_are_versioned_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let u = url(dir.path(), "facts.db");
        // No file yet: `connect` creates nothing.
        assert!(matches!(
            Store::connect(&u).await,
            Err(StoreError::Missing(_))
        ));
        assert!(!dir.path().join("facts.db").exists());
        migrations_case(u.clone()).await;
        // WAL mode (kept in the file).
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&sqlx::SqlitePool::connect(&u).await.unwrap())
            .await
            .unwrap();
        assert_eq!(mode.to_lowercase(), "wal");
        for bad in ["mysql://x", "sqlite:", "sqlite::memory:"] {
            assert!(
                matches!(Store::open(bad).await, Err(StoreError::Url(_))),
                "{bad}"
            );
        }
    });
}

async fn migrations_case(u: String) {
    // An empty database is unmigrated.
    let bare = Store::attach(&u).await.unwrap();
    assert_eq!(bare.schema_version().await.unwrap(), 0);
    match Store::connect(&u).await {
        Err(StoreError::NotMigrated { found: 0, known }) => assert_eq!(known, SCHEMA_VERSION),
        other => panic!("expected NotMigrated, got {other:?}"),
    }
    assert_eq!(bare.migrate().await.unwrap(), (0, SCHEMA_VERSION));
    assert_eq!(
        bare.migrate().await.unwrap(),
        (SCHEMA_VERSION, SCHEMA_VERSION)
    );
    let store = Store::connect(&u).await.unwrap();
    store
        .commit_group(0, &[commit("a", vec![entity("User", "a", &[])], vec![])])
        .await
        .unwrap();
    // Opening again migrates nothing and keeps the facts.
    let again = Store::open(&u).await.unwrap();
    assert_eq!(again.head().await.unwrap(), 1);

    // A newer orgwarden migrated this store: refused, and left alone.
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&u).await.unwrap();
    sqlx::query("UPDATE facts_schema SET version = version + 1")
        .execute(&raw)
        .await
        .unwrap();
    for result in [Store::open(&u).await, Store::connect(&u).await] {
        match result {
            Err(StoreError::NewerSchema { found, known }) => {
                assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected NewerSchema, got {other:?}"),
        }
    }
    let version: i64 = sqlx::query_scalar("SELECT version FROM facts_schema")
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(version as u64, SCHEMA_VERSION + 1);
    raw.close().await;
}

// ---------------------------------------------------------------------------
// The group-commit writer, with a small real validator.

/// A write: put an entity (its parents must exist, its uid must name a
/// type), delete one (it must exist and no entity may name it as a
/// parent), optionally only at a given revision.
#[derive(Debug, Clone)]
enum Req {
    Put {
        uid: String,
        parents: Vec<String>,
        if_revision: Option<u64>,
    },
    Delete {
        uid: String,
    },
    /// Accepted, but its commit names one uid twice: the store refuses
    /// the group it is in.
    Broken,
}

/// Entities by uid (value: parents). The published map is what readers
/// see; `staged` holds this group's accepted changes until publish.
#[derive(Default)]
struct MapState {
    revision: u64,
    published: HashMap<String, Vec<String>>,
    staged: Vec<(String, Option<Vec<String>>)>,
    staged_view: HashMap<String, Option<Vec<String>>>,
    published_revisions: Vec<u64>,
    rollbacks: usize,
    /// `(from, head)` of every catch-up with another writer's revisions.
    caught_up: Vec<(u64, u64)>,
    /// Stage a group on top of the one committing ([`Apply::seal`]).
    pipelined: bool,
    /// How many of `staged` each sealed group holds, oldest first.
    bounds: std::collections::VecDeque<usize>,
    /// Requests validated while an earlier group was committing.
    staged_beside: usize,
}

impl MapState {
    fn get(&self, uid: &str) -> Option<&Vec<String>> {
        match self.staged_view.get(uid) {
            Some(v) => v.as_ref(),
            None => self.published.get(uid),
        }
    }

    fn working(&self) -> HashMap<String, Vec<String>> {
        let mut m = self.published.clone();
        for (uid, v) in &self.staged {
            match v {
                Some(p) => m.insert(uid.clone(), p.clone()),
                None => m.remove(uid),
            };
        }
        m
    }
}

fn json_of(uid: &str, parents: &[String]) -> Value {
    let (ty, id) = uid.rsplit_once("::").unwrap();
    let parents: Vec<Value> = parents
        .iter()
        .map(|p| {
            let (t, i) = p.rsplit_once("::").unwrap();
            json!({"type": t, "id": i.trim_matches('"')})
        })
        .collect();
    json!({"uid": {"type": ty, "id": id.trim_matches('"')}, "attrs": {}, "parents": parents})
}

impl Apply for MapState {
    type Request = Req;
    type Rejection = String;

    fn revision(&self) -> u64 {
        self.revision
    }

    fn apply(&mut self, req: &Req, revision: u64) -> Result<Commit, String> {
        if !self.bounds.is_empty() {
            self.staged_beside += 1;
        }
        let (uid, value) = match req {
            Req::Put {
                uid,
                parents,
                if_revision,
            } => {
                if let Some(r) = if_revision
                    && *r != revision - 1
                {
                    return Err(format!("if_revision {r}: the store is at {}", revision - 1));
                }
                if !uid.contains("::") {
                    return Err(format!("{uid}: a uid must have a type"));
                }
                if let Some(p) = parents.iter().find(|p| self.get(p).is_none()) {
                    return Err(format!("{uid}: parent {p} does not exist"));
                }
                (uid.clone(), Some(parents.clone()))
            }
            Req::Broken => {
                return Ok(commit(
                    "broken",
                    vec![entity("User", "twice", &[])],
                    vec!["Prefect::User::\"twice\"".into()],
                ));
            }
            Req::Delete { uid } => {
                if self.get(uid).is_none() {
                    return Err(format!("{uid} does not exist"));
                }
                let working = self.working();
                if let Some((child, _)) = working.iter().find(|(_, ps)| ps.contains(uid)) {
                    return Err(format!("{uid} is a parent of {child}"));
                }
                (uid.clone(), None)
            }
        };
        let commit = match &value {
            Some(parents) => commit(
                &format!("test-{revision}"),
                vec![(uid.clone(), json_of(&uid, parents))],
                vec![],
            ),
            None => commit(&format!("test-{revision}"), vec![], vec![uid.clone()]),
        };
        self.staged.push((uid.clone(), value.clone()));
        self.staged_view.insert(uid, value);
        Ok(commit)
    }

    fn seal(&mut self) -> bool {
        if !self.pipelined {
            return false;
        }
        let sealed: usize = self.bounds.iter().sum();
        self.bounds.push_back(self.staged.len() - sealed);
        true
    }

    fn publish(&mut self, revisions: &[u64]) {
        let n = self.bounds.pop_front().unwrap_or(self.staged.len());
        for (uid, v) in self.staged.drain(..n) {
            match v {
                Some(p) => self.published.insert(uid, p),
                None => self.published.remove(&uid),
            };
        }
        self.staged_view = self.staged.iter().cloned().collect();
        self.revision = *revisions.last().unwrap();
        self.published_revisions.extend_from_slice(revisions);
    }

    fn rollback(&mut self) {
        self.staged.clear();
        self.staged_view.clear();
        self.bounds.clear();
        self.rollbacks += 1;
    }

    fn catch_up(&mut self, delta: Delta) -> Result<(), String> {
        for e in &delta.rows {
            self.published.insert(e.uid.clone(), parents_of(&e.json));
        }
        for uid in &delta.deleted {
            self.published.remove(uid);
        }
        self.revision = delta.head;
        self.caught_up.push((delta.from, delta.head));
        Ok(())
    }

    fn rebootstrap(&mut self, head: u64, entities: Vec<StoredEntity>) -> Result<(), String> {
        self.published = entities
            .iter()
            .map(|e| (e.uid.clone(), parents_of(&e.json)))
            .collect();
        self.revision = head;
        Ok(())
    }
}

/// The parents of stored entity JSON, in the validator's form.
fn parents_of(json: &Value) -> Vec<String> {
    json["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}::\"{}\"",
                p["type"].as_str().unwrap(),
                p["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn put(uid: &str, parents: &[&str]) -> Req {
    Req::Put {
        uid: uid.into(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
        if_revision: None,
    }
}

/// The store's entities as `uid -> parents` (uids in the validator's form).
async fn stored_map(store: &Store) -> HashMap<String, Vec<String>> {
    let (_, entities) = store.snapshot().await.unwrap();
    entities
        .into_iter()
        .map(|e| {
            let parents = e.json["parents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{}::\"{}\"",
                        p["type"].as_str().unwrap(),
                        p["id"].as_str().unwrap()
                    )
                })
                .collect();
            (e.uid, parents)
        })
        .collect()
}

#[test]
fn queued_writes_are_validated_in_order_and_committed_together() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(writer_case(url(dir.path(), "facts.db")));
}

async fn writer_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    let (writer, task) =
        Writer::spawn(store.clone(), MapState::default(), WriterOptions::default());

    // Many concurrent writers: each puts an org, then a user under it,
    // then tries a user under an org that nobody creates.
    let mut handles = Vec::new();
    for w in 0..16 {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let org = format!("Prefect::Organization::\"o{w}\"");
            let a = writer.write(put(&org, &[])).await.unwrap();
            let user = format!("Prefect::User::\"u{w}\"");
            let b = writer.write(put(&user, &[&org])).await.unwrap();
            assert!(b > a);
            match writer
                .write(put(
                    &format!("Prefect::User::\"x{w}\""),
                    &["Prefect::Organization::\"nowhere\""],
                ))
                .await
            {
                Err(WriteError::Rejected(why)) => assert!(why.contains("does not exist")),
                other => panic!("expected a rejection, got {other:?}"),
            }
            match writer.write(put("untyped", &[])).await {
                Err(WriteError::Rejected(why)) => assert!(why.contains("must have a type")),
                other => panic!("expected a rejection, got {other:?}"),
            }
            match writer.write(Req::Delete { uid: org.clone() }).await {
                Err(WriteError::Rejected(why)) => assert!(why.contains("is a parent of")),
                other => panic!("expected a rejection, got {other:?}"),
            }
            (a, b)
        }));
    }
    let mut revisions = Vec::new();
    for h in handles {
        let (a, b) = h.await.unwrap();
        revisions.extend([a, b]);
    }
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (1..=32).collect::<Vec<u64>>(),
        "one revision per accepted write"
    );

    // In one queue: a put, a put that depends on it, a delete of the
    // first (refused: the second names it), then optimistic writes.
    let (r1, r2, r3, r4, r5) = tokio::join!(
        writer.write(put("Prefect::Organization::\"g\"", &[])),
        writer.write(put(
            "Prefect::User::\"g1\"",
            &["Prefect::Organization::\"g\""]
        )),
        writer.write(Req::Delete {
            uid: "Prefect::Organization::\"g\"".into()
        }),
        writer.write(Req::Put {
            uid: "Prefect::User::\"stale\"".into(),
            parents: vec![],
            if_revision: Some(0),
        }),
        writer.write(Req::Delete {
            uid: "Prefect::User::\"g1\"".into()
        }),
    );
    let r1 = r1.unwrap();
    assert_eq!(r2.unwrap(), r1 + 1);
    assert!(matches!(r3, Err(WriteError::Rejected(_))));
    assert!(matches!(r4, Err(WriteError::Rejected(_))));
    let r5 = r5.unwrap();
    assert_eq!(r5, r1 + 2);
    let head = store.head().await.unwrap();
    assert_eq!(head, r5);
    let ok = writer
        .write(Req::Put {
            uid: "Prefect::User::\"fresh\"".into(),
            parents: vec![],
            if_revision: Some(head),
        })
        .await
        .unwrap();
    assert_eq!(ok, head + 1);

    drop(writer);
    let state = task.await.unwrap();
    assert_eq!(state.revision, ok);
    assert_eq!(state.published_revisions, (1..=ok).collect::<Vec<u64>>());
    assert_eq!(state.rollbacks, 0);
    // The published state is exactly what the store holds.
    assert_eq!(stored_map(&store).await, state.published);
    assert_eq!(store.changes_since(0, 1000).await.unwrap().len() as u64, ok);
}

#[test]
fn a_failed_commit_acknowledges_nothing_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    single().block_on(failed_commit_case(url(dir.path(), "facts.db")));
}

/// Runs on one thread: the writer task runs only when the test awaits, so
/// writes sent together queue up and form one group.
async fn failed_commit_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    let (writer, task) =
        Writer::spawn(store.clone(), MapState::default(), WriterOptions::default());
    assert_eq!(
        writer
            .write(put("Prefect::Organization::\"a\"", &[]))
            .await
            .unwrap(),
        1
    );

    // Another process writes revision 2 behind the writer's back: the
    // writer's next group first catches up with it under the write lock,
    // then validates against it (`b` may name `z` as a parent).
    let other = Store::open(&u).await.unwrap();
    other
        .commit_group(
            1,
            &[commit("other", vec![entity("User", "z", &[])], vec![])],
        )
        .await
        .unwrap();
    let b = writer
        .write(put("Prefect::User::\"b\"", &["Prefect::User::\"z\""]))
        .await
        .unwrap();
    assert_eq!(b, 3);

    // A group whose commit fails is rolled back whole: the rejection
    // before anything was staged stands; the accepted ones carry the
    // store's error.
    let (x, y, z) = tokio::join!(
        writer.write(put(
            "Prefect::User::\"nope\"",
            &["Prefect::Organization::\"missing\""]
        )),
        writer.write(put(
            "Prefect::User::\"e\"",
            &["Prefect::Organization::\"a\""]
        )),
        writer.write(Req::Broken),
    );
    assert!(matches!(x, Err(WriteError::Rejected(_))), "{x:?}");
    for r in [&y, &z] {
        match r {
            Err(WriteError::Store(e)) => {
                assert!(matches!(**e, StoreError::Invalid(_)), "{e}")
            }
            other => panic!("expected a store error, got {other:?}"),
        }
    }

    // The store goes away: the next group is acknowledged to nobody and
    // rolled back whole.
    other.close().await;
    store.close().await;
    let (x, y, z) = tokio::join!(
        writer.write(put(
            "Prefect::User::\"nope\"",
            &["Prefect::Organization::\"missing\""]
        )),
        writer.write(put(
            "Prefect::User::\"c\"",
            &["Prefect::Organization::\"a\""]
        )),
        writer.write(put("Prefect::User::\"d\"", &["Prefect::User::\"c\""])),
    );
    for r in [&x, &y, &z] {
        match r {
            Err(WriteError::Store(e)) => assert!(e.is_unreachable(), "{e}"),
            other => panic!("expected a store error, got {other:?}"),
        }
    }
    drop(writer);
    let state = task.await.unwrap();
    assert_eq!(state.rollbacks, 1);
    assert_eq!(state.caught_up, vec![(1, 2)]);
    assert_eq!(state.revision, 3);
    assert!(state.staged.is_empty());
    assert_eq!(
        state.published.len(),
        3,
        "nothing of the failed group is current"
    );
    let store = Store::open(&u).await.unwrap();
    assert_eq!(store.head().await.unwrap(), 3);
    for gone in ["c", "e", "twice"] {
        assert!(
            store
                .entity(&format!("Prefect::User::\"{gone}\""))
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[test]
fn pipelined_groups_publish_in_commit_order_and_a_failed_one_voids_the_next() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(pipelined_case(url(dir.path(), "many.db")));
    single().block_on(pipelined_failure_case(url(dir.path(), "failed.db")));
}

fn pipelined() -> MapState {
    MapState {
        pipelined: true,
        ..MapState::default()
    }
}

/// Small groups, so that most are staged while the one before commits.
fn small_groups() -> WriterOptions {
    WriterOptions {
        max_group: 2,
        ..WriterOptions::default()
    }
}

async fn pipelined_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    let (writer, task) = Writer::spawn(store.clone(), pipelined(), small_groups());
    let mut handles = Vec::new();
    for w in 0..16 {
        let writer = writer.clone();
        handles.push(tokio::spawn(async move {
            let org = format!("Prefect::Organization::\"o{w}\"");
            let a = writer.write(put(&org, &[])).await.unwrap();
            let user = format!("Prefect::User::\"u{w}\"");
            let b = writer.write(put(&user, &[&org])).await.unwrap();
            assert!(b > a);
            match writer.write(Req::Delete { uid: org.clone() }).await {
                Err(WriteError::Rejected(why)) => assert!(why.contains("is a parent of")),
                other => panic!("expected a rejection, got {other:?}"),
            }
            (a, b)
        }));
    }
    let mut revisions = Vec::new();
    for h in handles {
        let (a, b) = h.await.unwrap();
        revisions.extend([a, b]);
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=32).collect::<Vec<u64>>());
    drop(writer);
    let state = task.await.unwrap();
    // Published one group at a time, in commit order.
    assert_eq!(state.published_revisions, (1..=32).collect::<Vec<u64>>());
    assert_eq!(state.rollbacks, 0);
    assert!(state.bounds.is_empty() && state.staged.is_empty());
    assert_eq!(stored_map(&store).await, state.published);
}

/// Runs on one thread: a group's commit is pending when the writer first
/// polls it, so the next queued request is staged beside it.
async fn pipelined_failure_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    // A change row for revision 1 behind the writer's back: the commit of
    // revision 1 fails in the database, after its first statements.
    let raw = sqlx::AnyPool::connect(&u).await.unwrap();
    let bogus = "INSERT INTO changes (revision, at, actor, ops, upserted, deleted) \
                 VALUES (1, 'x', 'x', '[]', '[]', '[]')";
    sqlx::query(bogus).execute(&raw).await.unwrap();
    let one_at_a_time = WriterOptions {
        max_group: 1,
        ..WriterOptions::default()
    };
    let (writer, task) = Writer::spawn(store.clone(), pipelined(), one_at_a_time);
    // The first group creates `p` and fails; `q`, validated on top of it
    // while it committed, named `p`: it is validated again on the
    // published state, where `p` never existed.
    let (p, q) = tokio::join!(
        writer.write(put("Prefect::Organization::\"p\"", &[])),
        writer.write(put(
            "Prefect::User::\"q\"",
            &["Prefect::Organization::\"p\""]
        )),
    );
    match &p {
        Err(WriteError::Store(e)) => assert!(matches!(**e, StoreError::Db(_)), "{e}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    match &q {
        Err(WriteError::Rejected(why)) => assert!(why.contains("does not exist"), "{why}"),
        other => panic!("expected a rejection on the published state, got {other:?}"),
    }
    sqlx::query("DELETE FROM changes")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    // A group staged on top of a committed one is committed after it.
    let (a, c) = tokio::join!(
        writer.write(put("Prefect::Organization::\"a\"", &[])),
        writer.write(put(
            "Prefect::User::\"c\"",
            &["Prefect::Organization::\"a\""]
        )),
    );
    assert_eq!((a.unwrap(), c.unwrap()), (1, 2));
    drop(writer);
    let state = task.await.unwrap();
    // `q` beside `p` and `c` beside `a`, unless the runtime's cooperative
    // budget delayed a send until the commit before it was done.
    assert!(
        state.staged_beside >= 1,
        "nothing was staged beside a commit"
    );
    assert_eq!(state.rollbacks, 1);
    assert_eq!(state.published_revisions, vec![1, 2]);
    assert_eq!(store.head().await.unwrap(), 2);
    assert_eq!(stored_map(&store).await, state.published);
}

// ---------------------------------------------------------------------------
// Import and export.

/// Every request of the sample the schema allows between the entities of
/// `snap` (principals and resources of each action's types), alternating
/// an empty and a full context.
fn decisions(snap: &Snapshot, sample_of: &Snapshot) -> BTreeMap<String, engine::Outcome> {
    let mut out = BTreeMap::new();
    let mut actions: Vec<EntityUid> = snap.schema.actions().cloned().collect();
    actions.sort_by_key(|a| a.to_string());
    let mut uids: Vec<EntityUid> = sample_of.entities.iter().map(|e| e.uid()).collect();
    uids.sort_by_key(|u| u.to_string());
    for action in &actions {
        let (Some(pt), Some(rt)) = (
            snap.schema.principals_for_action(action),
            snap.schema.resources_for_action(action),
        ) else {
            continue;
        };
        let pt: HashSet<String> = pt.map(ToString::to_string).collect();
        let rt: HashSet<String> = rt.map(ToString::to_string).collect();
        let of = |t: &HashSet<String>| -> Vec<&EntityUid> {
            uids.iter()
                .filter(|u| t.contains(&u.type_name().to_string()))
                .collect()
        };
        for (i, p) in of(&pt).into_iter().enumerate() {
            for r in of(&rt) {
                let context = if i % 2 == 0 {
                    json!({})
                } else {
                    json!({"ip": "10.1.2.3", "time": "2026-01-01T00:00:00Z"})
                };
                let q = engine::build_query(snap, p.clone(), action.clone(), r.clone(), context)
                    .unwrap_or_else(|e| panic!("{p} {action} {r}: {e}"));
                out.insert(format!("{p} {action} {r} {i}"), engine::decide(snap, &q));
            }
        }
    }
    out
}

/// The loaded entities as JSON by uid (ancestors sorted).
fn entity_set(snap: &Snapshot) -> BTreeMap<String, Value> {
    snap.entities
        .iter()
        .map(|e| {
            (
                e.uid().to_string(),
                transfer::canonical(e.to_json_value().unwrap()),
            )
        })
        .collect()
}

fn with_entities(base: &Paths, entities: &Path) -> Paths {
    Paths {
        entities: entities.to_path_buf(),
        ..base.clone()
    }
}

#[test]
fn import_then_export_round_trips_the_shipped_entities() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = common::shipped();
    let u = url(dir.path(), "facts.db");
    let out = dir.path().join("export");
    rt().block_on(async {
        let entities = transfer::read_entities(&shipped).unwrap();
        let count = entities.len();
        let store = Store::open(&u).await.unwrap();
        let report = transfer::import(&store, entities, false).await.unwrap();
        assert_eq!(
            (report.revision, report.entities, report.deleted),
            (1, count, 0)
        );
        let log = store.changes_since(0, 10).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].actor, "import");
        assert_eq!(log[0].upserted.len(), count);
        // Canonical uids.
        assert!(
            store
                .entity("Prefect::User::\"alice\"")
                .await
                .unwrap()
                .is_some()
        );

        let exported = transfer::export(&store, &out).await.unwrap();
        assert_eq!(exported.revision, 1);
        assert_eq!(exported.entities, count);
        assert!(out.join("user.json").exists());
        // A second export into the same directory is refused.
        assert!(matches!(
            transfer::export(&store, &out).await,
            Err(transfer::TransferError::Output { .. })
        ));
    });
    // Each file holds one type, sorted by uid.
    let users: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("user.json")).unwrap()).unwrap();
    let ids: Vec<&str> = users
        .iter()
        .map(|u| u["uid"]["id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted);
    assert!(users.iter().all(|u| u["uid"]["type"] == "Prefect::User"));

    let original = load::load(&shipped).unwrap();
    let again = load::load(&with_entities(&shipped, &out))
        .unwrap_or_else(|d| panic!("the export must pass `check`:\n{d}"));
    assert_eq!(entity_set(&again), entity_set(&original));
    assert_eq!(again.entity_total, original.entity_total);
    let before = decisions(&original, &original);
    let after = decisions(&again, &original);
    assert!(before.len() > 1000, "a real sample: {}", before.len());
    assert!(before.values().any(|o| o.allowed()) && before.values().any(|o| !o.allowed()));
    assert_eq!(before, after);

    // `orgwarden check` on the export, through the binary.
    let check = Command::new(env!("CARGO_BIN_EXE_orgwarden"))
        .arg("check")
        .arg("--entities")
        .arg(&out)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn import_refuses_a_store_with_facts_unless_replacing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(import_replace_case(url(dir.path(), "facts.db")));
}

async fn import_replace_case(u: String) {
    let (_copy, paths) = common::copy_of_shipped();
    let store = Store::open(&u).await.unwrap();
    let entities = transfer::read_entities(&paths).unwrap();
    transfer::import(&store, entities.clone(), false)
        .await
        .unwrap();
    match transfer::import(&store, entities, false).await {
        Err(transfer::TransferError::NotEmpty { revision: 1, .. }) => {}
        other => panic!("expected NotEmpty, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), 1);

    // Drop globex from the files: the replacing import deletes exactly
    // its entities, in one revision.
    let raw: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(paths.entities.join("globex.json")).unwrap())
            .unwrap();
    let globex: HashSet<String> = raw
        .iter()
        .map(|item| {
            EntityUid::from_type_name_and_id(
                item["uid"]["type"].as_str().unwrap().parse().unwrap(),
                cedar_policy::EntityId::new(item["uid"]["id"].as_str().unwrap()),
            )
            .to_string()
        })
        .collect();
    assert!(!globex.is_empty());
    std::fs::remove_file(paths.entities.join("globex.json")).unwrap();
    let fewer = transfer::read_entities(&paths).unwrap();
    let report = transfer::import(&store, fewer, true).await.unwrap();
    assert_eq!((report.revision, report.deleted), (2, globex.len()));
    let change = &store.changes_since(1, 10).await.unwrap()[0];
    let deleted: HashSet<String> = change.deleted.iter().cloned().collect();
    assert_eq!(deleted, globex);
    for uid in &globex {
        assert!(store.entity(uid).await.unwrap().is_none());
    }
    let (head, left) = store.snapshot().await.unwrap();
    assert_eq!(head, 2);
    assert!(left.iter().all(|e| e.revision == 2));
}

#[test]
fn the_cli_imports_exports_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(dir.path(), "cli.db");
    let bin = env!("CARGO_BIN_EXE_orgwarden");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .current_dir(common::root())
            .output()
            .unwrap()
    };
    let migrate = run(&["facts", "migrate", &u]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(
        String::from_utf8_lossy(&migrate.stdout)
            .contains(&format!("version {SCHEMA_VERSION} (was 0)"))
    );

    let import = run(&["facts", "import", "entities", "--into", &u]);
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    assert!(String::from_utf8_lossy(&import.stdout).contains("at revision 1"));
    let again = run(&["facts", "import", "entities", "--into", &u]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));
    let replace = run(&["facts", "import", "entities", "--into", &u, "--replace"]);
    assert!(
        replace.status.success(),
        "{}",
        String::from_utf8_lossy(&replace.stderr)
    );
    assert!(String::from_utf8_lossy(&replace.stdout).contains("at revision 2 (0 deleted)"));

    // Invalid entity files: the loader's diagnostics, nothing written.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("x.json"),
        r#"[{"uid": {"type": "Prefect::User", "id": "x"}, "attrs": {"email": 3}, "parents": []}]"#,
    )
    .unwrap();
    let rejected = run(&[
        "facts",
        "import",
        bad.to_str().unwrap(),
        "--into",
        &u,
        "--replace",
    ]);
    assert!(!rejected.status.success());
    assert!(String::from_utf8_lossy(&rejected.stderr).contains("x.json"));

    let out = dir.path().join("out");
    let export = run(&["facts", "export", &u, "--out", out.to_str().unwrap()]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(String::from_utf8_lossy(&export.stdout).contains("at revision 2"));
    let check = run(&["check", "--entities", out.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let missing = run(&["facts", "export", &url(dir.path(), "nope.db"), "--out", "x"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no fact store"));
    assert!(!dir.path().join("nope.db").exists());
}

// ---------------------------------------------------------------------------
// Durability: kill -9 a committing process, reopen the file.

const CHILD_ENV: &str = "ORGWARDEN_STORE_CRASH_CHILD";

/// The child half of the crash test: commit through the group writer from
/// several tasks until killed, printing each acknowledged revision.
#[test]
fn crash_child() {
    let Ok(u) = std::env::var(CHILD_ENV) else {
        return; // only runs when the crash test spawns it
    };
    rt().block_on(async {
        let store = Store::open(&u).await.unwrap();
        let mut state = MapState {
            revision: store.head().await.unwrap(),
            ..MapState::default()
        };
        for e in stored_map(&store).await {
            state.published.insert(e.0, e.1);
        }
        let (writer, _task) = Writer::spawn(store, state, WriterOptions::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        for w in 0..8u64 {
            let writer = writer.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0u64.. {
                    let org = format!("Prefect::Organization::\"c{w}-{}\"", i % 50);
                    let req = if i % 3 == 2 {
                        Req::Delete { uid: org }
                    } else {
                        put(&org, &[])
                    };
                    if let Ok(r) = writer.write(req).await {
                        let _ = tx.send(r);
                    }
                }
            });
        }
        use std::io::Write;
        let mut stdout = std::io::stdout();
        while let Some(r) = rx.recv().await {
            writeln!(stdout, "ack {r}").unwrap();
            stdout.flush().unwrap();
        }
    });
}

#[test]
fn kill_9_loses_no_acknowledged_revision() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(dir.path(), "crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = orgwarden::world::Rng(0x5eed ^ std::process::id() as u64);
    let mut acked_max = 0u64;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &u)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read acknowledgements on a thread; kill after a random number.
        let target = 50 + rng.below(400) as u64;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(r) = line.strip_prefix("ack ") {
                    acked.push(r.parse::<u64>().unwrap());
                    if acked.len() as u64 == target {
                        let _ = tx.send(());
                    }
                }
            }
            acked
        });
        let _ = rx.recv_timeout(Duration::from_secs(120));
        // A random moment after that: mid-commit, mid-fsync, between groups.
        std::thread::sleep(Duration::from_micros(rng.below(3000) as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: the child acknowledged nothing"
        );
        let max = *acked.iter().max().unwrap();
        assert!(max > acked_max);
        acked_max = max;

        rt().block_on(async {
            let store = Store::open(&u).await.unwrap();
            let head = store.head().await.unwrap();
            assert!(
                head >= max,
                "round {round}: acknowledged {max}, store at {head}"
            );
            eprintln!(
                "round {round}: {} acknowledged (highest {max}), store at {head}",
                acked.len()
            );
            let log = store.changes_since(0, usize::MAX).await.unwrap();
            let revs: Vec<u64> = log.iter().map(|c| c.revision).collect();
            assert_eq!(revs, (1..=head).collect::<Vec<u64>>(), "gap-free log");
            for r in &acked {
                assert!(revs.contains(r));
            }
            // Replaying the log gives the stored entities: no change row
            // without its entity rows, no entity row without its change.
            let mut replay: HashMap<String, u64> = HashMap::new();
            for c in &log {
                for u in &c.upserted {
                    replay.insert(u.clone(), c.revision);
                }
                for u in &c.deleted {
                    replay.remove(u);
                }
            }
            let (snap_head, entities) = store.snapshot().await.unwrap();
            assert_eq!(snap_head, head);
            let stored: HashMap<String, u64> =
                entities.into_iter().map(|e| (e.uid, e.revision)).collect();
            assert_eq!(stored, replay, "round {round}");
            store.close().await;
        });
    }
}

// ---------------------------------------------------------------------------
// The same semantics on PostgreSQL: a private cluster in a temp directory.

#[test]
fn postgres_has_the_same_semantics() {
    let Some(pg) = common::pg::PgCluster::start() else {
        return;
    };
    single().block_on(async {
        revisions_case(pg.database("revisions").await).await;
        pruning_case(pg.database("pruning").await).await;
        migrations_case(pg.database("migrations").await).await;
        writer_case(pg.database("writer").await).await;
        failed_commit_case(pg.database("failed").await).await;
        import_replace_case(pg.database("import").await).await;
        tag_rows_case(pg.database("tags").await).await;

        // Two writers racing on one base: exactly one wins, the other
        // conflicts, and the revisions stay gap-free.
        let u = pg.database("race").await;
        let a = Store::open(&u).await.unwrap();
        let b = Store::open(&u).await.unwrap();
        for round in 0..20u64 {
            let ca = commit("a", vec![entity("User", &format!("a{round}"), &[])], vec![]);
            let cb = commit("b", vec![entity("User", &format!("b{round}"), &[])], vec![]);
            let base = a.head().await.unwrap();
            let (ra, rb) = tokio::join!(
                a.commit_group(base, std::slice::from_ref(&ca)),
                b.commit_group(base, std::slice::from_ref(&cb))
            );
            assert!(ra.is_ok() != rb.is_ok(), "round {round}: {ra:?} {rb:?}");
            let lost = if ra.is_ok() { rb } else { ra };
            assert!(matches!(lost, Err(StoreError::Conflict { .. })));
        }
        let revs: Vec<u64> = a
            .changes_since(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|c| c.revision)
            .collect();
        assert_eq!(revs, (1..=20).collect::<Vec<u64>>());
        assert_eq!(a.snapshot().await.unwrap().1.len(), 20);
    });
}

#[test]
fn tags_written_one_at_a_time_read_back_in_whole_entities() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(tag_rows_case(url(dir.path(), "facts.db")));
}

async fn tag_rows_case(u: String) {
    let store = Store::open(&u).await.unwrap();
    let role = |id: &str| json!({"__entity": {"type": "Prefect::Role", "id": id}});
    let (alice, mut alice_json) = entity("User", "alice", &[("Organization", "acme")]);
    alice_json["tags"] = json!({"ws1": role("viewer"), "ws2": role("owner")});
    store
        .commit_group(
            0,
            &[commit(
                "a",
                vec![(alice.clone(), alice_json.clone())],
                vec![],
            )],
        )
        .await
        .unwrap();
    let tag = |key: &str, value: Option<Value>| (alice.clone(), key.to_string(), value);
    let by_tag = |tags: Vec<(String, String, Option<Value>)>| Commit {
        actor: "t".into(),
        ops: json!([]),
        tags,
        ..Commit::default()
    };
    // One group: a tag set, then another set and a removal, then a tag
    // rewritten: each key's last write wins, at its own revision.
    store
        .commit_group(
            1,
            &[
                by_tag(vec![tag("ws3", Some(role("runner")))]),
                by_tag(vec![tag("ws1", Some(role("owner"))), tag("ws2", None)]),
                by_tag(vec![tag("ws3", Some(role("developer")))]),
            ],
        )
        .await
        .unwrap();
    let mut expected = alice_json.clone();
    expected["tags"] = json!({"ws1": role("owner"), "ws3": role("developer")});
    let got = store.entity(&alice).await.unwrap().unwrap();
    assert_eq!((got.json.clone(), got.revision), (expected.clone(), 4));
    let (_, all) = store.snapshot().await.unwrap();
    assert_eq!(
        (all[0].json.clone(), all[0].revision),
        (expected.clone(), 4)
    );
    let (_, texts) = store.snapshot_texts().await.unwrap();
    assert_eq!(
        (
            serde_json::from_str::<Value>(&texts[0].1).unwrap(),
            texts[0].2
        ),
        (expected.clone(), 4)
    );
    // The change log names the entity each tag write wrote.
    let log = store.changes_since(1, 10).await.unwrap();
    assert!(
        log.iter().all(|c| c.upserted == vec![alice.clone()]),
        "{log:?}"
    );
    // Written whole, its tag rows go; a tag write after it in the same
    // group stays.
    let mut whole = alice_json.clone();
    whole["tags"] = json!({"ws9": role("viewer")});
    store
        .commit_group(
            4,
            &[
                by_tag(vec![tag("ws5", Some(role("viewer")))]),
                commit("w", vec![(alice.clone(), whole.clone())], vec![]),
                by_tag(vec![tag("ws6", Some(role("worker")))]),
            ],
        )
        .await
        .unwrap();
    let mut expected = whole.clone();
    expected["tags"]["ws6"] = role("worker");
    let got = store.entity(&alice).await.unwrap().unwrap();
    assert_eq!((got.json, got.revision), (expected, 7));
    // A commit writing an entity whole and by tag is refused, changing
    // nothing.
    let mut both = commit("x", vec![(alice.clone(), whole.clone())], vec![]);
    both.tags = vec![tag("ws1", None)];
    assert!(store.commit_group(7, &[both]).await.is_err());
    assert_eq!(store.head().await.unwrap(), 7);
    // Deleted, nothing of it is left.
    store
        .commit_group(7, &[commit("d", vec![], vec![alice.clone()])])
        .await
        .unwrap();
    assert!(store.entity(&alice).await.unwrap().is_none());
    assert!(store.snapshot().await.unwrap().1.is_empty());
}

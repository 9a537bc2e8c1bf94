//! A fleet of real `orgwarden serve` processes sharing one PostgreSQL fact
//! store (a private cluster, `common::pg`): writes through any sidecar are
//! serialized and validated against the latest world, every sidecar follows
//! the change log to the same revision and decides like a fresh load of
//! the export, read-your-writes holds across sidecars, the store going away
//! (at start-up or in a write storm) loses no acknowledged write and
//! strands no sidecar, and a sidecar behind the pruned log re-bootstraps.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::binary::{serve_command, spawn_serve};
use common::http::Answer;
use common::pg::PgCluster;
use serde_json::{Value, json};

const TOKEN: &str = "fleet-facts-token";

/// One PostgreSQL cluster and three sidecars at a time: the tests take
/// turns (two cores).
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn orgwarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orgwarden"))
}

/// A blocking call (`common::http::call`), waiting at most 60 s.
fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> std::io::Result<Answer> {
    common::http::call(base, method, path, headers, body, Duration::from_secs(60))
}

fn auth() -> String {
    format!("Bearer {TOKEN}")
}

fn write(base: &str, body: &Value) -> Answer {
    call(
        base,
        "POST",
        "/v1/facts",
        &[("Authorization", &auth())],
        Some(body),
    )
    .unwrap()
}

fn get(base: &str, path: &str) -> Answer {
    call(base, "GET", path, &[("Authorization", &auth())], None).unwrap()
}

/// `action` on `workspace` for `principal`, at least at `min`.
fn decide(base: &str, principal: &str, action: &str, workspace: &str, min: Option<u64>) -> Answer {
    let min = min.map(|m| m.to_string());
    let headers: Vec<(&str, &str)> = min
        .as_deref()
        .map(|m| vec![("Orgwarden-Min-Revision", m)])
        .unwrap_or_default();
    let body = json!({
        "principal": principal,
        "action": action,
        "resource": format!("Workspace::\"{workspace}\""),
    });
    call(base, "POST", "/v1/is_authorized", &headers, Some(&body)).unwrap()
}

/// Run `orgwarden` with `args`; its stderr on failure.
fn run(args: &[&str], more: &[&Path]) -> Result<(), String> {
    let out = orgwarden().args(args).args(more).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Migrate the store at `url` and import the shipped entities (revision 1).
fn import(url: &str) {
    let root = common::root();
    run(&["facts", "migrate", url], &[]).unwrap();
    common::binary::import_facts(&root, url);
}

/// A running `orgwarden serve`, killed when dropped (also when a test
/// fails).
struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sidecar on the store at `url` (none: on the shipped entity files, or
/// on `entities` when given).
fn serve(url: Option<&str>, entities: Option<&Path>, extra: &[&str]) -> (Sidecar, String) {
    let root = common::root();
    let mut flags: Vec<&str> = vec![
        "--no-watch",
        "--consistency-wait-ms",
        "3000",
        "--facts-poll-ms",
        "200",
    ];
    if let Some(url) = url {
        flags.extend(["--facts", url, "--facts-token", TOKEN]);
    }
    flags.extend(extra);
    let entities = entities.map_or_else(|| root.join("entities"), Path::to_path_buf);
    let mut command = serve_command(
        &root.join("policies"),
        &root.join("schema"),
        &entities,
        &flags,
    );
    for var in [
        "ORGWARDEN_FACTS",
        "ORGWARDEN_FACTS_TOKEN",
        "ORGWARDEN_FACTS_POLL_MS",
        "ORGWARDEN_FACTS_RETAIN_CHANGES",
    ] {
        command.env_remove(var);
    }
    let (child, addr) = spawn_serve(command, Duration::from_secs(60));
    (Sidecar(child), format!("http://{addr}"))
}

/// Three sidecars on `url`.
fn fleet(url: &str, extra: &[&str]) -> Vec<(Sidecar, String)> {
    (0..3).map(|_| serve(Some(url), None, extra)).collect()
}

fn stop(sidecar: Sidecar) {
    drop(sidecar);
}

fn status(base: &str) -> Value {
    get(base, "/v1/status").body["facts"].clone()
}

/// Wait (at most a minute: a stuck sidecar fails the test) until `f`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The store's head, read by the library directly.
fn store_head(url: &str) -> u64 {
    runtime().block_on(async {
        let store = orgwarden::facts::store::Store::connect(url).await.unwrap();
        let head = store.head().await.unwrap();
        store.close().await;
        head
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every sidecar of `bases` at the store's head, confirmed current.
fn converged(url: &str, bases: &[String]) -> u64 {
    let head = store_head(url);
    for base in bases {
        eventually(&format!("{base} reaches revision {head}"), || {
            let s = status(base);
            s["revision"] == head && s["stale"] == false && s["lag_revisions"] == 0
        });
    }
    head
}

/// A small seeded generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const ROLES: &[&str] = &["viewer", "runner", "developer", "owner", "no-access"];
const WORKSPACES: &[&str] = &["acme-prod", "acme-staging", "acme-sandbox", "globex-main"];
const PEOPLE: &[&str] = &[
    "bob", "carol", "dana", "hank", "gina", "ivan", "f0", "f1", "f2", "f3",
];

fn role(id: &str) -> Value {
    json!({"__entity": {"type": "Prefect::Role", "id": id}})
}

/// One random operation: most are valid in some worlds and not in others
/// (a role in another organization's workspace, a member removed while
/// holding roles, a parent that does not exist), some are never valid.
fn random_op(rng: &mut Rng) -> Value {
    let who = format!("User::\"{}\"", rng.pick(PEOPLE));
    let ws = *rng.pick(WORKSPACES);
    match rng.below(10) {
        0..=2 => {
            json!({"op": "set_tag", "uid": who, "key": ws, "value": role(rng.pick::<&str>(ROLES))})
        }
        3..=4 => json!({"op": "remove_tag", "uid": who, "key": ws}),
        5 => {
            json!({"op": "add_parent", "uid": who, "parent": format!("Organization::\"{}\"", rng.pick(&["acme", "globex"]))})
        }
        6 => json!({"op": "remove_parent", "uid": who, "parent": "Organization::\"acme\""}),
        7 => {
            let id = *rng.pick(&["f0", "f1", "f2", "f3"]);
            json!({"op": "upsert", "entity": {
                "uid": {"type": "Prefect::User", "id": id},
                "attrs": {"email": format!("{id}@acme.example"), "apiKeyDigests": []},
                "parents": [{"type": "Prefect::Organization", "id": "acme"}],
            }})
        }
        8 => {
            json!({"op": "delete", "uid": format!("User::\"{}\"", rng.pick(&["f0", "f1", "f2", "f3"]))})
        }
        // Never valid: a role that is not an entity of the right type, a
        // service account made an org admin.
        _ => match rng.below(2) {
            0 => json!({"op": "set_tag", "uid": who, "key": ws, "value": "developer"}),
            _ => {
                json!({"op": "add_parent", "uid": "ServiceAccount::\"ci-bot\"", "parent": "OrgAdmins::\"acme-admins\""})
            }
        },
    }
}

/// Every principal against every workspace, for a few actions, in
/// batches: the decisions, in order.
fn sample(base: &str) -> Vec<String> {
    let principals: Vec<String> = PEOPLE
        .iter()
        .map(|p| format!("User::\"{p}\""))
        .chain(["ServiceAccount::\"ci-bot\"".to_string()])
        .collect();
    let mut requests = Vec::new();
    for p in &principals {
        for w in WORKSPACES {
            for a in [
                "see_flows",
                "run_deployments",
                "manage_flows",
                "see_workspace_users",
            ] {
                requests.push(
                    json!({"principal": p, "action": a, "resource": format!("Workspace::\"{w}\"")}),
                );
            }
        }
    }
    let mut out = Vec::new();
    for chunk in requests.chunks(100) {
        let answer = call(
            base,
            "POST",
            "/v1/is_authorized/batch",
            &[],
            Some(&json!({ "requests": chunk })),
        )
        .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        out.extend(
            answer.body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["decision"].as_str().unwrap().to_string()),
        );
    }
    out
}

#[test]
fn ten_thousand_random_batches_through_three_sidecars_converge_and_decide_like_the_export() {
    let _turn = turn();
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = runtime().block_on(pg.database("fleet"));
    import(&url);
    let sidecars = fleet(&url, &[]);
    let bases: Vec<String> = sidecars.iter().map(|(_, b)| b.clone()).collect();

    const BATCHES: usize = 10_000;
    const CLIENTS: usize = 6;
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let refused: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (bases, next, acked, refused) =
                (bases.clone(), next.clone(), acked.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((c as u64 + 1) * 0x1234_5678));
                while next.fetch_add(1, Ordering::SeqCst) < BATCHES {
                    let base = rng.pick(&bases);
                    let ops: Vec<Value> =
                        (0..1 + rng.below(3)).map(|_| random_op(&mut rng)).collect();
                    let mut body = json!({ "operations": ops });
                    if rng.below(20) == 0 {
                        // A stale or current expectation: 409 or applied.
                        let seen = status(base)["revision"].as_u64().unwrap();
                        body["if_revision"] = json!(seen);
                    }
                    let a = write(base, &body);
                    match a.status {
                        200 => acked
                            .lock()
                            .unwrap()
                            .push(a.body["revision"].as_u64().unwrap()),
                        400 | 409 | 422 => {
                            *refused
                                .lock()
                                .unwrap()
                                .entry(a.code().to_string())
                                .or_default() += 1
                        }
                        s => panic!("{body} through {base}: {s} {}", a.body),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    eprintln!("{} acknowledged, refused: {refused:?}", acked.len());
    assert_eq!(acked.len() + refused.values().sum::<usize>(), BATCHES);
    assert!(acked.len() > 1000, "too few valid batches: {}", acked.len());
    assert!(
        refused.get("domain").copied().unwrap_or(0) > 100,
        "{refused:?}"
    );
    // Each acknowledged revision was given to one batch: the sidecars'
    // writes were serialized, none overwrote another's revision.
    let distinct: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(distinct.len(), acked.len());

    let head = converged(&url, &bases);
    assert_eq!(
        head,
        1 + acked.len() as u64,
        "every revision is an acknowledged batch"
    );

    // A fresh load of the export decides as every sidecar does.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    run(&["facts", "export", &url, "--out"], &[&out]).unwrap();
    let (file_child, file_base) = serve(None, Some(&out), &[]);
    let expected = sample(&file_base);
    assert!(expected.iter().any(|d| d == "Allow") && expected.iter().any(|d| d == "Deny"));
    for base in &bases {
        assert_eq!(sample(base), expected, "{base} decides unlike the export");
        let metrics = metrics_text(base);
        assert!(
            metrics.contains(&format!("orgwarden_facts_revision {head}")),
            "{metrics}"
        );
        assert!(metrics.contains(&format!("orgwarden_facts_store_revision {head}")));
        assert!(metrics.contains("orgwarden_facts_lag_revisions 0"));
        assert!(metrics.contains("orgwarden_facts_store_reachable 1"));
    }
    stop(file_child);
    for (child, _) in sidecars {
        stop(child);
    }
}

/// `/metrics` as text.
fn metrics_text(base: &str) -> String {
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_write_through_one_sidecar_is_read_through_another_at_its_revision() {
    let _turn = turn();
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = runtime().block_on(pg.database("ryw"));
    import(&url);
    let sidecars = fleet(&url, &[]);
    let bases: Vec<String> = sidecars.iter().map(|(_, b)| b.clone()).collect();
    for i in 0..150 {
        let (a, b) = (&bases[i % 3], &bases[(i + 1) % 3]);
        let grant = i % 2 == 0;
        let op = if grant {
            json!({"op": "set_tag", "uid": "User::\"carol\"", "key": "acme-prod", "value": role("developer")})
        } else {
            json!({"op": "remove_tag", "uid": "User::\"carol\"", "key": "acme-prod"})
        };
        let w = write(a, &json!({ "operations": [op] }));
        assert_eq!(w.status, 200, "{}", w.body);
        let rev = w.body["revision"].as_u64().unwrap();
        let d = decide(
            b,
            "User::\"carol\"",
            "run_deployments",
            "acme-prod",
            Some(rev),
        );
        assert_eq!(d.status, 200, "round {i}: {}", d.body);
        assert!(d.revision() >= rev);
        let want = if grant { "Allow" } else { "Deny" };
        assert_eq!(
            d.body["decision"], want,
            "round {i}: written through {a} at {rev}, read through {b}"
        );
    }
    // A minimum from the future: 503 stale_facts after the wait.
    let future = store_head(&url) + 1000;
    let d = call(
        &bases[0],
        "POST",
        "/v1/is_authorized",
        &[("Orgwarden-Min-Revision", &future.to_string())],
        Some(&json!({"principal": "User::\"carol\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""})),
    )
    .unwrap();
    assert_eq!(d.status, 503);
    assert_eq!(d.code(), "stale_facts");
    for (child, _) in sidecars {
        stop(child);
    }
}

/// A new member of acme, `id`, as an upsert.
fn new_member(id: &str) -> Value {
    json!({"operations": [{"op": "upsert", "entity": {
        "uid": {"type": "Prefect::User", "id": id},
        "attrs": {"email": format!("{id}@acme.example"), "apiKeyDigests": []},
        "parents": [{"type": "Prefect::Organization", "id": "acme"}],
    }}]})
}

#[test]
fn postgres_restarted_in_a_write_storm_loses_no_acknowledged_write() {
    let _turn = turn();
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = runtime().block_on(pg.database("restart"));
    import(&url);
    let sidecars = fleet(&url, &[]);
    let bases: Vec<String> = sidecars.iter().map(|(_, b)| b.clone()).collect();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let unavailable = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (bases, acked, unavailable, done) = (
                bases.clone(),
                acked.clone(),
                unavailable.clone(),
                done.clone(),
            );
            std::thread::spawn(move || {
                for i in 0.. {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    let id = format!("storm-{w}-{i}");
                    let a = write(&bases[(w + i) % 3], &new_member(&id));
                    match a.status {
                        200 => acked
                            .lock()
                            .unwrap()
                            .push((id, a.body["revision"].as_u64().unwrap())),
                        503 => {
                            assert_eq!(a.code(), "facts_store_unavailable", "{}", a.body);
                            unavailable.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        s => panic!("{id}: {s} {}", a.body),
                    }
                }
            })
        })
        .collect();
    let acked_len = || acked.lock().unwrap().len();
    eventually("writes before the restart", || acked_len() >= 200);
    pg.stop_server();
    let before = acked.lock().unwrap().iter().map(|(_, r)| *r).max().unwrap();
    // While it is down: decisions go on at the last revision, stale;
    // writes fail with 503 and change nothing.
    eventually("a write refused while the store is down", || {
        unavailable.load(Ordering::SeqCst) > 0
    });
    for base in &bases {
        eventually("stale while the store is down", || {
            let r = get(base, "/readyz");
            r.status == 200
                && r.body["stale"] == true
                && r.body["facts"]["store_reachable"] == false
        });
        let d = decide(base, "User::\"bob\"", "run_deployments", "acme-prod", None);
        assert_eq!(d.status, 200, "{}", d.body);
        assert_eq!(d.body["decision"], "Allow");
        let stale = decide(
            base,
            "User::\"bob\"",
            "see_flows",
            "acme-prod",
            Some(before + 10_000),
        );
        assert_eq!(stale.status, 503);
        assert_eq!(stale.code(), "stale_facts");
    }
    let metrics = metrics_text(&bases[0]);
    assert!(metrics.contains("orgwarden_facts_stale 1"), "{metrics}");
    assert!(metrics.contains("orgwarden_facts_store_reachable 0"));
    pg.start_server();
    let resumed = acked_len();
    eventually("writes after the restart", || acked_len() >= resumed + 200);
    done.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let head = converged(&url, &bases);
    let acked = acked.lock().unwrap().clone();
    assert!(head >= acked.iter().map(|(_, r)| *r).max().unwrap());
    // Every acknowledged write is in the store at its revision.
    runtime().block_on(async {
        let store = orgwarden::facts::store::Store::connect(&url).await.unwrap();
        for (id, rev) in &acked {
            let e = store
                .entity(&format!("Prefect::User::\"{id}\""))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{id} (revision {rev}) is lost"));
            assert_eq!(e.revision, *rev);
        }
        store.close().await;
    });
    // And every sidecar sees them.
    for base in &bases {
        let (id, rev) = &acked[acked.len() - 1];
        let d = decide(
            base,
            &format!("User::\"{id}\""),
            "see_flows",
            "acme-prod",
            Some(*rev),
        );
        assert_eq!(d.status, 200);
    }
    for (child, _) in sidecars {
        stop(child);
    }
}

#[test]
fn a_sidecar_started_without_its_store_is_not_ready_until_the_store_answers() {
    let _turn = turn();
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = runtime().block_on(pg.database("startup"));
    // An unmigrated store still refuses to start, with the way out.
    let root = common::root();
    let out = serve_command(
        &root.join("policies"),
        &root.join("schema"),
        &root.join("entities"),
        &["--facts", &url],
    )
    .env_remove("ORGWARDEN_FACTS")
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("facts migrate"), "{stderr}");

    import(&url);
    pg.stop_server();
    let (child, base) = serve(Some(&url), None, &[]);
    let ready = get(&base, "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.body["status"], "not_ready");
    let d = decide(&base, "User::\"bob\"", "run_deployments", "acme-prod", None);
    assert_eq!(d.status, 503, "decisions fail closed: {}", d.body);
    assert_eq!(d.code(), "facts_store_unavailable");
    let w = write(&base, &new_member("early"));
    assert_eq!(w.status, 503);
    assert_eq!(w.code(), "facts_store_unavailable");

    pg.start_server();
    eventually("ready once the store answers", || {
        get(&base, "/readyz").status == 200
    });
    let d = decide(&base, "User::\"bob\"", "run_deployments", "acme-prod", None);
    assert_eq!(d.status, 200);
    assert_eq!(d.body["decision"], "Allow");
    assert_eq!(d.revision(), 1);
    assert_eq!(status(&base)["ready"], true);
    stop(child);
}

#[test]
fn a_sidecar_behind_the_pruned_change_log_reloads_a_snapshot() {
    let _turn = turn();
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = runtime().block_on(pg.database("retention"));
    import(&url);
    let (writer, a) = serve(Some(&url), None, &["--facts-retain-changes", "5"]);
    let (follower, b) = serve(Some(&url), None, &["--facts-retain-changes", "0"]);
    let frozen = status(&b)["revision"].as_u64().unwrap();
    // Freeze the follower; write well past the retention through the
    // writer, until the writer has pruned past the follower.
    let pid = follower.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut last = 0;
    for i in 0..30 {
        let w = write(&a, &new_member(&format!("late-{i}")));
        assert_eq!(w.status, 200, "{}", w.body);
        last = w.body["revision"].as_u64().unwrap();
    }
    runtime().block_on(async {
        let store = orgwarden::facts::store::Store::connect(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while store.pruned_through().await.unwrap() <= frozen {
            assert!(Instant::now() < deadline, "the writer never pruned");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(store.pruned_through().await.unwrap() <= last - 5);
        store.close().await;
    });
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually("the follower re-bootstraps", || {
        let s = status(&b);
        s["revision"] == last && s["rebootstraps"] == 1
    });
    let d = decide(
        &b,
        "User::\"late-29\"",
        "see_flows",
        "acme-prod",
        Some(last),
    );
    assert_eq!(d.status, 200);
    let gone = get(&b, "/v1/facts/changes?since=1");
    assert_eq!(gone.status, 410, "{}", gone.body);
    stop(writer);
    stop(follower);
}

#[test]
fn a_sidecar_whose_schema_refuses_the_stores_changes_keeps_its_last_good_facts_and_says_so() {
    let _turn = turn();
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = runtime().block_on(pg.database("diverged"));
    import(&url);
    // A's schema gives users an optional phone number; B's (the shipped
    // one) does not know it. The stored facts conform to both, so both
    // start; A's write of a phone number is one B cannot take.
    let spawn = |paths: &orgwarden::Paths, entities: &Path| {
        let mut command = serve_command(
            &paths.policies,
            &paths.schema,
            entities,
            &[
                "--no-watch",
                "--consistency-wait-ms",
                "500",
                "--facts-poll-ms",
                "200",
                "--facts",
                &url,
                "--facts-token",
                TOKEN,
            ],
        );
        command
            .env_remove("ORGWARDEN_FACTS")
            .env_remove("ORGWARDEN_FACTS_TOKEN");
        let (child, addr) = spawn_serve(command, Duration::from_secs(60));
        (Sidecar(child), format!("http://{addr}"))
    };
    let user_decl = "entity User in [Organization, OrgAdmins] = {\n    email: String,";
    let with_phone = |schema: &str| {
        schema.replace(
            user_decl,
            "entity User in [Organization, OrgAdmins] = {\n    email: String,\n    phone?: String,",
        )
    };
    let (a_dir, a_paths) = common::copy_of_shipped();
    let a_schema = a_paths.schema.join("prefect.cedarschema");
    let original = std::fs::read_to_string(&a_schema).unwrap();
    assert!(original.contains(user_decl));
    std::fs::write(&a_schema, with_phone(&original)).unwrap();
    let a_entities = a_dir.path().join("no-entities");
    std::fs::create_dir_all(&a_entities).unwrap();
    let (a_child, a) = spawn(&a_paths, &a_entities);
    // B decides on the store's facts with a schema of its own (and no
    // entity files: its facts come from the store).
    let (dir, paths) = common::copy_of_shipped();
    let empty = dir.path().join("no-entities");
    std::fs::create_dir_all(&empty).unwrap();
    let (b_child, b) = spawn(&paths, &empty);
    let generation = |base: &str| get(base, "/v1/status").body["generation"].as_u64().unwrap();
    let reload = |text: &str| {
        let before = generation(&b);
        std::fs::write(paths.schema.join("prefect.cedarschema"), text).unwrap();
        let pid = b_child.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
        eventually("B reloads its schema", || generation(&b) > before);
    };
    let mut member = new_member("with-phone");
    member["operations"][0]["entity"]["attrs"]["phone"] = json!("+1 555 0100");
    let w = write(&a, &member);
    assert_eq!(w.status, 200, "{}", w.body);
    let rev = w.body["revision"].as_u64().unwrap();
    eventually("B reports that it cannot apply the change", || {
        let s = status(&b);
        s["diverged"].is_string() && s["stale"] == true && s["store_revision"] == rev
    });
    let s = status(&b);
    assert_eq!(s["revision"], rev - 1, "B keeps its last good facts: {s}");
    assert_eq!(s["lag_revisions"], 1);
    assert_eq!(get(&b, "/readyz").body["stale"], true);
    let d = decide(
        &b,
        "User::\"with-phone\"",
        "see_flows",
        "acme-prod",
        Some(rev),
    );
    assert_eq!(d.status, 503);
    assert_eq!(d.code(), "stale_facts");
    let refused = write(&b, &new_member("via-b"));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "facts_diverged");
    assert!(metrics_text(&b).contains("orgwarden_facts_diverged 1"));

    // B's schema takes phone numbers too (the facts it holds conform, so
    // the reload is accepted): it catches up.
    reload(&with_phone(&original));
    eventually("B catches up once its schema takes the change", || {
        let s = status(&b);
        s["revision"] == rev && s["diverged"].is_null() && s["stale"] == false
    });
    let d = decide(
        &b,
        "User::\"with-phone\"",
        "see_flows",
        "acme-prod",
        Some(rev),
    );
    assert_eq!(d.status, 200, "{}", d.body);
    stop(a_child);
}

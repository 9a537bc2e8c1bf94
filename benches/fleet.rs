//! A fleet of three `orgwarden serve` sidecars (the release binary) on one
//! PostgreSQL fact store (a private cluster in a temporary directory, as
//! the tests start it: `tests/common/pg.rs`), over loopback.
//!
//! ```text
//! cargo bench --bench fleet                     # visibility and throughput
//! cargo bench --bench fleet -- --million        # also bootstrap at 1M memberships
//! cargo bench --bench fleet -- --writes 1000 --seconds 20 --clients 48
//! ```
//!
//! - *visibility*: `--writes` sequential single-operation writes (`set_tag`
//!   of one user's role in one workspace, alternating roles), each through
//!   the next sidecar in turn. Per write: the time from sending it to its
//!   acknowledgement, and to the moment all three sidecars have answered a
//!   decision asked with `Orgwarden-Min-Revision` = the acknowledged
//!   revision (each waits for its follower to reach it, and answers at
//!   once when it has).
//! - *throughput*: `--clients` concurrent clients (keep-alive), each bound
//!   to one sidecar in turn (of the first `--spread`, default all three),
//!   writing single-operation batches (`set_tag` on a user of its own) for
//!   `--seconds`: acknowledged writes per second.
//! - *bootstrap* (`--million`): `orgwarden gen` of a 1M-membership world
//!   (`ORGWARDEN_BENCH_WORLD` reuses one; one generated here is removed
//!   afterwards), `orgwarden facts import` into a
//!   new database, then a fourth sidecar started on it: the time from spawn
//!   to `/readyz` answering 200 (its facts loaded), and to its
//!   "listening" line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../tests/common/binary.rs"]
mod binary;
#[path = "../tests/common/pg.rs"]
mod pg;

const TOKEN: &str = "bench-token";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn orgwarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orgwarden"))
}

struct Options {
    writes: usize,
    seconds: u64,
    clients: usize,
    million: bool,
    fleet: bool,
    /// The throughput clients write through this many of the sidecars.
    spread: usize,
}

fn options() -> Options {
    let mut o = Options {
        writes: 500,
        seconds: 10,
        clients: 48,
        million: false,
        fleet: true,
        spread: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} takes a number"))
        };
        match a.as_str() {
            "--writes" => o.writes = num("--writes") as usize,
            "--seconds" => o.seconds = num("--seconds"),
            "--clients" => o.clients = num("--clients") as usize,
            "--spread" => o.spread = (num("--spread") as usize).clamp(1, 3),
            "--million" => o.million = true,
            "--only-million" => {
                o.million = true;
                o.fleet = false;
            }
            _ => {} // cargo bench's own (`--bench`)
        }
    }
    o
}

fn import(url: &str, entities: &Path) -> Duration {
    let root = root();
    let migrate = orgwarden()
        .args(["facts", "migrate", url])
        .output()
        .unwrap();
    assert!(migrate.status.success());
    let started = Instant::now();
    binary::import_entities(entities, &root, url);
    started.elapsed()
}

fn sidecar_command(url: &str, entities: &Path) -> Command {
    let root = root();
    let mut c = binary::serve_command(
        &root.join("policies"),
        &root.join("schema"),
        entities,
        &[
            "--no-watch",
            "--facts",
            url,
            "--facts-token",
            TOKEN,
            "--consistency-wait-ms",
            "4000",
        ],
    );
    for var in [
        "ORGWARDEN_FACTS",
        "ORGWARDEN_FACTS_TOKEN",
        "ORGWARDEN_FACTS_POLL_MS",
        "ORGWARDEN_FACTS_RETAIN_CHANGES",
    ] {
        c.env_remove(var);
    }
    c
}

fn sidecar(url: &str) -> (Child, String) {
    let (child, addr) = binary::spawn_serve(
        sidecar_command(url, &root().join("entities")),
        Duration::from_secs(120),
    );
    (child, format!("http://{addr}"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut xs: Vec<Duration>) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        xs.len(),
        ms(percentile(&xs, 0.5)),
        ms(percentile(&xs, 0.9)),
        ms(percentile(&xs, 0.99)),
        ms(*xs.last().unwrap())
    );
}

async fn write(client: &reqwest::Client, base: &str, op: Value) -> Result<u64, String> {
    let r = client
        .post(format!("{base}/v1/facts"))
        .bearer_auth(TOKEN)
        .json(&json!({ "operations": [op] }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status} {body}"));
    }
    Ok(body["revision"].as_u64().unwrap())
}

async fn decide_at(client: &reqwest::Client, base: &str, min: u64) {
    let r = client
        .post(format!("{base}/v1/is_authorized"))
        .header("Orgwarden-Min-Revision", min.to_string())
        .json(&json!({"principal": "User::\"carol\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

fn set_tag(user: &str, role: &str) -> Value {
    json!({"op": "set_tag", "uid": format!("User::\"{user}\""), "key": "acme-prod",
           "value": {"__entity": {"type": "Prefect::Role", "id": role}}})
}

async fn visibility(bases: &[String], writes: usize) {
    let client = reqwest::Client::new();
    let mut acked = Vec::with_capacity(writes);
    let mut visible = Vec::with_capacity(writes);
    for i in 0..writes {
        let role = if i.is_multiple_of(2) {
            "developer"
        } else {
            "runner"
        };
        let started = Instant::now();
        let rev = write(&client, &bases[i % 3], set_tag("carol", role))
            .await
            .unwrap();
        acked.push(started.elapsed());
        futures_join(&client, bases, rev).await;
        visible.push(started.elapsed());
    }
    report("write acknowledged (through one sidecar)", acked);
    report("write visible on all three sidecars", visible);
}

async fn futures_join(client: &reqwest::Client, bases: &[String], rev: u64) {
    let (a, b, c) = (
        decide_at(client, &bases[0], rev),
        decide_at(client, &bases[1], rev),
        decide_at(client, &bases[2], rev),
    );
    tokio::join!(a, b, c);
}

async fn throughput(bases: &[String], clients: usize, seconds: u64, spread: usize) {
    // A member of acme per client: its writes touch its own entity.
    let setup = reqwest::Client::new();
    for c in 0..clients {
        let op = json!({"op": "upsert", "entity": {
            "uid": {"type": "Prefect::User", "id": format!("load-{c}")},
            "attrs": {"email": format!("load-{c}@acme.example"), "apiKeyDigests": []},
            "parents": [{"type": "Prefect::Organization", "id": "acme"}],
        }});
        write(&setup, &bases[c % 3], op).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            let base = bases[c % spread].clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let role = if i.is_multiple_of(2) {
                        "developer"
                    } else {
                        "runner"
                    };
                    match write(&client, &base, set_tag(&format!("load-{c}"), role)).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::SeqCst);
    println!(
        "writes spread over {spread} of the three sidecars, {clients} clients: {n} acknowledged in {secs:.1} s = {:.0} writes/s ({} refused)",
        n as f64 / secs,
        failed.load(Ordering::SeqCst)
    );
}

fn bootstrap(pg: &pg::PgCluster, rt: &tokio::runtime::Runtime) {
    // A world generated here is removed at the end (about 90 MB).
    let mut generated = None;
    let world = match std::env::var_os("ORGWARDEN_BENCH_WORLD") {
        Some(w) => PathBuf::from(w),
        None => {
            let dir = std::env::temp_dir().join("orgwarden-fleet-bench-w1m");
            generated = Some(dir.clone());
            if !dir.exists() {
                let out = orgwarden()
                    .args(["gen", "--out"])
                    .arg(&dir)
                    .args([
                        "--orgs",
                        "1000",
                        "--workspaces-per-org",
                        "50",
                        "--users-per-org",
                        "38",
                        "--service-accounts-per-org",
                        "2",
                        "--memberships",
                        "1000000",
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success());
            }
            dir
        }
    };
    let url = rt.block_on(pg.database("million"));
    let took = import(&url, &world);
    println!(
        "facts import of 1M memberships into PostgreSQL: {:.1} s",
        took.as_secs_f64()
    );
    // The parts in this process: one consistent read of the tables, and
    // the checked view built from it.
    let (read, build) = rt.block_on(async {
        let started = Instant::now();
        let store = orgwarden::facts::store::Store::connect(&url).await.unwrap();
        let (head, rows) = store.snapshot().await.unwrap();
        let read = started.elapsed();
        store.close().await;
        let started = Instant::now();
        let snap = orgwarden::load::load(&orgwarden::load::Paths {
            policies: root().join("policies"),
            schema: root().join("schema"),
            entities: root().join("entities"),
            routes: None,
            identity: None,
        })
        .unwrap();
        let model = orgwarden::facts::Model::new(&snap.schema).unwrap();
        let view = orgwarden::facts::FactView::from_json(
            &model,
            rows.into_iter().map(|e| e.json).collect(),
        )
        .unwrap()
        .at_revision(head);
        assert!(view.len() > 90_000);
        (read, started.elapsed())
    });
    println!(
        "in process: reading the tables (one REPEATABLE READ snapshot) {:.2} s, building the checked view {:.2} s",
        read.as_secs_f64(),
        build.as_secs_f64()
    );
    // The sidecar's entity files are the shipped ones: its facts come
    // from the store.
    let started = Instant::now();
    let (child, addr) = binary::spawn_serve(
        sidecar_command(&url, &root().join("entities")),
        Duration::from_secs(300),
    );
    let listening = started.elapsed();
    let ready = loop {
        if status_of(&format!("http://{addr}/readyz")) == 200 {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "bootstrap of a sidecar from PostgreSQL at 1M memberships: ready after {:.2} s (listening after {:.2} s)",
        ready.as_secs_f64(),
        listening.as_secs_f64()
    );
    let mut child: Child = child;
    let _ = child.kill();
    let _ = child.wait();
    if let Some(dir) = generated {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A blocking GET over std: the status code (0: no answer).
fn status_of(url: &str) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return 0;
    };
    let _ = s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let o = options();
    let Some(pg) = pg::PgCluster::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "# {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if o.fleet {
        let url = rt.block_on(pg.database("fleet"));
        import(&url, &root().join("entities"));
        let sidecars: Vec<(Child, String)> = (0..3).map(|_| sidecar(&url)).collect();
        let bases: Vec<String> = sidecars.iter().map(|(_, b)| b.clone()).collect();
        rt.block_on(visibility(&bases, o.writes));
        rt.block_on(throughput(&bases, o.clients, o.seconds, o.spread));
        for (mut child, _) in sidecars {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    if o.million {
        bootstrap(&pg, &rt);
    }
}

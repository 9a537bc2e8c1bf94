//! Reload latency: from the rename of an input file over the old one to the
//! first decision served by the new generation, against the real
//! `orgwarden serve` binary over loopback, with its file watcher.
//!
//! ```text
//! cargo bench --bench reload                      # shipped model and 100k memberships
//! cargo bench --bench reload -- --million         # also 1,000,000 memberships
//! cargo bench --bench reload -- --reloads 20 --only shipped
//! ```
//!
//! Two kinds of edit, each flipping the decision of `User::"bench-user"`
//! (an Admin of the first organization) on one of its workspaces, so that
//! every reload is observable:
//! - *policy*: `policies/bench.cedar` alternates between a `forbid` of the
//!   user and a policy that matches nobody (the entities are unchanged, and
//!   the reload reuses the served snapshot's parsed entities);
//! - *entities*: `entities/bench.json` alternates between the user as an
//!   Admin of the organization and the user in no organization (every
//!   entity file is parsed and checked again).
//!
//! The client polls the decision every millisecond (the figures'
//! resolution). Reported: p50, p90, p99 and max of the end-to-end latency,
//! and p50/p99 of the server's own load time (`load_duration_ms` of
//! `/v1/status`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use orgwarden::world::{self, WorldSpec};

#[path = "../tests/common/binary.rs"]
mod binary;
use binary::copy_dir;

const FORBID: &str = "@id(\"bench-forbid\")\nforbid (principal == Prefect::User::\"bench-user\", action, resource);\n";
const NOBODY: &str = "@id(\"bench-nobody\")\nforbid (principal == Prefect::User::\"bench-nobody\", action, resource);\n";

/// `entities/bench.json`: the bench user, an Admin of `org` or in no organization.
fn bench_user(org: &str, admin: bool) -> String {
    let parents = if admin {
        serde_json::json!([
            { "type": "Prefect::Organization", "id": org },
            { "type": "Prefect::OrgAdmins", "id": format!("{org}-admins") },
        ])
    } else {
        serde_json::json!([])
    };
    serde_json::json!([{
        "uid": { "type": "Prefect::User", "id": "bench-user" },
        "attrs": { "email": "bench-user@example.com" },
        "parents": parents,
    }])
    .to_string()
}

struct Options {
    reloads: usize,
    million: bool,
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        reloads: 50,
        million: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reloads" => o.reloads = args.next().and_then(|n| n.parse().ok()).unwrap_or(50),
            "--million" => o.million = true,
            "--only" => o.only = args.next(),
            // `cargo bench` passes `--bench`; filters are not used.
            _ => {}
        }
    }
    o
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit {
    Policy,
    Entities,
}

/// One scenario: a model, the organization and workspace of the flipping
/// decision, the kind of edit, a debounce.
struct Scenario {
    name: String,
    dir: PathBuf,
    org: String,
    workspace: String,
    edit: Edit,
    debounce_ms: u64,
    reloads: usize,
}

fn main() {
    // `cargo test --all-targets` runs benches without `--bench`: skip there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("reload latency: run with `cargo bench --bench reload`");
        return;
    }
    let o = options();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let wanted = |name: &str| o.only.as_deref().is_none_or(|only| name.starts_with(only));
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!(
        "| model | edit | debounce | reloads | latency p50 | p90 | p99 | max | load p50 | load p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");

    let mut scenarios = Vec::new();
    if wanted("shipped") {
        let dir = tmp.path().join("shipped");
        copy_model(&root, &dir, None);
        for (edit, debounce_ms) in [(Edit::Policy, 100), (Edit::Policy, 0), (Edit::Entities, 0)] {
            scenarios.push(Scenario {
                name: "shipped".into(),
                dir: dir.clone(),
                org: "acme".into(),
                workspace: "acme-prod".into(),
                edit,
                debounce_ms,
                reloads: o.reloads,
            });
        }
    }
    let mut worlds = vec![(100_000usize, o.reloads)];
    if o.million {
        worlds.push((1_000_000, o.reloads.min(20)));
    }
    for (memberships, reloads) in worlds {
        let name = format!("{}k memberships", memberships / 1000);
        if !wanted(&name) {
            continue;
        }
        let dir = tmp.path().join(format!("world-{memberships}"));
        let spec = WorldSpec {
            orgs: 100,
            // Enough principals x workspaces per org for the memberships.
            users_per_org: if memberships > 100_000 { 500 } else { 100 },
            workspaces_per_org: if memberships > 100_000 { 40 } else { 20 },
            memberships,
            ..WorldSpec::default()
        };
        let started = Instant::now();
        copy_model(&root, &dir, Some(&spec));
        eprintln!(
            "{name}: generated in {:.1} s ({} MB of entities)",
            started.elapsed().as_secs_f64(),
            dir_bytes(&dir.join("entities")) / 1_000_000
        );
        for edit in [Edit::Policy, Edit::Entities] {
            scenarios.push(Scenario {
                name: name.clone(),
                dir: dir.clone(),
                org: world::org_id(0),
                workspace: world::workspace_id(0, 0),
                edit,
                debounce_ms: 100,
                // Every entities edit parses the whole world again.
                reloads: if edit == Edit::Entities {
                    reloads.min(if memberships > 100_000 { 10 } else { 20 })
                } else {
                    reloads
                },
            });
        }
    }
    for s in scenarios {
        run(&s);
    }
}

fn run(s: &Scenario) {
    let bench_policy = s.dir.join("policies/bench.cedar");
    let bench_entities = s.dir.join("entities/bench.json");
    std::fs::write(&bench_policy, NOBODY).unwrap();
    std::fs::write(&bench_entities, bench_user(&s.org, true)).unwrap();
    let started = Instant::now();
    let (mut child, addr) = serve(&s.dir, s.debounce_ms);
    let startup = started.elapsed();
    let mut client = Client::connect(&addr);
    let status = client.get("/v1/status");
    eprintln!(
        "{} (debounce {} ms): serving after {:.2} s (load {:.0} ms, {} entities, {} files)",
        s.name,
        s.debounce_ms,
        startup.as_secs_f64(),
        status["load_duration_ms"].as_f64().unwrap_or(0.0),
        status["counts"]["entities"],
        status["counts"]["files"],
    );
    let body = serde_json::json!({
        "principal": "User::\"bench-user\"",
        "action": "see_flows",
        "resource": format!("Workspace::\"{}\"", s.workspace),
    });
    assert_eq!(client.decide(&body), "Allow", "the base model allows");
    let mut latencies = Vec::new();
    let mut loads = Vec::new();
    let mut generation = status["generation"].as_u64().unwrap();
    for i in 0..s.reloads {
        // Even steps deny, odd ones allow again.
        let deny = i % 2 == 0;
        let (file, text) = match s.edit {
            Edit::Policy => (
                &bench_policy,
                if deny { FORBID } else { NOBODY }.to_string(),
            ),
            Edit::Entities => (&bench_entities, bench_user(&s.org, !deny)),
        };
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, file).unwrap();
        let t0 = Instant::now();
        let expected = if deny { "Deny" } else { "Allow" };
        let deadline = t0 + Duration::from_secs(600);
        while client.decide(&body) != expected {
            assert!(Instant::now() < deadline, "reload {i} never served");
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(t0.elapsed());
        let status = client.get("/v1/status");
        let now = status["generation"].as_u64().unwrap();
        assert!(now > generation, "a new generation serves");
        assert!(status["last_error"].is_null(), "{status}");
        generation = now;
        loads.push(Duration::from_secs_f64(
            status["load_duration_ms"].as_f64().unwrap() / 1000.0,
        ));
    }
    let peak = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    eprintln!("{}: server peak memory {peak}", s.name);
    let _ = child.kill();
    let _ = child.wait();
    let (l, d) = (percentiles(&mut latencies), percentiles(&mut loads));
    println!(
        "| {} | {} | {} ms | {} | {} | {} | {} | {} | {} | {} |",
        s.name,
        match s.edit {
            Edit::Policy => "policy",
            Edit::Entities => "entities",
        },
        s.debounce_ms,
        s.reloads,
        ms(l[0]),
        ms(l[1]),
        ms(l[2]),
        ms(l[3]),
        ms(d[0]),
        ms(d[2]),
    );
}

/// p50, p90, p99 (nearest rank) and max.
fn percentiles(v: &mut [Duration]) -> [Duration; 4] {
    v.sort();
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [rank(0.50), rank(0.90), rank(0.99), v[v.len() - 1]]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `dir/{policies,schema,entities}`: the shipped ones, or a generated world's entities.
fn copy_model(root: &Path, dir: &Path, world: Option<&WorldSpec>) {
    copy_dir(&root.join("policies"), &dir.join("policies"));
    copy_dir(&root.join("schema"), &dir.join("schema"));
    match world {
        None => copy_dir(&root.join("entities"), &dir.join("entities")),
        Some(spec) => {
            std::fs::create_dir_all(dir.join("entities")).unwrap();
            world::write(spec, &dir.join("entities")).unwrap();
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Start the release binary on a free port; its address once it listens.
fn serve(dir: &Path, debounce_ms: u64) -> (Child, String) {
    let debounce = debounce_ms.to_string();
    let command = binary::serve_command(
        &dir.join("policies"),
        &dir.join("schema"),
        &dir.join("entities"),
        &["--reload-debounce-ms", &debounce],
    );
    binary::spawn_serve(command, Duration::from_secs(600))
}

/// A minimal HTTP/1.1 keep-alive client: one connection, no pool, so the
/// poll costs little and measures the server.
struct Client {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Client {
    fn connect(addr: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        }
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> serde_json::Value {
        write!(
            self.stream.get_mut(),
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )
        .unwrap();
        let mut status = String::new();
        self.stream.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut buf = vec![0; length];
        self.stream.read_exact(&mut buf).unwrap();
        serde_json::from_slice(&buf).unwrap()
    }

    fn get(&mut self, path: &str) -> serde_json::Value {
        self.request("GET", path, "")
    }

    fn decide(&mut self, body: &serde_json::Value) -> String {
        let v = self.request("POST", "/v1/is_authorized", &body.to_string());
        v["decision"].as_str().unwrap().to_string()
    }
}

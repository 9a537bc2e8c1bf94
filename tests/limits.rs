//! Connection and CPU bounds: silent and idle connections are closed, the
//! number of connections is capped below the descriptor limit with health
//! checks still answered, decisions with request facts are bounded and shed
//! with 503 when their queue is full, and the in-flight gauge survives a 408.
//! No test asserts a duration: each waits, within a generous bound, for the
//! outcome the bound guarantees.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use orgwarden::decision_log::DecisionLog;
use orgwarden::http::HttpConfig;
use orgwarden::http::listen::ConnLimits;
use orgwarden::request_facts::RequestEntities;
use serde_json::{Value, json};

/// One HTTP/1.1 request over a fresh connection (`Connection: close`):
/// status and body, or none when the server does not answer in `patience`.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    patience: Duration,
) -> Option<(u16, String)> {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let headers = [("Content-Type", "application/json")];
    let raw = common::http::exchange(addr, method, path, &headers, payload.as_bytes(), patience);
    raw.ok().map(|raw| (raw.status, raw.body))
}

/// Retry `call` until it answers, for at most `bound`.
fn answered(addr: &str, path: &str, bound: Duration) -> Option<(u16, String)> {
    let start = Instant::now();
    while start.elapsed() < bound {
        if let Some(answer) = call(addr, "GET", path, None, Duration::from_secs(2)) {
            return Some(answer);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Whether the server closes `stream` (EOF or reset) within `bound`.
fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    stream.set_read_timeout(Some(bound)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn addr_of(s: &TestServer) -> String {
    s.base.strip_prefix("http://").unwrap().to_string()
}

#[test]
fn silent_connections_do_not_exhaust_a_low_descriptor_limit() {
    // 256 descriptors, 300 clients that connect and say nothing.
    let root = common::root();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_orgwarden"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            "off",
            "--no-watch",
        ])
        .args(["--header-read-timeout-ms", "2000"])
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--schema")
        .arg(root.join("schema"))
        .arg("--entities")
        .arg(root.join("entities"));
    let (mut child, addr) = common::binary::spawn_serve(command, Duration::from_secs(60));
    let silent: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(silent.len() >= 250, "the clients connect: {}", silent.len());
    // While they hold their connections, health checks are answered ...
    let health = answered(&addr, "/healthz", Duration::from_secs(30));
    assert_eq!(health.map(|(s, _)| s), Some(200), "healthz answers");
    // ... and, once the silent ones have timed out, decisions too.
    let body = json!({"principal": "User::\"bob\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""});
    let start = Instant::now();
    let mut decided = None;
    while start.elapsed() < Duration::from_secs(30) {
        if let Some((200, text)) = call(
            &addr,
            "POST",
            "/v1/is_authorized",
            Some(&body),
            Duration::from_secs(2),
        ) {
            decided = Some(text);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let decided: Value = serde_json::from_str(&decided.expect("a decision is answered")).unwrap();
    assert_eq!(decided["decision"], "Allow");
    drop(silent);
    let _ = child.kill();
    let _ = child.wait();
}

fn limited(limits: ConnLimits) -> HttpConfig {
    HttpConfig {
        connections: limits,
        ..HttpConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_closed() {
    let s = TestServer::start(
        common::shipped(),
        limited(ConnLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..ConnLimits::default()
        }),
        0,
        DecisionLog::off(),
    )
    .await;
    let addr = addr_of(&s);
    let closed = tokio::task::spawn_blocking(move || {
        // Half a request head, then nothing.
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let slow_closed = closed_within(&mut slow, Duration::from_secs(20));
        // A keep-alive connection that answered once, then idles.
        let mut idle = TcpStream::connect(&addr).unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 512];
        let n = idle.read(&mut first).unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        let idle_closed = closed_within(&mut idle, Duration::from_secs(20));
        (slow_closed, idle_closed)
    })
    .await
    .unwrap();
    assert_eq!(closed, (true, true), "(slow head, idle keep-alive) closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_only_health_checks_are_answered() {
    let s = TestServer::start(
        common::shipped(),
        limited(ConnLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
        }),
        0,
        DecisionLog::off(),
    )
    .await;
    let addr = addr_of(&s);
    let metrics = s.app.pdp.metrics.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        // Wait until the server counts them (accepting is asynchronous).
        let start = Instant::now();
        while metrics.connections.get() < 4 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let health = call(&addr, "GET", "/healthz", None, Duration::from_secs(20));
        let ready = call(&addr, "GET", "/readyz", None, Duration::from_secs(20));
        let body = json!({"principal": "User::\"bob\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""});
        let decision = call(&addr, "POST", "/v1/is_authorized", Some(&body), Duration::from_secs(20));
        drop(held);
        (health, ready, decision)
    })
    .await
    .unwrap();
    let (health, ready, decision) = answers;
    assert_eq!(health.map(|a| a.0), Some(200));
    assert_eq!(ready.map(|a| a.0), Some(200));
    let (status, body) = decision.expect("an answer");
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
}

#[tokio::test]
async fn a_timed_out_request_leaves_the_in_flight_gauge() {
    let config = HttpConfig {
        request_timeout: Duration::from_millis(100),
        consistency_wait: Duration::from_secs(3),
        ..HttpConfig::default()
    };
    let s = TestServer::start(common::shipped(), config, 0, DecisionLog::off()).await;
    for _ in 0..3 {
        // A revision the facts never reach: the request waits, then times out.
        let resp = s
            .client
            .post(format!("{}/v1/is_authorized", s.base))
            .header("Orgwarden-Min-Revision", "999")
            .json(&json!({"principal": "User::\"bob\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 408);
    }
    assert_eq!(s.app.pdp.metrics.in_flight.get(), 0);
}

fn heavy_entities(n: usize) -> Value {
    // New users in a new organization: allowed in the default mode, and
    // every one of them checked.
    let mut out = vec![
        json!({"uid": {"type": "Prefect::Organization", "id": "bulk"}, "attrs": {"handle": "bulk", "admins": {"__entity": {"type": "Prefect::OrgAdmins", "id": "bulk-admins"}}}, "parents": []}),
        json!({"uid": {"type": "Prefect::OrgAdmins", "id": "bulk-admins"}, "attrs": {}, "parents": []}),
    ];
    for i in 0..n.saturating_sub(2) {
        out.push(json!({"uid": {"type": "Prefect::User", "id": format!("bulk-{i}")}, "attrs": {"email": format!("bulk-{i}@example.com")},
            "parents": [{"type": "Prefect::Organization", "id": "bulk"}]}));
    }
    Value::Array(out)
}

#[tokio::test]
async fn request_entities_are_bounded_per_http_request() {
    let s = TestServer::shipped().await;
    let item = json!({"principal": "User::\"bulk-0\"", "action": "read:account", "resource": "Organization::\"bulk\"",
                      "additional_entities": heavy_entities(300)});
    let (status, body) = s
        .post(
            "/v1/is_authorized/batch",
            json!({"requests": [item.clone(), item.clone(), item.clone(), item.clone()]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_entities");
    assert_eq!(body["error"]["field"], "requests");
    let (status, body) = s
        .post(
            "/v1/is_authorized/batch",
            json!({"requests": [item.clone(), item]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["decision"], "Allow", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_decisions_are_shed_and_health_checks_answered() {
    let config = HttpConfig {
        decision_workers: 1,
        decision_queue: 0,
        request_entities: RequestEntities::Add,
        ..HttpConfig::default()
    };
    let s = Arc::new(TestServer::start(common::shipped(), config, 0, DecisionLog::off()).await);
    let item = json!({"principal": "User::\"bulk-0\"", "action": "read:account", "resource": "Organization::\"bulk\"",
                      "additional_entities": heavy_entities(1000)});
    let batch = json!({"requests": [item]});
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        let batch = batch.clone();
        tasks.push(tokio::spawn(async move {
            let resp = s
                .client
                .post(format!("{}/v1/is_authorized/batch", s.base))
                .json(&batch)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = resp.json().await.unwrap();
            (status, retry, body)
        }));
    }
    // Health checks are answered while the batches run (how fast is printed, not asserted).
    let started = Instant::now();
    let (status, _) = s.get("/healthz").await;
    eprintln!("healthz under heavy decisions: {:?}", started.elapsed());
    assert_eq!(status, 200);
    let (mut decided, mut shed) = (0, 0);
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["results"][0]["decision"], "Allow", "{body}");
                decided += 1;
            }
            503 => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                assert_eq!(retry.as_deref(), Some("1"));
                shed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(decided >= 1, "some are decided");
    assert!(
        shed >= 1,
        "with one worker and no queue, concurrent ones are shed"
    );
    assert_eq!(decided + shed, 16);
}

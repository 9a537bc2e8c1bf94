//! The decision log when its writer cannot keep up: `block` loses no record
//! and never stalls the server's other work; `drop` drops and counts.
//!
//! The writer writes to a gate that holds every write until the test opens
//! it. The tests run on a single-threaded runtime, so a request that blocked
//! its thread while waiting for the log would stall everything else.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{TestServer, req, shipped};
use orgwarden::decision_log::{DecisionLog, LogOptions, Overflow};
use orgwarden::http::HttpConfig;
use serde_json::Value;

const AUTHZ: &str = "/v1/is_authorized";

/// Whether the gate is open, and what was written through it.
type GateState = Mutex<(bool, Vec<u8>)>;

/// A sink that holds writes until opened, then keeps what was written.
#[derive(Clone, Default)]
struct Gate(Arc<(GateState, Condvar)>);

impl Gate {
    fn open(&self) {
        let (state, cond) = &*self.0;
        state.lock().unwrap().0 = true;
        cond.notify_all();
    }

    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.0.lock().unwrap().1.clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (state, cond) = &*self.0;
        let mut s = state.lock().unwrap();
        while !s.0 {
            s = cond.wait(s).unwrap();
        }
        s.1.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CAPACITY: usize = 4;

async fn server(gate: &Gate, overflow: Overflow) -> TestServer {
    let options = LogOptions {
        denies_only: false,
        overflow,
        capacity: CAPACITY,
    };
    let log = DecisionLog::to_writer(Box::new(gate.clone()), options).unwrap();
    // Cache off: every request is decided by the engine.
    TestServer::start(shipped(), HttpConfig::default(), 0, log).await
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// One of a few requests, by number.
fn request(i: usize) -> Value {
    let who = ["bob", "gina", "alice"][i % 3];
    req(
        &format!("User::\"{who}\""),
        "see_flows",
        r#"Workspace::"acme-prod""#,
    )
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn block_mode_waits_without_stalling_the_server_and_loses_nothing() {
    const N: usize = 40;
    let gate = Gate::default();
    let s = Arc::new(server(&gate, Overflow::Block).await);
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..N {
        let (s, answered) = (s.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let (status, body) = s.post(AUTHZ, request(i)).await;
            answered.fetch_add(1, Ordering::SeqCst);
            assert_eq!(status, 200, "{body}");
            body["decision_id"].as_str().unwrap().to_string()
        }));
    }
    // The queue fills up and stays full while the writer is held...
    eventually("the log's queue is full", async || {
        let (_, text) = s.get("/metrics").await;
        metric(&text, "orgwarden_decision_log_queue") == CAPACITY as u64
    })
    .await;
    // ... and the server still answers what does not log.
    assert_eq!(s.get("/healthz").await.0, 200);
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "orgwarden_decision_log_dropped_total"), 0);
    assert!(
        answered.load(Ordering::SeqCst) < N,
        "every request was answered though the log could take at most {} records",
        2 * CAPACITY
    );

    gate.open();
    let mut ids = HashSet::new();
    for client in clients {
        ids.insert(client.await.unwrap());
    }
    assert_eq!(ids.len(), N);
    eventually("every decision is written", async || {
        gate.lines().len() >= N
    })
    .await;
    let lines = gate.lines();
    assert_eq!(lines.len(), N);
    let logged: HashSet<String> = lines
        .iter()
        .map(|l| l["decision_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logged, ids);
    let (_, text) = s.get("/metrics").await;
    assert_eq!(metric(&text, "orgwarden_decision_log_dropped_total"), 0);
}

#[tokio::test]
async fn drop_mode_answers_every_request_and_counts_what_it_drops() {
    const N: usize = 40;
    let gate = Gate::default();
    let s = server(&gate, Overflow::Drop).await;
    let mut ids = HashSet::new();
    for i in 0..N {
        let (status, body) = s.post(AUTHZ, request(i)).await;
        assert_eq!(status, 200, "{body}");
        ids.insert(body["decision_id"].as_str().unwrap().to_string());
    }
    let (_, text) = s.get("/metrics").await;
    let dropped = metric(&text, "orgwarden_decision_log_dropped_total") as usize;
    // The writer holds at most one queue's worth and the queue another.
    assert!(
        dropped >= N - 2 * CAPACITY,
        "{dropped} of {N} dropped\n{text}"
    );

    gate.open();
    eventually("the kept records are written", async || {
        gate.lines().len() == N - dropped
    })
    .await;
    for line in gate.lines() {
        assert!(
            ids.contains(line["decision_id"].as_str().unwrap()),
            "{line}"
        );
    }
    // Nothing is dropped once the writer keeps up.
    let (status, _) = s.post(AUTHZ, request(0)).await;
    assert_eq!(status, 200);
    eventually("the next record is written", async || {
        gate.lines().len() == N - dropped + 1
    })
    .await;
    let (_, text) = s.get("/metrics").await;
    assert_eq!(
        metric(&text, "orgwarden_decision_log_dropped_total") as usize,
        dropped
    );
}

//! The soak: the real binary with a fact store, for a bounded time
//! (`ORGWARDEN_SOAK_SECS`, 20 by default), under reloads of changed policy
//! files, fact writes, and hostile clients (request-fact overrides, silent
//! and slow connections, malformed and oversized bodies, ambiguous
//! forward-auth URIs, heavy request-fact batches) all at once. Every good
//! request must get its right answer: 0 failures.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "soak-secret";

/// One request over a fresh connection: status and body, or the I/O error.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let raw = common::http::exchange(addr, method, path, headers, body, Duration::from_secs(30))?;
    Ok((raw.status, raw.body))
}

fn post(addr: &str, path: &str, body: &Value) -> std::io::Result<(u16, Value)> {
    let (status, text) = call(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn imported_store(dir: &Path, model: &Path) -> String {
    let url = format!("sqlite:{}", dir.join("facts.db").display());
    common::binary::import_facts(model, &url);
    url
}

fn decision(principal: &str, action: &str, resource: &str) -> Value {
    json!({"principal": principal, "action": action, "resource": resource})
}

/// A good request and the answer it must get.
fn good(addr: &str, i: u64) -> Result<(), String> {
    let check = |what: &str,
                 r: std::io::Result<(u16, Value)>,
                 ok: &dyn Fn(&Value) -> bool|
     -> Result<(), String> {
        match r {
            Ok((200, body)) if ok(&body) => Ok(()),
            Ok((status, body)) => Err(format!("{what}: {status} {body}")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    };
    match i % 5 {
        0 => check(
            "bob may see acme-prod",
            post(
                addr,
                "/v1/is_authorized",
                &decision("User::\"bob\"", "see_flows", "Workspace::\"acme-prod\""),
            ),
            &|b| b["decision"] == "Allow",
        ),
        1 => check(
            "gina may not see acme-prod",
            post(
                addr,
                "/v1/is_authorized",
                &decision("User::\"gina\"", "see_flows", "Workspace::\"acme-prod\""),
            ),
            &|b| b["decision"] == "Deny",
        ),
        2 => check(
            "a batch",
            post(
                addr,
                "/v1/is_authorized/batch",
                &json!({"requests": [
                    decision("User::\"alice\"", "manage_deployments", "Workspace::\"acme-staging\""),
                    decision("User::\"hank\"", "see_flows", "Workspace::\"acme-prod\""),
                ]}),
            ),
            &|b| b["results"][0]["decision"] == "Allow" && b["results"][1]["decision"] == "Deny",
        ),
        3 => check(
            "an AuthZEN evaluation",
            post(
                addr,
                "/access/v1/evaluation",
                &json!({"subject": {"type": "user", "id": "dana"}, "action": {"name": "run_deployments"},
                        "resource": {"type": "workspace", "id": "acme-prod"}}),
            ),
            &|b| b["decision"] == true,
        ),
        _ => match call(addr, "GET", "/healthz", &[], b"") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("healthz: {other:?}")),
        },
    }
}

/// One hostile request of kind `i`; refused as it must be, or an error.
fn hostile(addr: &str, i: u64) -> Result<(), String> {
    match i % 8 {
        0 => {
            // carol redefined as an acme admin.
            let mut r = decision(
                "User::\"carol\"",
                "manage_deployments",
                "Workspace::\"acme-prod\"",
            );
            r["additional_entities"] = json!([{"uid": {"type": "Prefect::User", "id": "carol"}, "attrs": {"email": "c@x"},
                "parents": [{"type": "Prefect::Organization", "id": "acme"}, {"type": "Prefect::OrgAdmins", "id": "acme-admins"}]}]);
            match post(addr, "/v1/is_authorized", &r) {
                Ok((403, b)) if b["error"]["code"] == "protected_fact" => Ok(()),
                other => Err(format!("override: {other:?}")),
            }
        }
        1 => {
            // A silent connection, dropped after a moment.
            let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(200));
            drop(s);
            Ok(())
        }
        2 => {
            // Half a request head.
            let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let _ = s.write_all(b"POST /v1/is_authorized HTTP/1.1\r\nHost: x\r\nContent-Le");
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        }
        3 => match call(addr, "POST", "/v1/is_authorized", &[], b"{\"principal\": ") {
            Ok((400, _)) => Ok(()),
            other => Err(format!("malformed: {other:?}")),
        },
        4 => {
            let big = vec![b'['; 2 * 1024 * 1024];
            match call(addr, "POST", "/v1/is_authorized", &[], &big) {
                // The server may answer before reading the whole body and close.
                Ok((413, _)) => Ok(()),
                Err(_) => Ok(()),
                other => Err(format!("oversized: {other:?}")),
            }
        }
        5 => match call(
            addr,
            "GET",
            "/v1/forward-auth",
            &[
                (
                    "X-Forwarded-Uri",
                    "/api/accounts/acme/workspaces/acme-prod/flows/x#/../../../globex-main/flows/y",
                ),
                ("X-Forwarded-Method", "GET"),
                (
                    "Authorization",
                    "Bearer ow_demo_carol_78b196c1ef5b8c5dbaa1ed39",
                ),
            ],
            b"",
        ) {
            Ok((403, _)) => Ok(()),
            other => Err(format!("ambiguous forward-auth: {other:?}")),
        },
        6 => {
            // A heavy batch of request facts: decided or shed, never wrong.
            let mut entities = vec![
                json!({"uid": {"type": "Prefect::Organization", "id": "bulk"}, "attrs": {"handle": "bulk", "admins": {"__entity": {"type": "Prefect::OrgAdmins", "id": "bulk-admins"}}}, "parents": []}),
                json!({"uid": {"type": "Prefect::OrgAdmins", "id": "bulk-admins"}, "attrs": {}, "parents": []}),
            ];
            for k in 0..400 {
                entities.push(json!({"uid": {"type": "Prefect::User", "id": format!("bulk-{k}")}, "attrs": {"email": format!("b{k}@x")},
                    "parents": [{"type": "Prefect::Organization", "id": "bulk"}]}));
            }
            let mut r = decision("User::\"bulk-1\"", "read:account", "Organization::\"bulk\"");
            r["additional_entities"] = Value::Array(entities);
            match post(addr, "/v1/is_authorized/batch", &json!({"requests": [r]})) {
                Ok((200, b)) if b["results"][0]["decision"] == "Allow" => Ok(()),
                Ok((503, b)) if b["error"]["code"] == "overloaded" => Ok(()),
                other => Err(format!("heavy: {other:?}")),
            }
        }
        _ => match call(addr, "GET", "/v1/principals/%00%ff/workspaces", &[], b"") {
            Ok((status, body)) if (400..500).contains(&status) && body.starts_with('{') => Ok(()),
            other => Err(format!("bad path: {other:?}")),
        },
    }
}

#[test]
fn soak_reloads_writes_and_hostile_clients_fail_no_good_request() {
    let secs: u64 = std::env::var("ORGWARDEN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    for sub in ["policies", "schema", "entities"] {
        common::copy_dir(&common::root().join(sub), &model.join(sub));
    }
    let url = imported_store(dir.path(), &model);
    let auth = format!("Bearer {TOKEN}");
    let command = common::binary::serve_command(
        &model.join("policies"),
        &model.join("schema"),
        &model.join("entities"),
        &[
            "--facts",
            &url,
            "--facts-token",
            TOKEN,
            "--admin-token",
            TOKEN,
            "--reload-debounce-ms",
            "20",
            "--header-read-timeout-ms",
            "1000",
        ],
    );
    let (mut child, addr) = common::binary::spawn_serve(command, Duration::from_secs(60));
    let addr = Arc::new(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (good_ok, reloads, writes, hostiles) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let failures: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let (addr, stop, ok, failures) = (
            addr.clone(),
            stop.clone(),
            good_ok.clone(),
            failures.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                match good(&addr, i) {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
                i += 1;
            }
        }));
    }
    for t in 0..2u64 {
        let (addr, stop, n, failures) = (
            addr.clone(),
            stop.clone(),
            hostiles.clone(),
            failures.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut i = t * 3;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = hostile(&addr, i) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("hostile answered wrongly: {e}"));
                }
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    {
        // Reloads: a policy file changes back and forth (a real change each time).
        let (addr, stop, n, failures, auth) = (
            addr.clone(),
            stop.clone(),
            reloads.clone(),
            failures.clone(),
            auth.clone(),
        );
        let file = model.join("policies").join("invitations.cedar");
        let original = std::fs::read_to_string(&file).unwrap();
        threads.push(std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                std::fs::write(&file, format!("{original}\n// soak {k}\n")).unwrap();
                match call(
                    &addr,
                    "POST",
                    "/v1/reload",
                    &[("Authorization", &auth)],
                    b"",
                ) {
                    Ok((200, _)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.lock().unwrap().push(format!("reload: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        }));
    }
    {
        // Fact writes that the good requests do not depend on.
        let (addr, stop, n, failures, auth) = (
            addr.clone(),
            stop.clone(),
            writes.clone(),
            failures.clone(),
            auth.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let role = if k.is_multiple_of(2) { "developer" } else { "runner" };
                let body = json!({"operations": [{"op": "set_tag", "uid": "User::\"carol\"", "key": "acme-sandbox",
                    "value": {"__entity": {"type": "Prefect::Role", "id": role}}}]});
                match call(
                    &addr,
                    "POST",
                    "/v1/facts",
                    &[("Authorization", &auth), ("Content-Type", "application/json")],
                    body.to_string().as_bytes(),
                ) {
                    Ok((200, _)) => {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.lock().unwrap().push(format!("write: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    let failures = failures.lock().unwrap();
    let (good, reloads, writes, hostiles) = (
        good_ok.load(Ordering::Relaxed),
        reloads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
        hostiles.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {secs} s: {good} good requests, {reloads} reloads, {writes} writes, {hostiles} hostile requests"
    );
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(good > 0 && reloads > 0 && writes > 0 && hostiles > 0);
}

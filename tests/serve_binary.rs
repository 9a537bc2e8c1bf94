//! The real `orgwarden serve` binary: refuses invalid files, serves on a
//! loopback port, reloads on SIGHUP, and stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::copy_of_shipped;

fn orgwarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orgwarden"))
}

/// Start `serve` on a free port; returns the child and its base URL.
fn start(paths: &orgwarden::Paths) -> (Child, String) {
    let mut child = orgwarden()
        .args(["serve", "--listen", "127.0.0.1:0", "--decision-log", "off"])
        .arg("--policies")
        .arg(&paths.policies)
        .arg("--schema")
        .arg(&paths.schema)
        .arg("--entities")
        .arg(&paths.entities)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("listening on http://") {
                let addr: String = line[at + "listening on ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server did not start");
    (child, base)
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn decide(base: &str, principal: &str) -> String {
    let body = serde_json::json!({"principal": principal, "action": "see_flows", "resource": "Workspace::\"acme-prod\""});
    let resp: serde_json::Value = http_client::post(&format!("{base}/v1/is_authorized"), &body);
    resp["decision"].as_str().unwrap().to_string()
}

/// A tiny blocking HTTP POST over std, so this test needs no async runtime.
mod http_client {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub fn post(url: &str, body: &serde_json::Value) -> serde_json::Value {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let payload = body.to_string();
        let mut stream = TcpStream::connect(host).unwrap();
        write!(
            stream,
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }
}

#[test]
fn refuses_to_start_on_invalid_files_with_diagnostics() {
    let (dir, paths) = copy_of_shipped();
    std::fs::write(
        paths.policies.join("typo.cedar"),
        "permit(principal, action, resource)\nwhen { resource.nope };\n",
    )
    .unwrap();
    let out = orgwarden()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--policies")
        .arg(&paths.policies)
        .arg("--schema")
        .arg(&paths.schema)
        .arg("--entities")
        .arg(&paths.entities)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("typo.cedar:2:8"), "{stderr}");
    assert!(stderr.contains("not starting"), "{stderr}");
    drop(dir);
}

#[test]
fn serves_reloads_on_sighup_and_stops_on_sigterm() {
    let (dir, paths) = copy_of_shipped();
    let (mut child, base) = start(&paths);
    assert_eq!(decide(&base, "User::\"carol\""), "Allow");

    // acme-prod's default role becomes No Access; SIGHUP reloads.
    let acme = paths.entities.join("acme.json");
    let text = std::fs::read_to_string(&acme).unwrap();
    std::fs::write(
        &acme,
        text.replacen(r#""id": "viewer""#, r#""id": "no-access""#, 1),
    )
    .unwrap();
    signal(&child, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while decide(&base, "User::\"carol\"") != "Deny" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }

    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    drop(dir);
}

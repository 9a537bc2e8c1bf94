//! `--last-good-dir`: a restart whose files are broken serves the last good
//! set, stale, naming the broken file, as a failed reload does.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const TOKEN: &str = "admin-secret";

fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str())];
    let patience = Duration::from_secs(30);
    let raw = common::http::exchange(addr, method, path, &headers, payload.as_bytes(), patience);
    let raw = raw.unwrap();
    (raw.status, raw.body)
}

fn json_of(addr: &str, path: &str) -> Value {
    let (status, body) = call(addr, "GET", path, None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn decide(addr: &str, principal: &str, action: &str) -> String {
    let body =
        json!({"principal": principal, "action": action, "resource": "Workspace::\"acme-prod\""});
    let (status, text) = call(addr, "POST", "/v1/is_authorized", Some(&body));
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["decision"].as_str().unwrap().to_string()
}

fn command(model: &Path, last_good: Option<&Path>) -> Command {
    let mut flags = vec!["--no-watch", "--admin-token", TOKEN];
    let dir;
    if let Some(d) = last_good {
        dir = d.display().to_string();
        flags.extend(["--last-good-dir", &dir]);
    }
    common::binary::serve_command(
        &model.join("policies"),
        &model.join("schema"),
        &model.join("entities"),
        &flags,
    )
}

fn start(model: &Path, last_good: Option<&Path>) -> (Child, String) {
    common::binary::spawn_serve(command(model, last_good), Duration::from_secs(60))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether the server refuses to start (exits with an error).
fn refuses_to_start(model: &Path, last_good: Option<&Path>) -> bool {
    let out = command(model, last_good)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not starting")
}

/// Give carol the developer role in acme-prod in the entity files.
fn promote_carol(model: &Path) {
    let file = model.join("entities").join("acme.json");
    let mut entities: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let carol = entities
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["uid"]["id"] == "carol")
        .unwrap();
    carol["tags"]["acme-prod"] = json!({"__entity": {"type": "Prefect::Role", "id": "developer"}});
    std::fs::write(&file, serde_json::to_string_pretty(&entities).unwrap()).unwrap();
}

#[test]
fn a_restart_with_broken_files_serves_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    for sub in ["policies", "schema", "entities"] {
        common::copy_dir(&common::root().join(sub), &model.join(sub));
    }
    let last_good = dir.path().join("last-good");

    // Broken files and no saved set: nothing to serve.
    let broken = model.join("policies").join("zz-broken.cedar");
    std::fs::write(
        &broken,
        "permit(principal, action, resource) when { principal.nope };",
    )
    .unwrap();
    assert!(refuses_to_start(&model, Some(&last_good)));
    std::fs::remove_file(&broken).unwrap();

    // A good start keeps its files; a good reload keeps the new ones.
    let (child, addr) = start(&model, Some(&last_good));
    assert_eq!(decide(&addr, "User::\"carol\"", "run_deployments"), "Deny");
    promote_carol(&model);
    let (status, body) = call(&addr, "POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(decide(&addr, "User::\"carol\"", "run_deployments"), "Allow");
    stop(child);

    // The files break; a restart without the flag does not come up ...
    std::fs::write(
        &broken,
        "permit(principal, action, resource) when { principal.nope };",
    )
    .unwrap();
    assert!(refuses_to_start(&model, None));

    // ... and with it, serves the last good set, stale, naming the file.
    let (child, addr) = start(&model, Some(&last_good));
    assert_eq!(
        decide(&addr, "User::\"carol\"", "run_deployments"),
        "Allow",
        "the set of the last good reload"
    );
    let ready = json_of(&addr, "/readyz");
    assert_eq!(ready["stale"], true, "{ready}");
    assert!(
        ready["last_error"]
            .as_str()
            .unwrap()
            .contains("zz-broken.cedar"),
        "{ready}"
    );
    let status = json_of(&addr, "/v1/status");
    assert!(
        status["last_error"]["summary"]
            .as_str()
            .unwrap()
            .contains("zz-broken.cedar"),
        "{status}"
    );
    let (_, metrics) = call(&addr, "GET", "/metrics", None);
    assert!(
        metrics.lines().any(|l| l == "orgwarden_snapshot_stale 1"),
        "{metrics}"
    );

    // Fixing the file and reloading serves it, no longer stale.
    std::fs::remove_file(&broken).unwrap();
    let (status, body) = call(&addr, "POST", "/v1/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json_of(&addr, "/readyz")["stale"], false);
    assert_eq!(decide(&addr, "User::\"carol\"", "run_deployments"), "Allow");
    stop(child);
}

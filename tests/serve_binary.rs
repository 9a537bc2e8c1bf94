//! The real `orgwarden serve` binary: refuses invalid files, serves on a
//! loopback port, reloads on SIGHUP, and stops cleanly on SIGTERM.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::binary::{serve_command, spawn_serve};
use common::copy_of_shipped;

fn orgwarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orgwarden"))
}

/// Start `serve` on a free port; returns the child and its base URL.
fn start(paths: &orgwarden::Paths) -> (Child, String) {
    let command = serve_command(&paths.policies, &paths.schema, &paths.entities, &[]);
    let (child, addr) = spawn_serve(command, Duration::from_secs(30));
    (child, format!("http://{addr}"))
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

/// A GET over std, returning the JSON body.
fn get(base: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

const OTHER_SCHEMA: &str =
    "entity Person;\nentity Doc;\naction read appliesTo { principal: Person, resource: Doc };\n";

/// A general Cedar model (not the shipped one) under `dir/model`, and the
/// shipped `routes/` (written for the shipped schema) in `dir` itself.
fn other_model_beside_routes(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let paths = [
        model.join("policies.cedar"),
        model.join("schema.cedarschema"),
        model.join("entities.json"),
    ];
    std::fs::write(
        &paths[0],
        "permit(principal, action == Action::\"read\", resource);\n",
    )
    .unwrap();
    std::fs::write(&paths[1], OTHER_SCHEMA).unwrap();
    std::fs::write(
        &paths[2],
        r#"[{"uid": {"type": "Person", "id": "ann"}, "attrs": {}, "parents": []}]"#,
    )
    .unwrap();
    common::copy_dir(&common::root().join("routes"), &dir.join("routes"));
    paths
}

#[test]
fn a_general_model_starts_from_a_directory_with_routes_for_another_schema() {
    let dir = tempfile::tempdir().unwrap();
    let [policies, schema, entities] = other_model_beside_routes(dir.path());
    let mut command = serve_command(&policies, &schema, &entities, &[]);
    command
        .current_dir(dir.path())
        .env_remove("ORGWARDEN_ROUTES");
    let (mut child, addr) = spawn_serve(command, Duration::from_secs(30));
    let base = format!("http://{addr}");
    let body = serde_json::json!({"principal": "Person::\"ann\"", "action": "read", "resource": "Doc::\"d\""});
    assert_eq!(
        http_client::post(&format!("{base}/v1/is_authorized"), &body)["decision"],
        "Allow"
    );
    let status = get(&base, "/v1/status");
    assert_eq!(status["counts"]["routes"], 0, "{status}");
    assert!(status["paths"]["routes"].is_null(), "{status}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn default_routes_go_with_the_default_schema_and_explicit_routes_always_load() {
    // The shipped model and its routes, as in the project's root: the
    // default routes are loaded with the default schema.
    let (dir, _) = copy_of_shipped();
    common::copy_dir(&common::root().join("routes"), &dir.path().join("routes"));
    let check = |dir: &std::path::Path, args: &[&str]| {
        let out = orgwarden()
            .arg("check")
            .args(args)
            .current_dir(dir)
            .env_remove("ORGWARDEN_ROUTES")
            .env_remove("ORGWARDEN_SCHEMA")
            .env_remove("ORGWARDEN_POLICIES")
            .env_remove("ORGWARDEN_ENTITIES")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = check(dir.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains(" 0 routes"), "{stdout}");
    // Another schema given explicitly: the routes beside it are not its own.
    let other = tempfile::tempdir().unwrap();
    let [policies, schema, entities] = other_model_beside_routes(other.path());
    let flags = |routes: Option<&str>| {
        let mut v = vec![
            "--policies".to_string(),
            policies.display().to_string(),
            "--schema".to_string(),
            schema.display().to_string(),
            "--entities".to_string(),
            entities.display().to_string(),
        ];
        if let Some(r) = routes {
            v.extend(["--routes".to_string(), r.to_string()]);
        }
        v
    };
    let args = flags(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = check(other.path(), &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(" 0 routes"), "{stdout}");
    // Asked for explicitly, the routes are loaded and checked against the
    // schema given: here they do not fit it, and the load says so.
    let args = flags(Some("routes"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = check(other.path(), &args);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("routes"), "{stderr}");
}

//! Live facts through the real binary: `orgwarden facts import` into a
//! SQLite store, `serve --facts`, writes through `POST /v1/facts`,
//! read-your-writes with `Orgwarden-Min-Revision`, rejections that change
//! nothing, restarts, and a `kill -9` during a write storm.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::binary::{serve_command, spawn_serve};
use common::http::Answer;
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-facts-token";

fn orgwarden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orgwarden"))
}

/// A blocking call (`common::http::call`), waiting at most 30 s.
fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> std::io::Result<Answer> {
    common::http::call(base, method, path, headers, body, Duration::from_secs(30))
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

/// `run_deployments` on `acme-prod` for `principal`, at least at `min`.
fn decide(base: &str, principal: &str, min: Option<u64>) -> Answer {
    let min = min.map(|m| m.to_string());
    let headers: Vec<(&str, &str)> = min
        .as_deref()
        .map(|m| vec![("Orgwarden-Min-Revision", m)])
        .unwrap_or_default();
    let body = json!({"principal": principal, "action": "run_deployments", "resource": "Workspace::\"acme-prod\""});
    call(base, "POST", "/v1/is_authorized", &headers, Some(&body)).unwrap()
}

/// A temp dir with a store holding the shipped entities; its URL.
fn imported_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("facts.db").display());
    let root = common::root();
    common::binary::import_facts(&root, &url);
    (dir, url)
}

fn serve(url: Option<&str>, extra: &[&str]) -> (Child, String) {
    let root = common::root();
    let mut flags: Vec<&str> = vec!["--no-watch", "--consistency-wait-ms", "300"];
    if let Some(url) = url {
        flags.extend(["--facts", url, "--facts-token", TOKEN]);
    }
    flags.extend(extra);
    let mut command = serve_command(
        &root.join("policies"),
        &root.join("schema"),
        &root.join("entities"),
        &flags,
    );
    command
        .env_remove("ORGWARDEN_FACTS")
        .env_remove("ORGWARDEN_FACTS_TOKEN");
    let (child, addr) = spawn_serve(command, Duration::from_secs(60));
    (child, format!("http://{addr}"))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn developer_of_prod(op: &str) -> Value {
    let mut item = json!({"op": op, "uid": "User::\"carol\"", "key": "acme-prod"});
    if op == "set_tag" {
        item["value"] = json!({"__entity": {"type": "Prefect::Role", "id": "developer"}});
    }
    json!({ "operations": [item] })
}

#[test]
fn writes_are_read_at_their_revision_and_survive_a_restart() {
    let (_dir, url) = imported_store();
    let (child, base) = serve(Some(&url), &[]);

    let before = decide(&base, "User::\"carol\"", None);
    assert_eq!(before.status, 200);
    assert_eq!(before.body["decision"], "Deny");
    let start = before.revision();
    assert_eq!(start, 1, "the import is revision 1");

    // No token, a wrong token: 401, and nothing is written.
    let body = developer_of_prod("set_tag");
    let none = call(&base, "POST", "/v1/facts", &[], Some(&body)).unwrap();
    assert_eq!(none.status, 401, "{}", none.body);
    let wrong = call(
        &base,
        "POST",
        "/v1/facts",
        &[("Authorization", "Bearer nope")],
        Some(&body),
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(decide(&base, "User::\"carol\"", None).revision(), start);

    // A role in a workspace: Allow from its revision on.
    let written = write(&base, &body);
    assert_eq!(written.status, 200, "{}", written.body);
    let n = written.body["revision"].as_u64().unwrap();
    assert_eq!(n, start + 1);
    let after = decide(&base, "User::\"carol\"", Some(n));
    assert_eq!(after.status, 200);
    assert_eq!(after.body["decision"], "Allow", "{}", after.body);
    assert!(after.revision() >= n);

    // Every decision API states its revision.
    let batch = call(
        &base,
        "POST",
        "/v1/is_authorized/batch",
        &[("Orgwarden-Min-Revision", &n.to_string())],
        Some(&json!({"requests": [{"principal": "User::\"carol\"", "action": "run_deployments", "resource": "Workspace::\"acme-prod\""}]})),
    )
    .unwrap();
    assert_eq!(batch.status, 200);
    assert_eq!(batch.body["results"][0]["decision"], "Allow");
    assert!(batch.revision() >= n);
    let authzen = call(
        &base,
        "POST",
        "/access/v1/evaluation",
        &[],
        Some(&json!({"subject": {"type": "User", "id": "carol"}, "action": {"name": "run_deployments"}, "resource": {"type": "Workspace", "id": "acme-prod"}})),
    )
    .unwrap();
    assert_eq!(authzen.status, 200, "{}", authzen.body);
    assert_eq!(authzen.body["decision"], true);
    assert!(authzen.revision() >= n);
    let evaluations = call(
        &base,
        "POST",
        "/access/v1/evaluations",
        &[],
        Some(&json!({"subject": {"type": "User", "id": "carol"}, "action": {"name": "run_deployments"}, "evaluations": [{"resource": {"type": "Workspace", "id": "acme-prod"}}]})),
    )
    .unwrap();
    assert_eq!(evaluations.status, 200, "{}", evaluations.body);
    assert_eq!(evaluations.body["evaluations"][0]["decision"], true);
    assert!(evaluations.revision() >= n);
    let gateway = call(&base, "GET", "/v1/forward-auth", &[], None).unwrap();
    assert!(gateway.revision() >= n);

    // The entity and the change log.
    let carol = call(
        &base,
        "GET",
        "/v1/facts/User::%22carol%22",
        &[("Authorization", &auth())],
        None,
    )
    .unwrap();
    assert_eq!(carol.status, 200, "{}", carol.body);
    assert_eq!(carol.body["revision"], n);
    assert_eq!(
        carol.body["entity"]["tags"]["acme-prod"]["__entity"]["id"],
        "developer"
    );
    let unauthorized = call(&base, "GET", "/v1/facts/User::%22carol%22", &[], None).unwrap();
    assert_eq!(unauthorized.status, 401);
    let absent = call(
        &base,
        "GET",
        "/v1/facts/User::%22nobody%22",
        &[("Authorization", &auth())],
        None,
    )
    .unwrap();
    assert_eq!(absent.status, 404);
    let changes = call(
        &base,
        "GET",
        &format!("/v1/facts/changes?since={start}"),
        &[("Authorization", &auth())],
        None,
    )
    .unwrap();
    assert_eq!(changes.status, 200, "{}", changes.body);
    let rows = changes.body["changes"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["revision"], n);
    assert_eq!(rows[0]["ops"][0]["op"], "set_tag");
    let waited = call(
        &base,
        "GET",
        &format!("/v1/facts/changes?since={n}&wait_ms=50"),
        &[("Authorization", &auth())],
        None,
    )
    .unwrap();
    assert_eq!(waited.status, 200);
    assert_eq!(waited.body["changes"], json!([]));

    // Removal: denied from its revision on.
    let removed = write(&base, &developer_of_prod("remove_tag"));
    assert_eq!(removed.status, 200, "{}", removed.body);
    let m = removed.body["revision"].as_u64().unwrap();
    assert_eq!(m, n + 1);
    let denied = decide(&base, "User::\"carol\"", Some(m));
    assert_eq!(denied.body["decision"], "Deny");
    assert!(denied.revision() >= m);

    // Broken rules, a bad type, a stale if_revision: refused, naming the
    // field, and the revision does not move.
    let cases = [
        (
            json!({"operations": [{"op": "add_parent", "uid": "ServiceAccount::\"ci-bot\"", "parent": "OrgAdmins::\"acme-admins\""}]}),
            "operations[0].parent",
        ),
        (
            json!({"operations": [{"op": "set_tag", "uid": "User::\"gina\"", "key": "acme-prod", "value": {"__entity": {"type": "Prefect::Role", "id": "viewer"}}}]}),
            "operations[0].key",
        ),
        (
            json!({"operations": [{"op": "set_attr", "uid": "User::\"carol\"", "attr": "email", "value": 42}]}),
            "operations[0]",
        ),
        (
            json!({"operations": [{"op": "set_tag", "uid": "User::\"carol\"", "key": "acme-prod", "value": {"__entity": {"type": "Prefect::Role", "id": "developer"}}}, {"op": "bogus"}]}),
            "operations[1]",
        ),
    ];
    for (body, field) in cases {
        let refused = write(&base, &body);
        assert!(
            (400..500).contains(&refused.status),
            "{body}: {}",
            refused.body
        );
        let got = refused.body["error"]["field"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(field),
            "{body}: field {got}, expected {field}"
        );
        assert!(refused.body["error"]["code"].is_string());
    }
    let conflict = write(
        &base,
        &json!({"operations": developer_of_prod("set_tag")["operations"], "if_revision": n}),
    );
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.body["error"]["code"], "revision_conflict");
    assert_eq!(conflict.body["error"]["revision"], m);
    let still = decide(&base, "User::\"carol\"", None);
    assert_eq!(still.revision(), m);
    assert_eq!(still.body["decision"], "Deny");

    let status = call(&base, "GET", "/v1/status", &[], None).unwrap();
    assert_eq!(status.body["facts"]["source"], "store");
    assert_eq!(status.body["facts"]["revision"], m);

    // Stale and malformed minimum revisions.
    let stale = decide(&base, "User::\"carol\"", Some(m + 1000));
    assert_eq!(stale.status, 503);
    assert_eq!(stale.body["error"]["code"], "stale_facts");
    let malformed = call(
        &base,
        "POST",
        "/v1/is_authorized",
        &[("Orgwarden-Min-Revision", "soon")],
        Some(&json!({"principal": "User::\"carol\"", "action": "run_deployments", "resource": "Workspace::\"acme-prod\""})),
    )
    .unwrap();
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.body["error"]["field"], "Orgwarden-Min-Revision");

    // Search answers on the live facts, at their revision.
    let m_text = m.to_string();
    let search = call(
        &base,
        "GET",
        "/v1/principals/User::%22carol%22/workspaces",
        &[("Orgwarden-Min-Revision", &m_text)],
        None,
    )
    .unwrap();
    assert_eq!(search.status, 200, "{}", search.body);
    assert!(search.revision() >= m);
    assert_eq!(search.body["revision"], search.revision());

    // A last write, then a restart on the same store.
    let last = write(&base, &developer_of_prod("set_tag"));
    assert_eq!(last.status, 200);
    let last = last.body["revision"].as_u64().unwrap();
    stop(child);
    let (child, base) = serve(Some(&url), &[]);
    let again = decide(&base, "User::\"carol\"", Some(last));
    assert_eq!(again.status, 200);
    assert_eq!(again.revision(), last);
    assert_eq!(again.body["decision"], "Allow");
    stop(child);
}

#[test]
fn a_file_backed_sidecar_refuses_writes_and_states_its_revision() {
    let (child, base) = serve(None, &["--facts-token", TOKEN]);
    let refused = write(&base, &developer_of_prod("set_tag"));
    assert_eq!(refused.status, 409);
    assert_eq!(refused.body["error"]["code"], "facts_read_only");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--facts sqlite:"), "{message}");
    let answer = decide(&base, "User::\"carol\"", None);
    assert_eq!(answer.status, 200);
    let revision = answer.revision();
    assert_eq!(decide(&base, "User::\"carol\"", Some(revision)).status, 200);
    assert_eq!(
        decide(&base, "User::\"carol\"", Some(revision + 1)).body["error"]["code"],
        "stale_facts"
    );
    stop(child);
}

#[test]
fn a_store_that_is_not_there_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root();
    let url = format!("sqlite:{}", dir.path().join("missing.db").display());
    let out = serve_command(
        &root.join("policies"),
        &root.join("schema"),
        &root.join("entities"),
        &["--facts", &url],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not starting"), "{stderr}");
    assert!(stderr.contains("facts migrate"), "{stderr}");
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
fn kill_9_during_a_write_storm_loses_no_acknowledged_write() {
    let (dir, url) = imported_store();
    let (child, base) = serve(Some(&url), &[]);
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (base, acked, killed) = (base.clone(), acked.clone(), killed.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let id = format!("storm-{w}-{i}");
                    match call(
                        &base,
                        "POST",
                        "/v1/facts",
                        &[("Authorization", &auth())],
                        Some(&new_member(&id)),
                    ) {
                        Ok(a) if a.status == 200 => {
                            let rev = a.body["revision"].as_u64().unwrap();
                            acked.lock().unwrap().push((id, rev));
                        }
                        Ok(a) if !killed.load(Ordering::SeqCst) => {
                            panic!("write refused: {} {}", a.status, a.body)
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Kill once enough writes were acknowledged (no timing is asserted).
    while acked.lock().unwrap().len() < 40 {
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.store(true, Ordering::SeqCst);
    let mut child = child;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let top = acked.iter().map(|(_, r)| *r).max().unwrap();

    let (child, base) = serve(Some(&url), &[]);
    let head = decide(&base, "User::\"carol\"", None).revision();
    assert!(head >= top, "restarted at {head}, acknowledged {top}");
    for (id, rev) in &acked {
        let got = call(
            &base,
            "GET",
            &format!("/v1/facts/User::%22{id}%22"),
            &[("Authorization", &auth())],
            None,
        )
        .unwrap();
        assert_eq!(got.status, 200, "{id} (revision {rev}) is lost");
        assert_eq!(got.body["revision"], *rev);
    }
    // Every revision holds exactly one batch: no half-applied group.
    let changes = call(
        &base,
        "GET",
        "/v1/facts/changes?since=1&limit=1000",
        &[("Authorization", &auth())],
        None,
    )
    .unwrap();
    let rows = changes.body["changes"].as_array().unwrap();
    assert_eq!(rows.len() as u64, head - 1);
    for row in rows {
        assert_eq!(row["upserted"].as_array().unwrap().len(), 1, "{row}");
    }
    stop(child);

    // The export loads and checks.
    let out_dir = dir.path().join("export");
    let export = orgwarden()
        .args(["facts", "export", &url, "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    check(&out_dir);
}

fn check(entities: &Path) {
    let root = common::root();
    let out = orgwarden()
        .arg("check")
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--schema")
        .arg(root.join("schema"))
        .arg("--entities")
        .arg(entities)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn data(base: &str, method: &str, body: Option<&Value>) -> Answer {
    call(
        base,
        method,
        "/v1/data",
        &[("Authorization", &auth())],
        body,
    )
    .unwrap()
}

/// Every principal against every workspace, for a few actions, in one
/// batch: the decisions, in order.
fn sample(base: &str, entities: &[Value]) -> Vec<String> {
    let of = |kind: &str| -> Vec<String> {
        entities
            .iter()
            .filter(|e| e["uid"]["type"] == kind)
            .map(|e| format!("{}::{}", kind, json!(e["uid"]["id"])))
            .collect()
    };
    let principals = [of("Prefect::User"), of("Prefect::ServiceAccount")].concat();
    let workspaces = of("Prefect::Workspace");
    let mut requests = Vec::new();
    for p in &principals {
        for w in &workspaces {
            for a in ["see_flows", "run_deployments", "manage_flows"] {
                requests.push(json!({"principal": p, "action": a, "resource": w}));
            }
        }
    }
    assert!(requests.len() > 50);
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
fn cedar_agent_data_api_replaces_and_clears_the_store_and_exports_decide_identically() {
    let (dir, url) = imported_store();
    let (child, base) = serve(Some(&url), &[]);
    assert_eq!(call(&base, "GET", "/v1/", &[], None).unwrap().status, 200);
    assert_eq!(
        call(&base, "GET", "/v1/data", &[], None).unwrap().status,
        401
    );

    let listed = data(&base, "GET", None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.revision(), 1);
    let original = listed.body.as_array().unwrap().clone();
    assert!(original.iter().any(|e| e["uid"]["id"] == "ivan"));

    // Replace: ivan leaves, quinn joins acme, carol becomes a developer of
    // acme-prod; one revision.
    let mut replaced: Vec<Value> = original
        .iter()
        .filter(|e| e["uid"]["id"] != "ivan")
        .cloned()
        .collect();
    replaced.push(new_member("quinn")["operations"][0]["entity"].clone());
    for e in replaced.iter_mut() {
        if e["uid"]["id"] == "carol" {
            e["tags"] =
                json!({"acme-prod": {"__entity": {"type": "Prefect::Role", "id": "developer"}}});
        }
    }
    let put = data(&base, "PUT", Some(&Value::Array(replaced.clone())));
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.revision(), 2);
    assert_eq!(put.body.as_array().unwrap().len(), replaced.len());
    let get = |uid: &str| {
        call(
            &base,
            "GET",
            &format!("/v1/facts/User::%22{uid}%22"),
            &[("Authorization", &auth())],
            None,
        )
        .unwrap()
        .status
    };
    assert_eq!(get("ivan"), 404);
    assert_eq!(get("quinn"), 200);
    assert_eq!(
        decide(&base, "User::\"carol\"", Some(2)).body["decision"],
        "Allow"
    );

    // A broken item is refused whole, naming it; nothing moves.
    let mut broken = replaced.clone();
    broken.push(json!({"uid": {"type": "Prefect::User", "id": "zed"}, "attrs": {"email": 7}, "parents": []}));
    let refused = data(&base, "PUT", Some(&Value::Array(broken.clone())));
    assert_eq!(refused.status, 422, "{}", refused.body);
    let field = refused.body["error"]["field"].as_str().unwrap();
    assert!(
        field.starts_with(&format!("operations[{}]", broken.len() - 1)),
        "{field}"
    );
    assert_eq!(decide(&base, "User::\"carol\"", None).revision(), 2);

    // Writes after the replace (with answers of the revision before them
    // cached), then an export decides as the store does, cached or not.
    let before = data(&base, "GET", None);
    let cached_before = sample(&base, before.body.as_array().unwrap());
    let written = write(
        &base,
        &json!({"operations": [
            {"op": "remove_parent", "uid": "User::\"alice\"", "parent": "OrgAdmins::\"acme-admins\""},
            {"op": "set_tag", "uid": "User::\"quinn\"", "key": "acme-staging", "value": {"__entity": {"type": "Prefect::Role", "id": "runner"}}},
        ]}),
    );
    assert_eq!(written.status, 200, "{}", written.body);
    let now = data(&base, "GET", None);
    let live_decisions = sample(&base, now.body.as_array().unwrap());
    assert_ne!(
        live_decisions, cached_before,
        "the write changes some decisions"
    );
    assert_eq!(sample(&base, now.body.as_array().unwrap()), live_decisions);
    assert!(live_decisions.iter().any(|d| d == "Allow"));
    assert!(live_decisions.iter().any(|d| d == "Deny"));
    let out_dir = dir.path().join("export");
    let export = orgwarden()
        .args(["facts", "export", &url, "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(export.status.success());
    check(&out_dir);
    let root = common::root();
    let mut files = serve_command(
        &root.join("policies"),
        &root.join("schema"),
        &out_dir,
        &["--no-watch"],
    );
    files.env_remove("ORGWARDEN_FACTS");
    let (file_child, file_base) = spawn_serve(files, Duration::from_secs(60));
    let file_base = format!("http://{file_base}");
    assert_eq!(
        sample(&file_base, now.body.as_array().unwrap()),
        live_decisions
    );
    stop(file_child);

    // Clear, then restore the original facts.
    let deleted = data(&base, "DELETE", None);
    assert_eq!(deleted.status, 204);
    let empty = data(&base, "GET", None);
    assert_eq!(empty.body, json!([]));
    assert_eq!(
        decide(&base, "User::\"bob\"", Some(empty.revision())).body["decision"],
        "Deny"
    );
    let restored = data(&base, "PUT", Some(&Value::Array(original)));
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(
        decide(&base, "User::\"bob\"", Some(restored.revision())).body["decision"],
        "Allow"
    );
    stop(child);
}

/// `GET /v1/forward-auth/...` of `target` with `Authorization: Bearer key`,
/// at least at revision `min`.
fn forward_auth(base: &str, target: &str, key: &str, min: u64) -> Answer {
    let bearer = format!("Bearer {key}");
    let min = min.to_string();
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Orgwarden-Min-Revision", min.as_str()),
    ];
    let path = format!("/v1/forward-auth{target}");
    call(base, "GET", &path, &headers, None).unwrap()
}

#[test]
fn gateway_keys_and_principals_are_read_from_the_store() {
    let (_dir, url) = imported_store();
    let routes = common::root().join("routes");
    let (child, base) = serve(Some(&url), &["--routes", routes.to_str().unwrap()]);
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let old_key = "ow_demo_carol_78b196c1ef5b8c5dbaa1ed39";
    let new_key = "ow_rotated_carol_key_0123456789abcdef";
    let digest = |key: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    let answer = forward_auth(&base, flows, old_key, 0);
    assert_eq!(answer.status, 200, "{:?}", answer);
    assert_eq!(
        answer.header("x-orgwarden-principal"),
        Some(r#"Prefect::User::"carol""#)
    );

    // A rotation written through the fact API: the old key stops working
    // and the new one works at the revision of the write, without a reload.
    let rotate = json!({"operations": [{"op": "set_attr", "uid": "User::\"carol\"",
        "attr": "apiKeyDigests", "value": [digest(new_key)]}]});
    let written = write(&base, &rotate);
    assert_eq!(written.status, 200, "{}", written.body);
    let n = written.body["revision"].as_u64().unwrap();
    let answer = forward_auth(&base, flows, old_key, n);
    assert_eq!(
        (answer.status, answer.code()),
        (401, "invalid_token"),
        "{:?}",
        answer
    );
    let answer = forward_auth(&base, flows, new_key, n);
    assert_eq!(answer.status, 200, "{:?}", answer);
    assert!(answer.revision() >= n);

    // A member added through the fact API, with a key, is known at once;
    // deleted, the key names nobody.
    let mut member = new_member("walt");
    let walt_key = "ow_walt_key_fedcba9876543210";
    member["operations"][0]["entity"]["attrs"]["apiKeyDigests"] = json!([digest(walt_key)]);
    let written = write(&base, &member);
    assert_eq!(written.status, 200, "{}", written.body);
    let n = written.body["revision"].as_u64().unwrap();
    let answer = forward_auth(&base, flows, walt_key, n);
    assert_eq!(
        answer.header("x-orgwarden-principal"),
        Some(r#"Prefect::User::"walt""#),
        "{:?}",
        answer
    );
    let gone = json!({"operations": [{"op": "delete", "uid": "User::\"walt\""}]});
    let written = write(&base, &gone);
    assert_eq!(written.status, 200, "{}", written.body);
    let n = written.body["revision"].as_u64().unwrap();
    let answer = forward_auth(&base, flows, walt_key, n);
    assert_eq!(answer.status, 401, "{:?}", answer);
    stop(child);
}

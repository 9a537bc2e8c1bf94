//! The web console (`serve --console`) in a real headless browser: the real
//! binary on a loopback port, driven by Debian's Chromium through
//! playwright-core (`tests/browser/console.mjs`, one scenario per call,
//! acting through the page only). Screenshots of every page are saved
//! under `target/console-screenshots/`.
//!
//! The browser, Node and `tests/browser/node_modules` are installed by
//! `scripts/test`. When one is missing the browser tests say so and pass,
//! unless `CI` is set: then they fail. The HTTP-level tests (the console
//! off by default, the admin token, store mode) need no browser.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use common::binary::{serve_command, spawn_serve};
use common::http::{Answer, call};

/// One browser at a time: the machine running the tests may be small.
static BROWSER: Mutex<()> = Mutex::new(());

const CAROL: &str = "Prefect::User::\"carol\"";
const DANA: &str = "Prefect::User::\"dana\"";
const ACME_PROD: &str = "Prefect::Workspace::\"acme-prod\"";

/// A running `orgwarden serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_paths(policies: &Path, schema: &Path, entities: &Path, flags: &[&str]) -> Server {
    let mut command = serve_command(policies, schema, entities, flags);
    for var in [
        "ORGWARDEN_CONSOLE",
        "ORGWARDEN_ADMIN_TOKEN",
        "ORGWARDEN_FACTS",
        "ORGWARDEN_FACTS_TOKEN",
        "ORGWARDEN_CONSOLE_MATRICES",
        "ORGWARDEN_CONSOLE_PROPERTIES",
    ] {
        command.env_remove(var);
    }
    let (child, addr) = spawn_serve(command, Duration::from_secs(60));
    Server {
        child,
        base: format!("http://{addr}"),
    }
}

/// The shipped model, served with `flags`.
fn serve(flags: &[&str]) -> Server {
    let p = common::shipped();
    serve_paths(&p.policies, &p.schema, &p.entities, flags)
}

fn get(base: &str, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    call(base, "GET", path, &headers, None, Duration::from_secs(30)).unwrap()
}

fn post(base: &str, path: &str, body: Value, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    call(
        base,
        "POST",
        path,
        &headers,
        Some(&body),
        Duration::from_secs(30),
    )
    .unwrap()
}

fn browser_dir() -> PathBuf {
    common::root().join("tests").join("browser")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Are Chromium, Node and playwright-core there? Under CI they must be.
fn browser_ready() -> bool {
    let mut missing = Vec::new();
    if !chromium().exists() {
        missing.push(format!(
            "{} (apt-get install chromium)",
            chromium().display()
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node".to_string());
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("tests/browser/node_modules (npm ci in tests/browser)".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "the console's browser tests need {} (scripts/test installs them)",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message}; CI is set: they must run");
    }
    eprintln!("skipped: {message}");
    false
}

fn screenshots() -> PathBuf {
    common::root().join("target").join("console-screenshots")
}

/// Run one scenario of `tests/browser/console.mjs` against `base`: what
/// the page showed, as the script reports it.
fn drive(scenario: &str, base: &str, options: Value) -> Value {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .arg(scenario)
        .arg(base)
        .arg(screenshots())
        .arg(options.to_string())
        .env("CHROMIUM", chromium())
        .current_dir(browser_dir())
        .output()
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario {scenario} failed (screenshot in {}):\n{stderr}",
        screenshots().display()
    );
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("scenario {scenario}: unreadable result ({e}): {stderr}"));
    assert_eq!(
        result["page_errors"],
        json!([]),
        "scenario {scenario}: the page logged errors"
    );
    result
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn the_console_is_off_unless_asked_for() {
    let off = serve(&["--no-watch"]);
    assert_eq!(get(&off.base, "/console/", None).status, 404);
    assert_eq!(get(&off.base, "/v1/console/status", None).status, 404);

    let on = serve(&["--no-watch", "--console"]);
    let page = get(&on.base, "/console/", None);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(get(&on.base, "/console", None).status, 308);
    for asset in ["/console/console.js", "/console/console.css"] {
        assert_eq!(get(&on.base, asset, None).status, 200, "{asset}");
    }
    let status = get(&on.base, "/v1/console/status", None);
    assert_eq!(status.status, 200);
    assert!(status.body["files"].as_array().unwrap().len() > 5);
    // No secret leaves: the sample world's API-key digests appear nowhere.
    let digest = "b79e860e5f14453742105a25fd4ed9e8cec49d286e78707b91fe2a8234f7dc0c";
    for path in [
        "/v1/console/catalog",
        "/v1/console/complete?types=User&q=alice",
        "/v1/console/access/workspace?resource=acme-prod",
        "/v1/console/access/principal?principal=User::%22alice%22",
    ] {
        let a = get(&on.base, path, None);
        assert_eq!(a.status, 200, "{path}: {:?}", a.body);
        assert!(!a.body.to_string().contains(digest), "{path}");
    }
    let decided = post(
        &on.base,
        "/v1/console/decide",
        json!({"principal": "User::\"alice\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}),
        None,
    );
    assert_eq!(decided.body["decision"], "Allow");
    assert!(!decided.body.to_string().contains(digest));
    // Bad input is a clear error naming its field.
    let bad = post(
        &on.base,
        "/v1/console/decide",
        json!({"principal": "Nope::\"x\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}),
        None,
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["field"], "principal");
    let unknown = get(&on.base, "/v1/console/access/workspace?resource=nope", None);
    assert_eq!(unknown.status, 404);
}

#[test]
fn the_admin_token_guards_the_console() {
    let token = "console-admin-token-123";
    let server = serve(&["--no-watch", "--console", "--admin-token", token]);
    let base = &server.base;
    assert_eq!(get(base, "/v1/console/status", None).status, 401);
    assert_eq!(get(base, "/v1/console/status", Some("wrong")).status, 401);
    assert_eq!(get(base, "/v1/console/status", Some(token)).status, 200);
    for path in [
        "/v1/console/catalog",
        "/v1/console/runs",
        "/v1/console/access/workspace?resource=acme-prod",
    ] {
        assert_eq!(get(base, path, None).status, 401, "{path}");
    }
    let decided = post(
        base,
        "/v1/console/decide",
        json!({"principal": "User::\"carol\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}),
        None,
    );
    assert_eq!(decided.status, 401);
    let run = post(base, "/v1/console/runs", json!({"kind": "matrices"}), None);
    assert_eq!(run.status, 401);
    // The page itself holds no data and loads without the token.
    assert_eq!(get(base, "/console/", None).status, 200);

    if !browser_ready() {
        return;
    }
    let login = drive("login", base, json!({ "right_token": token }));
    assert_eq!(login["main_hidden"], true, "{login}");
    assert!(text(&login["refused"]).contains("refused"), "{login}");
    assert!(text(&login["generation"]).contains("generation"), "{login}");
    assert_eq!(login["stored"], token);
    assert!(!text(&login["url"]).contains(token), "{login}");
    // Signed in, the data pages answer.
    let tried = drive(
        "try",
        base,
        json!({"token": token, "principal": "User::\"carol\"", "action": "run_deployments",
               "resource": "Workspace::\"acme-prod\"", "complete": "car"}),
    );
    assert_eq!(tried["decision"], "Deny", "{tried}");
}

#[test]
fn the_status_page_shows_what_is_served() {
    if !browser_ready() {
        return;
    }
    let server = serve(&["--console"]);
    let status = drive("status", &server.base, json!({}));
    let cards: Vec<String> = status["cards"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert!(
        cards.contains(&"Policy generation1".to_string()),
        "{cards:?}"
    );
    assert!(cards.contains(&"Fact revision1".to_string()), "{cards:?}");
    assert!(cards.contains(&"Stateserving".to_string()), "{cards:?}");
    let files: Vec<String> = status["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let tenant = files
        .iter()
        .find(|f| f.contains("tenant-boundary.cedar"))
        .unwrap_or_else(|| panic!("{files:?}"));
    let digest = &tenant[tenant.len() - 64..];
    assert!(is_digest(digest), "{tenant}");
    let on_disk = std::fs::read(common::root().join("policies/tenant-boundary.cedar")).unwrap();
    use sha2::Digest as _;
    assert_eq!(digest, hex::encode(sha2::Sha256::digest(&on_disk)));
    assert_eq!(text(&status["state"]), "No reload error.");
}

#[test]
fn try_a_request_reads_deny_with_its_reason() {
    if !browser_ready() {
        return;
    }
    let server = serve(&["--no-watch", "--console"]);
    let carol = drive(
        "try",
        &server.base,
        json!({"principal": "User::\"carol\"", "action": "run_deployments",
               "resource": "Workspace::\"acme-prod\"", "complete": "da"}),
    );
    assert_eq!(carol["decision"], "Deny", "{carol}");
    let reason = text(&carol["reason"]);
    assert!(
        reason.contains("No permit policy allows") && reason.contains("run_deployments"),
        "{reason}"
    );
    // Why not: what carol holds there comes from the default role.
    assert!(reason.contains("default role `viewer`"), "{reason}");
    assert_eq!(carol["policies"], json!([]));
    let holds: Vec<String> = carol["holds"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert!(
        holds.iter().any(|h| h.starts_with("see_flows")),
        "{holds:?}"
    );
    assert!(
        !holds.iter().any(|h| h.starts_with("run_deployments")),
        "{holds:?}"
    );
    let completions = carol["completions"].as_array().unwrap();
    assert!(completions.contains(&json!(DANA)), "{completions:?}");

    // An Allow names its policy, linked to its file and line, with its text.
    let dana = drive(
        "policy",
        &server.base,
        json!({"principal": "User::\"dana\"", "action": "run_deployments", "resource": "Workspace::\"acme-prod\""}),
    );
    assert_eq!(dana["decision"], "Allow", "{dana}");
    let link = text(&dana["link"]);
    let source = std::fs::read_to_string(
        common::root().join("policies/union-of-default-and-explicit.cedar"),
    )
    .unwrap();
    let line = source
        .lines()
        .position(|l| l.contains("@id(\"union-of-default-and-explicit\")"))
        .unwrap()
        + 1;
    assert!(
        link.ends_with(&format!("union-of-default-and-explicit.cedar:{line}")),
        "{link}"
    );
    assert!(
        text(&dana["source"]).contains("principal.getTag(resource.key)"),
        "{dana}"
    );
    // A forbid names the forbid policy.
    let hank = drive(
        "policy",
        &server.base,
        json!({"principal": "User::\"hank\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}),
    );
    assert_eq!(hank["decision"], "Deny", "{hank}");
    assert!(
        text(&hank["reason"]).contains("Denied by forbid policy `tenant-boundary`"),
        "{hank}"
    );
    assert!(
        text(&hank["link"]).contains("tenant-boundary.cedar:"),
        "{hank}"
    );
}

#[test]
fn the_access_map_shows_dana_runs_deployments_through_runner() {
    if !browser_ready() {
        return;
    }
    let server = serve(&["--no-watch", "--console"]);
    let map = drive(
        "access",
        &server.base,
        json!({"workspace": "acme-prod", "principal": DANA, "scope": "run_deployments",
               "reverse_workspace": ACME_PROD}),
    );
    assert_eq!(map["rule"], "explicit_role", "{map}");
    let hover = text(&map["hover"]);
    assert!(hover.contains("explicit role `runner`"), "{hover}");
    assert!(hover.contains("union-of-default-and-explicit"), "{hover}");
    let rows = map["rows"].as_array().unwrap();
    for who in [
        "Prefect::User::\"alice\"",
        "Prefect::User::\"bob\"",
        CAROL,
        DANA,
        "Prefect::ServiceAccount::\"ci-bot\"",
    ] {
        assert!(rows.contains(&json!(who)), "{who} in {rows:?}");
    }
    // globex's users hold nothing in acme's workspace.
    assert!(!rows.iter().any(|r| text(r).contains("hank")), "{rows:?}");
    assert_eq!(map["reverse_rule"], "explicit_role", "{map}");
    let reverse = map["reverse_rows"].as_array().unwrap();
    assert_eq!(
        reverse,
        &vec![
            json!(ACME_PROD),
            json!("Prefect::Workspace::\"acme-sandbox\"")
        ],
        "{map}"
    );
}

#[test]
fn a_broken_policy_shows_on_the_status_page_with_its_line() {
    if !browser_ready() {
        return;
    }
    let (dir, paths) = common::copy_of_shipped();
    let server = serve_paths(
        &paths.policies,
        &paths.schema,
        &paths.entities,
        &["--console", "--reload-debounce-ms", "100"],
    );
    let file = paths.policies.join("personal-owner.cedar");
    let fixed = std::fs::read_to_string(&file).unwrap();
    let broken =
        format!("{fixed}\npermit (principal, action, resource) when {{ principal.nope == 1 }};\n");
    let line = broken.lines().count();
    let seen = drive(
        "reload",
        &server.base,
        json!({"file": file, "broken": broken, "fixed": fixed, "reload_wait_ms": 20000}),
    );
    assert_eq!(text(&seen["before"]), "No reload error.", "{seen}");
    let diagnostics = seen["diagnostics"].as_array().unwrap();
    let rendered = diagnostics.iter().map(text).collect::<Vec<_>>().join("\n");
    assert!(
        rendered.contains(&format!("personal-owner.cedar:{line}:")),
        "line {line} in {rendered}"
    );
    assert!(rendered.contains("principal.nope == 1"), "{rendered}");
    assert!(rendered.contains("nope"), "{rendered}");
    assert!(text(&seen["serving"]).contains("stale"), "{seen}");
    assert!(text(&seen["after"]).contains("succeeded"), "{seen}");
    drop(server);
    drop(dir);
}

#[test]
fn matrices_and_proofs_run_from_the_page_failures_first() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let matrices = dir.path().join("matrices");
    common::copy_dir(&common::root().join("tests/matrices"), &matrices);
    std::fs::write(
        matrices.join("zz-wrong.yaml"),
        "name: a wrong expectation\ncases:\n  - name: carol runs deployments\n    \
         principal: User::\"carol\"\n    action: run_deployments\n    \
         resource: Workspace::\"acme-prod\"\n    expect: allow\n",
    )
    .unwrap();
    let solver = orgwarden::symbolic::solver_version().is_ok();
    if !solver && std::env::var_os("CI").is_some() {
        panic!("the SMT solver is required under CI (scripts/install-cvc5)");
    }
    let server = serve(&[
        "--no-watch",
        "--console",
        "--console-matrices",
        matrices.to_str().unwrap(),
    ]);
    let runs = drive(
        "runs",
        &server.base,
        json!({"run_wait_ms": 240000, "verify": solver}),
    );
    assert_eq!(runs["matrices_state"], "failed", "{runs}");
    let first = text(&runs["first_failure"]);
    assert!(first.contains("zz-wrong.yaml:"), "{first}");
    assert!(first.contains("expected allow, got deny"), "{first}");
    let summary = text(&runs["matrices_summary"]);
    assert!(summary.contains("1 failed"), "{summary}");
    // Failing files first in the table too.
    let table = &summary[summary.find("failed").unwrap()..];
    let wrong = table.find("zz-wrong.yaml").unwrap();
    let other = table.find("r01-r02-org-roles.yaml").unwrap();
    assert!(wrong < other, "{summary}");
    if solver {
        assert_eq!(runs["verify_state"], "proved", "{runs}");
    } else {
        eprintln!("no SMT solver: verify was not run from the page");
    }
}

#[test]
fn one_run_at_a_time_and_runs_stop_at_their_time_limit() {
    let server = serve(&["--no-watch", "--console", "--console-run-timeout-s", "1"]);
    let base = &server.base;
    let first = post(base, "/v1/console/runs", json!({"kind": "verify"}), None);
    assert_eq!(first.status, 202, "{:?}", first.body);
    let second = post(base, "/v1/console/runs", json!({"kind": "matrices"}), None);
    assert_eq!(second.status, 409, "{:?}", second.body);
    assert_eq!(second.code(), "run_in_progress");
    let bad = post(
        base,
        "/v1/console/runs",
        json!({"kind": "everything"}),
        None,
    );
    assert_eq!(bad.status, 400);
    // Wait for the run's end (bounded by its own time limit).
    let mut result = Value::Null;
    for _ in 0..300 {
        let runs = get(base, "/v1/console/runs", None);
        if runs.body["running"].is_null() {
            result = runs.body["verify"].clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = text(&result["state"]);
    if orgwarden::symbolic::solver_version().is_ok() {
        // The proofs take longer than a second: the run is stopped.
        assert_eq!(state, "timeout", "{result}");
        assert!(text(&result["message"]).contains("1 s"), "{result}");
    } else {
        assert_eq!(state, "invalid", "{result}");
    }
}

#[test]
fn store_mode_reads_the_live_facts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("facts.db").display());
    let root = common::root();
    common::binary::import_facts(&root, &url);
    let token = "facts-token-for-the-console";
    let server = serve(&[
        "--no-watch",
        "--console",
        "--facts",
        &url,
        "--facts-token",
        token,
    ]);
    let base = &server.base;
    let map = |base: &str| {
        get(
            base,
            "/v1/console/access/workspace?resource=acme-prod",
            None,
        )
    };
    let before = map(base);
    assert_eq!(before.status, 200, "{:?}", before.body);
    let carol_before = before.body["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["uid"] == CAROL)
        .unwrap()
        .clone();
    assert!(carol_before["cells"].get("run_deployments").is_none());
    // Give carol the runner role through the fact API.
    let write = post(
        base,
        "/v1/facts",
        json!({"operations": [{"op": "set_tag", "uid": "User::\"carol\"", "key": "acme-prod",
              "value": {"__entity": {"type": "Prefect::Role", "id": "runner"}}}]}),
        Some(token),
    );
    assert_eq!(write.status, 200, "{:?}", write.body);
    let revision = write.body["revision"].as_u64().unwrap();
    let headers = [("Orgwarden-Min-Revision", revision.to_string())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let after = call(
        base,
        "GET",
        "/v1/console/access/workspace?resource=acme-prod",
        &headers,
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(after.body["revision"], revision);
    let carol = after.body["principals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["uid"] == CAROL)
        .unwrap()
        .clone();
    assert_eq!(carol["cells"]["run_deployments"]["rule"], "explicit_role");
    let decided = call(
        base,
        "POST",
        "/v1/console/decide",
        &headers,
        Some(&json!({"principal": "User::\"carol\"", "action": "run_deployments", "resource": "Workspace::\"acme-prod\""})),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(decided.body["decision"], "Allow", "{:?}", decided.body);
    let status = get(base, "/v1/console/status", None);
    assert_eq!(status.body["facts"]["source"], "store");
    assert_eq!(status.body["revision"], revision);
    // The runs read the store's facts: the matrices fail where carol's
    // new role changes an expected deny.
    let run = post(base, "/v1/console/runs", json!({"kind": "matrices"}), None);
    assert_eq!(run.status, 202);
    let mut result = Value::Null;
    for _ in 0..600 {
        let runs = get(base, "/v1/console/runs", None);
        if runs.body["running"].is_null() {
            result = runs.body["matrices"].clone();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(result["revision"], revision);
    let failures = result["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .all(|f| f["request"]["principal"] == CAROL && f["expected"] == "deny"),
        "{failures:?}"
    );
}

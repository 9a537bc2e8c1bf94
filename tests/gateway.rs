//! Gateway integration: `/v1/forward-auth` behind real gateways and at the
//! HTTP level.
//!
//! nginx (`auth_request`) and Envoy (`ext_authz`, HTTP and gRPC services)
//! run on loopback with the configurations in `tests/gateways/` (the ones
//! `docs/gateway.md` quotes), in front of a small upstream, with the real
//! `orgwarden` binary. Every demo principal's requests through the gateway
//! must be allowed or denied exactly as `/v1/is_authorized` decides the same
//! principal, action and resource. A missing gateway binary skips its test
//! with a message, unless `CI` is set: then it fails (`scripts/test`
//! installs both). Traefik's contract (`X-Forwarded-*`), the options, the
//! reloads and the decision log are tested against an in-process server, and
//! so is the gRPC service's agreement with HTTP forward-auth, cell for cell;
//! hostile input on the gRPC port goes to the real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use common::process::{Proc, free_port, locate, spawn_nginx};
use common::{TestServer, copy_dir, copy_of_shipped, root, shipped};
use orgwarden::Paths;
use orgwarden::decision_log::{DecisionLog, LogTarget};
use orgwarden::gateway::{ForwardAuthConfig, Unmatched};
use orgwarden::http::HttpConfig;
use serde_json::{Value, json};

/// The demo keys of the sample world (the table of `docs/gateway.md`).
const KEYS: &[(&str, &str)] = &[
    (
        r#"Prefect::User::"alice""#,
        "ow_demo_alice_42e963049125f29090c02e7f",
    ),
    (
        r#"Prefect::User::"bob""#,
        "ow_demo_bob_a069fe54a792b0ed1d2cda05",
    ),
    (
        r#"Prefect::User::"carol""#,
        "ow_demo_carol_78b196c1ef5b8c5dbaa1ed39",
    ),
    (
        r#"Prefect::User::"dana""#,
        "ow_demo_dana_51497cf43c523b6c178d2a09",
    ),
    (
        r#"Prefect::ServiceAccount::"ci-bot""#,
        "ow_demo_ci-bot_6decace3abd66e8cf9d38fcc",
    ),
    (
        r#"Prefect::ServiceAccount::"deployer-bot""#,
        "ow_demo_deployer-bot_c29fd1613981bebb8226184a",
    ),
];

fn key_of(principal: &str) -> &'static str {
    KEYS.iter()
        .find(|(p, _)| p.ends_with(&format!("::\"{principal}\"")))
        .map(|(_, k)| *k)
        .unwrap()
}

/// A request to the platform and the action and resource its route names.
struct Case {
    method: &'static str,
    target: &'static str,
    action: &'static str,
    resource: &'static str,
}

const fn case(
    method: &'static str,
    target: &'static str,
    action: &'static str,
    resource: &'static str,
) -> Case {
    Case {
        method,
        target,
        action,
        resource,
    }
}

const PROD: &str = r#"Workspace::"acme-prod""#;
const STAGING: &str = r#"Workspace::"acme-staging""#;
const SANDBOX: &str = r#"Workspace::"acme-sandbox""#;
const ACME: &str = r#"Organization::"acme""#;

const CASES: &[Case] = &[
    case(
        "GET",
        "/api/accounts/acme/workspaces/acme-prod/flows/f-1",
        "see_flows",
        PROD,
    ),
    case(
        "POST",
        "/api/accounts/acme/workspaces/acme-prod/deployments/d-1/create_flow_run",
        "run_deployments",
        PROD,
    ),
    case(
        "DELETE",
        "/api/accounts/acme/workspaces/acme-prod/deployments/d-1",
        "manage_deployments",
        PROD,
    ),
    case(
        "POST",
        "/api/accounts/acme/workspaces/acme-prod/work_pools/default/get_scheduled_flow_runs",
        "write_workers",
        PROD,
    ),
    case(
        "POST",
        "/api/accounts/acme/workspaces/acme-prod/user_access/",
        "manage_workspace_users",
        PROD,
    ),
    case(
        "POST",
        "/api/accounts/acme/workspaces/acme-staging/flow_runs/filter",
        "see_flows",
        STAGING,
    ),
    case(
        "PATCH",
        "/api/accounts/acme/workspaces/acme-staging",
        "write_workspace_settings",
        STAGING,
    ),
    case(
        "POST",
        "/api/accounts/acme/workspaces/acme-sandbox/incidents/",
        "write_incidents",
        SANDBOX,
    ),
    case(
        "POST",
        "/api/accounts/acme/invitations/",
        "create:invitation",
        ACME,
    ),
    case(
        "POST",
        "/api/accounts/acme/bots/ci-bot/rotate_api_key",
        "rotate:bot_key",
        ACME,
    ),
    case(
        "POST",
        "/api/accounts/acme/account_memberships/filter",
        "read:account",
        ACME,
    ),
    case(
        "GET",
        "/api/accounts/globex/workspaces/globex-main/flows/f-1",
        "see_flows",
        r#"Workspace::"globex-main""#,
    ),
    // Percent-encoding, a query string and a trailing slash.
    case(
        "GET",
        "/api/accounts/acme/workspaces/acme%2Dprod/variables/name/x/?limit=5",
        "see_variables",
        PROD,
    ),
];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What `/v1/is_authorized` at `base` decides.
async fn expected(base: &str, principal: &str, action: &str, resource: &str) -> bool {
    let body = json!({ "principal": principal, "action": action, "resource": resource });
    let resp = client()
        .post(format!("{base}/v1/is_authorized"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{body}");
    let v: Value = resp.json().await.unwrap();
    v["decision"] == "Allow"
}

/// The expected decision of every principal for every case, checked to
/// hold both allows and denies for each principal (so that a gateway that
/// always allows, or always denies, fails).
async fn expectations(base: &str) -> Vec<(&'static str, &'static Case, bool)> {
    let mut out = Vec::new();
    for (principal, _) in KEYS {
        let mut seen = (false, false);
        for c in CASES {
            let allow = expected(base, principal, c.action, c.resource).await;
            if allow {
                seen.0 = true;
            } else {
                seen.1 = true;
            }
            out.push((*principal, c, allow));
        }
        assert_eq!(seen, (true, true), "{principal} needs allows and denies");
    }
    out
}

fn method(m: &str) -> reqwest::Method {
    reqwest::Method::from_bytes(m.as_bytes()).unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------
// Real gateways
// ---------------------------------------------------------------------------

/// The gateway program, or `None` (with a message) when it is missing and
/// `CI` is not set. Under CI a missing gateway fails the test.
fn require(program: &str, env_var: &str) -> Option<PathBuf> {
    let found = locate(program, env_var);
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "`{program}` is not installed, and CI is set: gateway tests must run under CI \
                 (scripts/test installs it; or set {env_var} to its path)"
            );
        }
        eprintln!(
            "SKIPPED: `{program}` is not installed; run scripts/test (which installs it) \
             or set {env_var}. Under CI this test fails instead."
        );
    }
    found
}

/// The real binary serving the shipped model and routes on a free port.
fn start_orgwarden(dir: &Path) -> (Proc, String) {
    let (proc, addr, _) = start_orgwarden_with(dir, &[]);
    (proc, addr)
}

/// The address after `marker` in the log of `proc`, once it is there.
fn logged_address(proc: &mut Proc, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = proc.log();
        if let Some(at) = text.find(marker) {
            return text[at + marker.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
        if Instant::now() > deadline || matches!(proc.child.try_wait(), Ok(Some(_))) {
            proc.stop();
            panic!("orgwarden did not start:\n{}", proc.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real binary with `extra` options; with `--grpc-listen` among them,
/// the gRPC address too.
fn start_orgwarden_with(dir: &Path, extra: &[&str]) -> (Proc, String, Option<String>) {
    let r = root();
    let log = dir.join("orgwarden.log");
    let mut proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_orgwarden"))
            .args(["serve", "--listen", "127.0.0.1:0", "--decision-log", "off"])
            .arg("--policies")
            .arg(r.join("policies"))
            .arg("--schema")
            .arg(r.join("schema"))
            .arg("--entities")
            .arg(r.join("entities"))
            .arg("--routes")
            .arg(r.join("routes"))
            .args(extra)
            .env("RUST_LOG", "info"),
        log,
    );
    let addr = logged_address(&mut proc, "listening on http://");
    let grpc = extra
        .contains(&"--grpc-listen")
        .then(|| logged_address(&mut proc, "ext_authz gRPC listening on "));
    (proc, addr, grpc)
}

/// The upstream: answers every request with what it received, as JSON.
fn start_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = echo(stream);
            });
        }
    });
    port
}

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let all = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    if let Some(n) = all("content-length").first().and_then(|v| v.parse().ok()) {
        let mut body = vec![0u8; n];
        reader.read_exact(&mut body)?;
    } else if all("transfer-encoding")
        .iter()
        .any(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let body = json!({
        "upstream": true,
        "method": parts.next(),
        "target": parts.next(),
        "principal": all("x-orgwarden-principal"),
        "decision_id": all("x-orgwarden-decision-id"),
        "authorization": all("authorization"),
    })
    .to_string();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// Fill a configuration template's `{{NAME}}` placeholders.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = std::fs::read_to_string(root().join("tests/gateways").join(template)).unwrap();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    assert!(!out.contains("{{"), "unfilled placeholder in {template}");
    out
}

/// Everything a gateway in front of orgwarden must do, checked through it;
/// `stripped`: the upstream must never see the `Authorization` header.
async fn check_through_gateway(
    gateway: &str,
    orgwarden: &str,
    orgwarden_proc: &mut Proc,
    stripped: bool,
) {
    let http = client();
    for (principal, c, allow) in expectations(&format!("http://{orgwarden}")).await {
        let resp = http
            .request(method(c.method), format!("{gateway}{}", c.target))
            .bearer_auth(key_of(principal.rsplit('"').nth(1).unwrap()))
            .header("X-Orgwarden-Principal", r#"Prefect::User::"forged""#)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        let what = format!("{principal} {} {}", c.method, c.target);
        if allow {
            assert_eq!(status, 200, "{what} should pass: {body}");
            let seen: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(seen["upstream"], true, "{what}: {body}");
            assert_eq!(seen["target"], c.target, "{what}: {body}");
            // The principal orgwarden resolved, and never the client's copy.
            assert_eq!(seen["principal"], json!([principal]), "{what}: {body}");
            let id = seen["decision_id"][0].as_str().unwrap_or("");
            assert_eq!(id.len(), 36, "{what}: decision id {body}");
            let credentials = seen["authorization"].as_array().unwrap();
            assert_eq!(credentials.is_empty(), stripped, "{what}: {body}");
        } else {
            assert_eq!(status, 403, "{what} should be denied: {body}");
            assert!(!body.contains("\"upstream\""), "{what} reached upstream");
        }
    }

    let prod_flows = format!("{gateway}/api/accounts/acme/workspaces/acme-prod/flows/f-1");
    // No key, an unknown key: 401 with a Bearer challenge.
    let resp = http.get(&prod_flows).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        header(&resp, "www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let resp = http
        .get(&prod_flows)
        .bearer_auth("ow_demo_nobody_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        header(&resp, "www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    // An unmatched route is denied, even to the org's admin.
    let resp = http
        .get(format!("{gateway}/api/accounts/acme/unknown/thing"))
        .bearer_auth(key_of("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // An encoded `/` in a segment is refused, never decoded into an id.
    let resp = http
        .get(format!(
            "{gateway}/api/accounts/acme/workspaces/acme-staging%2F..%2Facme-prod/flows/f-1"
        ))
        .bearer_auth(key_of("carol"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert!(matches!(status, 400 | 403), "{status}: {body}");
    assert!(!body.contains("\"upstream\""), "reached upstream: {body}");

    // orgwarden gone: an error is a deny, never a pass.
    orgwarden_proc.stop();
    let resp = http
        .get(&prod_flows)
        .bearer_auth(key_of("alice"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert!(status >= 400, "{status}: {body}");
    assert!(!body.contains("\"upstream\""), "reached upstream: {body}");
}

#[tokio::test]
async fn nginx_auth_request_enforces_the_policies() {
    let Some(nginx) = require("nginx", "NGINX") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // nginx's workers may run as another user: let them reach their files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (mut orgwarden, addr) = start_orgwarden(dir.path());
    let upstream = start_upstream();
    let listen = free_port();
    let conf = render(
        "nginx.conf",
        &[
            ("DIR", dir.path().display().to_string()),
            ("UPSTREAM", format!("127.0.0.1:{upstream}")),
            ("ORGWARDEN", addr.clone()),
            ("LISTEN", format!("127.0.0.1:{listen}")),
        ],
    );
    let _gateway = spawn_nginx(&nginx, dir.path(), &conf, listen);
    check_through_gateway(
        &format!("http://127.0.0.1:{listen}"),
        &addr,
        &mut orgwarden,
        false,
    )
    .await;
}

#[tokio::test]
async fn envoy_ext_authz_enforces_the_policies() {
    let Some(envoy) = require("envoy", "ENVOY") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut orgwarden, addr) = start_orgwarden(dir.path());
    let upstream = start_upstream();
    let listen = free_port();
    let orgwarden_port = addr.rsplit(':').next().unwrap().to_string();
    let conf = render(
        "envoy.yaml",
        &[
            ("LISTEN_PORT", listen.to_string()),
            ("UPSTREAM_PORT", upstream.to_string()),
            ("ORGWARDEN_PORT", orgwarden_port),
            ("ORGWARDEN", addr.clone()),
        ],
    );
    let conf_path = dir.path().join("envoy.yaml");
    std::fs::write(&conf_path, conf).unwrap();
    let mut gateway = Proc::spawn(
        Command::new(envoy).arg("-c").arg(&conf_path).args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "error",
        ]),
        dir.path().join("envoy.log"),
    );
    gateway.wait_listening(listen, "envoy");
    check_through_gateway(
        &format!("http://127.0.0.1:{listen}"),
        &addr,
        &mut orgwarden,
        false,
    )
    .await;
}

// ---------------------------------------------------------------------------
// The HTTP contracts, in process
// ---------------------------------------------------------------------------

fn with_routes(paths: Paths) -> Paths {
    Paths {
        routes: Some(root().join("routes")),
        ..paths
    }
}

async fn server(config: HttpConfig) -> TestServer {
    TestServer::start(with_routes(shipped()), config, 1000, DecisionLog::off()).await
}

/// A Traefik-style ForwardAuth request.
fn traefik(s: &TestServer, method: &str, target: &str) -> reqwest::RequestBuilder {
    s.client
        .get(format!("{}/v1/forward-auth", s.base))
        .header("X-Forwarded-Method", method)
        .header("X-Forwarded-Uri", target)
        .header("X-Forwarded-Host", "platform.example")
        .header("X-Forwarded-Proto", "https")
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn traefik_forward_auth_contract() {
    let s = server(HttpConfig::default()).await;
    for (principal, c, allow) in expectations(&s.base).await {
        let name = principal.rsplit('"').nth(1).unwrap();
        let resp = traefik(&s, c.method, c.target)
            .bearer_auth(key_of(name))
            .send()
            .await
            .unwrap();
        let what = format!("{principal} {} {}", c.method, c.target);
        if allow {
            assert_eq!(resp.status(), 200, "{what}");
            assert_eq!(
                header(&resp, "x-orgwarden-principal").as_deref(),
                Some(principal),
                "{what}"
            );
            assert!(header(&resp, "x-orgwarden-decision-id").is_some());
        } else {
            assert_eq!(error_code(resp).await, (403, "forbidden".into()), "{what}");
        }
    }

    let carol = key_of("carol");
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let run = "/api/accounts/acme/workspaces/acme-prod/deployments/d-1/create_flow_run";
    // Without X-Forwarded-Method, the request's own method.
    let resp = s
        .client
        .get(format!("{}/v1/forward-auth", s.base))
        .header("X-Forwarded-Uri", flows)
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Credentials.
    let resp = traefik(&s, "GET", flows).send().await.unwrap();
    assert_eq!(
        header(&resp, "www-authenticate").as_deref(),
        Some(r#"Bearer realm="orgwarden""#)
    );
    assert_eq!(error_code(resp).await, (401, "unauthenticated".into()));
    for auth in ["Basic Y2Fyb2w6eA==", "Bearer", "Bearer ow_demo_nobody"] {
        let resp = traefik(&s, "GET", flows)
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (401, "invalid_token".into()),
            "{auth}"
        );
    }
    // Requests that cannot be read are denied.
    let refused = [
        (
            traefik(&s, "GET", flows).header("X-Original-URI", run),
            "ambiguous_request",
        ),
        (
            s.client.get(format!("{}/v1/forward-auth", s.base)),
            "missing_original_uri",
        ),
        (
            traefik(
                &s,
                "GET",
                "/api/accounts/acme/workspaces/acme-sandbox/../acme-prod/flows/f-1",
            ),
            "invalid_path",
        ),
        (traefik(&s, "GET", "flows"), "invalid_path"),
        (traefik(&s, "GE T", flows), "invalid_request"),
        (
            traefik(&s, "GET", "/api/accounts/acme/nothing-here"),
            "unmatched_route",
        ),
    ];
    for (request, code) in refused {
        let resp = request.bearer_auth(carol).send().await.unwrap();
        assert_eq!(error_code(resp).await, (403, code.into()));
    }
    // A route whose action does not apply to the principal's type is a deny.
    let resp = traefik(
        &s,
        "POST",
        "/api/accounts/acme/invitations/acme-ivan/accept",
    )
    .bearer_auth(key_of("ci-bot"))
    .send()
    .await
    .unwrap();
    assert_eq!(error_code(resp).await, (403, "invalid_request".into()));
    // Decisions are counted under their api.
    let (_, metrics) = s.get("/metrics").await;
    assert!(metrics.contains(r#"api="forward_auth""#), "{metrics}");
}

#[tokio::test]
async fn envoy_paths_win_over_forwarded_uri_headers() {
    let s = server(HttpConfig::default()).await;
    let carol = key_of("carol");
    let denied = "/api/accounts/acme/workspaces/acme-prod/deployments/d-1/create_flow_run";
    let allowed = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let resp = s
        .client
        .post(format!("{}/v1/forward-auth{denied}?x=1", s.base))
        .bearer_auth(carol)
        .header("X-Original-URI", allowed)
        .header("X-Original-Method", "GET")
        .header("X-Forwarded-Uri", allowed)
        .header("X-Forwarded-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "forbidden".into()));
    let resp = s
        .client
        .get(format!("{}/v1/forward-auth{allowed}", s.base))
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Envoy's root path: no route, but the endpoint answers.
    let resp = s
        .client
        .get(format!("{}/v1/forward-auth/", s.base))
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "unmatched_route".into()));
    // nginx's headers.
    let resp = s
        .client
        .get(format!("{}/v1/forward-auth", s.base))
        .header("X-Original-URI", denied)
        .header("X-Original-Method", "POST")
        .bearer_auth(key_of("ci-bot"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "x-orgwarden-principal").as_deref(),
        Some(r#"Prefect::ServiceAccount::"ci-bot""#)
    );
}

#[tokio::test]
async fn unmatched_routes_and_the_trusted_principal_header_are_options() {
    let s = server(HttpConfig {
        forward_auth: ForwardAuthConfig {
            unmatched: Unmatched::Allow,
            trusted_principal_header: Some(HeaderName::from_static("x-authenticated-principal")),
            ..ForwardAuthConfig::default()
        },
        ..HttpConfig::default()
    })
    .await;
    let unmatched = "/api/health";
    let resp = traefik(&s, "GET", unmatched).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-orgwarden-principal"), None);
    let resp = traefik(&s, "GET", unmatched)
        .bearer_auth(key_of("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "x-orgwarden-principal").as_deref(),
        Some(r#"Prefect::User::"bob""#)
    );
    let resp = traefik(&s, "GET", unmatched)
        .bearer_auth("ow_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The trusted header names the principal, and wins over a key.
    let staging = "/api/accounts/acme/workspaces/acme-staging/flows/f-1";
    let as_who = |who: &'static str| {
        traefik(&s, "GET", staging)
            .header("X-Authenticated-Principal", who)
            .bearer_auth(key_of("carol"))
    };
    assert_eq!(as_who(r#"User::"bob""#).send().await.unwrap().status(), 200);
    assert_eq!(
        as_who(r#"User::"carol""#).send().await.unwrap().status(),
        403
    );
    for nobody in [r#"User::"zed""#, r#"Workspace::"acme-prod""#, "bob"] {
        let resp = as_who(nobody).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{nobody}");
    }

    // Not configured: the header is never read.
    let plain = server(HttpConfig::default()).await;
    let resp = traefik(&plain, "GET", staging)
        .header("X-Authenticated-Principal", r#"User::"bob""#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// Replace the digests of `principal` in `acme.json`.
fn set_digests(entities: &Path, principal: &str, digests: &[String]) {
    let path = entities.join("acme.json");
    let mut all: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entity = all
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["uid"]["id"] == principal)
        .unwrap();
    entity["attrs"]["apiKeyDigests"] = json!(digests);
    std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
}

#[tokio::test]
async fn keys_and_routes_reload_with_the_files() {
    let (dir, paths) = copy_of_shipped();
    let routes = dir.path().join("routes");
    copy_dir(&root().join("routes"), &routes);
    let paths = Paths {
        routes: Some(routes.clone()),
        ..paths
    };
    let s = TestServer::start(
        paths.clone(),
        HttpConfig::default(),
        1000,
        DecisionLog::off(),
    )
    .await;
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let status = |key: &'static str, target: &'static str| {
        let request = traefik(&s, "GET", target).bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let old = key_of("ci-bot");
    assert_eq!(status(old, flows).await, 200);

    // Rotating ci-bot's key revokes the old one.
    let new = "ow_demo_ci-bot_rotated";
    set_digests(
        &paths.entities,
        "ci-bot",
        &[orgwarden::gateway::keys::digest_hex(new)],
    );
    s.app.pdp.live.reload().unwrap();
    assert_eq!(status(old, flows).await, 401);
    assert_eq!(status(new, flows).await, 200);

    // A digest held by two principals is refused, and the keys keep serving.
    set_digests(
        &paths.entities,
        "dana",
        &[orgwarden::gateway::keys::digest_hex(new)],
    );
    let diags = s.app.pdp.live.reload().unwrap_err().to_string();
    assert!(diags.contains("is also held by"), "{diags}");
    assert!(diags.contains("acme.json"), "{diags}");
    assert_eq!(status(new, flows).await, 200);
    set_digests(&paths.entities, "dana", &[]);
    // A key written in clear instead of its digest is refused, unechoed.
    set_digests(&paths.entities, "dana", &["ow_demo_in_clear".to_string()]);
    let diags = s.app.pdp.live.reload().unwrap_err().to_string();
    assert!(diags.contains("is not a SHA-256 digest"), "{diags}");
    assert!(!diags.contains("ow_demo_in_clear"), "{diags}");
    set_digests(&paths.entities, "dana", &[]);

    // A new route serves after a reload; a bad routes file keeps the old set.
    let extra = "/api/accounts/acme/workspaces/acme-prod/extra";
    assert_eq!(status(new, extra).await, 403);
    std::fs::write(
        routes.join("extra.yaml"),
        "resource: Workspace::\"{w}\"\nroutes:\n  GET /api/accounts/{a}/workspaces/{w}/extra: see_flows\n",
    )
    .unwrap();
    s.app.pdp.live.reload().unwrap();
    assert_eq!(status(new, extra).await, 200);
    std::fs::write(
        routes.join("extra.yaml"),
        "resource: Workspace::\"{w}\"\nroutes:\n  GET /api/accounts/{a}/workspaces/{w}/extra: see_flow\n",
    )
    .unwrap();
    let diags = s.app.pdp.live.reload().unwrap_err().to_string();
    assert!(diags.contains("extra.yaml:3:"), "{diags}");
    assert!(diags.contains("unknown action `see_flow`"), "{diags}");
    assert_eq!(status(new, extra).await, 200);
    drop(dir);
}

#[tokio::test]
async fn the_decision_log_names_the_principal_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::start(&LogTarget::File(log_path.clone()), false).unwrap();
    let s = TestServer::start(with_routes(shipped()), HttpConfig::default(), 0, log).await;
    let key = key_of("deployer-bot");
    let resp = traefik(
        &s,
        "DELETE",
        "/api/accounts/acme/workspaces/acme-staging/deployments/d-1",
    )
    .bearer_auth(key)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("forward_auth") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["api"], "forward_auth", "{text}");
    assert_eq!(
        line["principal"],
        r#"Prefect::ServiceAccount::"deployer-bot""#
    );
    assert_eq!(line["action"], r#"Prefect::Action::"manage_deployments""#);
    assert_eq!(line["resource"], r#"Prefect::Workspace::"acme-staging""#);
    assert!(!text.contains(key), "{text}");
    assert!(!text.contains("Bearer"), "{text}");
}

/// `docs/gateway.md` quotes the configurations these tests run, and its key
/// table is the one the sample world's digests answer.
#[test]
fn the_docs_quote_the_tested_configs_and_keys() {
    let docs = std::fs::read_to_string(root().join("docs/gateway.md")).unwrap();
    for template in ["nginx.conf", "envoy.yaml", "envoy-grpc.yaml"] {
        let text = std::fs::read_to_string(root().join("tests/gateways").join(template)).unwrap();
        assert!(
            docs.contains(&text),
            "docs/gateway.md must quote tests/gateways/{template} verbatim"
        );
    }
    let mut table = Vec::new();
    for line in docs.lines().filter(|l| l.contains("`ow_demo_")) {
        let cells: Vec<&str> = line
            .split('|')
            .map(|c| c.trim().trim_matches('`'))
            .filter(|c| !c.is_empty())
            .collect();
        table.push((cells[0].to_string(), cells[1].to_string()));
    }
    let expected: Vec<(String, String)> = KEYS
        .iter()
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect();
    assert_eq!(table, expected, "the key table of docs/gateway.md");
    let snap = orgwarden::load(&shipped()).unwrap();
    for (principal, key) in KEYS {
        let uid = snap.keys.resolve(key).map(ToString::to_string);
        assert_eq!(uid.as_deref(), Some(*principal), "{key}");
    }
}

// ---------------------------------------------------------------------------
// Envoy's ext_authz over gRPC
// ---------------------------------------------------------------------------

use envoy_types::ext_authz::v3::pb::HttpResponse;
use orgwarden::grpc::GrpcConfig;

mod grpc {
    use super::*;

    pub use crate::common::grpc::{answer, check_request, client};
    use orgwarden::grpc::GrpcConfig;
    use tonic::transport::Channel;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    /// The gRPC service over `s`'s decision point, on a loopback port.
    pub async fn serve(s: &TestServer, config: GrpcConfig) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pdp = s.app.pdp.clone();
        tokio::spawn(async move {
            orgwarden::grpc::serve(listener, pdp, config, std::future::pending())
                .await
                .unwrap();
        });
        addr
    }

    pub async fn health(addr: &str, service: &str) -> i32 {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }

    pub const SERVING: i32 = ServingStatus::Serving as i32;
    pub const NOT_SERVING: i32 = ServingStatus::NotServing as i32;
}

#[tokio::test]
async fn envoy_grpc_ext_authz_enforces_the_policies() {
    let Some(envoy) = require("envoy", "ENVOY") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut orgwarden, addr, grpc_addr) = start_orgwarden_with(
        dir.path(),
        &["--grpc-listen", "127.0.0.1:0", "--strip-credentials"],
    );
    let grpc_port = grpc_addr.unwrap().rsplit(':').next().unwrap().to_string();
    let upstream = start_upstream();
    let listen = free_port();
    let access_log = dir.path().join("access.log");
    let conf = render(
        "envoy-grpc.yaml",
        &[
            ("LISTEN_PORT", listen.to_string()),
            ("UPSTREAM_PORT", upstream.to_string()),
            ("ORGWARDEN_GRPC_PORT", grpc_port),
            ("ACCESS_LOG", access_log.display().to_string()),
        ],
    );
    let conf_path = dir.path().join("envoy-grpc.yaml");
    std::fs::write(&conf_path, conf).unwrap();
    let mut gateway = Proc::spawn(
        Command::new(envoy).arg("-c").arg(&conf_path).args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "error",
            "--file-flush-interval-msec",
            "50",
        ]),
        dir.path().join("envoy.log"),
    );
    gateway.wait_listening(listen, "envoy");

    // The decision's dynamic metadata reaches Envoy's access log.
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let resp = client()
        .get(format!("http://127.0.0.1:{listen}{flows}"))
        .bearer_auth(key_of("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The client learns the fact revision the check was decided at.
    assert!(
        resp.headers().contains_key("orgwarden-revision"),
        "{:?}",
        resp.headers()
    );
    // A minimum revision the facts cannot reach is refused, not decided.
    let resp = client()
        .get(format!("http://127.0.0.1:{listen}{flows}"))
        .bearer_auth(key_of("carol"))
        .header("Orgwarden-Min-Revision", "1000000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "stale_facts", "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&access_log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(flows)) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.starts_with("200 GET "), "{line}");
    assert!(
        line.contains(r#"principal=Prefect::User::"carol""#),
        "{line}"
    );
    assert!(
        line.contains(r#"action=Prefect::Action::"see_flows""#),
        "{line}"
    );
    assert!(!line.contains("policies=[]"), "{line}");
    assert!(!line.contains("policies=-"), "{line}");

    check_through_gateway(
        &format!("http://127.0.0.1:{listen}"),
        &addr,
        &mut orgwarden,
        true,
    )
    .await;
}

#[tokio::test]
async fn grpc_and_http_forward_auth_agree_cell_for_cell() {
    let s = server(HttpConfig::default()).await;
    let addr = grpc::serve(&s, GrpcConfig::default()).await;
    let mut client = grpc::client(&addr).await;
    let mut credentials: Vec<Option<String>> = KEYS
        .iter()
        .map(|(_, key)| Some(format!("Bearer {key}")))
        .collect();
    credentials.extend([
        None,
        Some("Bearer ow_demo_nobody".into()),
        Some("Basic Y2Fyb2w6eA==".into()),
        Some("Bearer".into()),
    ]);
    let mut targets: Vec<(&str, &str)> = CASES.iter().map(|c| (c.method, c.target)).collect();
    targets.extend([
        ("GET", "/api/accounts/acme/unknown/thing"),
        ("GET", "/"),
        (
            "GET",
            "/api/accounts/acme/workspaces/acme-staging%2F..%2Facme-prod/flows/f-1",
        ),
        ("POST", "/api/accounts/acme/invitations/acme-ivan/accept"),
    ]);
    let (mut allows, mut cells) = (0, 0);
    for credential in &credentials {
        for (m, target) in &targets {
            let mut request = s
                .client
                .request(method(m), format!("{}/v1/forward-auth{target}", s.base));
            let mut headers = vec![("X-Orgwarden-Principal", r#"Prefect::User::"forged""#)];
            if let Some(c) = credential {
                request = request.header("Authorization", c);
                headers.push(("Authorization", c));
            }
            let resp = request.send().await.unwrap();
            let http_principal = header(&resp, "x-orgwarden-principal");
            let http_challenge = header(&resp, "www-authenticate");
            let (http_status, http_code) = error_code(resp).await;
            let response = client
                .check(grpc::check_request(m, target, &headers))
                .await
                .unwrap()
                .into_inner();
            let got = grpc::answer(response);
            let what = format!("{credential:?} {m} {target}");
            assert_eq!(got.status, http_status, "{what}: {got:?}");
            assert_eq!(got.code, http_code, "{what}: {got:?}");
            assert_eq!(got.principal, http_principal, "{what}");
            if let Some(HttpResponse::DeniedResponse(d)) = &got.response.http_response {
                let challenge = d
                    .headers
                    .iter()
                    .filter_map(|h| h.header.as_ref())
                    .find(|h| h.key == "www-authenticate")
                    .map(|h| h.value.clone());
                assert_eq!(challenge, http_challenge, "{what}");
            }
            cells += 1;
            allows += usize::from(got.status == 200);
        }
    }
    // Both answers occur, and every kind of refusal.
    assert!(allows > 10 && allows < cells - 10, "{allows} of {cells}");
    let (_, metrics) = s.get("/metrics").await;
    assert!(metrics.contains(r#"api="ext_authz_grpc""#), "{metrics}");
    assert!(metrics.contains(r#"api="forward_auth""#), "{metrics}");
}

#[tokio::test]
async fn grpc_answers_carry_headers_metadata_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::start(&LogTarget::File(log_path.clone()), false).unwrap();
    let s = TestServer::start(with_routes(shipped()), HttpConfig::default(), 0, log).await;
    let plain = grpc::serve(&s, GrpcConfig::default()).await;
    let stripping = grpc::serve(
        &s,
        GrpcConfig {
            strip_credentials: true,
            ..GrpcConfig::default()
        },
    )
    .await;
    let passing = grpc::serve(
        &s,
        GrpcConfig {
            forward_auth: ForwardAuthConfig {
                unmatched: Unmatched::Allow,
                ..ForwardAuthConfig::default()
            },
            ..GrpcConfig::default()
        },
    )
    .await;
    let key = format!("Bearer {}", key_of("deployer-bot"));
    let deploy = "/api/accounts/acme/workspaces/acme-staging/deployments/d-1";
    let request = grpc::check_request("DELETE", deploy, &[("authorization", &key)]);

    // Allowed: the upstream headers, the credential kept or removed, and
    // the decision's metadata.
    for (addr, stripped) in [(&plain, false), (&stripping, true)] {
        let got = grpc::answer(
            grpc::client(addr)
                .await
                .check(request.clone())
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got.status, 200);
        assert_eq!(
            got.principal.as_deref(),
            Some(r#"Prefect::ServiceAccount::"deployer-bot""#)
        );
        let Some(HttpResponse::OkResponse(ok)) = &got.response.http_response else {
            unreachable!()
        };
        let id = ok
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-orgwarden-decision-id")
            .map(|h| h.value.clone())
            .unwrap();
        assert_eq!(
            ok.headers_to_remove.contains(&"authorization".to_string()),
            stripped
        );
        let meta = got.response.dynamic_metadata.as_ref().unwrap();
        let text = |k: &str| match &meta.fields[k].kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v)) => v.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(
            text("principal"),
            r#"Prefect::ServiceAccount::"deployer-bot""#
        );
        assert_eq!(text("action"), r#"Prefect::Action::"manage_deployments""#);
        assert_eq!(text("resource"), r#"Prefect::Workspace::"acme-staging""#);
        assert_eq!(text("decision"), "allow");
        assert_eq!(text("decision_id"), id);
        match &meta.fields["determining_policies"].kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::ListValue(l)) => {
                assert!(!l.values.is_empty())
            }
            other => panic!("{other:?}"),
        }
    }

    // Denied: the JSON error body, the decision id, no credential: a
    // challenge.
    let mut c = grpc::client(&plain).await;
    let carol = format!("Bearer {}", key_of("carol"));
    let got = grpc::answer(
        c.check(grpc::check_request(
            "DELETE",
            deploy,
            &[("authorization", &carol)],
        ))
        .await
        .unwrap()
        .into_inner(),
    );
    assert_eq!((got.status, got.code.as_str()), (403, "forbidden"));
    let Some(HttpResponse::DeniedResponse(d)) = &got.response.http_response else {
        unreachable!()
    };
    let body: Value = serde_json::from_str(&d.body).unwrap();
    assert_eq!(body["decision_id"].as_str().unwrap().len(), 36, "{body}");
    assert_eq!(
        got.response.status.as_ref().unwrap().code,
        tonic::Code::PermissionDenied as i32
    );
    let got = grpc::answer(
        c.check(grpc::check_request("DELETE", deploy, &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!((got.status, got.code.as_str()), (401, "unauthenticated"));
    assert_eq!(
        got.response.status.as_ref().unwrap().code,
        tonic::Code::Unauthenticated as i32
    );

    // Unmatched routes follow the forward-auth choice: denied by default,
    // passed (with the known principal, a client's copy removed) when asked.
    let health = grpc::check_request("GET", "/api/health", &[("authorization", &carol)]);
    let got = grpc::answer(c.check(health.clone()).await.unwrap().into_inner());
    assert_eq!((got.status, got.code.as_str()), (403, "unmatched_route"));
    let mut p = grpc::client(&passing).await;
    let got = grpc::answer(p.check(health).await.unwrap().into_inner());
    assert_eq!(got.status, 200);
    assert_eq!(got.principal.as_deref(), Some(r#"Prefect::User::"carol""#));
    let anonymous = grpc::check_request(
        "GET",
        "/api/health",
        &[("x-orgwarden-principal", r#"Prefect::User::"forged""#)],
    );
    let got = grpc::answer(p.check(anonymous).await.unwrap().into_inner());
    assert_eq!((got.status, got.principal), (200, None));
    let Some(HttpResponse::OkResponse(ok)) = &got.response.http_response else {
        unreachable!()
    };
    assert!(
        ok.headers_to_remove
            .contains(&"x-orgwarden-principal".to_string())
    );

    // The decision log names the api, the principal, and never the key.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.lines().count() >= 4 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["api"], "ext_authz_grpc", "{text}");
    assert_eq!(
        line["principal"],
        r#"Prefect::ServiceAccount::"deployer-bot""#
    );
    assert!(!text.contains(key_of("deployer-bot")), "{text}");
    assert!(!text.contains("Bearer"), "{text}");
}

#[tokio::test]
async fn grpc_checks_honour_the_minimum_revision() {
    let s = server(HttpConfig::default()).await;
    let addr = grpc::serve(
        &s,
        GrpcConfig {
            consistency_wait: Duration::from_millis(150),
            ..GrpcConfig::default()
        },
    )
    .await;
    let mut c = grpc::client(&addr).await;
    let now = s.app.pdp.at().revision();
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let carol = format!("Bearer {}", key_of("carol"));
    let revision_of =
        |headers: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
            headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "orgwarden-revision")
                .map(|h| h.value.clone())
        };
    let ask = |method: &str, min: Option<&str>, target: &str| {
        let mut headers = vec![("authorization", carol.as_str())];
        if let Some(min) = min {
            headers.push(("orgwarden-min-revision", min));
        }
        grpc::check_request(method, target, &headers)
    };

    // Reached: decided, and the client is told the revision used.
    for min in [None, Some(now.to_string())] {
        let got = grpc::answer(
            c.check(ask("GET", min.as_deref(), flows))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(got.status, 200, "{got:?}");
        let Some(HttpResponse::OkResponse(ok)) = &got.response.http_response else {
            panic!("{got:?}")
        };
        assert_eq!(
            revision_of(&ok.response_headers_to_add),
            Some(now.to_string())
        );
    }
    // A deny names the revision too.
    let deploy = "/api/accounts/acme/workspaces/acme-prod/deployments/d-1";
    let got = grpc::answer(
        c.check(ask("DELETE", None, deploy))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(got.status, 403, "{got:?}");
    let Some(HttpResponse::DeniedResponse(denied)) = &got.response.http_response else {
        panic!("{got:?}")
    };
    assert_eq!(revision_of(&denied.headers), Some(now.to_string()));

    // Ahead of the facts: refused after the wait, never decided on old facts.
    let started = Instant::now();
    let ahead = (now + 1).to_string();
    let got = grpc::answer(
        c.check(ask("GET", Some(&ahead), flows))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        (got.status, got.code.as_str()),
        (503, "stale_facts"),
        "{got:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    // Not a revision: refused as a bad request.
    let got = grpc::answer(
        c.check(ask("GET", Some("soon"), flows))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        (got.status, got.code.as_str()),
        (400, "invalid_header"),
        "{got:?}"
    );

    // The HTTP forward-auth path answers the same.
    let resp = s
        .client
        .get(format!("{}/v1/forward-auth{flows}", s.base))
        .header("Authorization", &carol)
        .header("Orgwarden-Min-Revision", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn grpc_health_follows_the_snapshot() {
    let (dir, paths) = copy_of_shipped();
    let s = TestServer::start(
        with_routes(paths.clone()),
        HttpConfig::default(),
        1000,
        DecisionLog::off(),
    )
    .await;
    let addr = grpc::serve(&s, GrpcConfig::default()).await;
    let wait_for = |want: i32| {
        let addr = addr.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let both = (
                    grpc::health(&addr, "").await,
                    grpc::health(&addr, orgwarden::grpc::SERVICE).await,
                );
                if both == (want, want) {
                    return;
                }
                assert!(Instant::now() < deadline, "health {both:?}, want {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(grpc::SERVING).await;
    // A failed reload: the old snapshot serves, stale: NOT_SERVING.
    let broken = paths.policies.join("broken.cedar");
    std::fs::write(&broken, "permit(principal, action, resource").unwrap();
    assert!(s.app.pdp.live.reload().is_err());
    wait_for(grpc::NOT_SERVING).await;
    // Checks are still answered meanwhile, from the last good snapshot.
    let mut c = grpc::client(&addr).await;
    let key = format!("Bearer {}", key_of("carol"));
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let got = grpc::answer(
        c.check(grpc::check_request(
            "GET",
            flows,
            &[("authorization", &key)],
        ))
        .await
        .unwrap()
        .into_inner(),
    );
    assert_eq!(got.status, 200);
    std::fs::remove_file(&broken).unwrap();
    s.app.pdp.live.reload().unwrap();
    wait_for(grpc::SERVING).await;
    drop(dir);
}

/// A message that is no `CheckRequest`: field 1 (`attributes`) holding bytes
/// that are no protobuf.
#[derive(Clone, PartialEq, prost::Message)]
struct Junk {
    #[prost(bytes = "vec", tag = "1")]
    attributes: Vec<u8>,
}

#[tokio::test]
async fn hostile_input_on_the_grpc_port_is_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, _, grpc_addr) = start_orgwarden_with(
        dir.path(),
        &[
            "--grpc-listen",
            "127.0.0.1:0",
            "--grpc-max-message-bytes",
            "65536",
        ],
    );
    let addr = grpc_addr.unwrap();
    let mut c = grpc::client(&addr).await;
    let key = format!("Bearer {}", key_of("carol"));
    let flows = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
    let valid = grpc::check_request("GET", flows, &[("authorization", &key)]);

    // No attributes, no request, no http block: a deny answer.
    let mut no_http = valid.clone();
    no_http
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http = None;
    let mut no_request = valid.clone();
    no_request.attributes.as_mut().unwrap().request = None;
    let empty = envoy_types::ext_authz::v3::pb::CheckRequest::default();
    for hollow in [empty, no_request, no_http] {
        let got = grpc::answer(c.check(hollow).await.unwrap().into_inner());
        assert_eq!((got.status, got.code.as_str()), (403, "invalid_request"));
    }
    // Headers that are no HTTP headers, a method that is none: a deny.
    let bad_header = grpc::check_request(
        "GET",
        flows,
        &[("authorization", &key), ("bad header\n", "x")],
    );
    let bad_method = grpc::check_request("GE T", flows, &[("authorization", &key)]);
    for bad in [bad_header, bad_method] {
        let got = grpc::answer(c.check(bad).await.unwrap().into_inner());
        assert_eq!(got.status, 403, "{got:?}");
    }
    // Over the size limit: a gRPC error (a deny for Envoy), never an allow.
    let big = "x".repeat(100 * 1024);
    let oversized = grpc::check_request("GET", flows, &[("authorization", &key), ("x-big", &big)]);
    let status = c.check(oversized).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    // Not a CheckRequest: a gRPC error.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    raw.ready().await.unwrap();
    let junk: Result<tonic::Response<Junk>, _> = raw
        .unary(
            tonic::Request::new(Junk {
                attributes: vec![0xff; 64],
            }),
            "/envoy.service.auth.v3.Authorization/Check"
                .parse()
                .unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(junk.map(|_| ()).unwrap_err().code(), tonic::Code::Internal);
    // Garbage bytes and a plain HTTP/1 request on the port.
    for garbage in [
        (0..65536u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<u8>>(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xff".to_vec(),
    ] {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = stream.write_all(&garbage);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }

    // Still up, still deciding, still healthy.
    assert!(matches!(proc.child.try_wait(), Ok(None)), "{}", proc.log());
    let mut c = grpc::client(&addr).await;
    let got = grpc::answer(c.check(valid).await.unwrap().into_inner());
    assert_eq!(
        (got.status, got.principal.as_deref()),
        (200, Some(r#"Prefect::User::"carol""#))
    );
    let carol_denied = grpc::check_request(
        "DELETE",
        "/api/accounts/acme/workspaces/acme-prod/deployments/d-1",
        &[("authorization", &key)],
    );
    let got = grpc::answer(c.check(carol_denied).await.unwrap().into_inner());
    assert_eq!(got.status, 403);
    assert_eq!(grpc::health(&addr, "").await, grpc::SERVING);

    // An HTTP/2 connection left open (a client that ignores GOAWAY) does
    // not keep a stopping server from exiting.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    Command::new("kill")
        .args(["-TERM", &proc.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "not stopped:\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", proc.log());
    drop(idle);
}

#[tokio::test]
async fn ambiguous_uris_and_method_overrides_are_refused() {
    let s = server(HttpConfig::default()).await;
    let carol = key_of("carol");
    let prod = "/api/accounts/acme/workspaces/acme-prod/flows";
    let plain = format!("{prod}/x");
    let resp = traefik(&s, "GET", &plain)
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the plain request is allowed");
    for target in [
        format!("{prod}/x#/../../../globex-main/flows/y"),
        format!("{prod}/a\\b"),
        format!("{prod}/a%5Cb"),
        format!("{prod}/a%5cb"),
        format!("{prod}/a%00"),
    ] {
        let resp = traefik(&s, "GET", &target)
            .bearer_auth(carol)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "ambiguous_request".into()),
            "{target}"
        );
        // nginx's header too.
        let resp = s
            .client
            .get(format!("{}/v1/forward-auth", s.base))
            .header("X-Original-URI", &target)
            .header("X-Original-Method", "GET")
            .bearer_auth(carol)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "ambiguous_request".into()),
            "{target}"
        );
    }
    // Envoy's path.
    let resp = s
        .client
        .get(format!("{}/v1/forward-auth{prod}/a%00", s.base))
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "ambiguous_request".into()));

    // A method override is refused by default ...
    let run = "/api/accounts/acme/workspaces/acme-prod/deployments/d-1/create_flow_run";
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        let resp = traefik(&s, "GET", &plain)
            .header(name, "POST")
            .bearer_auth(carol)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(resp).await,
            (403, "ambiguous_request".into()),
            "{name}"
        );
    }
    // ... and decides on the method it names when the operator honours it.
    let honor = server(HttpConfig {
        forward_auth: ForwardAuthConfig {
            method_override: orgwarden::gateway::forward_auth::MethodOverride::Honor,
            ..ForwardAuthConfig::default()
        },
        ..HttpConfig::default()
    })
    .await;
    let resp = traefik(&honor, "GET", run)
        .header("X-HTTP-Method-Override", "POST")
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (403, "forbidden".into()),
        "carol may not run"
    );
    let resp = traefik(&honor, "POST", &plain)
        .header("X-HTTP-Method-Override", "GET")
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = traefik(&honor, "GET", &plain)
        .header("X-HTTP-Method-Override", "GET")
        .header("X-Method-Override", "DELETE")
        .bearer_auth(carol)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, (403, "ambiguous_request".into()));
}

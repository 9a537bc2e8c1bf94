//! Gateway integration: `/v1/forward-auth` behind real gateways and at the
//! HTTP level.
//!
//! nginx (`auth_request`) and Envoy (`ext_authz`, HTTP service) run on
//! loopback with the configurations in `tests/gateways/` (the ones
//! `docs/gateway.md` quotes), in front of a small upstream, with the real
//! `orgwarden` binary. Every demo principal's requests through the gateway
//! must be allowed or denied exactly as `/v1/is_authorized` decides the same
//! principal, action and resource. A missing gateway binary skips its test
//! with a message, unless `CI` is set: then it fails (`scripts/test`
//! installs both). Traefik's contract (`X-Forwarded-*`), the options, the
//! reloads and the decision log are tested against an in-process server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::HeaderName;
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

/// The gateway program: `$ENV_VAR`, else on `PATH` (or an `sbin`).
fn locate(program: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, terminated (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Proc { child, log }
}

/// The real binary serving the shipped model and routes on a free port.
fn start_orgwarden(dir: &Path) -> (Proc, String) {
    let r = root();
    let log = dir.join("orgwarden.log");
    let mut proc = spawn(
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
            .env("RUST_LOG", "info"),
        log,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = proc.log();
        if let Some(at) = text.find("listening on http://") {
            let addr = text[at + "listening on http://".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            return (proc, addr);
        }
        if Instant::now() > deadline || matches!(proc.child.try_wait(), Ok(Some(_))) {
            proc.stop();
            panic!("orgwarden did not start:\n{}", proc.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `port` accepts connections.
fn wait_listening(port: u16, proc: &mut Proc, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline || matches!(proc.child.try_wait(), Ok(Some(_))) {
            proc.stop();
            panic!("{what} did not start:\n{}", proc.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// Everything a gateway in front of orgwarden must do, checked through it.
async fn check_through_gateway(gateway: &str, orgwarden: &str, orgwarden_proc: &mut Proc) {
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
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut gateway = spawn(
        Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&conf_path),
        dir.path().join("nginx.log"),
    );
    wait_listening(listen, &mut gateway, "nginx");
    check_through_gateway(&format!("http://127.0.0.1:{listen}"), &addr, &mut orgwarden).await;
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
    let mut gateway = spawn(
        Command::new(envoy).arg("-c").arg(&conf_path).args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "error",
        ]),
        dir.path().join("envoy.log"),
    );
    wait_listening(listen, &mut gateway, "envoy");
    check_through_gateway(&format!("http://127.0.0.1:{listen}"), &addr, &mut orgwarden).await;
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
    for template in ["nginx.conf", "envoy.yaml"] {
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

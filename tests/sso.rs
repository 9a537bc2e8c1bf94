//! SSO principals against a real OpenID provider.
//!
//! `tests/oidc/provider.mjs` runs `oidc-provider` (a certified OpenID
//! Connect provider library, from npm) on loopback: client-credentials
//! access tokens in JWT format and ID tokens, signed with keys the test
//! generates, so that it can rotate them (a restart with other keys) and
//! sign hand-made hostile tokens with the provider's own key. The real
//! `orgwarden` binary verifies them through OIDC discovery; nginx
//! (`auth_request`) stands in front for the gateway test. A missing `node`,
//! `tests/oidc/node_modules` (`scripts/test` runs `npm ci`) or nginx skips a
//! test with a message, unless `CI` is set: then it fails.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::grpc;
use common::process::{Proc, free_port, locate, spawn_nginx};
use common::root;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// `program` is needed: `false` (with a message) when it is missing and
/// `CI` is not set; under CI a missing program fails the test.
fn available(what: &str, found: bool) -> bool {
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is missing, and CI is set: scripts/test installs it");
        }
        eprintln!("SKIPPED: {what} is missing; run scripts/test, which installs it");
    }
    found
}

fn node_ready() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    available("node", node)
        && available(
            "tests/oidc/node_modules (npm ci)",
            root()
                .join("tests/oidc/node_modules/oidc-provider")
                .is_dir(),
        )
}

// ---------------------------------------------------------------------------
// The OpenID provider
// ---------------------------------------------------------------------------

/// Private keys made by the provider script: the JWKS it signs with and the
/// PKCS#1 DER of each key, by `kid`.
struct Keys {
    jwks: Value,
    der: Vec<(String, Vec<u8>)>,
}

fn make_keys(kids: &[&str]) -> Keys {
    let out = Command::new("node")
        .arg(root().join("tests/oidc/provider.mjs"))
        .arg("keys")
        .args(kids)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let der = kids
        .iter()
        .map(|k| {
            let b64 = v["pkcs1"][k].as_str().unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            (k.to_string(), bytes)
        })
        .collect();
    Keys {
        jwks: json!({ "keys": v["keys"] }),
        der,
    }
}

impl Keys {
    /// These keys in another order (the first one signs), or a subset.
    fn pick(&self, kids: &[&str]) -> Keys {
        let keys: Vec<Value> = kids
            .iter()
            .map(|k| {
                self.jwks["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|j| j["kid"] == *k)
                    .unwrap()
                    .clone()
            })
            .collect();
        Keys {
            jwks: json!({ "keys": keys }),
            der: self.der.clone(),
        }
    }

    fn encoding(&self, kid: &str) -> EncodingKey {
        let der = &self.der.iter().find(|(k, _)| k == kid).unwrap().1;
        EncodingKey::from_rsa_der(der)
    }
}

struct Idp {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Idp {
    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(dir: &Path, keys: &Keys) -> Idp {
        let mut idp = Idp {
            port: free_port(),
            dir: dir.to_path_buf(),
            proc: None,
        };
        idp.restart(keys);
        idp
    }

    /// (Re)start the provider on its port, signing with `keys`.
    fn restart(&mut self, keys: &Keys) {
        self.stop();
        let path = self.dir.join("op-keys.json");
        std::fs::write(&path, keys.jwks.to_string()).unwrap();
        let mut proc = Proc::spawn(
            Command::new("node")
                .arg(root().join("tests/oidc/provider.mjs"))
                .env("PORT", self.port.to_string())
                .env("KEYS", &path),
            self.dir.join("op.log"),
        );
        proc.wait_for("ready ", "the OpenID provider");
        self.proc = Some(proc);
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
            // The port must be free for a restart on it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// A client-credentials access token (JWT) of `client`.
    async fn access_token(&self, client: &str) -> String {
        let resp = http()
            .post(format!("{}/token", self.issuer()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client),
                ("client_secret", &format!("{client}-secret")),
                ("scope", "api"),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    /// An ID token of the provider for the `web-app` client about `sub`.
    async fn id_token(&self, sub: &str, amr: &str) -> String {
        let v: Value = http()
            .get(format!(
                "{}/test/id-token?client=web-app&sub={sub}&amr={amr}",
                self.issuer()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["id_token"].as_str().unwrap().to_string()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// orgwarden
// ---------------------------------------------------------------------------

/// The identity file the tests serve: the provider through discovery, its
/// access tokens (audience `orgwarden`) and ID tokens (`web-app`).
fn identity_yaml(issuer: &str, cache: &str) -> String {
    format!(
        r#"# The test provider (tests/oidc/provider.mjs).
issuers:
  - issuer: {issuer}
    jwks: discovery
    audiences: [orgwarden, web-app]
    principal:
      - {{ type: User, claim: preferred_username }}
      - {{ type: ServiceAccount, claim: service_account }}
      - {{ type: User, claim: sub }}
    groups_claim: groups
    algorithms: [RS256]
    leeway_seconds: 5
    claims: [amr]
    jwks_cache: {cache}
"#
    )
}

const QUICK_CACHE: &str =
    "{ min_seconds: 1, max_seconds: 600, default_seconds: 600, unknown_kid_seconds: 1 }";

struct Warden {
    proc: Proc,
    base: String,
    decisions: PathBuf,
}

/// The real binary on the shipped model and routes, with `identity` and
/// `policies` (default: the shipped ones).
fn start_orgwarden(dir: &Path, identity: &str, policies: Option<&Path>) -> Warden {
    start_orgwarden_with(dir, identity, policies, &[])
}

/// [`start_orgwarden`] with `extra` options.
fn start_orgwarden_with(
    dir: &Path,
    identity: &str,
    policies: Option<&Path>,
    extra: &[&str],
) -> Warden {
    let r = root();
    let identity_dir = dir.join("identity");
    std::fs::create_dir_all(&identity_dir).unwrap();
    std::fs::write(identity_dir.join("test.yaml"), identity).unwrap();
    let decisions = dir.join("decisions.log");
    let mut proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_orgwarden"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--decision-log")
            .arg(&decisions)
            .arg("--policies")
            .arg(policies.map_or_else(|| r.join("policies"), Path::to_path_buf))
            .arg("--schema")
            .arg(r.join("schema"))
            .arg("--entities")
            .arg(r.join("entities"))
            .arg("--routes")
            .arg(r.join("routes"))
            .arg("--identity")
            .arg(&identity_dir)
            .args(extra)
            .env("RUST_LOG", "info"),
        dir.join("orgwarden.log"),
    );
    let line = proc.wait_for("listening on http://", "orgwarden");
    let addr = line.split_whitespace().next().unwrap().to_string();
    Warden {
        proc,
        base: format!("http://{addr}"),
        decisions,
    }
}

impl Warden {
    /// Forward-auth of `method target` (nginx's contract) with `token`.
    async fn forward(&self, method: &str, target: &str, token: &str) -> (u16, Value) {
        let resp = http()
            .get(format!("{}/v1/forward-auth", self.base))
            .header("X-Original-Method", method)
            .header("X-Original-URI", target)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let principal = resp
            .headers()
            .get("x-orgwarden-principal")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, json!({ "body": body, "principal": principal }))
    }

    async fn is_authorized(&self, body: Value) -> (u16, Value) {
        let resp = http()
            .post(format!("{}/v1/is_authorized", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> String {
        http()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A request of the platform, the action and resource its route names.
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "GET",
        "/api/accounts/acme/workspaces/acme-prod/flows/f-1",
        "see_flows",
        r#"Workspace::"acme-prod""#,
    ),
    (
        "POST",
        "/api/accounts/acme/workspaces/acme-prod/deployments/d-1/create_flow_run",
        "run_deployments",
        r#"Workspace::"acme-prod""#,
    ),
    (
        "DELETE",
        "/api/accounts/acme/workspaces/acme-prod/deployments/d-1",
        "manage_deployments",
        r#"Workspace::"acme-prod""#,
    ),
    (
        "POST",
        "/api/accounts/acme/workspaces/acme-staging/flow_runs/filter",
        "see_flows",
        r#"Workspace::"acme-staging""#,
    ),
    (
        "PATCH",
        "/api/accounts/acme/workspaces/acme-staging",
        "write_workspace_settings",
        r#"Workspace::"acme-staging""#,
    ),
    (
        "POST",
        "/api/accounts/acme/invitations/",
        "create:invitation",
        r#"Organization::"acme""#,
    ),
    (
        "POST",
        "/api/accounts/acme/account_memberships/filter",
        "read:account",
        r#"Organization::"acme""#,
    ),
    (
        "GET",
        "/api/accounts/globex/workspaces/globex-main/flows/f-1",
        "see_flows",
        r#"Workspace::"globex-main""#,
    ),
];

/// What `/v1/is_authorized` decides for `principal` on every case, checked
/// to hold allows and denies both.
async fn expected(w: &Warden, principal: &str) -> Vec<bool> {
    let mut out = Vec::new();
    for (_, _, action, resource) in CASES {
        let (status, v) = w
            .is_authorized(
                json!({ "principal": principal, "action": action, "resource": resource }),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        out.push(v["decision"] == "Allow");
    }
    assert!(
        out.contains(&true) && out.contains(&false),
        "{principal} needs allows and denies: {out:?}"
    );
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `keys`' `kid`, with `claims`.
fn signed(keys: &Keys, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &keys.encoding(kid)).unwrap()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn provider_tokens_name_principals_and_reach_the_decision_apis() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(&["k1"]);
    let idp = Idp::start(dir.path(), &keys);
    let w = start_orgwarden(dir.path(), &identity_yaml(&idp.issuer(), QUICK_CACHE), None);

    // Access tokens: carol's client and the ci-bot service account decide
    // exactly as their API keys' principals, on every case.
    for (client, principal) in [
        ("carol-cli", r#"Prefect::User::"carol""#),
        ("ci-bot", r#"Prefect::ServiceAccount::"ci-bot""#),
    ] {
        let token = idp.access_token(client).await;
        let want = expected(&w, principal).await;
        for ((method, target, action, resource), allow) in CASES.iter().zip(want) {
            let (status, seen) = w.forward(method, target, &token).await;
            assert_eq!(
                status,
                if allow { 200 } else { 403 },
                "{client} {method} {target}: {seen}"
            );
            if allow {
                assert_eq!(seen["principal"], principal);
            }
            let (status, v) = w
                .is_authorized(json!({ "token": token, "action": action, "resource": resource }))
                .await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(
                v["decision"] == "Allow",
                allow,
                "{client} {action} {resource}: {v}"
            );
        }
    }

    // The batch takes tokens item by item, beside items that name their
    // principal.
    let token = idp.access_token("carol-cli").await;
    let want = expected(&w, r#"Prefect::User::"carol""#).await;
    let mut requests: Vec<Value> = CASES
        .iter()
        .map(|(_, _, action, resource)| {
            json!({ "token": token, "action": action, "resource": resource })
        })
        .collect();
    requests.push(
        json!({ "principal": r#"User::"carol""#, "action": CASES[0].2, "resource": CASES[0].3 }),
    );
    let resp = http()
        .post(format!("{}/v1/is_authorized/batch", w.base))
        .json(&json!({ "requests": requests }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    for (i, allow) in want.iter().enumerate() {
        assert_eq!(
            v["results"][i]["decision"] == "Allow",
            *allow,
            "item {i}: {v}"
        );
    }
    assert_eq!(
        v["results"][CASES.len()]["decision"] == "Allow",
        want[0],
        "{v}"
    );

    // An ID token (audience: the web app's client id) names carol by `sub`.
    let id_token = idp.id_token("carol", "pwd,mfa").await;
    let (status, seen) = w.forward(CASES[0].0, CASES[0].1, &id_token).await;
    let carol_prod = expected(&w, r#"Prefect::User::"carol""#).await[0];
    assert_eq!(status, if carol_prod { 200 } else { 403 }, "{seen}");

    // AuthZEN carries the token as a subject of type `jwt`.
    let token = idp.access_token("carol-cli").await;
    let want = expected(&w, r#"Prefect::User::"carol""#).await;
    for ((_, _, action, resource), allow) in CASES.iter().zip(want) {
        let (ty, id) = resource.split_once("::").unwrap();
        let resp = http()
            .post(format!("{}/access/v1/evaluation", w.base))
            .json(&json!({
                "subject": { "type": "jwt", "id": token },
                "action": { "name": action },
                "resource": { "type": ty, "id": id.trim_matches('"') },
            }))
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["decision"], allow, "{action} {resource}: {v}");
    }

    // A token whose principal is not in the facts: a deny with a reason.
    let mallory = idp.access_token("mallory-cli").await;
    let (status, seen) = w.forward(CASES[0].0, CASES[0].1, &mallory).await;
    assert_eq!(status, 403, "{seen}");
    assert_eq!(seen["body"]["error"]["code"], "unknown_principal", "{seen}");
    let (status, v) = w
        .is_authorized(json!({ "token": mallory, "action": "see_flows", "resource": r#"Workspace::"acme-prod""# }))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["decision"], "Deny");
    assert!(
        v["diagnostics"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("unknown_principal"),
        "{v}"
    );

    // `token` and `principal` together, or a forged `context.token`: refused.
    let (status, _) = w
        .is_authorized(json!({ "token": token, "principal": r#"User::"alice""#, "action": "see_flows", "resource": r#"Workspace::"acme-prod""# }))
        .await;
    assert_eq!(status, 400);
    let (status, _) = w
        .is_authorized(json!({ "token": token, "action": "see_flows", "resource": r#"Workspace::"acme-prod""#, "context": { "token": { "iss": "x", "sub": "y" } } }))
        .await;
    assert_eq!(status, 400);

    // API keys still work beside tokens.
    let (status, seen) = w
        .forward(
            CASES[0].0,
            CASES[0].1,
            "ow_demo_carol_78b196c1ef5b8c5dbaa1ed39",
        )
        .await;
    assert_eq!(status, if carol_prod { 200 } else { 403 }, "{seen}");

    // Never logged: no token, no claim the identity file does not list (the
    // client id and the token id); the decision log names issuer and principal.
    let decisions = std::fs::read_to_string(&w.decisions).unwrap();
    let server = w.proc.log();
    for text in [&decisions, &server] {
        assert!(!text.contains(&token[..40]), "a token was logged");
        assert!(!text.contains(&id_token[..40]), "a token was logged");
        assert!(!text.contains("carol-cli"), "an unlisted claim was logged");
        assert!(
            !text.contains("mallory-cli"),
            "an unlisted claim was logged"
        );
    }
    let line = decisions
        .lines()
        .find(|l| l.contains(r#""api":"forward_auth""#) && l.contains("carol"))
        .expect("a forward-auth decision for carol");
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["issuer"], idp.issuer());
    assert_eq!(v["principal"], r#"Prefect::User::"carol""#);
}

#[tokio::test]
async fn verified_claims_reach_the_policies_as_context_token() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The shipped policies and one more: deleting deployments needs MFA
    // when the caller came with a token.
    let policies = dir.path().join("policies");
    common::copy_dir(&root().join("policies"), &policies);
    std::fs::write(
        policies.join("mfa.cedar"),
        r#"@id("mfa-for-deployment-deletes")
forbid (principal, action == Prefect::Action::"manage_deployments", resource)
when { context has token && !(context.token has amr && context.token.amr.contains("mfa")) };
"#,
    )
    .unwrap();
    let keys = make_keys(&["k1"]);
    let idp = Idp::start(dir.path(), &keys);
    let w = start_orgwarden(
        dir.path(),
        &identity_yaml(&idp.issuer(), QUICK_CACHE),
        Some(&policies),
    );
    let delete = CASES[2];
    // Someone allowed to delete deployments with a key: alice.
    let (status, v) = w
        .is_authorized(
            json!({ "principal": r#"User::"alice""#, "action": delete.2, "resource": delete.3 }),
        )
        .await;
    assert_eq!((status, &v["decision"]), (200, &json!("Allow")), "{v}");
    let with_mfa = idp.access_token("alice-cli").await;
    let (status, seen) = w.forward(delete.0, delete.1, &with_mfa).await;
    assert_eq!(status, 200, "with MFA: {seen}");
    // The same person without MFA in `amr`: denied by the forbid.
    let id_token = idp.id_token("alice", "pwd").await;
    let (status, seen) = w.forward(delete.0, delete.1, &id_token).await;
    assert_eq!(status, 403, "without MFA: {seen}");
    let (_, v) = w
        .is_authorized(json!({ "token": id_token, "action": delete.2, "resource": delete.3 }))
        .await;
    assert_eq!(v["decision"], "Deny");
    assert_eq!(
        v["diagnostics"]["reason"],
        json!(["mfa-for-deployment-deletes"]),
        "{v}"
    );
    // Reading flows needs no MFA.
    let (status, seen) = w.forward(CASES[0].0, CASES[0].1, &id_token).await;
    assert_eq!(status, 200, "{seen}");
}

/// Envoy's gRPC ext_authz takes the bearer tokens forward-auth takes and
/// decides as it does; a token that fails verification is a 401.
#[tokio::test]
async fn grpc_ext_authz_takes_tokens_as_forward_auth_does() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(&["k1"]);
    let idp = Idp::start(dir.path(), &keys);
    let mut w = start_orgwarden_with(
        dir.path(),
        &identity_yaml(&idp.issuer(), QUICK_CACHE),
        None,
        &["--grpc-listen", "127.0.0.1:0"],
    );
    let line = w.proc.wait_for("ext_authz gRPC listening on ", "orgwarden");
    let grpc_addr = line.split_whitespace().next().unwrap().to_string();
    let mut client = grpc::client(&grpc_addr).await;
    let check = |method: &str, target: &str, token: &str| {
        grpc::check_request(
            method,
            target,
            &[("authorization", &format!("Bearer {token}"))],
        )
    };
    for (client_id, principal) in [
        ("carol-cli", r#"Prefect::User::"carol""#),
        ("ci-bot", r#"Prefect::ServiceAccount::"ci-bot""#),
    ] {
        let token = idp.access_token(client_id).await;
        let want = expected(&w, principal).await;
        for ((method, target, ..), allow) in CASES.iter().zip(want) {
            let response = client.check(check(method, target, &token)).await.unwrap();
            let got = grpc::answer(response.into_inner());
            assert_eq!(
                got.status,
                if allow { 200 } else { 403 },
                "{client_id} {method} {target}: {got:?}"
            );
            if allow {
                assert_eq!(got.principal.as_deref(), Some(principal), "{got:?}");
            }
            let (status, seen) = w.forward(method, target, &token).await;
            assert_eq!(status, got.status, "forward-auth: {seen}");
        }
    }
    // The same claims signed by a key the provider never published.
    let rogue = make_keys(&["k1"]);
    let claims = json!({ "iss": idp.issuer(), "aud": "orgwarden", "sub": "carol-cli",
        "preferred_username": "carol", "iat": now(), "exp": now() + 300 });
    let forged = signed(&rogue, "k1", &claims);
    let (method, target, ..) = CASES[0];
    let response = client.check(check(method, target, &forged)).await.unwrap();
    let got = grpc::answer(response.into_inner());
    assert_eq!(
        (got.status, got.code.as_str()),
        (401, "invalid_token"),
        "{got:?}"
    );
    assert_eq!(w.forward(method, target, &forged).await.0, 401);
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_a_reason() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(&["k1", "rogue"]);
    let idp = Idp::start(dir.path(), &keys.pick(&["k1"]));
    let w = start_orgwarden(dir.path(), &identity_yaml(&idp.issuer(), QUICK_CACHE), None);
    let (method, target, ..) = CASES[0];
    let good = idp.access_token("carol-cli").await;
    assert_eq!(w.forward(method, target, &good).await.0, 200);

    let iss = idp.issuer();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({ "iss": iss, "aud": "orgwarden", "sub": "carol-cli",
            "preferred_username": "carol", "iat": now(), "exp": now() + 300 });
        f(&mut c);
        c
    };
    // Hand-made with the provider's own key, each wrong in one way.
    let ok = signed(&keys, "k1", &claims(&|_| {}));
    assert_eq!(
        w.forward(method, target, &ok).await.0,
        200,
        "the control token"
    );
    let expired = signed(&keys, "k1", &claims(&|c| c["exp"] = json!(now() - 600)));
    let not_yet = signed(&keys, "k1", &claims(&|c| c["nbf"] = json!(now() + 600)));
    let wrong_iss = signed(
        &keys,
        "k1",
        &claims(&|c| c["iss"] = json!("http://127.0.0.1:1")),
    );
    let wrong_aud = signed(&keys, "k1", &claims(&|c| c["aud"] = json!("someone-else")));
    let unknown_kid = signed(&keys, "rogue", &claims(&|_| {}));
    // A real token with its payload changed to name alice.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["preferred_username"] = json!("alice");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(payload.to_string()),
        parts[2]
    );
    // `alg: none`, and HS256 keyed with the provider's public JWKS.
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims(&|_| {}).to_string())
    );
    let jwks = w.get("/v1/status").await;
    assert!(jwks.contains("identity"));
    let public = http()
        .get(format!("{iss}/jwks"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let hmac = jsonwebtoken::encode(
        &hs,
        &claims(&|_| {}),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    // Over orgwarden's 16 KiB bound, under the HTTP layer's header limit.
    let huge = format!("{}.{}.{}", "a".repeat(10_000), "b".repeat(10_000), "c");

    for (name, token, code) in [
        ("alg none", none.as_str(), "invalid_algorithm"),
        (
            "HS256 with the public key",
            hmac.as_str(),
            "invalid_algorithm",
        ),
        ("expired", expired.as_str(), "token_expired"),
        ("not yet valid", not_yet.as_str(), "token_not_yet_valid"),
        ("wrong iss", wrong_iss.as_str(), "unknown_issuer"),
        ("wrong aud", wrong_aud.as_str(), "invalid_audience"),
        ("tampered payload", tampered.as_str(), "invalid_signature"),
        ("unknown kid", unknown_kid.as_str(), "unknown_key"),
    ] {
        let (status, seen) = w.forward(method, target, token).await;
        assert_eq!(status, 401, "{name}: {seen}");
        let (status, v) = w
            .is_authorized(json!({ "token": token, "action": "see_flows", "resource": r#"Workspace::"acme-prod""# }))
            .await;
        assert_eq!(status, 401, "{name}: {v}");
        let log = w.proc.log();
        assert!(
            log.contains(&format!("code=\"{code}\"")) || log.contains(&format!("code={code}")),
            "{name}: no `{code}` in the log:\n{log}"
        );
    }
    // Over the bound: refused unparsed.
    let (status, _) = w.forward(method, target, &huge).await;
    assert_eq!(status, 401, "a 20 KB token");
    let resp = http()
        .get(format!("{}/v1/forward-auth", w.base))
        .header("X-Original-URI", target)
        .bearer_auth(format!("{}.{}.c", "a".repeat(1 << 19), "b".repeat(1 << 19)))
        .send()
        .await;
    if let Ok(resp) = resp {
        assert!(
            matches!(resp.status().as_u16(), 401 | 431),
            "a 1 MB token: {}",
            resp.status()
        );
    }
    // A token in the query string is ignored.
    let resp = http()
        .get(format!("{}/v1/forward-auth", w.base))
        .header("X-Original-URI", format!("{target}?access_token={good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Two Authorization headers.
    let resp = http()
        .get(format!("{}/v1/forward-auth", w.base))
        .header("X-Original-URI", target)
        .header("Authorization", format!("Bearer {good}"))
        .header("Authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The server is up, and no token reached its log.
    assert_eq!(w.forward(method, target, &good).await.0, 200);
    let log = w.proc.log();
    for t in [&good, &expired, &tampered, &hmac] {
        assert!(!log.contains(&t[t.len() - 30..]), "a token reached the log");
    }
}

#[tokio::test]
async fn keys_rotate_at_the_provider_and_expire_when_it_is_gone() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(&["old", "new"]);
    let mut idp = Idp::start(dir.path(), &keys.pick(&["old"]));
    let cache = "{ min_seconds: 1, max_seconds: 8, default_seconds: 1, unknown_kid_seconds: 1 }";
    let w = start_orgwarden(dir.path(), &identity_yaml(&idp.issuer(), cache), None);
    let (method, target, ..) = CASES[0];
    let poll = async |token: &str, want: u16| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, seen) = w.forward(method, target, token).await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {status}, not {want}: {seen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let old = idp.access_token("carol-cli").await;
    assert_eq!(w.forward(method, target, &old).await.0, 200);

    // The provider adds a key and signs with it: new tokens verify without
    // a restart (an unknown `kid` refreshes the keys), old ones still do.
    idp.restart(&keys.pick(&["new", "old"]));
    let new = idp.access_token("carol-cli").await;
    assert!(new.split('.').next().unwrap() != old.split('.').next().unwrap());
    poll(&new, 200).await;
    assert_eq!(w.forward(method, target, &old).await.0, 200);

    // The old key is removed: its tokens are refused once the cache expires.
    idp.restart(&keys.pick(&["new"]));
    poll(&old, 401).await;
    assert_eq!(w.forward(method, target, &new).await.0, 200);

    // The provider is gone: the cached keys work until they expire, then
    // tokens are refused, and /readyz and /metrics say why.
    idp.stop();
    poll(&new, 401).await;
    let readyz: Value = serde_json::from_str(&w.get("/readyz").await).unwrap();
    assert_eq!(readyz["identity"]["ready"], false, "{readyz}");
    let reason = readyz["identity"]["issuers"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("expired"), "{reason}");
    let metrics = w.get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "orgwarden_identity_keys_ready{{issuer=\"{}\"}} 0",
            idp.issuer()
        )),
        "{metrics}"
    );
    // API keys are unaffected.
    assert_eq!(
        w.forward(method, target, "ow_demo_carol_78b196c1ef5b8c5dbaa1ed39")
            .await
            .0,
        200
    );

    // Back with the new key: tokens verify again.
    idp.restart(&keys.pick(&["new"]));
    poll(&new, 200).await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_makes_a_handful_of_fetches() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(&["k1", "rogue"]);
    let idp = Idp::start(dir.path(), &keys.pick(&["k1"]));
    let cache = "{ min_seconds: 60, max_seconds: 600, unknown_kid_seconds: 30 }";
    let w = start_orgwarden(dir.path(), &identity_yaml(&idp.issuer(), cache), None);
    let (method, target, ..) = CASES[0];
    let good = idp.access_token("carol-cli").await;
    assert_eq!(w.forward(method, target, &good).await.0, 200);
    let fetches = |status: &str| -> u64 {
        let v: Value = serde_json::from_str(status).unwrap();
        v["identity"]["issuers"][0]["fetches"].as_u64().unwrap()
    };
    let before = fetches(&w.get("/v1/status").await);
    let iss = idp.issuer();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let token = jsonwebtoken::encode(
            &header,
            &json!({ "iss": iss, "aud": "orgwarden", "preferred_username": "carol", "exp": now() + 300 }),
            &keys.encoding("rogue"),
        )
        .unwrap();
        let base = w.base.clone();
        tasks.push(tokio::spawn(async move {
            http()
                .get(format!("{base}/v1/forward-auth"))
                .header("X-Original-URI", target)
                .header("X-Original-Method", method)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let after = fetches(&w.get("/v1/status").await);
    assert!(
        after - before <= 2,
        "{} fetches for 400 unknown kids",
        after - before
    );
    // The good token never waited on them.
    assert_eq!(w.forward(method, target, &good).await.0, 200);
}

#[tokio::test]
async fn nginx_passes_carols_token_where_carol_may_go_and_nowhere_else() {
    if !node_ready() {
        return;
    }
    let Some(nginx) = locate("nginx", "NGINX") else {
        available("nginx", false);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let keys = make_keys(&["k1"]);
    let idp = Idp::start(dir.path(), &keys);
    let w = start_orgwarden(dir.path(), &identity_yaml(&idp.issuer(), QUICK_CACHE), None);
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in upstream.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let body = r#"{"upstream":true}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let listen = free_port();
    let mut conf = std::fs::read_to_string(root().join("tests/gateways/nginx.conf")).unwrap();
    for (name, value) in [
        ("DIR", dir.path().display().to_string()),
        ("UPSTREAM", format!("127.0.0.1:{upstream_port}")),
        (
            "ORGWARDEN",
            w.base.trim_start_matches("http://").to_string(),
        ),
        ("LISTEN", format!("127.0.0.1:{listen}")),
    ] {
        conf = conf.replace(&format!("{{{{{name}}}}}"), &value);
    }
    let gateway = spawn_nginx(&nginx, dir.path(), &conf, listen);
    let token = idp.access_token("carol-cli").await;
    let gateway_url = format!("http://127.0.0.1:{listen}");
    let want = expected(&w, r#"Prefect::User::"carol""#).await;
    for ((method, target, ..), allow) in CASES.iter().zip(want) {
        let resp = http()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{gateway_url}{target}"),
            )
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        if allow {
            assert_eq!(status, 200, "{method} {target}: {body}");
            assert!(body.contains("upstream"), "{body}");
        } else {
            assert_eq!(status, 403, "{method} {target}: {body}");
            assert!(!body.contains("upstream"), "{body}");
        }
    }
    // Tampered, or a token in the query string: refused at the gateway.
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    payload["preferred_username"] = json!("alice");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(payload.to_string()),
        parts[2]
    );
    let target = CASES[0].1;
    let resp = http()
        .get(format!("{gateway_url}{target}"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http()
        .get(format!("{gateway_url}{target}?access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    drop(gateway);
}

#[test]
fn a_bad_identity_file_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "issuers:\n  - issuer: https://idp.example.com\n    jwks: discovery\n    audiences: [api]\n    principal: { type: Nobody, claim: sub }\n    algorithms: [HS256]\n",
    )
    .unwrap();
    let r = root();
    let out = Command::new(env!("CARGO_BIN_EXE_orgwarden"))
        .arg("check")
        .arg("--policies")
        .arg(r.join("policies"))
        .arg("--schema")
        .arg(r.join("schema"))
        .arg("--entities")
        .arg(r.join("entities"))
        .arg("--identity")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("bad.yaml:6:"), "algorithms' position: {text}");
    assert!(text.contains("HS256"), "{text}");
    assert!(text.contains("issuers[0].principal"), "{text}");
}

#[tokio::test]
async fn identity_files_reload_and_a_bad_edit_keeps_the_last_good_set() {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(&["k1"]);
    let idp = Idp::start(dir.path(), &keys);
    let yaml = identity_yaml(&idp.issuer(), QUICK_CACHE);
    let w = start_orgwarden(dir.path(), &yaml, None);
    let (method, target, ..) = CASES[0];
    let token = idp.access_token("carol-cli").await;
    assert_eq!(w.forward(method, target, &token).await.0, 200);
    let file = dir.path().join("identity/test.yaml");
    let status = async || -> Value { serde_json::from_str(&w.get("/v1/status").await).unwrap() };
    let generation = status().await["generation"].as_u64().unwrap();

    // A bad edit: reported with its position, the last good set serves.
    std::fs::write(
        &file,
        yaml.replace("algorithms: [RS256]", "algorithms: [none]"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status().await;
        let error = s["last_error"].to_string();
        if error.contains("test.yaml") {
            assert!(error.contains("`none` is not accepted"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "no reload error: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.forward(method, target, &token).await.0, 200);

    // A good edit that drops the token's audience: its tokens are refused.
    std::fs::write(&file, yaml.replace("[orgwarden, web-app]", "[web-app]")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status().await["generation"].as_u64().unwrap() <= generation
        || !status().await["last_error"].is_null()
    {
        assert!(Instant::now() < deadline, "no reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status_code, seen) = w.forward(method, target, &token).await;
    assert_eq!(status_code, 401, "{seen}");
}

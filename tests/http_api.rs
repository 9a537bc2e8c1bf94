//! The HTTP sidecar, on a real loopback port: every endpoint, the bad-input
//! cases, AuthZEN batch semantics, metrics, the decision log and the cache.

mod common;

use common::{TestServer, copy_of_shipped, req, shipped};
use orgwarden::decision_log::{DecisionLog, LogTarget};
use orgwarden::http::HttpConfig;
use serde_json::{Value, json};

const AUTHZ: &str = "/v1/is_authorized";

#[tokio::test]
async fn is_authorized_answers_with_decision_reasons_and_id() {
    let s = TestServer::shipped().await;
    let (status, body) = s
        .post(
            AUTHZ,
            req(
                r#"User::"bob""#,
                "manage_deployments",
                r#"Workspace::"acme-prod""#,
            ),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["decision"], "Allow");
    assert_eq!(
        body["diagnostics"]["reason"],
        json!(["union-of-default-and-explicit"])
    );
    assert_eq!(body["diagnostics"]["errors"], json!([]));
    let id = body["decision_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "decision id {id}");

    // Object references and full names; the tenant boundary denies with its reason.
    let (status, body) = s
        .post(
            AUTHZ,
            json!({
                "principal": {"type": "Prefect::User", "id": "gina"},
                "action": {"type": "Prefect::Action", "id": "see_flows"},
                "resource": {"type": "Workspace", "id": "acme-prod"},
            }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["decision"], "Deny");
    assert_eq!(body["diagnostics"]["reason"], json!(["tenant-boundary"]));
}

#[tokio::test]
async fn context_values_are_typed_by_the_schema() {
    let s = TestServer::shipped().await;
    let mut r = req(r#"User::"carol""#, "see_flows", r#"Workspace::"acme-prod""#);
    r["context"] = json!({ "ip": "10.1.2.3", "time": "2026-01-01T00:00:00Z" });
    let (status, body) = s.post(AUTHZ, r.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "Allow");

    r["context"] = json!({ "ip": "not-an-ip" });
    let (status, body) = s.post(AUTHZ, r.clone()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_context");
    assert_eq!(body["error"]["field"], "context");

    r["context"] = json!({ "mood": "happy" });
    let (status, body) = s.post(AUTHZ, r).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("mood"),
        "{body}"
    );
}

#[tokio::test]
async fn request_scoped_entities_apply_to_one_decision_only() {
    // cedar-agent's semantics, which the operator turns on.
    let config = HttpConfig {
        request_entities: orgwarden::request_facts::RequestEntities::Replace,
        ..HttpConfig::default()
    };
    let s = TestServer::start(shipped(), config, 1000, DecisionLog::off()).await;
    // A new acme member, known only to this request, gets acme-prod's default Viewer role.
    let newcomer = json!([{
        "uid": {"type": "Prefect::User", "id": "nina"},
        "attrs": {"email": "nina@acme.example"},
        "parents": [{"type": "Prefect::Organization", "id": "acme"}]
    }]);
    let mut r = req(r#"User::"nina""#, "see_flows", r#"Workspace::"acme-prod""#);
    r["additional_entities"] = newcomer.clone();
    let (status, body) = s.post(AUTHZ, r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "Allow");
    assert_eq!(
        body["diagnostics"]["reason"],
        json!(["union-of-default-and-explicit"])
    );

    let (_, body) = s
        .post(
            AUTHZ,
            req(r#"User::"nina""#, "see_flows", r#"Workspace::"acme-prod""#),
        )
        .await;
    assert_eq!(
        body["decision"], "Deny",
        "the request-scoped user must not persist"
    );

    // `entities` replaces the loaded facts: with only nina, acme-prod does not exist.
    let mut r = req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#);
    r["entities"] = json!([{
        "uid": {"type": "Prefect::User", "id": "nina"},
        "attrs": {"email": "nina@acme.example"},
        "parents": []
    }]);
    let (status, body) = s.post(AUTHZ, r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "Deny");
    assert_eq!(body["request_facts"], json!([r#"Prefect::User::"nina""#]));
    // ... and must name the parents it uses.
    let mut r = req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#);
    r["entities"] = newcomer.clone();
    let (status, body) = s.post(AUTHZ, r).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "entities[0].parents[0]");

    // Both at once is an error.
    let mut r = req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#);
    r["entities"] = newcomer.clone();
    r["additional_entities"] = newcomer;
    let (status, body) = s.post(AUTHZ, r).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "entities");

    // An entity that does not match the schema names its index.
    let mut r = req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#);
    r["additional_entities"] =
        json!([{ "uid": {"type": "Prefect::User", "id": "x"}, "attrs": {}, "parents": [] }]);
    let (status, body) = s.post(AUTHZ, r).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "additional_entities[0]");
}

#[tokio::test]
async fn batch_answers_in_order_and_is_bounded() {
    let s = TestServer::start(
        shipped(),
        HttpConfig {
            max_batch: 3,
            ..HttpConfig::default()
        },
        0,
        DecisionLog::off(),
    )
    .await;
    let requests = json!([
        req(r#"User::"carol""#, "see_flows", r#"Workspace::"acme-prod""#),
        req(
            r#"User::"carol""#,
            "run_deployments",
            r#"Workspace::"acme-prod""#
        ),
        req(
            r#"User::"alice""#,
            "delete:workspace",
            r#"Workspace::"acme-staging""#
        ),
    ]);
    let (status, body) = s
        .post("/v1/is_authorized/batch", json!({ "requests": requests }))
        .await;
    assert_eq!(status, 200);
    let decisions: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["Allow", "Deny", "Allow"]);

    let four = json!({ "requests": [requests[0], requests[0], requests[0], requests[0]] });
    let (status, body) = s.post("/v1/is_authorized/batch", four).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "batch_too_large");
    assert_eq!(body["error"]["field"], "requests");

    let bad = json!({ "requests": [requests[0], req(r#"Usr::"bob""#, "see_flows", r#"Workspace::"acme-prod""#)] });
    let (status, body) = s.post("/v1/is_authorized/batch", bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "requests[1].principal");
    assert_eq!(body["error"]["code"], "unknown_type");
}

/// A request a batch repeats is decided once, but every item is answered and
/// logged on its own: the same answer as alone, its own decision id, its
/// own log record.
#[tokio::test]
async fn a_batch_answers_repeated_requests_like_single_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::start(&LogTarget::File(path.clone()), false).unwrap();
    // Cache off: every answer below is evaluated, none served by the cache.
    let s = TestServer::start(shipped(), HttpConfig::default(), 0, log).await;
    let distinct = [
        req(r#"User::"carol""#, "see_flows", r#"Workspace::"acme-prod""#),
        req(r#"User::"gina""#, "see_flows", r#"Workspace::"acme-prod""#),
        req(
            r#"User::"alice""#,
            "delete:workspace",
            r#"Workspace::"acme-staging""#,
        ),
        req(
            r#"User::"carol""#,
            "run_deployments",
            r#"Workspace::"acme-prod""#,
        ),
        // The same request written another way is another key, same answer.
        json!({
            "principal": {"type": "User", "id": "carol"},
            "action": "see_flows",
            "resource": r#"Workspace::"acme-prod""#,
        }),
    ];
    let order = [0, 1, 0, 2, 1, 3, 0, 4, 2, 0];
    let requests: Vec<Value> = order.iter().map(|&i| distinct[i].clone()).collect();
    let (status, body) = s
        .post("/v1/is_authorized/batch", json!({ "requests": requests }))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), order.len());
    let mut ids = std::collections::HashSet::new();
    for (result, &i) in results.iter().zip(&order) {
        let (_, alone) = s.post(AUTHZ, distinct[i].clone()).await;
        assert_eq!(result["decision"], alone["decision"], "{i}");
        assert_eq!(result["diagnostics"], alone["diagnostics"], "{i}");
        assert!(ids.insert(result["decision_id"].as_str().unwrap().to_string()));
    }
    let decisions: Vec<&str> = results
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        [
            "Allow", "Deny", "Allow", "Allow", "Deny", "Deny", "Allow", "Allow", "Allow", "Allow"
        ]
    );
    // One record per batch item (and per single request above), in order.
    let want = order.len() * 2;
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if lines.len() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), want);
    for (line, result) in lines.iter().zip(results) {
        assert_eq!(line["decision_id"], result["decision_id"]);
        assert_eq!(line["decision"], result["decision"]);
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_field() {
    let s = TestServer::start(
        shipped(),
        HttpConfig {
            max_body_bytes: 4096,
            max_request_entities: 2,
            ..HttpConfig::default()
        },
        0,
        DecisionLog::off(),
    )
    .await;
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"action": "see_flows", "resource": r#"Workspace::"acme-prod""#}),
            400,
            "missing_field",
            Some("principal"),
        ),
        (
            json!({"principal": r#"User::"bob""#, "action": "fly", "resource": r#"Workspace::"acme-prod""#}),
            400,
            "unknown_action",
            Some("action"),
        ),
        (
            json!({"principal": r#"Robot::"r""#, "action": "see_flows", "resource": r#"Workspace::"acme-prod""#}),
            400,
            "unknown_type",
            Some("principal"),
        ),
        (
            json!({"principal": "bob", "action": "see_flows", "resource": r#"Workspace::"acme-prod""#}),
            400,
            "invalid_reference",
            Some("principal"),
        ),
        // A principal type the action does not apply to.
        (
            json!({"principal": r#"Workspace::"acme-prod""#, "action": "see_flows", "resource": r#"Workspace::"acme-prod""#}),
            400,
            "invalid_request",
            Some("principal"),
        ),
        (
            json!({"principal": r#"User::"bob""#, "action": "see_flows", "resource": r#"Workspace::"acme-prod""#, "extra": 1}),
            400,
            "invalid_request",
            Some("extra"),
        ),
        (
            json!({"principal": r#"User::"bob""#, "action": "see_flows", "resource": r#"Workspace::"acme-prod""#, "context": []}),
            400,
            "invalid_context",
            Some("context"),
        ),
        (
            json!({"principal": r#"User::"bob""#, "action": "see_flows", "resource": r#"Workspace::"acme-prod""#,
                "additional_entities": [{}, {}, {}]}),
            400,
            "too_many_entities",
            Some("additional_entities"),
        ),
    ];
    for (body, status, code, field) in cases {
        let (got_status, got) = s.post(AUTHZ, body.clone()).await;
        assert_eq!(got_status, status, "{body} -> {got}");
        assert_eq!(got["error"]["code"], code, "{body} -> {got}");
        assert_eq!(got["error"]["field"].as_str(), field, "{body} -> {got}");
        assert!(!got["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, body) = s.post_raw(AUTHZ, "{\"principal\": ").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed_json");
    // One JSON value and nothing after it: a second request glued to the
    // first is refused, not half-read.
    let one = r#"{"principal": "User::\"bob\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""}"#;
    let (status, body) = s.post_raw(AUTHZ, format!("{one}\n")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.post_raw(AUTHZ, format!("{one} {one}")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "malformed_json");
    let (status, body) = s.post_raw(AUTHZ, vec![b' '; 5000]).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "body_too_large");
    // Deeply nested JSON is refused by the parser's depth limit, not by a crash.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let s2 = TestServer::shipped().await;
    let (status, body) = s2.post_raw(AUTHZ, deep).await;
    assert_eq!(status, 400, "{body}");
    let (status, text) = s.get("/no/such/endpoint").await;
    assert_eq!(status, 404);
    assert!(text.contains("not_found"));
}

#[tokio::test]
async fn authzen_evaluation_maps_subject_action_resource() {
    // Properties over loaded entities need cedar-agent's semantics.
    let config = HttpConfig {
        request_entities: orgwarden::request_facts::RequestEntities::Replace,
        ..HttpConfig::default()
    };
    let s = TestServer::start(shipped(), config, 1000, DecisionLog::off()).await;
    let eval = |subject: &str, action: &str, resource: &str| {
        json!({
            "subject": {"type": "user", "id": subject},
            "action": {"name": action},
            "resource": {"type": "workspace", "id": resource},
        })
    };
    let (status, body) = s
        .post(
            "/access/v1/evaluation",
            eval("carol", "see_flows", "acme-prod"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["decision"], true);
    assert_eq!(
        body["context"]["reason_admin"]["policies"],
        json!(["union-of-default-and-explicit"])
    );
    assert!(body["context"]["decision_id"].is_string());
    let (_, body) = s
        .post(
            "/access/v1/evaluation",
            eval("carol", "see_flows", "acme-staging"),
        )
        .await;
    assert_eq!(body["decision"], false);

    // Resource properties are merged over the loaded facts for this decision:
    // a PEP that knows staging's default role is Viewer gets carol in.
    let mut e = eval("carol", "see_flows", "acme-staging");
    e["resource"]["properties"] =
        json!({ "defaultRole": {"type": "Prefect::Role", "id": "viewer"} });
    let (status, body) = s.post("/access/v1/evaluation", e).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], true);
    let (_, body) = s
        .post(
            "/access/v1/evaluation",
            eval("carol", "see_flows", "acme-staging"),
        )
        .await;
    assert_eq!(body["decision"], false, "properties must not persist");

    let mut e = eval("carol", "see_flows", "acme-prod");
    e["resource"]["properties"] = json!({ "defaultRole": 7 });
    let (status, body) = s.post("/access/v1/evaluation", e).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "resource.properties");

    let (status, body) = s
        .post(
            "/access/v1/evaluation",
            eval("carol", "teleport", "acme-prod"),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "action.name");
    let (status, body) = s
        .post(
            "/access/v1/evaluation",
            json!({"action": {"name": "see_flows"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "subject");
}

#[tokio::test]
async fn authzen_evaluations_follow_the_batch_semantics() {
    let s = TestServer::shipped().await;
    let batch = |semantic: Option<&str>| {
        let mut b = json!({
            "subject": {"type": "User", "id": "carol"},
            "resource": {"type": "Workspace", "id": "acme-prod"},
            "evaluations": [
                {"action": {"name": "see_flows"}},
                {"action": {"name": "run_flows"}},
                {"action": {"name": "see_blocks"}},
                {"subject": {"type": "User", "id": "alice"}, "action": {"name": "run_flows"}},
            ],
        });
        if let Some(sem) = semantic {
            b["options"] = json!({ "evaluations_semantic": sem });
        }
        b
    };
    let decisions = |body: &Value| -> Vec<bool> {
        body["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["decision"].as_bool().unwrap())
            .collect()
    };
    let (status, body) = s.post("/access/v1/evaluations", batch(None)).await;
    assert_eq!(status, 200);
    assert_eq!(decisions(&body), [true, false, true, true]);
    let (_, body) = s
        .post("/access/v1/evaluations", batch(Some("execute_all")))
        .await;
    assert_eq!(decisions(&body), [true, false, true, true]);
    let (_, body) = s
        .post("/access/v1/evaluations", batch(Some("deny_on_first_deny")))
        .await;
    assert_eq!(decisions(&body), [true, false]);
    let (_, body) = s
        .post(
            "/access/v1/evaluations",
            batch(Some("permit_on_first_permit")),
        )
        .await;
    assert_eq!(decisions(&body), [true]);
    let (status, _) = s
        .post("/access/v1/evaluations", batch(Some("whatever")))
        .await;
    assert_eq!(status, 400);

    // An invalid evaluation answers false with its error; the others go on.
    let mut b = batch(None);
    b["evaluations"][1] = json!({"action": {"name": "teleport"}});
    let (status, body) = s.post("/access/v1/evaluations", b).await;
    assert_eq!(status, 200);
    assert_eq!(decisions(&body), [true, false, true, true]);
    assert_eq!(
        body["evaluations"][1]["context"]["error"]["code"],
        "unknown_action"
    );

    // Without `evaluations` it is one evaluation.
    let single = json!({"subject": {"type": "User", "id": "carol"}, "action": {"name": "see_flows"},
                        "resource": {"type": "Workspace", "id": "acme-prod"}});
    let (_, body) = s.post("/access/v1/evaluations", single).await;
    assert_eq!(body["decision"], true);
}

#[tokio::test]
async fn authzen_metadata_lists_the_endpoints() {
    let s = TestServer::shipped().await;
    let (status, body) = s.get_json("/.well-known/authzen-configuration").await;
    assert_eq!(status, 200);
    let base = body["policy_decision_point"].as_str().unwrap();
    assert_eq!(base, s.base);
    assert_eq!(
        body["access_evaluation_endpoint"],
        format!("{base}/access/v1/evaluation")
    );
    assert_eq!(
        body["access_evaluations_endpoint"],
        format!("{base}/access/v1/evaluations")
    );
}

#[tokio::test]
async fn health_status_and_metrics_describe_what_is_served() {
    let s = TestServer::shipped().await;
    assert_eq!(s.get_json("/healthz").await.0, 200);
    let (status, ready) = s.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["stale"], false);

    let (_, st) = s.get_json("/v1/status").await;
    let generation = st["generation"].as_u64().unwrap();
    assert!(generation >= 1);
    assert_eq!(
        st["counts"]["policies"],
        s.app.pdp.live.snapshot().policy_count()
    );
    let files = st["files"].as_array().unwrap();
    let acme = files
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("entities/acme.json"))
        .unwrap();
    let bytes = std::fs::read(common::root().join("entities/acme.json")).unwrap();
    use sha2::Digest;
    assert_eq!(acme["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert!(st["last_error"].is_null());

    for _ in 0..3 {
        s.post(
            AUTHZ,
            req(r#"User::"carol""#, "see_flows", r#"Workspace::"acme-prod""#),
        )
        .await;
    }
    s.post(
        AUTHZ,
        req(r#"User::"carol""#, "run_flows", r#"Workspace::"acme-prod""#),
    )
    .await;
    s.post(
        AUTHZ,
        req(r#"Usr::"carol""#, "run_flows", r#"Workspace::"acme-prod""#),
    )
    .await;
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(r#"orgwarden_decisions_total{decision="allow",api="cedar"}"#),
        3.0
    );
    assert_eq!(
        value(r#"orgwarden_decisions_total{decision="deny",api="cedar"}"#),
        1.0
    );
    assert_eq!(value("orgwarden_cache_hits_total"), 2.0);
    assert_eq!(value("orgwarden_cache_misses_total"), 3.0);
    assert_eq!(
        value(r#"orgwarden_request_errors_total{code="unknown_type"}"#),
        1.0
    );
    assert_eq!(value("orgwarden_decision_duration_seconds_count"), 4.0);
    assert_eq!(value("orgwarden_snapshot_generation"), generation as f64);
    assert_eq!(
        value("orgwarden_snapshot_entities"),
        st["counts"]["entities"].as_f64().unwrap()
    );
    assert_eq!(
        value("orgwarden_snapshot_policies"),
        st["counts"]["policies"].as_f64().unwrap()
    );
    assert!(text.contains("orgwarden_http_requests_in_flight"));
}

#[tokio::test]
async fn reload_needs_the_admin_token_and_the_cache_follows_the_generation() {
    let (dir, paths) = copy_of_shipped();
    let config = HttpConfig {
        admin_token: Some("t0ken".into()),
        ..HttpConfig::default()
    };
    let s = TestServer::start(paths.clone(), config, 1000, DecisionLog::off()).await;
    let carol = req(r#"User::"carol""#, "see_flows", r#"Workspace::"acme-prod""#);
    assert_eq!(s.post(AUTHZ, carol.clone()).await.1["decision"], "Allow");
    assert_eq!(s.post(AUTHZ, carol.clone()).await.1["decision"], "Allow"); // now cached

    // acme-prod's default role becomes No Access.
    let acme = paths.entities.join("acme.json");
    let text = std::fs::read_to_string(&acme).unwrap();
    let changed = text.replacen(r#""id": "viewer""#, r#""id": "no-access""#, 1);
    assert_ne!(text, changed);
    std::fs::write(&acme, changed).unwrap();

    let url = format!("{}/v1/reload", s.base);
    let resp = s.client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = s
        .client
        .post(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        s.post(AUTHZ, carol.clone()).await.1["decision"],
        "Allow",
        "no reload yet"
    );
    let resp = s
        .client
        .post(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        s.post(AUTHZ, carol.clone()).await.1["decision"],
        "Deny",
        "cached answer of the old generation served"
    );

    // A broken edit is refused and the last good snapshot keeps serving.
    std::fs::write(
        paths.policies.join("broken.cedar"),
        "permit(principal, action, resource) when { principal.nope };",
    )
    .unwrap();
    let resp = s
        .client
        .post(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken.cedar:1:"),
        "{body}"
    );
    assert_eq!(s.post(AUTHZ, carol).await.1["decision"], "Deny");
    let (_, ready) = s.get_json("/readyz").await;
    assert_eq!(ready["stale"], true);
    drop(dir);

    // With no token configured, admin endpoints are refused.
    let s2 = TestServer::shipped().await;
    let resp = s2
        .client
        .post(format!("{}/v1/reload", s2.base))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn decision_log_records_each_decision_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::start(&LogTarget::File(path.clone()), false).unwrap();
    let s = TestServer::start(shipped(), HttpConfig::default(), 0, log).await;
    let resp = s
        .client
        .post(format!("{}{AUTHZ}", s.base))
        .bearer_auth("super-secret-key")
        .json(&req(
            r#"User::"bob""#,
            "see_flows",
            r#"Workspace::"acme-prod""#,
        ))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let (_, denied) = s
        .post(
            AUTHZ,
            req(r#"User::"gina""#, "see_flows", r#"Workspace::"acme-prod""#),
        )
        .await;

    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert_eq!(first["decision_id"], body["decision_id"]);
    assert_eq!(first["principal"], r#"Prefect::User::"bob""#);
    assert_eq!(first["action"], r#"Prefect::Action::"see_flows""#);
    assert_eq!(first["resource"], r#"Prefect::Workspace::"acme-prod""#);
    assert_eq!(first["decision"], "Allow");
    assert_eq!(first["reasons"], json!(["union-of-default-and-explicit"]));
    assert!(first["generation"].as_u64().unwrap() >= 1);
    assert!(first["latency_us"].is_u64());
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["decision_id"], denied["decision_id"]);
    assert_eq!(lines[1]["reasons"], json!(["tenant-boundary"]));
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(!raw.contains("super-secret-key"));
}

#[tokio::test]
async fn decision_log_can_keep_denies_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("denies.jsonl");
    let log = DecisionLog::start(&LogTarget::File(path.clone()), true).unwrap();
    let s = TestServer::start(shipped(), HttpConfig::default(), 0, log).await;
    s.post(
        AUTHZ,
        req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#),
    )
    .await;
    let (_, denied) = s
        .post(
            AUTHZ,
            req(r#"User::"gina""#, "see_flows", r#"Workspace::"acme-prod""#),
        )
        .await;
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let text = std::fs::read_to_string(&path).unwrap_or(text);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["decision_id"], denied["decision_id"]);
}

#[tokio::test]
async fn evaluation_errors_deny_and_are_reported() {
    // A general Cedar model where a policy errors at run time (overflow).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("s.cedarschema"),
        "entity U; entity R; action go appliesTo { principal: U, resource: R, context: { n: Long } };",
    )
    .unwrap();
    std::fs::write(
        p.join("p.cedar"),
        "@id(\"overflowing\") permit(principal, action, resource) when { context.n + 1 > 0 };\n\
         @id(\"plain\") permit(principal, action, resource) when { context.n == 5 };",
    )
    .unwrap();
    std::fs::write(p.join("e.json"), "[]").unwrap();
    let paths = orgwarden::Paths {
        policies: p.join("p.cedar"),
        schema: p.join("s.cedarschema"),
        entities: p.join("e.json"),
        routes: None,
        identity: None,
    };
    let s = TestServer::start(paths, HttpConfig::default(), 0, DecisionLog::off()).await;
    let mut r = req(r#"U::"u""#, "go", r#"R::"r""#);
    r["context"] = json!({ "n": i64::MAX });
    let (status, body) = s.post(AUTHZ, r.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body["decision"], "Deny");
    let errors = body["diagnostics"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].as_str().unwrap().contains("overflowing"),
        "{body}"
    );
    r["context"] = json!({ "n": 5 });
    let (_, body) = s.post(AUTHZ, r).await;
    assert_eq!(body["decision"], "Allow");
    assert_eq!(
        body["diagnostics"]["reason"],
        json!(["overflowing", "plain"])
    );
}

#[tokio::test]
async fn batch_and_authzen_answers_carry_the_fact_revision() {
    let s = TestServer::shipped().await;
    let resp = s
        .client
        .post(format!("{}/v1/is_authorized/batch", s.base))
        .json(
            &json!({"requests": [req(r#"User::"bob""#, "see_flows", r#"Workspace::"acme-prod""#)]}),
        )
        .send()
        .await
        .unwrap();
    let header: u64 = resp.headers()["orgwarden-revision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["revision"], header, "{body}");
    assert!(
        body["results"][0].get("revision").is_none(),
        "said once: {body}"
    );
    let resp = s
        .client
        .post(format!("{}{AUTHZ}", s.base))
        .json(&req(
            r#"User::"bob""#,
            "see_flows",
            r#"Workspace::"acme-prod""#,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["orgwarden-revision"].to_str().unwrap(),
        header.to_string()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["revision"], header, "{body}");
    let eval = json!({
        "subject": {"type": "user", "id": "carol"},
        "action": {"name": "see_flows"},
        "resource": {"type": "workspace", "id": "acme-prod"},
    });
    let (_, body) = s.post("/access/v1/evaluation", eval.clone()).await;
    assert_eq!(body["context"]["revision"], header, "{body}");
    let (_, body) = s
        .post(
            "/access/v1/evaluations",
            json!({"evaluations": [eval.clone(), eval]}),
        )
        .await;
    for item in body["evaluations"].as_array().unwrap() {
        assert_eq!(item["context"]["revision"], header, "{body}");
    }
}

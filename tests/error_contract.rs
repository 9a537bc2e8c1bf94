//! One error contract: every 4xx (and 5xx) leaves as `{"error": {"code",
//! "message", "field"?}}`, whoever produced it: a handler, an extractor,
//! the router, or a tower layer.

mod common;

use std::time::Duration;

use common::TestServer;
use orgwarden::decision_log::DecisionLog;
use orgwarden::http::HttpConfig;
use serde_json::{Value, json};

/// Status, the headers asked for, and the body parsed as JSON (which it
/// must be).
async fn answer(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {text:?}"));
    (status, headers, body)
}

fn assert_error(status: u16, body: &Value, expect_status: u16, code: &str, field: Option<&str>) {
    assert_eq!(status, expect_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

fn decision() -> Value {
    json!({"principal": "User::\"bob\"", "action": "see_flows", "resource": "Workspace::\"acme-prod\""})
}

#[tokio::test]
async fn layer_router_and_extractor_errors_are_json() {
    let s = TestServer::shipped().await;
    let url = |p: &str| format!("{}{p}", s.base);

    // 405, with its Allow header kept.
    let (status, headers, body) =
        answer(s.client.get(url("/v1/is_authorized")).send().await.unwrap()).await;
    assert_error(status, &body, 405, "method_not_allowed", None);
    assert!(headers.get("allow").is_some());

    // 413 from the body limit before a handler reads the body.
    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, _, body) = answer(
        s.client
            .post(url("/v1/facts"))
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 413, "body_too_large", None);

    // 414 and 431.
    let long = format!("/v1/principals/{}/workspaces", "a".repeat(9000));
    let (status, _, body) = answer(s.client.get(url(&long)).send().await.unwrap()).await;
    assert_error(status, &body, 414, "uri_too_long", None);
    let (status, _, body) = answer(
        s.client
            .get(url("/healthz"))
            .header("x-padding", "b".repeat(40 * 1024))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 431, "headers_too_large", None);

    // Rejected path and query parameters name their field.
    let (status, _, body) = answer(
        s.client
            .get(url("/v1/principals/%00%ff/workspaces"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 400, "invalid_reference", Some("uid"));
    let (status, _, body) = answer(
        s.client
            .get(url("/v1/principals/User::%22carol%22/workspaces?limit=-1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 400, "invalid_request", Some("limit"));

    // Unknown endpoints.
    let (status, _, body) = answer(s.client.get(url("/nope")).send().await.unwrap()).await;
    assert_error(status, &body, 404, "not_found", None);
}

#[tokio::test]
async fn a_timeout_is_json() {
    let config = HttpConfig {
        request_timeout: Duration::from_millis(100),
        consistency_wait: Duration::from_secs(3),
        ..HttpConfig::default()
    };
    let s = TestServer::start(common::shipped(), config, 0, DecisionLog::off()).await;
    let resp = s
        .client
        .post(format!("{}/v1/is_authorized", s.base))
        .header("Orgwarden-Min-Revision", "999")
        .json(&decision())
        .send()
        .await
        .unwrap();
    let (status, _, body) = answer(resp).await;
    assert_error(status, &body, 408, "request_timeout", None);
}

#[tokio::test]
async fn bodies_are_json_by_content_type_or_none() {
    let s = TestServer::shipped().await;
    let url = format!("{}/v1/is_authorized", s.base);
    // No Content-Type: read as JSON.
    let (status, _, body) = answer(
        s.client
            .post(&url)
            .body(decision().to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "Allow");
    // A JSON type with parameters, and a +json type.
    for ct in [
        "application/json; charset=utf-8",
        "application/vnd.orgwarden+json",
    ] {
        let resp = s
            .client
            .post(&url)
            .header("content-type", ct)
            .body(decision().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{ct}");
    }
    // Anything else: 415.
    for path in [
        "/v1/is_authorized",
        "/access/v1/evaluation",
        "/access/v1/search/resource",
    ] {
        let resp = s
            .client
            .post(format!("{}{path}", s.base))
            .header("content-type", "text/plain")
            .body(decision().to_string())
            .send()
            .await
            .unwrap();
        let (status, _, body) = answer(resp).await;
        assert_error(
            status,
            &body,
            415,
            "unsupported_media_type",
            Some("Content-Type"),
        );
    }
}

#[tokio::test]
async fn authzen_refuses_unknown_fields_as_cedar_agent_does() {
    let s = TestServer::shipped().await;
    let eval = json!({
        "subject": {"type": "user", "id": "carol"},
        "action": {"name": "see_flows"},
        "resource": {"type": "workspace", "id": "acme-prod"},
    });
    let (status, body) = s.post("/access/v1/evaluation", eval.clone()).await;
    assert_eq!(status, 200, "{body}");
    let mut extra = eval.clone();
    extra["sujbect"] = json!({});
    let (status, body) = s.post("/access/v1/evaluation", extra).await;
    assert_error(status, &body, 400, "invalid_request", Some("sujbect"));
    let mut extra = eval.clone();
    extra["resource"]["owner"] = json!("x");
    let (status, body) = s.post("/access/v1/evaluation", extra).await;
    assert_error(
        status,
        &body,
        400,
        "invalid_request",
        Some("resource.owner"),
    );
    let batch =
        json!({"evaluations": [eval.clone()], "options": {"evaluations_semantics": "execute_all"}});
    let (status, body) = s.post("/access/v1/evaluations", batch).await;
    assert_error(
        status,
        &body,
        400,
        "invalid_request",
        Some("options.evaluations_semantics"),
    );
    let batch = json!({"evaluations": [eval.clone()], "extra": 1});
    let (status, body) = s.post("/access/v1/evaluations", batch).await;
    assert_error(status, &body, 400, "invalid_request", Some("extra"));
    let (status, body) = s
        .post("/access/v1/evaluations", json!({"evaluations": [eval]}))
        .await;
    assert_eq!(status, 200, "{body}");
    // The cedar-agent endpoint refuses them too.
    let mut extra = decision();
    extra["principle"] = json!("x");
    let (status, body) = s.post("/v1/is_authorized", extra).await;
    assert_error(status, &body, 400, "invalid_request", Some("principle"));
}

#[tokio::test]
async fn page_limits_above_the_maximum_are_refused() {
    let s = TestServer::shipped().await;
    let search = |limit: u64| {
        json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "see_flows"},
               "resource": {"type": "workspace"}, "page": {"limit": limit}})
    };
    let (status, body) = s.post("/access/v1/search/resource", search(1000)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.post("/access/v1/search/resource", search(1001)).await;
    assert_error(status, &body, 400, "invalid_page_limit", Some("page.limit"));
    let (status, body) = s
        .get_json("/v1/principals/User::%22carol%22/workspaces?limit=5000")
        .await;
    assert_error(status, &body, 400, "invalid_page_limit", Some("limit"));
}

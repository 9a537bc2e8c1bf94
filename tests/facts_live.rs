//! Live facts against the real router, in process: a reloaded schema
//! re-validates the stored facts (refused, last good kept, when they no
//! longer conform; never racing a concurrent write), and search answers on
//! the live facts at their revision exactly as on a fresh load of them.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use orgwarden::Paths;
use orgwarden::decision_log::DecisionLog;
use orgwarden::facts::store::Store;
use orgwarden::http::{App, HttpConfig};
use orgwarden::live_facts::LiveFacts;
use orgwarden::metrics::Metrics;
use orgwarden::pdp::Pdp;
use orgwarden::reload::Live;
use serde_json::{Value, json};

const FACTS_TOKEN: &str = "facts-token";
const ADMIN_TOKEN: &str = "admin-token";

/// A server on a loopback port deciding on a SQLite store that holds the
/// entities of `paths`.
struct Server {
    base: String,
    app: Arc<App>,
    client: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

struct Answer {
    status: u16,
    revision: Option<u64>,
    body: Value,
}

impl Server {
    async fn start(paths: Paths, store_dir: &Path) -> Server {
        let url = format!("sqlite:{}", store_dir.join("facts.db").display());
        let store = Store::open(&url).await.unwrap();
        let entities = orgwarden::facts::transfer::read_entities(&paths).unwrap();
        orgwarden::facts::transfer::import(&store, entities, false)
            .await
            .unwrap();
        store.close().await;
        let live = Arc::new(Live::load(paths).expect("valid files"));
        let facts = LiveFacts::start(&url, live.clone()).await.unwrap();
        let pdp = Pdp::new(live, Arc::new(Metrics::new()), 1000, DecisionLog::off())
            .with_facts(Arc::new(facts));
        let config = HttpConfig {
            admin_token: Some(ADMIN_TOKEN.into()),
            facts_token: Some(FACTS_TOKEN.into()),
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout: std::time::Duration::from_secs(60),
            ..HttpConfig::default()
        };
        let app = Arc::new(App::new(pdp, config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = app.clone();
        tokio::spawn(async move {
            orgwarden::http::serve(listener, served, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            base: format!("http://{addr}"),
            app,
            client: reqwest::Client::new(),
            _shutdown: tx,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Answer {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let revision = resp
            .headers()
            .get("orgwarden-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            revision,
            body,
        }
    }

    async fn write(&self, ops: Value) -> Answer {
        self.call(
            "POST",
            "/v1/facts",
            &[("Authorization", format!("Bearer {FACTS_TOKEN}"))],
            Some(&json!({ "operations": ops })),
        )
        .await
    }

    async fn reload(&self) -> Answer {
        self.call(
            "POST",
            "/v1/reload",
            &[("Authorization", format!("Bearer {ADMIN_TOKEN}"))],
            None,
        )
        .await
    }

    async fn decide(&self, principal: &str, action: &str, resource: &str) -> Answer {
        self.call(
            "POST",
            "/v1/is_authorized",
            &[],
            Some(&json!({"principal": principal, "action": action, "resource": resource})),
        )
        .await
    }

    async fn status(&self) -> Value {
        self.call("GET", "/v1/status", &[], None).await.body
    }
}

fn schema_file(paths: &Paths) -> std::path::PathBuf {
    paths.schema.join("prefect.cedarschema")
}

/// The shipped schema with `extra` added to the attributes of `Workspace`.
fn workspace_with(extra: &str) -> String {
    let text = std::fs::read_to_string(common::root().join("schema/prefect.cedarschema")).unwrap();
    let anchor = "  entity Workspace = {\n";
    assert!(
        text.contains(anchor),
        "the shipped schema declares Workspace"
    );
    text.replace(anchor, &format!("{anchor}    {extra}\n"))
}

fn shipped_schema() -> String {
    std::fs::read_to_string(common::root().join("schema/prefect.cedarschema")).unwrap()
}

fn allowed(a: &Answer) -> bool {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["decision"] == "Allow"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_stored_facts_violate_is_refused_and_a_compatible_one_is_served() {
    let (_dir, paths) = common::copy_of_shipped();
    let store_dir = tempfile::tempdir().unwrap();
    let server = Server::start(paths.clone(), store_dir.path()).await;
    let carol = r#"Prefect::User::"carol""#;
    let run = "run_deployments";
    let prod = r#"Prefect::Workspace::"acme-prod""#;
    let before = allowed(&server.decide(carol, run, prod).await);
    let status = server.status().await;
    let generation = status["generation"].as_u64().unwrap();
    let region = json!([{ "op": "set_attr", "uid": prod, "attr": "region", "value": "eu" }]);
    let refused = server.write(region.clone()).await;
    assert_eq!(refused.status, 422, "{}", refused.body);

    // Every stored workspace lacks a required `region`: refused.
    std::fs::write(schema_file(&paths), workspace_with("region: String,")).unwrap();
    let reload = server.reload().await;
    assert_eq!(reload.status, 422, "{}", reload.body);
    let message = reload.body["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("Workspace::") && message.contains("region"),
        "the error names the entity and the attribute: {message}"
    );
    let status = server.status().await;
    assert_eq!(status["generation"].as_u64().unwrap(), generation);
    assert_eq!(status["reload_failures"], 1, "{status}");
    let last = &status["last_error"];
    assert!(
        last["summary"].as_str().unwrap().contains("region"),
        "{status}"
    );
    assert!(
        last["diagnostics"].as_array().unwrap().len() > 1,
        "every nonconforming entity is named: {last}"
    );
    let ready = server.call("GET", "/readyz", &[], None).await;
    assert_eq!(ready.body["stale"], true, "{}", ready.body);
    let text = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("orgwarden_reload_failures") && !l.ends_with(" 0")),
        "{text}"
    );
    // The old schema keeps serving: decisions, and writes validated by it.
    assert_eq!(allowed(&server.decide(carol, run, prod).await), before);
    let still = server.write(region.clone()).await;
    assert_eq!(still.status, 422, "{}", still.body);
    let tag = json!([{ "op": "set_tag", "uid": carol, "key": "acme-prod",
        "value": {"__entity": {"type": "Prefect::Role", "id": "viewer"}} }]);
    let written = server.write(tag).await;
    assert_eq!(written.status, 200, "{}", written.body);

    // An optional `region` holds for the stored facts: served, and writes
    // are validated by it from then on.
    std::fs::write(schema_file(&paths), workspace_with("region?: String,")).unwrap();
    let reload = server.reload().await;
    assert_eq!(reload.status, 200, "{}", reload.body);
    let status = server.status().await;
    assert!(status["generation"].as_u64().unwrap() > generation);
    assert!(status["last_error"].is_null(), "{status}");
    let accepted = server.write(region).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let entity = server
        .call(
            "GET",
            "/v1/facts/Prefect::Workspace::%22acme-prod%22",
            &[("Authorization", format!("Bearer {FACTS_TOKEN}"))],
            None,
        )
        .await;
    assert_eq!(entity.status, 200, "{}", entity.body);
    assert!(
        entity.body.to_string().contains("\"eu\""),
        "{}",
        entity.body
    );
    // Carol is now a viewer of acme-prod (written under the old schema).
    assert!(!allowed(&server.decide(carol, run, prod).await));

    // Going back to the shipped schema: the stored `region` no longer conforms.
    std::fs::write(schema_file(&paths), shipped_schema()).unwrap();
    let reload = server.reload().await;
    assert_eq!(reload.status, 422, "{}", reload.body);
    let message = reload.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(r#"Workspace::"acme-prod""#) && message.contains("region"),
        "{message}"
    );
    // A write that removes it lets the same schema load.
    let removed = server
        .write(json!([{ "op": "remove_attr", "uid": prod, "attr": "region" }]))
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    let reload = server.reload().await;
    assert_eq!(reload.status, 200, "{}", reload.body);
}

/// Writers keep setting and removing an attribute that only one of two
/// schemas allows while the schema flips between them. Whatever the
/// interleaving, the facts always conform to the served schema: a write
/// validated under the old schema never lands after the check of the new
/// one, and a flip is refused while a stored value would break it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_checks_never_race_concurrent_writes() {
    let (_dir, paths) = common::copy_of_shipped();
    let with_note = workspace_with("note?: String,");
    std::fs::write(schema_file(&paths), &with_note).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start(paths.clone(), store_dir.path()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in ["acme-prod", "acme-staging"] {
        let server = server.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let uid = format!(r#"Prefect::Workspace::"{w}""#);
            let (mut set, mut removed) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let a = server
                    .write(json!([{ "op": "set_attr", "uid": uid, "attr": "note", "value": "x" }]))
                    .await;
                assert!(a.status == 200 || a.status == 422, "{}", a.body);
                set += (a.status == 200) as u32;
                let b = server
                    .write(json!([{ "op": "remove_attr", "uid": uid, "attr": "note" }]))
                    .await;
                assert!(b.status == 200 || b.status == 422, "{}", b.body);
                removed += (b.status == 200) as u32;
            }
            (set, removed)
        }));
    }
    let live = server.app.pdp.live.clone();
    // While one snapshot serves, every view published conforms to its schema.
    let checker = {
        let server = server.clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let facts = server.app.pdp.facts.clone().unwrap();
            let live = server.app.pdp.live.clone();
            let mut checked = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let before = live.snapshot();
                let view = facts.at(before.clone()).facts.unwrap().view;
                if live.snapshot().generation != before.generation {
                    continue;
                }
                let model = orgwarden::facts::Model::new(&before.schema).unwrap();
                if let Err(e) = view.revalidated(&model) {
                    panic!(
                        "revision {} breaks the schema of generation {}: {e:?}",
                        view.revision(),
                        before.generation
                    );
                }
                checked += 1;
            }
            checked
        })
    };
    let (mut accepted, mut refused) = (0u32, 0u32);
    let mut with = true;
    for _ in 0..40 {
        // Flip to the other schema.
        let next = if with {
            shipped_schema()
        } else {
            with_note.clone()
        };
        std::fs::write(schema_file(&paths), &next).unwrap();
        let l = live.clone();
        let result = tokio::task::spawn_blocking(move || l.reload())
            .await
            .unwrap();
        match result {
            Ok(_) => {
                accepted += 1;
                with = !with;
            }
            Err(diags) => {
                refused += 1;
                assert!(diags.first_summary().contains("note"), "{diags}");
                // Put the served schema's file back.
                let served = if with {
                    with_note.clone()
                } else {
                    shipped_schema()
                };
                std::fs::write(schema_file(&paths), served).unwrap();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        let (set, removed) = w.await.unwrap();
        writes += set + removed;
    }
    let checked = checker.await.unwrap();
    assert!(checked > 0);
    assert!(writes > 0, "the writers wrote");
    assert!(accepted > 0, "some flips were served ({refused} refused)");
    // The facts conform to the served schema: a fresh load of them with it.
    let snap = live.snapshot();
    let facts = server.app.pdp.facts.as_ref().unwrap();
    let at = facts.at(snap.clone());
    let view = at.facts.as_ref().unwrap().view.clone();
    let model = orgwarden::facts::Model::new(&snap.schema).unwrap();
    view.revalidated(&model)
        .unwrap_or_else(|e| panic!("the served facts break the served schema: {e:?}"));
    let has_note = view
        .to_json()
        .iter()
        .any(|e| e["attrs"].get("note").is_some());
    if !with {
        assert!(!has_note, "a note was written under a schema without it");
    }
}

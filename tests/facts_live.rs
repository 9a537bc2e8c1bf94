//! Live facts against the real router, in process: a reloaded schema
//! re-validates the stored facts (refused, last good kept, when they no
//! longer conform; never racing a concurrent write), and search answers on
//! the live facts at their revision exactly as on a fresh load of them.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use orgwarden::Paths;
use orgwarden::decision_log::DecisionLog;
use orgwarden::facts::store::Store;
use orgwarden::http::{App, HttpConfig};
use orgwarden::live_facts::LiveFacts;
use orgwarden::load::{self, TextFile};
use orgwarden::metrics::Metrics;
use orgwarden::pdp::Pdp;
use orgwarden::reload::Live;
use orgwarden::search::live::LiveSource;
use orgwarden::search::{self, Page, PageRequest, Strategy, explain};
use orgwarden::snapshot::{FileKind, Snapshot};
use orgwarden::world::{self, Rng, WorldSpec};
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
        let facts = LiveFacts::start(&url, live.clone(), Default::default())
            .await
            .unwrap();
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

// ---- search on live facts against search on a fresh load ----------------

/// `(type, id)` of a uid as entity JSON writes it.
fn raw_uid(v: &Value) -> Option<(String, String)> {
    let v = v.get("__entity").unwrap_or(v);
    Some((
        v.get("type")?.as_str()?.to_string(),
        v.get("id")?.as_str()?.to_string(),
    ))
}

fn of_type(items: &[Value], ty: &str) -> Vec<(String, String)> {
    items
        .iter()
        .filter_map(|e| raw_uid(&e["uid"]))
        .filter(|(t, _)| t == &format!("Prefect::{ty}"))
        .collect()
}

fn uid_json((t, id): &(String, String)) -> Value {
    json!({ "type": t, "id": id })
}

fn pick(rng: &mut Rng, items: &[(String, String)]) -> (String, String) {
    rng.pick(items)
        .cloned()
        .unwrap_or_else(|| ("Prefect::User".into(), "nobody".into()))
}

/// A random batch of one or two operations that move what search reads:
/// roles (tags), memberships and admin groups (parents), default roles,
/// workspace keys, new and deleted workspaces, invitation emails. Many
/// break a rule and are refused; that is part of the test.
fn random_batch(rng: &mut Rng, items: &[Value], n: usize) -> Value {
    let principals: Vec<(String, String)> =
        [of_type(items, "User"), of_type(items, "ServiceAccount")].concat();
    let users = of_type(items, "User");
    let orgs = of_type(items, "Organization");
    let admins = of_type(items, "OrgAdmins");
    let workspaces = of_type(items, "Workspace");
    let roles = of_type(items, "Role");
    let invitations = of_type(items, "Invitation");
    let find = |k: &(String, String)| {
        items
            .iter()
            .find(|e| raw_uid(&e["uid"]).as_ref() == Some(k))
    };
    let keys: Vec<String> = items
        .iter()
        .filter_map(|e| e["attrs"]["key"].as_str().map(String::from))
        .collect();
    let mut ops = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let p = pick(rng, &principals);
        let ws = pick(rng, &workspaces);
        let op = match rng.below(12) {
            0..=2 => {
                let key = rng.pick(&keys).cloned().unwrap_or_default();
                let role = pick(rng, &roles);
                json!({"op": "set_tag", "uid": uid_json(&p), "key": key,
                       "value": {"__entity": {"type": role.0, "id": role.1}}})
            }
            3 => {
                let held: Vec<String> = find(&p)
                    .and_then(|e| e["tags"].as_object())
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default();
                let key = rng.pick(&held).cloned().unwrap_or_else(|| "none".into());
                json!({"op": "remove_tag", "uid": uid_json(&p), "key": key})
            }
            4 => {
                let parent = if rng.below(2) == 0 {
                    pick(rng, &orgs)
                } else {
                    pick(rng, &admins)
                };
                json!({"op": "add_parent", "uid": uid_json(&p), "parent": uid_json(&parent)})
            }
            5 => {
                let parents: Vec<(String, String)> = find(&p)
                    .and_then(|e| e["parents"].as_array())
                    .map(|ps| ps.iter().filter_map(raw_uid).collect())
                    .unwrap_or_default();
                let parent = pick(rng, &parents);
                json!({"op": "remove_parent", "uid": uid_json(&p), "parent": uid_json(&parent)})
            }
            6 => {
                if rng.below(3) == 0 {
                    json!({"op": "remove_attr", "uid": uid_json(&ws), "attr": "defaultRole"})
                } else {
                    let role = pick(rng, &roles);
                    json!({"op": "set_attr", "uid": uid_json(&ws), "attr": "defaultRole",
                           "value": {"__entity": {"type": role.0, "id": role.1}}})
                }
            }
            7 => {
                let key = match rng.pick(&keys) {
                    Some(k) if rng.below(2) == 0 => k.clone(),
                    _ => format!("key-{n}"),
                };
                json!({"op": "set_attr", "uid": uid_json(&ws), "attr": "key", "value": key})
            }
            8 => {
                let org = pick(rng, &orgs);
                json!({"op": "upsert", "entity": {
                    "uid": {"type": "Prefect::Workspace", "id": format!("new-{n}")},
                    "attrs": {"key": format!("new-{n}"), "handle": format!("new-{n}"),
                              "org": {"__entity": {"type": org.0, "id": org.1}}},
                    "parents": []}})
            }
            9 => json!({"op": "delete", "uid": uid_json(&ws)}),
            10 => {
                let inv = pick(rng, &invitations);
                let email = find(&pick(rng, &users))
                    .and_then(|e| e["attrs"]["email"].as_str().map(String::from))
                    .unwrap_or_else(|| "nobody@example.com".into());
                json!({"op": "set_attr", "uid": uid_json(&inv), "attr": "email", "value": email})
            }
            _ => {
                let inv = pick(rng, &invitations);
                let status = ["pending", "accepted"][rng.below(2)];
                json!({"op": "set_attr", "uid": uid_json(&inv), "attr": "status", "value": status})
            }
        };
        ops.push(op);
    }
    Value::Array(ops)
}

/// Every page of a search, `limit` at a time (tokens exercised).
fn pages<T>(
    limit: usize,
    mut search: impl FnMut(&PageRequest) -> Result<Page<T>, orgwarden::engine::RequestError>,
) -> (Vec<T>, Strategy, Vec<String>) {
    let mut request = PageRequest {
        token: None,
        limit: Some(limit),
    };
    let mut items = Vec::new();
    loop {
        let page = search(&request).unwrap();
        items.extend(page.items);
        match page.next_token {
            Some(t) => request.token = Some(t),
            None => return (items, page.strategy, page.unindexed),
        }
    }
}

/// The schema, policies and entity texts of `paths`, for fresh loads.
struct Fresh {
    schema: Vec<TextFile>,
    policies: Vec<TextFile>,
}

impl Fresh {
    fn of(paths: &Paths) -> Fresh {
        Fresh {
            schema: load::read_texts(&paths.schema, FileKind::Schema).unwrap(),
            policies: load::read_texts(&paths.policies, FileKind::Policies).unwrap(),
        }
    }

    fn load(&self, items: &[Value]) -> Snapshot {
        let file = TextFile {
            path: "export.json".into(),
            text: serde_json::to_string(items).unwrap(),
        };
        load::build(&self.schema, &self.policies, &[file]).expect("the export loads")
    }
}

/// Searches on the live facts (through `search_at`, pages of 2) equal
/// searches on a fresh load of their export, for a sample of principals,
/// resources and actions. The number of searches compared.
fn compare_searches(server: &Server, fresh: &Fresh, rng: &mut Rng) -> (u64, usize) {
    let facts = server.app.pdp.facts.clone().unwrap();
    let (at, index) = facts.search_at(server.app.pdp.live.snapshot());
    let f = at.facts.as_ref().unwrap();
    let live = LiveSource {
        view: &f.view,
        model: &f.model,
        plan: &f.plan,
        index: &index,
    };
    let snap = &at.snap;
    let items = f.view.to_json();
    let loaded = fresh.load(&items);
    let stored: Vec<EntityUid> = f.view.uids().collect();
    let sample = |rng: &mut Rng, ty: &EntityTypeName, n: usize| -> Vec<EntityUid> {
        let mut all: Vec<EntityUid> = stored
            .iter()
            .filter(|u| u.type_name() == ty)
            .cloned()
            .collect();
        all.sort_by_key(|u| u.to_string());
        let mut out = Vec::new();
        for _ in 0..n {
            if let Some(u) = rng.pick(&all) {
                out.push(u.clone());
            }
        }
        // And one the facts do not hold.
        out.push(EntityUid::from_type_name_and_id(
            ty.clone(),
            EntityId::new("ghost"),
        ));
        out
    };
    let ctx = json!({});
    let mut compared = 0;
    let actions: Vec<EntityUid> = snap.names.actions().into_iter().cloned().collect();
    for action in &actions {
        if rng.below(3) != 0 {
            continue;
        }
        let (Some(ps), Some(rs)) = (
            snap.schema.principals_for_action(action),
            snap.schema.resources_for_action(action),
        ) else {
            continue;
        };
        let ps: Vec<EntityTypeName> = ps.cloned().collect();
        let rs: Vec<EntityTypeName> = rs.cloned().collect();
        for pt in &ps {
            for rt in &rs {
                for p in sample(rng, pt, 4) {
                    let want = search::all_pages(|pg| {
                        search::resources(&loaded, &p, action, rt, &ctx, pg)
                    })
                    .unwrap();
                    let got = pages(2, |pg| {
                        search::resources_in(snap, &live, &p, action, rt, &ctx, pg)
                    });
                    assert_eq!(got.0, want.items, "resources {p} {action} {rt}");
                    assert_eq!((got.1, got.2), (want.strategy, want.unindexed));
                    compared += 1;
                }
                for r in sample(rng, rt, 4) {
                    let want =
                        search::all_pages(|pg| search::subjects(&loaded, pt, action, &r, &ctx, pg))
                            .unwrap();
                    let got = pages(2, |pg| {
                        search::subjects_in(snap, &live, pt, action, &r, &ctx, pg)
                    });
                    assert_eq!(got.0, want.items, "subjects {pt} {action} {r}");
                    assert_eq!((got.1, got.2), (want.strategy, want.unindexed));
                    compared += 1;
                }
                for (p, r) in sample(rng, pt, 2).into_iter().zip(sample(rng, rt, 2)) {
                    let want =
                        search::all_pages(|pg| search::actions(&loaded, &p, &r, &ctx, pg)).unwrap();
                    let got = pages(2, |pg| search::actions_in(snap, &live, &p, &r, &ctx, pg));
                    assert_eq!(got.0, want.items, "actions {p} {r}");
                    compared += 1;
                }
            }
        }
    }
    let workspace: EntityTypeName = "Prefect::Workspace".parse().unwrap();
    let user: EntityTypeName = "Prefect::User".parse().unwrap();
    for p in sample(rng, &user, 4) {
        let want =
            search::all_pages(|pg| search::accessible(&loaded, &p, &workspace, &ctx, pg)).unwrap();
        let got = pages(2, |pg| {
            search::accessible_in(snap, &live, &p, &workspace, &ctx, pg)
        });
        assert_eq!(got.0, want.items, "accessible {p}");
        assert_eq!((got.1, got.2), (want.strategy, want.unindexed));
        for access in &want.items {
            for g in &access.grants {
                assert_eq!(
                    explain::explain_in(snap, &live, &p, &g.action, &access.resource, &g.policies),
                    explain::explain(&loaded, &p, &g.action, &access.resource, &g.policies),
                );
            }
            assert_eq!(
                explain::workspace_info_in(snap, &live, &p, &access.resource),
                explain::workspace_info(&loaded, &p, &access.resource),
            );
        }
        compared += 1;
    }
    (f.view.revision(), compared)
}

/// Random writes, with searches between them (so that the live index
/// moves revision by revision), then every few batches the searches on
/// the live facts against the same searches on a fresh load of them; and
/// the HTTP answer states its revision and honours a minimum.
async fn differential(paths: Paths, seed: u64, batches: usize) {
    let store_dir = tempfile::tempdir().unwrap();
    let fresh = Arc::new(Fresh::of(&paths));
    let server = Arc::new(Server::start(paths, store_dir.path()).await);
    let mut rng = Rng(seed);
    let (mut accepted, mut compared) = (0, 0);
    for n in 0..batches {
        let items = {
            let facts = server.app.pdp.facts.clone().unwrap();
            let at = facts.at(server.app.pdp.live.snapshot());
            at.facts.unwrap().view.to_json()
        };
        let ops = random_batch(&mut rng, &items, n);
        let answer = server.write(ops).await;
        assert!(
            answer.status == 200 || answer.status == 422 || answer.status == 404,
            "{}",
            answer.body
        );
        if answer.status == 200 {
            accepted += 1;
        }
        if n % 3 == 0 || n + 1 == batches {
            let (s, f) = (server.clone(), fresh.clone());
            let mut r = Rng(seed ^ n as u64);
            let (revision, count) =
                tokio::task::spawn_blocking(move || compare_searches(&s, &f, &mut r))
                    .await
                    .unwrap();
            compared += count;
            // Over HTTP: the revision header, at least the minimum asked.
            let body = json!({
                "subject": {"type": "User", "id": "alice"},
                "action": {"name": "see_flows"},
                "resource": {"type": "Workspace"},
            });
            let found = server
                .call(
                    "POST",
                    "/access/v1/search/resource",
                    &[("Orgwarden-Min-Revision", revision.to_string())],
                    Some(&body),
                )
                .await;
            assert_eq!(found.status, 200, "{}", found.body);
            let at = found.revision.expect("a revision header");
            assert!(at >= revision);
            assert_eq!(found.body["context"]["revision"], at);
        }
    }
    assert!(
        accepted > batches / 5,
        "{accepted} of {batches} batches accepted"
    );
    assert!(compared > 0);
    // A minimum from the future: 503 stale_facts after the wait.
    let stale = server
        .call(
            "POST",
            "/access/v1/search/action",
            &[("Orgwarden-Min-Revision", "1000000".into())],
            Some(&json!({"subject": {"type": "User", "id": "alice"},
                          "resource": {"type": "Workspace", "id": "acme-prod"}})),
        )
        .await;
    assert_eq!(stale.status, 503, "{}", stale.body);
    assert_eq!(stale.body["error"]["code"], "stale_facts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_live_writes_matches_a_fresh_load_on_the_shipped_model() {
    let (_dir, paths) = common::copy_of_shipped();
    differential(paths, 7, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_live_writes_matches_a_fresh_load_on_a_generated_world() {
    let (_dir, paths) = common::copy_of_shipped();
    std::fs::remove_dir_all(&paths.entities).unwrap();
    let spec = WorldSpec {
        orgs: 3,
        workspaces_per_org: 4,
        users_per_org: 5,
        service_accounts_per_org: 1,
        custom_roles_per_org: 1,
        memberships: 40,
        personal: 2,
        seed: 11,
    };
    world::write(&spec, &paths.entities).unwrap();
    differential(paths, 23, 30).await;
}

/// A page token continues a listing after its last entity at the revision
/// of the next request: what a write added before the cursor is not
/// listed, what it added after is, and each page states its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_continues_after_its_entity_at_the_next_revision() {
    let (_dir, paths) = common::copy_of_shipped();
    let store_dir = tempfile::tempdir().unwrap();
    let server = Server::start(paths, store_dir.path()).await;
    let search = |page: Value| {
        json!({
            "subject": {"type": "User", "id": "alice"},
            "action": {"name": "see_flows"},
            "resource": {"type": "Workspace"},
            "page": page,
        })
    };
    let ids = |a: &Answer| -> Vec<String> {
        a.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = server
        .call(
            "POST",
            "/access/v1/search/resource",
            &[],
            Some(&search(json!({"limit": 1}))),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let before = first.revision.unwrap();
    let last = ids(&first).pop().expect("alice sees a workspace");
    let token = first.body["page"]["next_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!token.is_empty(), "alice sees more than one workspace");
    // Two new workspaces of acme, one sorted before the cursor, one after.
    let workspace = |id: &str| {
        json!({"op": "upsert", "entity": {
            "uid": {"type": "Prefect::Workspace", "id": id},
            "attrs": {"key": id, "handle": id,
                      "org": {"__entity": {"type": "Prefect::Organization", "id": "acme"}}},
            "parents": []}})
    };
    let (before_id, after_id) = ("0-new".to_string(), format!("{last}~"));
    assert!(before_id < last && after_id > last);
    let written = server
        .write(json!([workspace(&before_id), workspace(&after_id)]))
        .await;
    assert_eq!(written.status, 200, "{}", written.body);
    let revision = written.body["revision"].as_u64().unwrap();
    assert!(revision > before);
    let next = server
        .call(
            "POST",
            "/access/v1/search/resource",
            &[("Orgwarden-Min-Revision", revision.to_string())],
            Some(&search(json!({"token": token, "limit": 1000}))),
        )
        .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.revision, Some(revision));
    let all = server
        .call(
            "POST",
            "/access/v1/search/resource",
            &[],
            Some(&search(json!({"limit": 1000}))),
        )
        .await;
    assert_eq!(all.revision, Some(revision));
    let full = ids(&all);
    assert!(
        full.contains(&before_id) && full.contains(&after_id),
        "{full:?}"
    );
    let rest: Vec<String> = full.into_iter().filter(|id| *id > last).collect();
    assert_eq!(ids(&next), rest);
    assert!(!ids(&next).contains(&before_id));
}

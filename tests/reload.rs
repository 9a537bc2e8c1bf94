//! Hot reload through the file watcher, against the real router on a
//! loopback port: every kind of edit real writers make is picked up, a
//! broken edit keeps the last good snapshot serving and says why until it is
//! fixed, the decision cache never answers from an older generation, and
//! under a storm of rewrites no request fails and every decision is its
//! generation's answer.

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::binary::{serve_command, spawn_serve};
use common::{TestServer, copy_dir, copy_of_shipped, req};
use orgwarden::Paths;
use orgwarden::decision_log::{DecisionLog, LogTarget};
use orgwarden::http::HttpConfig;
use orgwarden::reload::{Watch, WatchConfig};
use serde_json::Value;

const AUTHZ: &str = "/v1/is_authorized";
/// Long enough for a failing poll to mean something is wrong, not slow.
const PATIENCE: Duration = Duration::from_secs(20);

const FORBID_CAROL: &str =
    "\n@id(\"forbid-carol\")\nforbid (principal == Prefect::User::\"carol\", action, resource);\n";
const FORBID_BOB: &str =
    "\n@id(\"forbid-bob\")\nforbid (principal == Prefect::User::\"bob\", action, resource);\n";
/// Line 2, column 8 is `resource.nope`: no such attribute.
const BROKEN: &str = "permit (principal, action, resource)\nwhen { resource.nope };\n";

/// A server on `paths`, watching its files.
async fn serve(paths: Paths, debounce_ms: u64) -> (TestServer, Watch) {
    serve_with(paths, debounce_ms, 1000, DecisionLog::off()).await
}

async fn serve_with(
    paths: Paths,
    debounce_ms: u64,
    cache: u64,
    log: DecisionLog,
) -> (TestServer, Watch) {
    // The server's log, shown with a failing test's output (RUST_LOG=orgwarden=debug).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let s = TestServer::start(paths, HttpConfig::default(), cache, log).await;
    let watch = s
        .app
        .pdp
        .live
        .watch(WatchConfig {
            debounce: Duration::from_millis(debounce_ms),
        })
        .expect("watcher");
    (s, watch)
}

async fn decide(s: &TestServer, principal: &str) -> String {
    let (status, body) = s
        .post(
            AUTHZ,
            req(
                &format!("User::\"{principal}\""),
                "see_flows",
                r#"Workspace::"acme-prod""#,
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["decision"].as_str().unwrap().to_string()
}

/// Poll `check` until it holds; fail with `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `principal`'s see_flows on acme-prod is `expected`.
async fn until_decision(s: &TestServer, principal: &str, expected: &str) {
    eventually(&format!("{principal} gets {expected}"), || async {
        decide(s, principal).await == expected
    })
    .await;
}

async fn status(s: &TestServer) -> Value {
    let (code, body) = s.get_json("/v1/status").await;
    assert_eq!(code, 200);
    body
}

fn generation(s: &TestServer) -> u64 {
    s.app.pdp.live.snapshot().generation
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Write `text` to a temporary name beside `path`, then rename it over
/// `path`, as editors and deploy tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("cedar.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// One Prometheus sample's value.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[tokio::test]
async fn an_in_place_write_is_picked_up() {
    let (_dir, paths) = copy_of_shipped();
    let (s, _w) = serve(paths.clone(), 20).await;
    assert_eq!(decide(&s, "carol").await, "Allow");
    let file = paths.policies.join("tenant-boundary.cedar");
    let original = read(&file);
    std::fs::write(&file, format!("{original}{FORBID_CAROL}")).unwrap();
    until_decision(&s, "carol", "Deny").await;
    std::fs::write(&file, &original).unwrap();
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn a_write_to_a_temp_file_renamed_over_the_original_is_picked_up() {
    let (_dir, paths) = copy_of_shipped();
    let (s, _w) = serve(paths.clone(), 20).await;
    let file = paths.policies.join("tenant-boundary.cedar");
    let original = read(&file);
    // vim's dance: probe file, backup, write the new file, drop the backup.
    std::fs::write(paths.policies.join("4913"), "").unwrap();
    std::fs::remove_file(paths.policies.join("4913")).unwrap();
    std::fs::rename(&file, paths.policies.join("tenant-boundary.cedar~")).unwrap();
    std::fs::write(&file, format!("{original}{FORBID_CAROL}")).unwrap();
    std::fs::remove_file(paths.policies.join("tenant-boundary.cedar~")).unwrap();
    until_decision(&s, "carol", "Deny").await;
    replace(&file, &original);
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn a_policies_path_that_is_one_file_is_watched_through_its_parent() {
    let (dir, mut paths) = copy_of_shipped();
    let mut all = String::new();
    for f in orgwarden::load::list_files(&paths.policies, orgwarden::snapshot::FileKind::Policies)
        .unwrap()
    {
        all.push_str(&read(&f));
        all.push('\n');
    }
    let single = dir.path().join("all.cedar");
    std::fs::write(&single, &all).unwrap();
    paths.policies = single.clone();
    let (s, _w) = serve(paths, 20).await;
    assert_eq!(decide(&s, "carol").await, "Allow");
    replace(&single, &format!("{all}{FORBID_CAROL}"));
    until_decision(&s, "carol", "Deny").await;
    replace(&single, &all);
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn deletes_creates_and_new_directories_are_picked_up() {
    let (_dir, paths) = copy_of_shipped();
    let (s, _w) = serve(paths.clone(), 20).await;
    let union = paths.policies.join("union-of-default-and-explicit.cedar");
    let original = read(&union);

    // A removed file: carol's only permit (the default role) is gone.
    std::fs::remove_file(&union).unwrap();
    until_decision(&s, "carol", "Deny").await;
    // A new file (the set of input files changes).
    std::fs::write(&union, &original).unwrap();
    until_decision(&s, "carol", "Allow").await;

    // Delete then create with new content.
    assert_eq!(decide(&s, "bob").await, "Allow");
    std::fs::remove_file(&union).unwrap();
    std::fs::write(&union, format!("{original}{FORBID_BOB}")).unwrap();
    until_decision(&s, "bob", "Deny").await;
    assert_eq!(decide(&s, "carol").await, "Allow");

    // A file in a new subdirectory, and its removal.
    let team = paths.policies.join("team");
    std::fs::create_dir(&team).unwrap();
    std::fs::write(team.join("carol.cedar"), FORBID_CAROL).unwrap();
    until_decision(&s, "carol", "Deny").await;
    std::fs::remove_file(team.join("carol.cedar")).unwrap();
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn many_files_changed_at_once_make_one_reload() {
    let (_dir, paths) = copy_of_shipped();
    // A debounce far longer than writing ten small files takes.
    let (s, _w) = serve(paths.clone(), 1000).await;
    let before = status(&s).await;
    assert_eq!(before["watch"]["debounce_ms"], 1000, "{before}");
    let files = before["counts"]["files"].as_u64().unwrap();
    let reloads = before["reloads"].as_u64().unwrap();
    for i in 0..10 {
        std::fs::write(
            paths.policies.join(format!("many-{i}.cedar")),
            format!("@id(\"many-{i}\")\nforbid (principal == Prefect::User::\"carol\", action, resource);\n"),
        )
        .unwrap();
    }
    eventually("the ten new files are served", || async {
        status(&s).await["counts"]["files"].as_u64() == Some(files + 10)
    })
    .await;
    let after = status(&s).await;
    assert_eq!(after["reloads"].as_u64().unwrap(), reloads + 1, "{after}");
    // (Generations are numbered process-wide: other tests' loads count too.)
    assert!(after["generation"].as_u64() > before["generation"].as_u64());
    assert_eq!(decide(&s, "carol").await, "Deny");
}

/// The layout of a Kubernetes ConfigMap volume: `..data` links to a
/// timestamped directory, each file is a link through `..data`.
fn configmap_version(dir: &Path, name: &str, from: &Path, extra: Option<(&str, &str)>) {
    let data = dir.join(name);
    copy_dir(from, &data);
    if let Some((file, text)) = extra {
        let path = data.join(file);
        let old = read(&path);
        std::fs::write(path, format!("{old}{text}")).unwrap();
    }
}

fn configmap_swap(dir: &Path, name: &str) {
    let tmp = dir.join("..data_tmp");
    symlink(name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test]
async fn a_configmap_data_symlink_swap_is_picked_up() {
    let (dir, mut paths) = copy_of_shipped();
    let cm = dir.path().join("cm");
    std::fs::create_dir(&cm).unwrap();
    configmap_version(&cm, "..2026_11_25_01", &paths.policies, None);
    symlink("..2026_11_25_01", cm.join("..data")).unwrap();
    for entry in std::fs::read_dir(&paths.policies).unwrap() {
        let name = entry.unwrap().file_name();
        symlink(Path::new("..data").join(&name), cm.join(&name)).unwrap();
    }
    let shipped_policies = paths.policies.clone();
    paths.policies = cm.clone();
    let (s, _w) = serve(paths, 20).await;
    assert_eq!(decide(&s, "carol").await, "Allow");

    configmap_version(
        &cm,
        "..2026_11_25_02",
        &shipped_policies,
        Some(("tenant-boundary.cedar", FORBID_CAROL)),
    );
    configmap_swap(&cm, "..2026_11_25_02");
    std::fs::remove_dir_all(cm.join("..2026_11_25_01")).unwrap();
    until_decision(&s, "carol", "Deny").await;

    // And again: the watches still hold after the old data went away.
    configmap_version(&cm, "..2026_11_25_03", &shipped_policies, None);
    configmap_swap(&cm, "..2026_11_25_03");
    std::fs::remove_dir_all(cm.join("..2026_11_25_02")).unwrap();
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn a_git_sync_style_swap_of_a_symlinked_ancestor_is_picked_up() {
    let (dir, mut paths) = copy_of_shipped();
    let git = dir.path().join("git");
    copy_dir(&paths.policies, &git.join("rev1/policies"));
    copy_dir(&paths.policies, &git.join("rev2/policies"));
    let boundary = git.join("rev2/policies/tenant-boundary.cedar");
    std::fs::write(&boundary, format!("{}{FORBID_CAROL}", read(&boundary))).unwrap();
    symlink("rev1", git.join("current")).unwrap();
    paths.policies = git.join("current/policies");
    let (s, _w) = serve(paths, 20).await;
    assert_eq!(decide(&s, "carol").await, "Allow");

    symlink("rev2", git.join("current.tmp")).unwrap();
    std::fs::rename(git.join("current.tmp"), git.join("current")).unwrap();
    until_decision(&s, "carol", "Deny").await;

    // An edit inside the new worktree is seen too.
    std::fs::write(
        &boundary,
        read(&git.join("rev1/policies/tenant-boundary.cedar")),
    )
    .unwrap();
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn a_directory_that_disappears_and_comes_back_is_watched_again() {
    let (dir, paths) = copy_of_shipped();
    let (s, _w) = serve(paths.clone(), 20).await;
    let served = generation(&s);
    let backup = dir.path().join("backup");
    copy_dir(&paths.policies, &backup);

    std::fs::remove_dir_all(&paths.policies).unwrap();
    eventually("the missing directory is reported", || async {
        status(&s).await["last_error"]["summary"]
            .as_str()
            .is_some_and(|e| e.contains("policies"))
    })
    .await;
    assert_eq!(generation(&s), served);
    assert_eq!(decide(&s, "carol").await, "Allow", "the last good snapshot");
    assert_eq!(s.get_json("/readyz").await.1["stale"], true);

    std::fs::write(backup.join("carol.cedar"), FORBID_CAROL).unwrap();
    copy_dir(&backup, &paths.policies);
    until_decision(&s, "carol", "Deny").await;
    eventually("no longer stale", || async {
        s.get_json("/readyz").await.1["stale"] == false
    })
    .await;

    // Watched again: an edit inside the new directory is seen.
    std::fs::remove_file(paths.policies.join("carol.cedar")).unwrap();
    until_decision(&s, "carol", "Allow").await;
}

#[tokio::test]
async fn a_broken_edit_keeps_serving_reports_where_and_a_fix_recovers() {
    let (_dir, paths) = copy_of_shipped();
    let (s, _w) = serve(paths.clone(), 20).await;
    let served = generation(&s);
    let broken = paths.policies.join("typo.cedar");
    std::fs::write(&broken, BROKEN).unwrap();
    eventually("the error is reported", || async {
        !status(&s).await["last_error"].is_null()
    })
    .await;
    let st = status(&s).await;
    let summary = st["last_error"]["summary"].as_str().unwrap();
    assert!(summary.contains("typo.cedar:2:8"), "{st}");
    assert!(summary.contains("nope"), "{st}");
    let first = &st["last_error"]["diagnostics"][0];
    assert_eq!(
        (first["line"].as_u64(), first["column"].as_u64()),
        (Some(2), Some(8)),
        "{st}"
    );
    assert_eq!(st["generation"].as_u64(), Some(served));
    assert!(st["reload_failures"].as_u64().unwrap() >= 1);
    let (_, ready) = s.get_json("/readyz").await;
    assert_eq!(ready["stale"], true, "{ready}");
    assert_eq!(ready["generation"].as_u64(), Some(served));
    assert!(
        ready["last_error"]
            .as_str()
            .unwrap()
            .contains("typo.cedar:2:8"),
        "{ready}"
    );
    let (_, metrics) = s.get("/metrics").await;
    assert!(metric(&metrics, "orgwarden_reload_failures") >= 1.0);
    assert_eq!(metric(&metrics, "orgwarden_snapshot_stale"), 1.0);
    assert_eq!(decide(&s, "carol").await, "Allow", "the last good snapshot");

    // An entities file with a JSON syntax error: located too.
    let acme = paths.entities.join("acme.json");
    let acme_text = read(&acme);
    std::fs::write(&acme, &acme_text[..acme_text.len() / 2]).unwrap();
    eventually(
        "the entities error is reported with its position",
        || async {
            let st = status(&s).await;
            let diags = st["last_error"]["diagnostics"].as_array().cloned();
            diags.unwrap_or_default().iter().any(|d| {
                d["file"].as_str().is_some_and(|f| f.ends_with("acme.json"))
                    && d["line"].as_u64().is_some()
                    && d["column"].as_u64().is_some()
            })
        },
    )
    .await;
    std::fs::write(&acme, &acme_text).unwrap();

    // The fix: served, no longer stale.
    std::fs::write(&broken, FORBID_CAROL).unwrap();
    until_decision(&s, "carol", "Deny").await;
    eventually("the error is cleared", || async {
        status(&s).await["last_error"].is_null()
    })
    .await;
    assert!(generation(&s) > served);
    let (_, ready) = s.get_json("/readyz").await;
    assert_eq!(ready["stale"], false, "{ready}");
    let (_, metrics) = s.get("/metrics").await;
    assert_eq!(metric(&metrics, "orgwarden_snapshot_stale"), 0.0);

    // Broken again, then reverted to exactly the served files: the error
    // clears and the generation stays (nothing changed).
    let fixed = generation(&s);
    std::fs::write(&broken, BROKEN).unwrap();
    eventually("the error is reported again", || async {
        !status(&s).await["last_error"].is_null()
    })
    .await;
    std::fs::write(&broken, FORBID_CAROL).unwrap();
    eventually("the error clears on the revert", || async {
        status(&s).await["last_error"].is_null()
    })
    .await;
    assert_eq!(generation(&s), fixed, "identical files bump no generation");
    assert_eq!(decide(&s, "carol").await, "Deny");
}

#[tokio::test]
async fn unchanged_files_swap_nothing() {
    let (_dir, paths) = copy_of_shipped();
    let s = TestServer::start(paths, HttpConfig::default(), 0, DecisionLog::off()).await;
    let live = s.app.pdp.live.clone();
    let before = live.snapshot();
    let again = tokio::task::spawn_blocking(move || live.reload())
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&before, &again));
    assert_eq!(s.app.pdp.live.counts(), (0, 0));
    assert!(status(&s).await["watch"].is_null(), "not watched");
}

#[tokio::test]
async fn the_cache_never_answers_from_an_older_generation_after_a_swap() {
    let (_dir, paths) = copy_of_shipped();
    let (s, _w) = serve(paths.clone(), 10).await;
    let file = paths.policies.join("carol.cedar");
    let hits = |text: &str| metric(text, "orgwarden_cache_hits_total");
    for round in 0..4 {
        let forbidden = round % 2 == 0;
        let (old, new) = if forbidden {
            ("Allow", "Deny")
        } else {
            ("Deny", "Allow")
        };
        // The old generation's answer, then again from the cache.
        assert_eq!(decide(&s, "carol").await, old);
        let before = hits(&s.get("/metrics").await.1);
        assert_eq!(decide(&s, "carol").await, old);
        assert_eq!(hits(&s.get("/metrics").await.1), before + 1.0, "cached");
        let served = generation(&s);
        if forbidden {
            replace(&file, FORBID_CAROL);
        } else {
            std::fs::remove_file(&file).unwrap();
        }
        eventually("a new generation", || async {
            status(&s).await["generation"].as_u64() > Some(served)
        })
        .await;
        // The first decision after the swap is the new generation's.
        assert_eq!(decide(&s, "carol").await, new, "round {round}");
    }
}

/// The stress test's policy file versions: two good ones that answer
/// carol's request differently, and a broken one.
const VERSIONS: [&str; 3] = [
    "@id(\"stress-a\")\npermit (principal == Prefect::User::\"carol\", action == Prefect::Action::\"see_flows\", resource == Prefect::Workspace::\"acme-prod\");\n",
    "@id(\"stress-b\")\nforbid (principal == Prefect::User::\"carol\", action, resource);\n",
    "@id(\"stress-broken\")\npermit (principal, action, resource)\nwhen { resource.nope };\n",
];
const A: usize = 0;
const B: usize = 1;
const BROKEN_VERSION: usize = 2;

/// Requests, and their answers under versions A and B.
const QUERIES: [(&str, &str, [&str; 2]); 4] = [
    ("carol", "see_flows", ["Allow", "Deny"]),
    ("bob", "see_flows", ["Allow", "Allow"]),
    ("hank", "see_flows", ["Deny", "Deny"]),
    ("dana", "run_flows", ["Allow", "Allow"]),
];

struct Answer {
    status: u16,
    query: usize,
    decision: String,
    decision_id: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_storm_of_rewrites_no_request_fails_and_each_answer_is_its_generations() {
    let (dir, paths) = copy_of_shipped();
    let file = paths.policies.join("stress.cedar");
    std::fs::write(&file, VERSIONS[A]).unwrap();
    let log_path = dir.path().join("decisions.jsonl");
    let log = DecisionLog::start(&LogTarget::File(log_path.clone()), false).unwrap();
    let (s, _w) = serve_with(paths, 5, 1000, log).await;
    let live = s.app.pdp.live.clone();
    let mut version_of: HashMap<u64, usize> = HashMap::from([(generation(&s), A)]);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let client = s.client.clone();
        let url = format!("{}{AUTHZ}", s.base);
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let query = i % QUERIES.len();
                i += 1;
                let (who, action, _) = QUERIES[query];
                let body = req(
                    &format!("User::\"{who}\""),
                    action,
                    r#"Workspace::"acme-prod""#,
                );
                let answer = match client.post(&url).json(&body).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        Answer {
                            status,
                            query,
                            decision: body["decision"].as_str().unwrap_or("").to_string(),
                            decision_id: body["decision_id"].as_str().unwrap_or("").to_string(),
                        }
                    }
                    Err(_) => Answer {
                        status: 0,
                        query,
                        decision: String::new(),
                        decision_id: String::new(),
                    },
                };
                answers.push(answer);
            }
            answers
        }));
    }

    // Rewrite: B, broken, A, B, broken, A, ... Each good version is waited
    // for, and its generation noted; a broken one must change nothing.
    let tmp = file.with_extension("cedar.tmp");
    let mut served = generation(&s);
    for step in 0..15 {
        let version = [B, BROKEN_VERSION, A][step % 3];
        let failures = live.counts().1;
        std::fs::write(&tmp, VERSIONS[version]).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        if version == BROKEN_VERSION {
            eventually("the broken version is refused", || async {
                live.counts().1 > failures
            })
            .await;
            assert_eq!(generation(&s), served, "a broken version was served");
            let error = live.last_error().expect("an error while broken").summary;
            assert!(error.contains("stress.cedar:3:8"), "{error}");
        } else {
            eventually("the new version is served", || async {
                generation(&s) != served && live.last_error().is_none()
            })
            .await;
            served = generation(&s);
            version_of.insert(served, version);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }

    assert!(answers.len() > 100, "only {} requests", answers.len());
    let failed: Vec<_> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed",
        failed.len(),
        answers.len()
    );

    // The decision log says which generation decided each request.
    let ids: HashSet<&str> = answers.iter().map(|a| a.decision_id.as_str()).collect();
    let mut generation_of: HashMap<String, u64> = HashMap::new();
    eventually("every decision is logged", || {
        generation_of = read(&log_path)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                (
                    v["decision_id"].as_str().unwrap_or("").to_string(),
                    v["generation"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let done = ids.iter().all(|id| generation_of.contains_key(*id));
        async move { done }
    })
    .await;
    let mut seen = HashSet::new();
    for a in &answers {
        let g = generation_of[&a.decision_id];
        seen.insert(g);
        let version = *version_of
            .get(&g)
            .unwrap_or_else(|| panic!("generation {g} was never a version written"));
        let (who, action, expected) = QUERIES[a.query];
        assert_eq!(
            a.decision, expected[version],
            "{who} {action} in generation {g} (version {version})"
        );
    }
    assert!(seen.len() > 1, "the clients saw only generations {seen:?}");
}

#[test]
fn a_change_of_policies_only_reuses_the_parsed_entities_and_no_other_does() {
    use orgwarden::load::Inputs;
    let (_dir, paths) = copy_of_shipped();
    let inputs = Inputs::read(&paths).unwrap();
    let files = inputs.source_files();
    // A previous snapshot built from other entities (acme-prod's default role
    // is No Access there), made to claim the files on disk: whatever is
    // reused shows.
    let mut other = inputs.clone();
    let acme = other
        .entities
        .iter_mut()
        .find(|f| f.path.ends_with("acme.json"))
        .unwrap();
    acme.text = acme
        .text
        .replacen(r#""id": "viewer""#, r#""id": "no-access""#, 1);
    let mut previous = other.build(other.source_files(), Instant::now()).unwrap();
    assert_eq!(default_role(&previous), "no-access");
    assert_eq!(
        default_role(&inputs.build(files.clone(), Instant::now()).unwrap()),
        "viewer"
    );
    previous.files = files;

    let mut policies_changed = inputs.clone();
    policies_changed.policies[0].text.push_str("\n// edited\n");
    let next = policies_changed
        .build_after(policies_changed.source_files(), Instant::now(), &previous)
        .unwrap();
    assert_eq!(default_role(&next), "no-access", "reused");
    assert!(next.generation > previous.generation);

    for (what, kind) in [("entities", 0), ("schema", 1)] {
        let mut changed = policies_changed.clone();
        let file = if kind == 0 {
            &mut changed.entities[0]
        } else {
            &mut changed.schema[0]
        };
        file.text.push('\n');
        let next = changed
            .build_after(changed.source_files(), Instant::now(), &previous)
            .unwrap();
        assert_eq!(default_role(&next), "viewer", "{what} changed: parsed anew");
    }
}

/// acme-prod's default role in `snapshot`'s entities.
fn default_role(snapshot: &orgwarden::Snapshot) -> String {
    let uid: cedar_policy::EntityUid = r#"Prefect::Workspace::"acme-prod""#.parse().unwrap();
    let workspace = snapshot.entities.get(&uid).unwrap();
    match workspace.attr("defaultRole") {
        Some(Ok(cedar_policy::EvalResult::EntityUid(role))) => role.id().unescaped().to_string(),
        other => panic!("{other:?}"),
    }
}

/// `orgwarden serve` on `paths` with `flags`, killed when dropped.
struct Binary {
    child: std::process::Child,
    base: String,
}

impl Binary {
    fn start(paths: &Paths, flags: &[&str]) -> Self {
        let command = serve_command(&paths.policies, &paths.schema, &paths.entities, flags);
        let (child, addr) = spawn_serve(command, PATIENCE);
        Binary {
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_binary_watches_with_its_debounce_and_not_with_no_watch() {
    let (_dir, paths) = copy_of_shipped();
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            resp.json::<Value>().await.unwrap()
        }
    };
    let carol = req(r#"User::"carol""#, "see_flows", r#"Workspace::"acme-prod""#);
    let decide = |base: String| {
        let client = client.clone();
        let carol = carol.clone();
        async move {
            let resp = client.post(format!("{base}{AUTHZ}")).json(&carol).send();
            let body: Value = resp.await.unwrap().json().await.unwrap();
            body["decision"].as_str().unwrap().to_string()
        }
    };

    let unwatched = Binary::start(&paths, &["--no-watch"]);
    assert!(get(format!("{}/v1/status", unwatched.base)).await["watch"].is_null());
    let watched = Binary::start(&paths, &["--reload-debounce-ms", "10"]);
    let status = get(format!("{}/v1/status", watched.base)).await;
    assert_eq!(status["watch"]["debounce_ms"], 10, "{status}");

    std::fs::write(paths.policies.join("carol.cedar"), FORBID_CAROL).unwrap();
    eventually("the watching server reloads", || {
        let decision = decide(watched.base.clone());
        async move { decision.await == "Deny" }
    })
    .await;
}

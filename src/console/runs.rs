//! Matrices and proofs on demand: `orgwarden test` on the configured
//! matrix files and `orgwarden verify` on the configured properties, run
//! for the inputs the sidecar serves.
//!
//! * `POST /v1/console/runs` `{"kind": "matrices" | "verify"}`: start a run
//!   (202); 409 `run_in_progress` while one runs;
//! * `GET /v1/console/runs`: the run in progress and the last result of
//!   each kind, failures first.
//!
//! A run works on a copy of the served inputs, written to a private temp
//! directory: the policy and schema files of the served snapshot (each
//! checked against the SHA-256 digest the snapshot recorded, so an edit on
//! disk that has not been loaded is never what a run reports on) and its
//! facts (the entity files, or in store mode the published fact view at
//! its revision). It runs in a child process of this binary, in its own
//! process group, so that the CPU it takes is bounded: one run at a time,
//! `verify` with one solver process, and the whole group killed at the
//! time limit (`--console-run-timeout-s`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Console, ConsoleConfig, mask_digests};
use crate::http::error::{ApiError, JsonBody};
use crate::reload::rfc3339;
use crate::snapshot::FileKind;

/// What a run runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Matrices,
    Verify,
}

/// The run in progress and the last result of each kind.
#[derive(Default)]
pub struct Runs {
    state: Mutex<RunState>,
}

#[derive(Default)]
struct RunState {
    running: Option<Kind>,
    last: HashMap<Kind, Value>,
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the run finished when dropped (also when its task panics).
struct Running(Arc<Console>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.runs.lock().running = None;
    }
}

/// `config` with its paths made absolute (the child runs elsewhere).
pub(super) fn absolute(mut config: ConsoleConfig) -> ConsoleConfig {
    if let Ok(p) = std::path::absolute(&config.matrices) {
        config.matrices = p;
    }
    if let Ok(p) = std::path::absolute(&config.properties) {
        config.properties = p;
    }
    config
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub kind: Kind,
}

/// `POST /v1/console/runs`.
pub async fn start(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<StartRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    console.authorize(&headers)?;
    {
        let mut state = console.runs.lock();
        if let Some(kind) = state.running {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "run_in_progress",
                format!(
                    "a run of the {} is in progress: one run at a time",
                    word(kind)
                ),
            ));
        }
        state.running = Some(req.kind);
        state.last.insert(
            req.kind,
            json!({
                "kind": req.kind,
                "state": "running",
                "started_at": rfc3339::format(SystemTime::now()),
            }),
        );
    }
    let guard = Running(console.clone());
    let kind = req.kind;
    tokio::spawn(async move {
        let started = SystemTime::now();
        let clock = Instant::now();
        let mut result = run(&guard.0, kind).await;
        result["kind"] = json!(kind);
        result["started_at"] = json!(rfc3339::format(started));
        result["finished_at"] = json!(rfc3339::format(SystemTime::now()));
        result["elapsed_ms"] = json!(clock.elapsed().as_millis() as u64);
        guard.0.runs.lock().last.insert(kind, result);
        drop(guard);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "kind": kind, "state": "running" })),
    ))
}

/// `GET /v1/console/runs`.
pub async fn list(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    console.authorize(&headers)?;
    let state = console.runs.lock();
    Ok(Json(json!({
        "running": state.running,
        "matrices": state.last.get(&Kind::Matrices),
        "verify": state.last.get(&Kind::Verify),
        "timeout_s": console.config.run_timeout.as_secs(),
        "matrices_path": shown(&console.config.matrices),
        "properties_path": shown(&console.config.properties),
    })))
}

fn word(kind: Kind) -> &'static str {
    match kind {
        Kind::Matrices => "matrices",
        Kind::Verify => "proofs",
    }
}

/// `path` relative to the working directory when it is below it.
fn shown(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

fn failed(state: &str, message: impl Into<String>) -> Value {
    json!({ "state": state, "message": mask_digests(&message.into()) })
}

/// One run, start to end: its result.
async fn run(console: &Arc<Console>, kind: Kind) -> Value {
    let dir = std::env::temp_dir().join(format!(
        "orgwarden-console-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let c = console.clone();
    let target = dir.clone();
    let inputs = tokio::task::spawn_blocking(move || materialize(&c, &target))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    let result = match inputs {
        Err(e) => failed("error", e),
        Ok(inputs) => {
            let mut result = match kind {
                Kind::Matrices => matrices(console, &dir).await,
                Kind::Verify => verify(console, &dir).await,
            };
            result["generation"] = json!(inputs.generation);
            result["revision"] = json!(inputs.revision);
            result
        }
    };
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result
}

/// What a run's copy of the inputs was taken from.
struct Inputs {
    generation: u64,
    revision: u64,
}

/// Write the served policies, schema and facts under `dir` (`policies/`,
/// `schema/`, `entities/`).
fn materialize(console: &Console, dir: &Path) -> Result<Inputs, String> {
    let pdp = &console.app.pdp;
    if let Some(facts) = &pdp.facts
        && !facts.ready()
    {
        return Err("the facts are not loaded from the store yet".into());
    }
    let at = pdp.at();
    let paths = pdp.live.paths();
    for sub in ["policies", "schema", "entities"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for file in &at.snap.files {
        let (root, sub) = match file.kind {
            FileKind::Policies => (&paths.policies, "policies"),
            FileKind::Schema => (&paths.schema, "schema"),
            FileKind::Entities if at.facts.is_none() => (&paths.entities, "entities"),
            FileKind::Entities | FileKind::Routes | FileKind::Identity => continue,
        };
        let rel = match file.path.strip_prefix(root) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
            _ => PathBuf::from(file.path.file_name().unwrap_or_default()),
        };
        let bytes = std::fs::read(&file.path).map_err(|e| {
            format!(
                "{}: {e}: the served files are no longer on disk",
                file.path.display()
            )
        })?;
        if hex::encode(Sha256::digest(&bytes)) != file.sha256 {
            let pending = match pdp.live.last_error() {
                Some(e) => format!("the last reload failed: {}", e.summary),
                None => "a reload is pending".to_string(),
            };
            return Err(format!(
                "{} changed on disk since generation {} was loaded ({pending}); \
                 a run reports on the served files: run it once they load",
                file.path.display(),
                at.snap.generation
            ));
        }
        let target = dir.join(sub).join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&target, bytes).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    if let Some(facts) = &at.facts {
        let text = serde_json::to_vec(&facts.view.to_json()).map_err(|e| e.to_string())?;
        let target = dir.join("entities").join("facts.json");
        std::fs::write(&target, text).map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(Inputs {
        generation: at.snap.generation,
        revision: at.revision(),
    })
}

fn world_args(dir: &Path) -> Vec<OsString> {
    let mut args = Vec::new();
    for sub in ["policies", "schema", "entities"] {
        args.push(OsString::from(format!("--{sub}")));
        args.push(dir.join(sub).into_os_string());
    }
    args
}

/// The child's exit code and output, or why it did not finish.
async fn child(
    console: &Console,
    dir: &Path,
    args: Vec<OsString>,
) -> Result<(i32, String, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ORGWARDEN_") {
            command.env_remove(key);
        }
    }
    #[cfg(unix)]
    command.process_group(0);
    let started = command
        .spawn()
        .map_err(|e| format!("cannot start the run: {e}"))?;
    let pid = started.id();
    let limit = console.config.run_timeout;
    match tokio::time::timeout(limit, started.wait_with_output()).await {
        Ok(Ok(out)) => Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Ok(Err(e)) => Err(format!("the run failed: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            Err(format!(
                "timeout: the run did not finish within {} s and was stopped",
                limit.as_secs()
            ))
        }
    }
}

/// Kill the process group `pgid` (the run and the solvers it started).
fn kill_group(pgid: u32) {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    #[cfg(not(unix))]
    let _ = pgid;
}

/// The end of a text, at most `max` bytes.
fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// The child's answer: its JSON report for exit codes 0 and 1, its
/// diagnostics for 2 (invalid input), or why it stopped.
fn report(outcome: Result<(i32, String, String), String>) -> Result<Value, Value> {
    match outcome {
        Err(e) if e.starts_with("timeout") => Err(failed("timeout", e)),
        Err(e) => Err(failed("error", e)),
        Ok((0 | 1, stdout, stderr)) => serde_json::from_str(&stdout).map_err(|e| {
            failed(
                "error",
                format!("unreadable report ({e}): {}", tail(&stderr, 4000)),
            )
        }),
        Ok((code, _, stderr)) => Err(failed(
            "invalid",
            format!("exit code {code}:\n{}", tail(&stderr, 16_000)),
        )),
    }
}

async fn matrices(console: &Console, dir: &Path) -> Value {
    let mut args: Vec<OsString> = vec![
        "test".into(),
        console.config.matrices.clone().into_os_string(),
        "--format".into(),
        "json".into(),
    ];
    args.extend(world_args(dir));
    let body = match report(child(console, dir, args).await) {
        Ok(body) => body,
        Err(failure) => return failure,
    };
    let mut failures = Vec::new();
    let mut files = Vec::new();
    for file in body["files"].as_array().into_iter().flatten() {
        let path = shown(Path::new(file["file"].as_str().unwrap_or_default()));
        for test in file["tests"].as_array().into_iter().flatten() {
            if test["pass"] != json!(true) {
                let mut t = test.clone();
                t["file"] = json!(path);
                failures.push(t);
            }
        }
        files.push(json!({
            "file": path,
            "name": file["name"],
            "passed": file["passed"],
            "failed": file["failed"],
        }));
    }
    files.sort_by_key(|f| std::cmp::Reverse(f["failed"].as_u64().unwrap_or(0)));
    let failed_count = body["failed"].as_u64().unwrap_or(0);
    json!({
        "state": if failed_count == 0 { "passed" } else { "failed" },
        "passed": body["passed"],
        "failed": failed_count,
        "failures": failures,
        "files": files,
    })
}

async fn verify(console: &Console, dir: &Path) -> Value {
    let solver_ms = console.config.run_timeout.as_millis().min(60_000) as u64;
    let mut args: Vec<OsString> = vec![
        "verify".into(),
        "--format".into(),
        "json".into(),
        "--workers".into(),
        "1".into(),
        "--timeout-ms".into(),
        solver_ms.to_string().into(),
    ];
    let properties = console.config.properties.clone();
    let note = if properties.is_file() {
        args.push("--properties".into());
        args.push(properties.into_os_string());
        None
    } else {
        Some(format!(
            "no properties file at {}: only `never-errors` was checked",
            shown(&console.config.properties)
        ))
    };
    args.extend(world_args(dir));
    let body = match report(child(console, dir, args).await) {
        Ok(body) => body,
        Err(failure) => return failure,
    };
    let mut failures = Vec::new();
    // property -> (rules, proved, total)
    let mut properties: Vec<(String, Value, u64, u64)> = Vec::new();
    for check in body["checks"].as_array().into_iter().flatten() {
        let name = check["property"].as_str().unwrap_or_default().to_string();
        let proved = check["status"] == json!("proved");
        if !proved {
            failures.push(check.clone());
        }
        match properties.iter_mut().find(|p| p.0 == name) {
            Some(p) => {
                p.2 += u64::from(proved);
                p.3 += 1;
            }
            None => properties.push((name, check["rules"].clone(), u64::from(proved), 1)),
        }
    }
    properties.sort_by_key(|p| p.2 == p.3);
    let all = body["result"] == json!("proved");
    json!({
        "state": if all { "proved" } else { "failed" },
        "solver": body["solver"],
        "summary": body["summary"],
        "failures": failures,
        "properties": properties.into_iter().map(|(name, rules, proved, total)| json!({
            "property": name, "rules": rules, "proved": proved, "checks": total,
        })).collect::<Vec<_>>(),
        "note": note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_and_invalid_input_are_reported_as_such() {
        let timeout = report(Err("timeout: the run did not finish within 1 s".into()));
        assert_eq!(timeout.unwrap_err()["state"], "timeout");
        let invalid = report(Ok((2, String::new(), "error: bad file".into())));
        let invalid = invalid.unwrap_err();
        assert_eq!(invalid["state"], "invalid");
        assert!(invalid["message"].as_str().unwrap().contains("bad file"));
        let unreadable = report(Ok((0, "not json".into(), String::new())));
        assert_eq!(unreadable.unwrap_err()["state"], "error");
        let ok = report(Ok((1, "{\"failed\": 1}".into(), String::new())));
        assert_eq!(ok.unwrap()["failed"], 1);
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("ééé", 3), "…é");
    }
}

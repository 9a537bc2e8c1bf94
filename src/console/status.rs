//! `GET /v1/console/status`: what the sidecar serves and whether the last
//! edit took. The same facts as `/v1/status` (generation, fact revision,
//! files with their SHA-256 digests, reload counts), with the last reload
//! error's diagnostics rendered as `orgwarden check` prints them (the
//! `file:line:col` heading and the source excerpt), and the load warnings.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{Console, mask_digests};
use crate::diag::Diagnostic;
use crate::http::error::ApiError;
use crate::reload::rfc3339;

/// One diagnostic as the console shows it; digests in its text are masked
/// (an entity file's excerpt may hold API-key digests).
fn diagnostic_json(d: &Diagnostic) -> Value {
    json!({
        "severity": d.severity,
        "location": d.location(),
        "file": d.file,
        "line": d.line,
        "column": d.column,
        "message": mask_digests(&d.message),
        "rendered": mask_digests(&d.rendered),
    })
}

/// `GET /v1/console/status`.
pub async fn status(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    console.authorize(&headers)?;
    let pdp = &console.app.pdp;
    let live = &pdp.live;
    let snap = live.snapshot();
    let (reloads, failures) = live.counts();
    let last_error = live.last_error();
    let mut stale = last_error.is_some();
    let facts = match &pdp.facts {
        Some(facts) => {
            let health = facts.health();
            stale |= health.stale;
            json!({
                "source": "store",
                "store": facts.describe(),
                "revision": health.revision,
                "ready": health.store.bootstrapped,
                "stale": health.stale,
                "entities": facts.len(),
            })
        }
        None => json!({ "source": "files", "revision": snap.generation, "stale": false }),
    };
    let paths = live.paths();
    Ok(Json(json!({
        "generation": snap.generation,
        "revision": facts["revision"],
        "facts": facts,
        "started_at": rfc3339::format(live.started_at()),
        "loaded_at": rfc3339::format(snap.loaded_at),
        "load_duration_ms": snap.load_duration.as_secs_f64() * 1000.0,
        "paths": {
            "policies": paths.policies,
            "schema": paths.schema,
            "entities": paths.entities,
            "routes": paths.routes,
        },
        "files": snap.files,
        "counts": {
            "policies": snap.policy_count(),
            "entities": snap.entity_count(),
            "files": snap.files.len(),
        },
        "reloads": reloads,
        "reload_failures": failures,
        "watch": live.watching().map(|w| json!({ "debounce_ms": w.debounce.as_millis() as u64 })),
        "stale": stale,
        "last_error": last_error.map(|e| json!({
            "at": rfc3339::format(e.at),
            "summary": mask_digests(&e.summary),
            "diagnostics": e.diagnostics.iter().map(diagnostic_json).collect::<Vec<_>>(),
        })),
        "warnings": snap.warnings.iter().map(diagnostic_json).collect::<Vec<_>>(),
    })))
}

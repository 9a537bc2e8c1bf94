//! Operations endpoints: liveness, readiness, metrics, status, reload.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;
use super::error::ApiError;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 while a valid snapshot serves. When the last reload
/// failed it still serves (the last good snapshot), and says it is stale.
/// With a fact store: 503 until the facts are loaded from it; afterwards
/// 200, stale while the facts may be old (the store unreachable, its
/// changes refused, or the view not confirmed current lately).
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let snap = app.pdp.live.snapshot();
    let last_error = app.pdp.live.last_error();
    let mut stale = last_error.is_some();
    let mut body = json!({
        "status": "ready",
        "generation": snap.generation,
        "last_error": last_error.map(|e| e.summary),
    });
    let mut status = StatusCode::OK;
    if let Some(facts) = &app.pdp.facts {
        let health = facts.health();
        stale |= health.stale;
        if !health.store.bootstrapped {
            status = StatusCode::SERVICE_UNAVAILABLE;
            body["status"] = json!("not_ready");
        }
        body["facts"] = facts_json(facts);
    }
    body["stale"] = json!(stale);
    if !snap.identity.is_empty() {
        body["identity"] = identity_json(&app, &snap);
    }
    (status, Json(body)).into_response()
}

/// The identity sources' keys: whether bearer JWTs of each issuer can be
/// verified now, and why not. API keys work whatever this says, so it does
/// not make the sidecar unready.
fn identity_json(app: &App, snap: &crate::snapshot::Snapshot) -> Value {
    let issuers = app.pdp.identity.status(&snap.identity);
    json!({
        "ready": issuers.iter().all(|i| i.ready),
        "issuers": issuers,
    })
}

/// The facts' revision and where they stand against their store.
fn facts_json(facts: &crate::live_facts::LiveFacts) -> Value {
    let h = facts.health();
    json!({
        "source": "store",
        "store": facts.describe(),
        "ready": h.store.bootstrapped,
        "revision": h.revision,
        "entities": facts.len(),
        "store_revision": h.store.store_revision,
        "lag_revisions": h.lag_revisions,
        "lag_seconds": h.store.since_confirmed.map(|d| d.as_secs_f64()),
        "store_reachable": h.store.reachable,
        "stale": h.stale,
        "stale_after_ms": h.stale_after.as_millis() as u64,
        "rebootstraps": h.store.rebootstraps,
        "last_store_error": h.store.last_error,
        "diverged": h.store.diverged,
    })
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Some(facts) = &app.pdp.facts {
        let h = facts.health();
        app.pdp.metrics.set_facts(&crate::metrics::FactsFigures {
            revision: h.revision,
            store_revision: h.store.store_revision,
            lag_revisions: h.lag_revisions,
            lag_seconds: h.store.since_confirmed.map(|d| d.as_secs_f64()),
            reachable: h.store.reachable,
            ready: h.store.bootstrapped,
            stale: h.stale,
            diverged: h.store.diverged.is_some(),
            rebootstraps: h.store.rebootstraps,
        });
    }
    let mut body = app.pdp.metrics.render(&app.pdp.live);
    let snap = app.pdp.live.snapshot();
    if !snap.identity.is_empty() {
        let text = crate::metrics::identity_text(
            &app.pdp.identity.status(&snap.identity),
            &app.pdp.identity.outcomes(),
        );
        let at = body.rfind("# EOF").unwrap_or(body.len());
        body.insert_str(at, &text);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /v1/status`: what is served, from which files, and the last error.
pub async fn status(State(app): State<Arc<App>>) -> Json<Value> {
    let live = &app.pdp.live;
    let snap = live.snapshot();
    let (reloads, failures) = live.counts();
    let paths = live.paths();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": snap.generation,
        "started_at": crate::reload::rfc3339::format(live.started_at()),
        "loaded_at": crate::reload::rfc3339::format(snap.loaded_at),
        "load_duration_ms": snap.load_duration.as_secs_f64() * 1000.0,
        "paths": { "policies": paths.policies, "schema": paths.schema, "entities": paths.entities, "routes": paths.routes, "identity": paths.identity },
        "files": snap.files,
        "counts": {
            "policies": snap.policy_count(),
            "templates": snap.policies.templates().count(),
            "entities": snap.entity_count(),
            "files": snap.files.len(),
            "routes": snap.routes.len(),
            "api_keys": snap.keys.len(),
        },
        "reloads": reloads,
        "reload_failures": failures,
        "last_error": live.last_error(),
        // null when the files are not watched (`--no-watch`, or no watcher could start).
        "watch": live.watching().map(|w| json!({ "debounce_ms": w.debounce.as_millis() as u64 })),
        // Where decisions read facts, and the revision they are at.
        "identity": identity_json(&app, &snap),
        "facts": match &app.pdp.facts {
            Some(f) => facts_json(f),
            None => json!({ "source": "files", "revision": snap.generation }),
        },
    }))
}

/// `POST /v1/reload`: reload now (admin token required). 200 with the new
/// generation, or 422 with the diagnostics while the old snapshot serves.
pub async fn reload(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.require_admin(&headers)?;
    let live = app.pdp.live.clone();
    let result = tokio::task::spawn_blocking(move || live.reload())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match result {
        Ok(snap) => Ok(Json(
            json!({ "status": "reloaded", "generation": snap.generation }),
        )),
        Err(diags) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_files",
            message: diags.first_summary(),
            field: None,
        }),
    }
}

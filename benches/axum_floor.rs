//! The bare-axum floor for `scripts/bench-http`: a minimal axum server that
//! parses every `POST /v1/is_authorized` body (and the batch route's) as the
//! same JSON shape orgwarden accepts, then answers a fixed decision. The load
//! generator's figure for it is the cost of HTTP/1.1 + axum + tokio + the
//! JSON body on this machine, with no decision at all: the floor that the
//! HTTP figures of BENCHMARKS.md are ratios of.
//!
//! `ORGWARDEN_FLOOR_LISTEN=127.0.0.1:PORT cargo bench --bench axum_floor`
//! (or run the built bench binary directly); serves until killed.

use axum::Json;
use axum::{Router, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};

/// The cedar-agent request shape, as orgwarden reads it.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Input {
    principal: Option<Value>,
    action: Option<Value>,
    resource: Option<Value>,
    context: Option<Value>,
}

#[derive(Deserialize)]
struct Batch {
    requests: Vec<Input>,
}

fn fixed() -> Value {
    json!({
        "decision": "Allow",
        "diagnostics": { "reason": ["floor"], "errors": [] },
        "decision_id": "00000000-0000-0000-0000-000000000000",
    })
}

async fn one(Json(_input): Json<Input>) -> Json<Value> {
    Json(fixed())
}

async fn batch(Json(batch): Json<Batch>) -> Json<Value> {
    let results: Vec<Value> = batch.requests.iter().map(|_| fixed()).collect();
    Json(json!({ "results": results }))
}

/// The sidecar's allocator, so that the floor differs from it only in the work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench` passes `--bench`; ignore every argument.
    let addr = std::env::var("ORGWARDEN_FLOOR_LISTEN").unwrap_or_else(|_| "127.0.0.1:8190".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = Router::new()
            .route("/v1/is_authorized", post(one))
            .route("/v1/is_authorized/batch", post(batch));
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!("listening on {addr}");
        axum::serve(listener, app).await.expect("serve");
    });
}

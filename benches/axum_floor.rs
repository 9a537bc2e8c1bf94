//! The bare-axum floor for `scripts/bench-http`: a minimal axum server that
//! answers every `POST /v1/is_authorized` (and the batch route) with a
//! constant JSON body, so the load generator's figure for it is the cost of
//! HTTP/1.1 + axum + tokio on this machine, with no decision at all.
//!
//! `ORGWARDEN_FLOOR_LISTEN=127.0.0.1:PORT cargo bench --bench axum_floor`
//! (or run the built bench binary directly); serves until killed.

use axum::{Router, routing::post};

const BODY: &str = r#"{"decision":"Allow","diagnostics":{"reason":["floor"],"errors":[]},"decision_id":"00000000-0000-0000-0000-000000000000"}"#;

async fn answer(_body: bytes::Bytes) -> ([(&'static str, &'static str); 1], &'static str) {
    ([("content-type", "application/json")], BODY)
}

fn main() {
    // `cargo bench` passes `--bench`; ignore every argument.
    let addr = std::env::var("ORGWARDEN_FLOOR_LISTEN").unwrap_or_else(|_| "127.0.0.1:8190".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let app = Router::new()
            .route("/v1/is_authorized", post(answer))
            .route("/v1/is_authorized/batch", post(answer));
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        println!("listening on {addr}");
        axum::serve(listener, app).await.expect("serve");
    });
}

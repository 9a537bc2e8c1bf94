//! SSO benchmarks on the shipped model and routes.
//!
//! * `forward_auth/api_key` and `forward_auth/jwt`: one forward-auth
//!   decision (`gateway::check`, decision cache on and warm, decision log
//!   off) for carol on `GET .../acme-prod/flows/f-1`, with her demo API key
//!   and with an RS256 JWT of a configured issuer (its key cache warm): the
//!   difference is what verifying the token adds;
//! * `verify/jwt`: the token's verification alone.
//!
//! Then a flood: 10,000 tokens with random unknown `kid`s, verified
//! concurrently, against a JWKS served over loopback HTTP, once an unknown
//! `kid` may refresh the keys again (`unknown_kid_seconds: 1`); the number
//! of JWKS fetches they caused is printed. Before it, 500 tokens never seen
//! before are verified one after the other (the signature check that the
//! remembered-token path skips).
//!
//! The key pair in `benches/data/sso-bench-key.json` is a throwaway made for
//! this bench.
//!
//! Run: `cargo bench --bench sso -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orgwarden::decision_log::DecisionLog;
use orgwarden::gateway::ForwardAuthConfig;
use orgwarden::gateway::check;
use orgwarden::load::Paths;
use orgwarden::metrics::Metrics;
use orgwarden::pdp::Pdp;
use orgwarden::reload::Live;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.bench.test";
const TARGET: &str = "/api/accounts/acme/workspaces/acme-prod/flows/f-1";
const CAROL_KEY: &str = "ow_demo_carol_78b196c1ef5b8c5dbaa1ed39";

struct Setup {
    rt: tokio::runtime::Runtime,
    pdp: Pdp,
    key: EncodingKey,
    fetches: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn setup() -> Setup {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("benches/data/sso-bench-key.json")).unwrap(),
    )
    .unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(data["pkcs1_der_base64"].as_str().unwrap())
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The issuer's JWKS over loopback HTTP, counting fetches.
    let fetches = Arc::new(AtomicU64::new(0));
    let jwks = data["jwks"].clone();
    let counter = fetches.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            let body = jwks.to_string();
            async move { ([(header::CACHE_CONTROL, "max-age=3600")], body) }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bench.yaml"),
        format!(
            "issuers:\n  - issuer: {ISSUER}\n    jwks: http://127.0.0.1:{port}/jwks\n    audiences: [orgwarden]\n    principal: {{ type: User, claim: preferred_username }}\n    groups_claim: groups\n    claims: [amr]\n    jwks_cache: {{ unknown_kid_seconds: 1 }}\n"
        ),
    )
    .unwrap();
    let paths = Paths {
        policies: root.join("policies"),
        schema: root.join("schema"),
        entities: root.join("entities"),
        routes: Some(root.join("routes")),
        identity: Some(dir.path().to_path_buf()),
    };
    let live = Arc::new(Live::load(paths).unwrap_or_else(|d| panic!("must load:\n{d}")));
    let pdp = Pdp::new(live, Arc::new(Metrics::new()), 100_000, DecisionLog::off());
    Setup {
        rt,
        pdp,
        key: EncodingKey::from_rsa_der(&der),
        fetches,
        _dir: dir,
    }
}

fn token(key: &EncodingKey, kid: &str) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(
        &h,
        &json!({ "iss": ISSUER, "aud": "orgwarden", "sub": "00u1carol",
                 "preferred_username": "carol", "amr": ["pwd", "mfa"], "groups": ["eng"],
                 "iat": now(), "exp": now() + 24 * 3600 }),
        key,
    )
    .unwrap()
}

fn bearer(credential: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {credential}")).unwrap(),
    );
    h
}

fn forward_auth(c: &mut Criterion) {
    let s = setup();
    let config = ForwardAuthConfig::default();
    let jwt = token(&s.key, "bench");
    let with_key = bearer(CAROL_KEY);
    let with_jwt = bearer(&jwt);
    let decide = |headers: &HeaderMap| {
        let at = s.pdp.at();
        s.rt.block_on(check::check(
            &s.pdp,
            &config,
            &at,
            "GET",
            TARGET,
            headers,
            "forward_auth",
        ))
        // The principal of an allowed request.
        .ok()
        .and_then(|allowed| allowed.principal)
    };
    // Both allowed, for carol; the JWT's keys fetched once.
    for h in [&with_key, &with_jwt] {
        assert_eq!(decide(h).as_deref(), Some(r#"Prefect::User::"carol""#));
    }
    let mut g = c.benchmark_group("forward_auth");
    g.bench_function("api_key", |b| b.iter(|| black_box(decide(&with_key))));
    g.bench_function("jwt", |b| b.iter(|| black_box(decide(&with_jwt))));
    g.finish();
    let snap = s.pdp.live.snapshot();
    c.bench_function("verify/jwt", |b| {
        b.iter(|| {
            black_box(
                s.rt.block_on(s.pdp.identity.verify(&snap.identity, &jwt))
                    .unwrap(),
            )
        })
    });

    // First sight: tokens never verified before (signature checked).
    let fresh: Vec<String> = (0..500).map(|i| {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("bench".into());
        jsonwebtoken::encode(&h, &json!({ "iss": ISSUER, "aud": "orgwarden", "preferred_username": "carol", "jti": i, "exp": now() + 3600 }), &s.key).unwrap()
    }).collect();
    let started = Instant::now();
    for t in &fresh {
        s.rt.block_on(s.pdp.identity.verify(&snap.identity, t))
            .unwrap();
    }
    println!(
        "first sight: {} tokens verified (RS256 signature checked) in {:.1} ms, {:.1} µs each",
        fresh.len(),
        started.elapsed().as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64() * 1e6 / fresh.len() as f64
    );

    // The flood, once an unknown `kid` may refresh again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = s.fetches.load(Ordering::Relaxed);
    let tokens: Vec<String> = (0..10_000)
        .map(|i| token(&s.key, &format!("kid-{i}-{}", now())))
        .collect();
    let started = Instant::now();
    let refused = s.rt.block_on(async {
        let pdp_identity = s.pdp.identity.clone();
        let sources = snap.identity.clone();
        let mut tasks = Vec::new();
        for t in tokens {
            let (v, src) = (pdp_identity.clone(), sources.clone());
            tasks.push(tokio::spawn(
                async move { v.verify(&src, &t).await.is_err() },
            ));
        }
        let mut refused = 0;
        for t in tasks {
            refused += usize::from(t.await.unwrap());
        }
        refused
    });
    let fetched = s.fetches.load(Ordering::Relaxed) - before;
    println!(
        "flood: 10000 tokens with unknown kids, {refused} refused, {fetched} JWKS fetches, {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(refused, 10_000);
}

criterion_group!(benches, forward_auth);
criterion_main!(benches);

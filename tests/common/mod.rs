//! Helpers shared by the integration tests: the shipped model's paths, temp
//! copies of it, and a real server on a loopback port.

#![allow(dead_code)]

pub mod binary;
pub mod grpc;
pub mod http;
pub mod pg;
pub mod process;

pub use binary::copy_dir;

use std::path::PathBuf;
use std::sync::Arc;

use orgwarden::Paths;
use orgwarden::decision_log::DecisionLog;
use orgwarden::http::{App, HttpConfig};
use orgwarden::metrics::Metrics;
use orgwarden::pdp::Pdp;
use orgwarden::reload::Live;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped policies, schema and entities.
pub fn shipped() -> Paths {
    let r = root();
    Paths {
        policies: r.join("policies"),
        schema: r.join("schema"),
        entities: r.join("entities"),
        routes: None,
        identity: None,
    }
}

/// A temp directory with a copy of the shipped model (`policies/`, `schema/`, `entities/`).
pub fn copy_of_shipped() -> (tempfile::TempDir, Paths) {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["policies", "schema", "entities"] {
        copy_dir(&root().join(sub), &dir.path().join(sub));
    }
    let p = dir.path();
    let paths = Paths {
        policies: p.join("policies"),
        schema: p.join("schema"),
        entities: p.join("entities"),
        routes: None,
        identity: None,
    };
    (dir, paths)
}

/// A server on 127.0.0.1 with a random port, stopped when dropped.
pub struct TestServer {
    pub base: String,
    pub app: Arc<App>,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestServer {
    pub async fn start(
        paths: Paths,
        config: HttpConfig,
        cache_size: u64,
        log: DecisionLog,
    ) -> Self {
        let live = Arc::new(Live::load(paths).expect("valid files"));
        let pdp = Pdp::new(live, Arc::new(Metrics::new()), cache_size, log);
        Self::serve(Arc::new(App::new(pdp, config))).await
    }

    /// Serve `app` on a loopback port.
    pub async fn serve(app: Arc<App>) -> Self {
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
        TestServer {
            base: format!("http://{addr}"),
            app,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
        }
    }

    pub async fn shipped() -> Self {
        Self::start(shipped(), HttpConfig::default(), 1000, DecisionLog::off()).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, text) = self.get(path).await;
        (status, serde_json::from_str(&text).unwrap())
    }
}

/// A cedar-agent request body.
pub fn req(principal: &str, action: &str, resource: &str) -> serde_json::Value {
    serde_json::json!({ "principal": principal, "action": action, "resource": resource })
}

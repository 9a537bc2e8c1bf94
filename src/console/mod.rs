//! The console: a read-only web console for policy authors at `/console`
//! (`serve --console`), next to the sidecar it reads.
//!
//! This module owns the console's static assets (plain HTML, CSS and
//! JavaScript in `assets/`, compiled into the binary with `include_str!`:
//! no front-end build step) and the `/v1/console/*` JSON endpoints they
//! read. It computes nothing of its own: every answer comes from what the
//! sidecar serves, through the sources the HTTP API uses (the live
//! snapshot and, in store mode, the published fact view at one revision):
//!
//! * `status`: the generation, the fact revision, the files with their
//!   digests, and the last reload error with each diagnostic rendered as
//!   the CLI renders it (file:line:col and a source excerpt);
//! * `request`: the schema's actions and their context types, completion
//!   of entity references from the facts, and one request decided by the
//!   engine with its determining policies (file, line and text) and
//!   [`crate::search::explain`]'s facts behind every action the principal
//!   holds on the resource;
//! * `access`: access maps, principals by scopes for a workspace
//!   ([`crate::search::subjects_in`]) and workspaces by scopes for a
//!   principal ([`crate::search::accessible_in`]), each cell with the rule
//!   that grants it ([`crate::search::explain::Ground`]);
//! * `runs`: the matrix files and `verify`, on demand, in a child process
//!   of this binary on a copy of the served inputs: one run at a time, with
//!   a time limit.
//!
//! When the server has an admin token, every `/v1/console/*` endpoint
//! requires it (`Authorization: Bearer`; the page asks for it and keeps it
//! in the tab's `sessionStorage`). The assets themselves carry no data and
//! are served to anyone who can reach `/console`. The console never shows
//! a secret: entity attributes are not listed (API-key digests live
//! there), and 64-hex-digit strings in diagnostics are masked.

pub mod access;
pub mod request;
pub mod runs;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use cedar_policy::{EntityUid, EvalResult};

use crate::engine::RequestError;
use crate::http::App;
use crate::http::error::ApiError;
use crate::search::{self, Source};
use crate::snapshot::Snapshot;

/// What `serve --console` is configured with.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The matrix files (a file or a directory) the console runs.
    pub matrices: PathBuf,
    /// The properties file `verify` proves.
    pub properties: PathBuf,
    /// Time limit of one run of the matrices or of `verify`.
    pub run_timeout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            matrices: PathBuf::from("tests/matrices"),
            properties: PathBuf::from(crate::verify::DEFAULT_PROPERTIES),
            run_timeout: Duration::from_secs(300),
        }
    }
}

/// The console's state: the server's [`App`], the configuration and the runs.
pub struct Console {
    pub app: Arc<App>,
    pub config: ConsoleConfig,
    runs: runs::Runs,
}

impl Console {
    /// With an admin token configured, the console's endpoints need it;
    /// without one they are open, as `/v1/status` and search are.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token_set = self
            .app
            .config
            .admin_token
            .as_deref()
            .is_some_and(|t| !t.is_empty());
        if token_set {
            self.app.require_admin(headers)
        } else {
            Ok(())
        }
    }
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// The console's routes (assets and `/v1/console/*`), to be served by
/// [`crate::http::serve_with`] under the server's limits.
pub fn routes(app: Arc<App>, config: ConsoleConfig) -> Router<Arc<App>> {
    let console = Arc::new(Console {
        app,
        config: runs::absolute(config),
        runs: runs::Runs::default(),
    });
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css", CONSOLE_CSS) }),
        )
        .route("/v1/console/status", get(status::status))
        .route("/v1/console/catalog", get(request::catalog))
        .route("/v1/console/complete", get(request::complete))
        .route("/v1/console/decide", axum::routing::post(request::decide))
        .route("/v1/console/access/workspace", get(access::workspace))
        .route("/v1/console/access/principal", get(access::principal))
        .route("/v1/console/runs", get(runs::list).post(runs::start))
        .with_state(console)
}

/// A static asset, with headers that keep the page to its own origin.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("{content_type}; charset=utf-8"))
            .unwrap_or(HeaderValue::from_static("text/plain")),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A query string, or a 400 naming the parameter at fault.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        let text = e.body_text();
        let field = text
            .strip_prefix("Failed to deserialize query string: ")
            .and_then(|r| r.split_once(": "))
            .map(|(f, _)| f.to_string())
            .unwrap_or_else(|| "query".into());
        ApiError::bad_request("invalid_request", field, text)
    })
}

/// `$body` with `$s` bound to the [`Source`] inside `$src`.
macro_rules! on_source {
    ($src:expr, |$s:ident| $body:expr) => {
        match $src {
            $crate::http::search::Src::Loaded($s) => $body,
            $crate::http::search::Src::Live($s) => $body,
        }
    };
}
pub(crate) use on_source;

/// A reference typed in the console: `Type::"id"`, or a bare id of
/// `default_type` (a workspace's id in the access map).
fn resolve(
    snap: &Snapshot,
    field: &str,
    text: &str,
    default_type: Option<&str>,
) -> Result<EntityUid, ApiError> {
    let text = text.trim();
    let reference = match default_type {
        Some(ty) if !text.contains("::") => crate::names::EntityRef::Object {
            type_name: ty.to_string(),
            id: text.to_string(),
        },
        _ => crate::names::EntityRef::Text(text.to_string()),
    };
    snap.names
        .resolve_entity(&reference)
        .map_err(|e| ApiError::bad_request("invalid_reference", field, e.to_string()))
}

/// Is `uid` an entity the facts of `src` hold?
fn stored<S: Source>(src: &S, uid: &EntityUid) -> bool {
    src.id(uid)
        .is_some_and(|id| src.is_stored_of_type(&id, uid.type_name()))
}

/// The schema's workspace type, when it has one.
fn workspace_type(snap: &Snapshot) -> Option<cedar_policy::EntityTypeName> {
    snap.names.resolve_type("Workspace").ok()
}

/// A string attribute of an entity (`handle`), when it has one.
fn string_attr<S: Source>(src: &S, uid: &EntityUid, name: &str) -> Option<String> {
    match src.attr(uid, name)? {
        EvalResult::String(s) => Some(s),
        _ => None,
    }
}

fn request_error(e: RequestError) -> ApiError {
    ApiError::from(e)
}

/// Every page of a search, stopping once more than `cap` items are in.
fn pages_up_to<T>(
    cap: usize,
    mut search: impl FnMut(&search::PageRequest) -> Result<search::Page<T>, RequestError>,
) -> Result<(Vec<T>, bool), ApiError> {
    let mut request = search::PageRequest {
        token: None,
        limit: Some(search::MAX_LIMIT),
    };
    let mut items = Vec::new();
    loop {
        let page = search(&request).map_err(request_error)?;
        items.extend(page.items);
        match page.next_token {
            Some(token) if items.len() <= cap => request.token = Some(token),
            Some(_) => return Ok((items, true)),
            None => return Ok((items, false)),
        }
    }
}

/// `text` with every run of 64 hex digits (a SHA-256 digest, as API keys
/// are stored) masked.
pub fn mask_digests(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if run >= 64 {
            out.push_str("‹digest hidden›");
            i += run;
        } else if run > 0 {
            out.push_str(&text[i..i + run]);
            i += run;
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_masked_and_the_rest_is_kept() {
        let d = "b79e860e5f14453742105a25fd4ed9e8cec49d286e78707b91fe2a8234f7dc0c";
        assert_eq!(
            mask_digests(&format!("  \"apiKeyDigests\": [\"{d}\"] ─ é")),
            "  \"apiKeyDigests\": [\"‹digest hidden›\"] ─ é"
        );
        assert_eq!(mask_digests("line 12: cafe 0123"), "line 12: cafe 0123");
        assert_eq!(mask_digests(&d[..63]), &d[..63]);
    }
}

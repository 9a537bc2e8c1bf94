//! Search over HTTP: the AuthZEN 1.0 search endpoints and the workspace
//! switcher's view. Thin: parse, resolve names, run [`crate::search`] on the
//! blocking pool (a search decides many pairs), shape the answer.
//!
//! * `POST /access/v1/search/subject`: `{subject: {type}, action: {name},
//!   resource: {type, id}, context?, page?: {token?, limit?}}`
//! * `POST /access/v1/search/resource`: `{subject: {type, id}, action,
//!   resource: {type}, context?, page?}`
//! * `POST /access/v1/search/action`: `{subject, resource, context?, page?}`
//!
//! Each answers `{results: [...], page: {next_token, count}, context:
//! {generation, revision, strategy, reason_admin: {policies: {<id or
//! action>: [...]}}}}`; `next_token` is `""` on the last page. A page token
//! from an older snapshot generation is a 400 `invalid_page_token`.
//!
//! Every search answers at one fact revision, stated in the
//! `Orgwarden-Revision` header (and `revision` in the body), and honours
//! `Orgwarden-Min-Revision` as the decision APIs do. With a fact store, a
//! search decides on the live facts ([`crate::search::live`]) at the newest
//! published revision; a page token then continues the listing after its
//! last entity at the revision of the next request (pages of one listing
//! may span writes; each states its revision).
//!
//! * `GET /v1/principals/{uid}/workspaces?limit=&token=`: the workspaces the
//!   principal can open (any workspace action allowed), each with its kind
//!   (`personal`, `shared` by someone else, `organization`), its effective
//!   scopes, and why (the facts and the policies that grant each scope).
//!   `{uid}` is `User::"carol"` (URL-encoded) or `User:carol`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::App;
use super::authzen::{Action, Entity};
use super::error::{ApiError, JsonBody};
use crate::names::EntityRef;
use crate::search::live::LiveSource;
use crate::search::{self, Hit, Loaded, Page, PageRequest, explain};
use crate::snapshot::Snapshot;

/// The facts a search reads: the snapshot's own, or live ones.
pub enum Src<'a> {
    Loaded(Loaded<'a>),
    Live(LiveSource<'a>),
}

/// `$body` with `$s` bound to the [`search::Source`] inside `$src`.
macro_rules! on_source {
    ($src:expr, |$s:ident| $body:expr) => {
        match $src {
            Src::Loaded($s) => $body,
            Src::Live($s) => $body,
        }
    };
}

/// A JSON answer with the `Orgwarden-Revision` it was decided at.
pub type Answer = ([(HeaderName, HeaderValue); 1], Json<Value>);

/// `page` of a search request (`next_token` is accepted for `token`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageIn {
    #[serde(default, alias = "next_token")]
    pub token: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A subject or resource search.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySearch {
    pub subject: Entity,
    pub action: Action,
    pub resource: Entity,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub page: Option<PageIn>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSearch {
    pub subject: Entity,
    pub resource: Entity,
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub page: Option<PageIn>,
}

fn no_properties(field: &str, props: &Option<Map<String, Value>>) -> Result<(), ApiError> {
    if props.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("{field}.properties"),
            "search decides on the loaded facts: request-scoped properties are not supported here",
        ));
    }
    Ok(())
}

fn resolve_type(snap: &Snapshot, field: &str, name: &str) -> Result<EntityTypeName, ApiError> {
    snap.names
        .resolve_type(name)
        .map_err(|e| ApiError::bad_request("unknown_type", format!("{field}.type"), e.to_string()))
}

fn resolve_entity(snap: &Snapshot, field: &str, e: &Entity) -> Result<EntityUid, ApiError> {
    no_properties(field, &e.properties)?;
    let ty = resolve_type(snap, field, &e.type_name)?;
    let id = e.required_id(field)?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

fn resolve_action(snap: &Snapshot, a: &Action) -> Result<EntityUid, ApiError> {
    no_properties("action", &a.properties)?;
    snap.names
        .resolve_action(&EntityRef::Text(a.name.clone()))
        .map_err(|e| ApiError::bad_request("unknown_action", "action.name", e.to_string()))
}

fn page_request(page: &Option<PageIn>) -> Result<PageRequest, ApiError> {
    let page = page.clone().unwrap_or_default();
    check_limit(page.limit, "page.limit")?;
    Ok(PageRequest {
        token: page.token,
        limit: page.limit,
    })
}

/// A page larger than [`search::MAX_LIMIT`] is refused, not clamped: the
/// caller learns the bound instead of receiving fewer items than it asked.
fn check_limit(limit: Option<usize>, field: &str) -> Result<(), ApiError> {
    match limit {
        Some(n) if n > search::MAX_LIMIT => Err(ApiError::bad_request(
            "invalid_page_limit",
            field,
            format!("`limit` is at most {}, not {n}", search::MAX_LIMIT),
        )),
        _ => Ok(()),
    }
}

fn context_value(c: &Option<Map<String, Value>>) -> Value {
    Value::Object(c.clone().unwrap_or_default())
}

/// Run `f` on the blocking pool with the snapshot and the facts of this
/// request (once they reach its `Orgwarden-Min-Revision`); the answer
/// carries the revision it was decided at.
pub async fn blocking(
    app: &Arc<App>,
    headers: &HeaderMap,
    f: impl FnOnce(&Snapshot, &Src<'_>, u64) -> Result<Value, ApiError> + Send + 'static,
) -> Result<Answer, ApiError> {
    let at = app.at(headers).await?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let (at, index) = match &app.pdp.facts {
            Some(facts) => {
                let (at, index) = facts.search_at(at.snap.clone());
                (at, Some(index))
            }
            None => (at, None),
        };
        let revision = at.revision();
        let src = match (&at.facts, &index) {
            (Some(f), Some(index)) => Src::Live(LiveSource {
                view: &f.view,
                model: &f.model,
                plan: &f.plan,
                index,
            }),
            _ => Src::Loaded(Loaded::of(&at.snap)),
        };
        let body = f(&at.snap, &src, revision)?;
        Ok((
            [(super::REVISION_HEADER, HeaderValue::from(revision))],
            Json(body),
        ))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

fn page_json<T>(page: &Page<T>) -> Value {
    json!({
        "next_token": page.next_token.clone().unwrap_or_default(),
        "count": page.items.len(),
    })
}

fn hits_body(type_name: &str, page: &Page<Hit>, revision: u64) -> Value {
    let results: Vec<Value> = page
        .items
        .iter()
        .map(|h| json!({ "type": type_name, "id": h.uid.id().unescaped() }))
        .collect();
    let policies: Map<String, Value> = page
        .items
        .iter()
        .map(|h| (h.uid.id().unescaped().to_string(), json!(h.policies)))
        .collect();
    json!({
        "results": results,
        "page": page_json(page),
        "context": {
            "generation": page.generation,
            "revision": revision,
            "strategy": page.strategy,
            "reason_admin": { "policies": policies },
        },
    })
}

/// `POST /access/v1/search/subject`.
pub async fn subject(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<EntitySearch>,
) -> Result<Answer, ApiError> {
    blocking(&app, &headers, move |snap, src, revision| {
        no_properties("subject", &req.subject.properties)?;
        let ty = resolve_type(snap, "subject", &req.subject.type_name)?;
        let action = resolve_action(snap, &req.action)?;
        let resource = resolve_entity(snap, "resource", &req.resource)?;
        let context = context_value(&req.context);
        let page = page_request(&req.page)?;
        let page = on_source!(src, |s| search::subjects_in(
            snap, s, &ty, &action, &resource, &context, &page
        ))?;
        Ok(hits_body(&req.subject.type_name, &page, revision))
    })
    .await
}

/// `POST /access/v1/search/resource`.
pub async fn resource(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<EntitySearch>,
) -> Result<Answer, ApiError> {
    blocking(&app, &headers, move |snap, src, revision| {
        let subject = resolve_entity(snap, "subject", &req.subject)?;
        let action = resolve_action(snap, &req.action)?;
        no_properties("resource", &req.resource.properties)?;
        let ty = resolve_type(snap, "resource", &req.resource.type_name)?;
        let context = context_value(&req.context);
        let page = page_request(&req.page)?;
        let page = on_source!(src, |s| search::resources_in(
            snap, s, &subject, &action, &ty, &context, &page
        ))?;
        Ok(hits_body(&req.resource.type_name, &page, revision))
    })
    .await
}

/// `POST /access/v1/search/action`.
pub async fn action(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ActionSearch>,
) -> Result<Answer, ApiError> {
    blocking(&app, &headers, move |snap, src, revision| {
        let subject = resolve_entity(snap, "subject", &req.subject)?;
        let resource = resolve_entity(snap, "resource", &req.resource)?;
        let context = context_value(&req.context);
        let page = page_request(&req.page)?;
        let page = on_source!(src, |s| search::actions_in(
            snap, s, &subject, &resource, &context, &page
        ))?;
        let results: Vec<Value> = page
            .items
            .iter()
            .map(|g| json!({ "name": g.action.id().unescaped() }))
            .collect();
        let policies: Map<String, Value> = page
            .items
            .iter()
            .map(|g| (g.action.id().unescaped().to_string(), json!(g.policies)))
            .collect();
        Ok(json!({
            "results": results,
            "page": page_json(&page),
            "context": {
                "generation": page.generation,
                "revision": revision,
                "reason_admin": { "policies": policies },
            },
        }))
    })
    .await
}

/// Query of the workspaces view.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WorkspacesQuery {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A principal in a URL: `Type::"id"`, or `Type:id` where the type is
/// everything before the first single `:`.
pub(super) fn principal_from_path(snap: &Snapshot, text: &str) -> Result<EntityUid, ApiError> {
    let reference = if text.contains("::\"") {
        EntityRef::Text(text.to_string())
    } else {
        let bytes = text.as_bytes();
        let at = (0..bytes.len()).find(|&i| {
            bytes[i] == b':' && bytes.get(i + 1) != Some(&b':') && (i == 0 || bytes[i - 1] != b':')
        });
        match at {
            Some(i) if i > 0 => EntityRef::Object {
                type_name: text[..i].to_string(),
                id: text[i + 1..].to_string(),
            },
            _ => EntityRef::Text(text.to_string()),
        }
    };
    snap.names
        .resolve_entity(&reference)
        .map_err(|e| ApiError::bad_request("invalid_reference", "uid", e.to_string()))
}

/// `GET /v1/principals/{uid}/workspaces`.
pub async fn workspaces(
    State(app): State<Arc<App>>,
    uid: Result<Path<String>, PathRejection>,
    q: Result<Query<WorkspacesQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Answer, ApiError> {
    let Path(uid) =
        uid.map_err(|e| ApiError::bad_request("invalid_reference", "uid", e.body_text()))?;
    let Query(q) = q.map_err(|e| {
        let text = e.body_text();
        let field = text
            .strip_prefix("Failed to deserialize query string: ")
            .and_then(|r| r.split_once(": "))
            .map(|(f, _)| f.to_string())
            .unwrap_or_else(|| "query".into());
        ApiError::bad_request("invalid_request", field, text)
    })?;
    check_limit(q.limit, "limit")?;
    blocking(&app, &headers, move |snap, src, revision| {
        let principal = principal_from_path(snap, &uid)?;
        let ty = snap.names.resolve_type("Workspace").map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "the schema has no `Workspace` entity type",
            )
        })?;
        let page = PageRequest {
            token: q.token,
            limit: q.limit,
        };
        let context = json!({});
        let page = on_source!(src, |s| search::accessible_in(
            snap, s, &principal, &ty, &context, &page
        ))
        .map_err(|e| {
            let e = ApiError::from(e);
            // Tokens arrive in the query here, not in a `page` object.
            let field = e.field.as_deref().map(|f| f.trim_start_matches("page.").to_string());
            ApiError { field, ..e }
        })?;
        let workspaces: Vec<Value> = page
            .items
            .iter()
            .map(|access| on_source!(src, |s| workspace_json(snap, s, &principal, access)))
            .collect();
        Ok(json!({
            "principal": { "type": principal.type_name().to_string(), "id": principal.id().unescaped() },
            "generation": page.generation,
            "revision": revision,
            "strategy": page.strategy,
            "workspaces": workspaces,
            "page": page_json(&page),
        }))
    })
    .await
}

fn workspace_json<S: search::Source>(
    snap: &Snapshot,
    src: &S,
    principal: &EntityUid,
    access: &search::Access,
) -> Value {
    let mut body = json!({ "id": access.resource.id().unescaped() });
    if let Some(info) = explain::workspace_info_in(snap, src, principal, &access.resource)
        && let (Value::Object(b), Ok(Value::Object(i))) = (&mut body, serde_json::to_value(info))
    {
        b.extend(i);
    }
    let scopes: Vec<String> = access
        .grants
        .iter()
        .map(|g| g.action.id().unescaped().to_string())
        .collect();
    // Group the scopes by the fact (or, without one, the policy) granting them.
    let mut why: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for g in &access.grants {
        let scope = g.action.id().unescaped().to_string();
        for because in explain::explain_in(
            snap,
            src,
            principal,
            &g.action,
            &access.resource,
            &g.policies,
        ) {
            let facts = if because.facts.is_empty() {
                vec![format!("policy `{}`", because.policy)]
            } else {
                because.facts
            };
            for fact in facts {
                let entry = match why.iter().position(|(f, _, _)| *f == fact) {
                    Some(i) => &mut why[i],
                    None => {
                        why.push((fact, Vec::new(), Vec::new()));
                        why.last_mut().expect("just pushed")
                    }
                };
                if !entry.1.contains(&scope) {
                    entry.1.push(scope.clone());
                }
                if !entry.2.contains(&because.policy) {
                    entry.2.push(because.policy.clone());
                }
            }
        }
    }
    body["scopes"] = json!(scopes);
    body["why"] = why
        .into_iter()
        .map(|(fact, scopes, policies)| json!({ "fact": fact, "scopes": scopes, "policies": policies }))
        .collect();
    body
}

//! The OpenID AuthZEN Authorization API 1.0: evaluation, evaluations (batch
//! with its three semantics) and the well-known metadata document.
//!
//! An AuthZEN request maps onto the same [`RequestInput`] as every other API:
//! `subject` is the principal, `action.name` the action (resolved in the
//! schema), `resource` the resource. The `properties` of the subject and the
//! resource are request facts ([`to_input`]): attributes of that entity for
//! this decision only, typed by the schema.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{ApiError, JsonBody};
use super::{App, MinRevision};
use crate::engine::{RequestError, RequestInput};
use crate::live_facts::At;
use crate::names::EntityRef;
use crate::pdp::Decided;
use crate::request_facts::RequestEntities;

/// A subject or resource, as every AuthZEN endpoint writes it. `id` is
/// required by an evaluation, and absent on the searched side of a search
/// ([`super::search`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

impl Entity {
    /// The id, which `field` (`subject`, `resource`) must have.
    pub fn required_id(&self, field: &str) -> Result<&str, ApiError> {
        self.id.as_deref().ok_or_else(|| {
            ApiError::bad_request(
                "missing_field",
                format!("{field}.id"),
                format!("`{field}.id` is required"),
            )
        })
    }
}

/// An action, as every AuthZEN endpoint writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub name: String,
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

/// One evaluation request; in a batch, every part is optional and falls back
/// to the request's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub subject: Option<Entity>,
    pub action: Option<Action>,
    pub resource: Option<Entity>,
    pub context: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Semantic {
    #[default]
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub evaluations_semantic: Semantic,
}

/// A batch: the defaults every evaluation inherits, the evaluations, and
/// the options. Unknown fields are refused, at the top level and in
/// `options`, as the cedar-agent endpoints refuse them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationsRequest {
    pub subject: Option<Entity>,
    pub action: Option<Action>,
    pub resource: Option<Entity>,
    pub context: Option<Map<String, Value>>,
    #[serde(default)]
    pub evaluations: Option<Vec<Evaluation>>,
    #[serde(default)]
    pub options: Option<Options>,
}

impl EvaluationsRequest {
    /// The top-level subject, action, resource and context.
    fn defaults(&self) -> Evaluation {
        Evaluation {
            subject: self.subject.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            context: self.context.clone(),
        }
    }
}

/// The evaluation with `defaults` filling what it leaves out.
fn merged(item: &Evaluation, defaults: &Evaluation) -> Evaluation {
    Evaluation {
        subject: item.subject.clone().or_else(|| defaults.subject.clone()),
        action: item.action.clone().or_else(|| defaults.action.clone()),
        resource: item.resource.clone().or_else(|| defaults.resource.clone()),
        context: item.context.clone().or_else(|| defaults.context.clone()),
    }
}

/// Translate an AuthZEN evaluation into the engine's request, with the
/// AuthZEN field (`subject`, `resource`) of each request entity its
/// `properties` made.
///
/// `properties` are request facts ([`crate::request_facts`]): about an
/// entity the facts do not hold they describe it (a new entity with these
/// attributes); about a loaded entity they are merged over its attributes,
/// which only `--request-entities replace` allows.
pub fn to_input(
    app: &App,
    snap: &At,
    e: &Evaluation,
) -> Result<(RequestInput, Vec<&'static str>), ApiError> {
    let missing = |f: &str| ApiError::bad_request("missing_field", f, format!("`{f}` is required"));
    let subject = e.subject.as_ref().ok_or_else(|| missing("subject"))?;
    let action = e.action.as_ref().ok_or_else(|| missing("action"))?;
    let resource = e.resource.as_ref().ok_or_else(|| missing("resource"))?;
    let subject_id = subject.required_id("subject")?;
    let resource_id = resource.required_id("resource")?;
    if action.properties.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "action.properties",
            "Cedar actions have no attributes: pass request facts in `context`",
        ));
    }
    let mode = app.pdp.request_facts.mode;
    let mut overlays = Vec::new();
    let mut fields = Vec::new();
    for (field, entity, id) in [
        ("subject", subject, subject_id),
        ("resource", resource, resource_id),
    ] {
        if let Some(props) = entity.properties.as_ref().filter(|p| !p.is_empty()) {
            let at = format!("{field}.properties");
            if mode == RequestEntities::Off {
                return Err(RequestError::new(
                    "request_facts_disabled",
                    at,
                    "this server decides on its loaded facts only: properties are refused (--request-entities off)",
                )
                .into());
            }
            let reference = EntityRef::Object {
                type_name: entity.type_name.clone(),
                id: id.to_string(),
            };
            let uid = snap.names.resolve_entity(&reference).map_err(|e| {
                ApiError::bad_request("unknown_type", format!("{field}.type"), e.to_string())
            })?;
            let mut overlay = match app.pdp.request_facts.loaded_json(snap, &uid) {
                Some(_) if mode != RequestEntities::Replace => {
                    return Err(RequestError::new(
                        "protected_fact",
                        at,
                        format!("{uid} is in the loaded facts: properties may not override or add to its attributes (--request-entities replace allows it)"),
                    )
                    .into());
                }
                Some(loaded) => loaded,
                None => json!({
                    "uid": { "type": uid.type_name().to_string(), "id": uid.id().unescaped() },
                    "attrs": {},
                    "parents": [],
                }),
            };
            let attrs = overlay
                .get_mut("attrs")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_entities",
                        &at,
                        "entity has no attributes object",
                    )
                })?;
            for (k, v) in props {
                attrs.insert(k.clone(), v.clone());
            }
            // Type the properties here, so that an error names this field.
            cedar_policy::Entity::from_json_value(overlay.clone(), Some(&snap.schema)).map_err(
                |e| ApiError::bad_request("invalid_entities", &at, crate::diag::one_line(&e)),
            )?;
            overlays.push(overlay);
            fields.push(field);
        }
    }
    let input = RequestInput {
        principal: Some(EntityRef::Object {
            type_name: subject.type_name.clone(),
            id: subject_id.to_string(),
        }),
        action: Some(EntityRef::Text(action.name.clone())),
        resource: Some(EntityRef::Object {
            type_name: resource.type_name.clone(),
            id: resource_id.to_string(),
        }),
        context: e.context.clone().map(Value::Object),
        entities: None,
        additional_entities: (!overlays.is_empty()).then_some(Value::Array(overlays)),
        token: None,
    };
    Ok((input, fields))
}

/// Field names of the engine (`principal`, `additional_entities[1].parents`)
/// in AuthZEN's words (`subject`, `resource.properties`): `overlays` names
/// the AuthZEN field of each request entity.
fn authzen_field(e: ApiError, overlays: &[&str]) -> ApiError {
    let field = e.field.as_deref().map(|f| {
        if f == "principal" || f == "resource" {
            format!("{}.type", if f == "principal" { "subject" } else { f })
        } else if f == "action" {
            "action.name".to_string()
        } else if let Some(rest) = f.strip_prefix("additional_entities") {
            let which = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .and_then(|k| overlays.get(k));
            match which {
                Some(name) => format!("{name}.properties"),
                None => "properties".to_string(),
            }
        } else {
            f.to_string()
        }
    });
    ApiError { field, ..e }
}

/// An evaluation's answer: the decision, and in its context the decision
/// id, the policies and errors, the fact revision it was decided at, and the
/// request's own entities when it brought any.
pub fn response_body(d: &Decided, revision: u64) -> Value {
    let mut context = json!({
        "decision_id": d.decision_id,
        "reason_admin": { "policies": d.entry.outcome.reasons, "errors": d.entry.outcome.errors },
        "revision": revision,
    });
    if !d.entry.request_facts.is_empty() {
        context["request_facts"] = json!(d.entry.request_facts);
    }
    json!({ "decision": d.entry.outcome.allowed(), "context": context })
}

async fn evaluate(app: &App, snap: &At, e: &Evaluation) -> Result<Value, ApiError> {
    let (mut input, overlays) = to_input(app, snap, e)?;
    app.check_bounds(&input)?;
    // A subject of type `jwt` is a bearer token to verify, not an entity.
    if let Some(s) = &e.subject
        && s.type_name == super::token::AUTHZEN_SUBJECT_TYPE
    {
        input.token = s.id.clone();
        input.principal = None;
    }
    let decided = super::token::decide(app, snap, &input, "authzen")
        .await
        .map_err(|e| {
            if e.field.as_deref() == Some("token") {
                ApiError {
                    field: Some("subject.id".into()),
                    ..e
                }
            } else {
                authzen_field(e, &overlays)
            }
        })?;
    Ok(response_body(&decided, snap.revision()))
}

pub async fn evaluation(
    State(app): State<Arc<App>>,
    MinRevision(min_revision): MinRevision,
    JsonBody(e): JsonBody<Evaluation>,
) -> Result<([(HeaderName, HeaderValue); 1], Json<Value>), ApiError> {
    let snap = app.at_least(min_revision.as_ref()).await?;
    let body = evaluate(&app, &snap, &e).await?;
    Ok((super::revision_header(&snap), Json(body)))
}

/// A batch: each evaluation inherits the top-level subject, action, resource
/// and context it leaves out. An invalid evaluation answers `false` with the
/// error in its context (as the specification says), without failing the
/// others. Without `evaluations` it is a single evaluation.
pub async fn evaluations(
    State(app): State<Arc<App>>,
    MinRevision(min_revision): MinRevision,
    JsonBody(req): JsonBody<EvaluationsRequest>,
) -> Result<([(HeaderName, HeaderValue); 1], Json<Value>), ApiError> {
    let snap = app.at_least(min_revision.as_ref()).await?;
    let defaults = req.defaults();
    let items = match &req.evaluations {
        Some(items) if !items.is_empty() => items,
        _ => {
            let body = evaluate(&app, &snap, &defaults).await?;
            return Ok((super::revision_header(&snap), Json(body)));
        }
    };
    app.check_batch_len(items.len(), "evaluations")?;
    let semantic = req
        .options
        .as_ref()
        .map(|o| o.evaluations_semantic)
        .unwrap_or_default();
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let result = match evaluate(&app, &snap, &merged(item, &defaults)).await {
            Ok(v) => v,
            Err(e) => {
                json!({ "decision": false, "context": { "error": e.body()["error"].clone() } })
            }
        };
        let decision = result["decision"].as_bool().unwrap_or(false);
        results.push(result);
        match semantic {
            Semantic::DenyOnFirstDeny if !decision => break,
            Semantic::PermitOnFirstPermit if decision => break,
            _ => {}
        }
    }
    Ok((
        super::revision_header(&snap),
        Json(json!({ "evaluations": results })),
    ))
}

/// `GET /.well-known/authzen-configuration`.
pub async fn configuration(State(app): State<Arc<App>>, headers: HeaderMap) -> Json<Value> {
    let base = app.public_url.clone().unwrap_or_else(|| {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    });
    Json(json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
        "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
        "search_action_endpoint": format!("{base}/access/v1/search/action"),
    }))
}

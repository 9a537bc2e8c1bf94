//! Access maps: who holds which scope, and through which rule.
//!
//! * `GET /v1/console/access/workspace?resource=REF`: for one workspace
//!   (`Workspace::"acme-prod"` or its bare id), every principal holding at
//!   least one of its actions, by action. Each principal type and action is
//!   a subject search ([`search::subjects_in`]): the engine decides every
//!   cell, the index only picks the candidates.
//! * `GET /v1/console/access/principal?principal=REF`: the reverse view,
//!   every workspace a principal can open, by action
//!   ([`search::accessible_in`], the workspace switcher's search).
//!
//! Each cell carries its determining policies, the facts behind them and
//! the rule that colours it ([`Ground`]): when several rules grant the same
//! action, the first of [`PRECEDENCE`] names the cell and all are listed.
//! Rows stop at [`MAX_ROWS`] (the answer says it was truncated).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use cedar_policy::{EntityTypeName, EntityUid};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::because_json;
use super::{Console, on_source, pages_up_to, query, resolve, stored, string_attr};
use crate::http::error::ApiError;
use crate::http::search::blocking;
use crate::search::explain::{self, Ground};
use crate::search::{self, Source};
use crate::snapshot::Snapshot;

/// Most rows (principals or workspaces) in one map.
pub const MAX_ROWS: usize = 500;

/// The rule a cell is coloured by, when several grant its action.
pub const PRECEDENCE: [Ground; 9] = [
    Ground::AdminOverride,
    Ground::PersonalOwner,
    Ground::ExplicitRole,
    Ground::Collaborator,
    Ground::DefaultRole,
    Ground::TransferTarget,
    Ground::OrgAdmin,
    Ground::OrgMember,
    Ground::Invitee,
];

/// One cell: `principal` holds `action` on `resource` through `policies`.
fn cell<S: Source>(
    snap: &Snapshot,
    src: &S,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    policies: &[String],
) -> Value {
    let because = explain::explain_in(snap, src, principal, action, resource, policies);
    let grounds: Vec<Ground> = because
        .iter()
        .flat_map(|b| b.grounds.iter().copied())
        .collect();
    let rule = PRECEDENCE
        .iter()
        .find(|g| grounds.contains(g))
        .map(|g| json!(g))
        .unwrap_or_else(|| json!("policy"));
    let why: Vec<String> = because
        .iter()
        .flat_map(|b| {
            if b.facts.is_empty() {
                vec![format!("policy `{}`", b.policy)]
            } else {
                b.facts.clone()
            }
        })
        .collect();
    json!({
        "rule": rule,
        "why": why,
        "policies": policies,
        "granted_by": because.iter().map(because_json).collect::<Vec<_>>(),
    })
}

fn workspace_type_of(snap: &Snapshot) -> Result<EntityTypeName, ApiError> {
    super::workspace_type(snap).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the schema has no `Workspace` entity type",
        )
    })
}

/// The actions of the columns: those that apply to some principal type
/// and `resource_type`, in the schema's order, with those principal types.
fn columns(
    snap: &Snapshot,
    resource_type: &EntityTypeName,
) -> (Vec<EntityUid>, Vec<EntityTypeName>) {
    let mut principal_types: Vec<EntityTypeName> = Vec::new();
    for action in snap.names.actions() {
        let applies = snap
            .schema
            .resources_for_action(action)
            .is_some_and(|mut r| r.any(|t| t == resource_type));
        if !applies {
            continue;
        }
        for ty in snap
            .schema
            .principals_for_action(action)
            .into_iter()
            .flatten()
        {
            if !principal_types.contains(ty) {
                principal_types.push(ty.clone());
            }
        }
    }
    principal_types.sort_by_key(ToString::to_string);
    let mut actions: Vec<EntityUid> = Vec::new();
    for pty in &principal_types {
        for a in search::applicable_actions(snap, pty, resource_type) {
            if !actions.contains(a) {
                actions.push(a.clone());
            }
        }
    }
    let order: Vec<&EntityUid> = snap.names.actions();
    actions.sort_by_key(|a| order.iter().position(|o| *o == a));
    (actions, principal_types)
}

fn action_ids(actions: &[EntityUid]) -> Vec<String> {
    actions
        .iter()
        .map(|a| a.id().unescaped().to_string())
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceQuery {
    /// `Workspace::"id"`, or the bare id.
    pub resource: String,
}

/// `GET /v1/console/access/workspace`.
pub async fn workspace(
    State(console): State<Arc<Console>>,
    q: Result<Query<WorkspaceQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    console.authorize(&headers)?;
    let q = query(q)?;
    blocking(&console.app, &headers, move |snap, src, revision| {
        let ws_type = workspace_type_of(snap)?;
        let ws = resolve(snap, "resource", &q.resource, Some(&ws_type.to_string()))?;
        if ws.type_name() != &ws_type {
            return Err(ApiError::bad_request(
                "invalid_request",
                "resource",
                format!("{ws} is not a {ws_type}"),
            ));
        }
        on_source!(src, |s| workspace_map(snap, s, &ws, revision))
    })
    .await
}

fn workspace_map<S: Source>(
    snap: &Snapshot,
    src: &S,
    ws: &EntityUid,
    revision: u64,
) -> Result<Value, ApiError> {
    if !stored(src, ws) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{ws} is not in the facts"),
        ));
    }
    let (actions, principal_types) = columns(snap, ws.type_name());
    let context = json!({});
    // principal -> action -> determining policies
    let mut rows: BTreeMap<EntityUid, BTreeMap<usize, Vec<String>>> = BTreeMap::new();
    let mut truncated = false;
    for pty in &principal_types {
        for (i, action) in actions.iter().enumerate() {
            let applies = snap
                .schema
                .principals_for_action(action)
                .is_some_and(|mut p| p.any(|t| t == pty));
            if !applies {
                continue;
            }
            let (hits, cut) = pages_up_to(MAX_ROWS, |page| {
                search::subjects_in(snap, src, pty, action, ws, &context, page)
            })?;
            truncated |= cut;
            for hit in hits {
                if rows.len() >= MAX_ROWS && !rows.contains_key(&hit.uid) {
                    truncated = true;
                    continue;
                }
                rows.entry(hit.uid).or_default().insert(i, hit.policies);
            }
        }
    }
    let principals: Vec<Value> = rows
        .iter()
        .map(|(p, held)| {
            let cells: serde_json::Map<String, Value> = held
                .iter()
                .map(|(i, policies)| {
                    let action = &actions[*i];
                    (
                        action.id().unescaped().to_string(),
                        cell(snap, src, p, action, ws, policies),
                    )
                })
                .collect();
            json!({
                "uid": p.to_string(),
                "type": p.type_name().to_string(),
                "id": p.id().unescaped(),
                "cells": cells,
            })
        })
        .collect();
    let org = src.attr(ws, "org").and_then(|v| match v {
        cedar_policy::EvalResult::EntityUid(u) => Some(u.to_string()),
        _ => None,
    });
    let owner = src.attr(ws, "owner").and_then(|v| match v {
        cedar_policy::EvalResult::EntityUid(u) => Some(u.to_string()),
        _ => None,
    });
    Ok(json!({
        "workspace": {
            "uid": ws.to_string(),
            "id": ws.id().unescaped(),
            "handle": string_attr(src, ws, "handle"),
            "organization": org,
            "owner": owner,
        },
        "scopes": action_ids(&actions),
        "principals": principals,
        "truncated": truncated,
        "max_rows": MAX_ROWS,
        "generation": snap.generation,
        "revision": revision,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalQuery {
    /// `User::"dana"`.
    pub principal: String,
}

/// `GET /v1/console/access/principal`.
pub async fn principal(
    State(console): State<Arc<Console>>,
    q: Result<Query<PrincipalQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    console.authorize(&headers)?;
    let q = query(q)?;
    blocking(&console.app, &headers, move |snap, src, revision| {
        let ws_type = workspace_type_of(snap)?;
        let principal = resolve(snap, "principal", &q.principal, None)?;
        on_source!(src, |s| principal_map(
            snap, s, &principal, &ws_type, revision
        ))
    })
    .await
}

fn principal_map<S: Source>(
    snap: &Snapshot,
    src: &S,
    principal: &EntityUid,
    ws_type: &EntityTypeName,
    revision: u64,
) -> Result<Value, ApiError> {
    let actions: Vec<EntityUid> = search::applicable_actions(snap, principal.type_name(), ws_type)
        .into_iter()
        .cloned()
        .collect();
    let context = json!({});
    let (found, truncated) = pages_up_to(MAX_ROWS, |page| {
        search::accessible_in(snap, src, principal, ws_type, &context, page)
    })?;
    let workspaces: Vec<Value> = found
        .iter()
        .take(MAX_ROWS)
        .map(|access| {
            let cells: serde_json::Map<String, Value> = access
                .grants
                .iter()
                .map(|g| {
                    (
                        g.action.id().unescaped().to_string(),
                        cell(
                            snap,
                            src,
                            principal,
                            &g.action,
                            &access.resource,
                            &g.policies,
                        ),
                    )
                })
                .collect();
            let mut row = json!({
                "uid": access.resource.to_string(),
                "id": access.resource.id().unescaped(),
                "cells": cells,
            });
            if let Some(info) = explain::workspace_info_in(snap, src, principal, &access.resource)
                && let (Value::Object(r), Ok(Value::Object(i))) =
                    (&mut row, serde_json::to_value(info))
            {
                r.extend(i);
            }
            row
        })
        .collect();
    Ok(json!({
        "principal": {
            "uid": principal.to_string(),
            "id": principal.id().unescaped(),
            "stored": stored(src, principal),
        },
        "scopes": action_ids(&actions),
        "workspaces": workspaces,
        "truncated": truncated || found.len() > MAX_ROWS,
        "max_rows": MAX_ROWS,
        "generation": snap.generation,
        "revision": revision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ground_has_a_place_in_the_precedence() {
        let all = [
            Ground::ExplicitRole,
            Ground::DefaultRole,
            Ground::AdminOverride,
            Ground::PersonalOwner,
            Ground::Collaborator,
            Ground::TransferTarget,
            Ground::OrgAdmin,
            Ground::OrgMember,
            Ground::Invitee,
        ];
        for g in all {
            assert!(PRECEDENCE.contains(&g), "{g:?}");
        }
    }
}

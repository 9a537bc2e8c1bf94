//! Explanations: *why* a policy the engine named grants an action, in the
//! facts of the platform's model (the default role of the workspace, an
//! explicit role tag, the admin override, the personal owner).
//!
//! This is an explanation, not a decision: which actions are allowed and by
//! which policies always comes from [`crate::engine`] (through
//! [`super::actions`]). Here the facts are read back to say which of them
//! made the named policy true. Outside the platform's model (a schema
//! without its types, see [`crate::domain::applies`]) and for policies this
//! module does not know, a grant is explained by the policy and its source
//! location only.

use cedar_policy::{EntityId, EntityTypeName, EntityUid, EvalResult, PolicyId};
use serde::Serialize;

use super::source::{Loaded, Source};
use crate::snapshot::Snapshot;

/// One policy that granted an action, and the facts that made it true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Because {
    pub policy: String,
    /// `file:line` of the policy, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    pub facts: Vec<String>,
    /// The kind of each fact in `facts` (same order): which rule of the
    /// model it is an instance of. Not serialized: the wire format lists
    /// the facts' texts only.
    #[serde(skip)]
    pub grounds: Vec<Ground>,
}

/// Which rule of the platform's model a fact behind a grant instantiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ground {
    /// The principal's explicit role in the workspace (its tag).
    ExplicitRole,
    /// The workspace's default role, for the users of its organization.
    DefaultRole,
    /// An Admin of the workspace's organization.
    AdminOverride,
    /// The owner of a personal workspace.
    PersonalOwner,
    /// A collaborator invited to a personal workspace, capped at the
    /// Collaborator role.
    Collaborator,
    /// An Admin of the organization a workspace is being transferred to.
    TransferTarget,
    /// An Admin of the organization (organization actions).
    OrgAdmin,
    /// A member of the organization.
    OrgMember,
    /// The invitee of a pending invitation.
    Invitee,
}

/// How a workspace relates to a principal (platform model only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceInfo {
    /// `personal` (the principal owns it), `shared` (someone else's personal
    /// workspace) or `organization`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The built-in role that caps what a collaborator on a personal workspace
/// holds (R10).
const COLLABORATOR: &str = "collaborator";

struct Facts<'a, S: Source> {
    src: &'a S,
    ns: String,
}

impl<S: Source> Facts<'_, S> {
    fn attr(&self, e: &EntityUid, name: &str) -> Option<EvalResult> {
        self.src.attr(e, name)
    }

    fn entity_attr(&self, e: &EntityUid, name: &str) -> Option<EntityUid> {
        match self.attr(e, name)? {
            EvalResult::EntityUid(u) => Some(u),
            _ => None,
        }
    }

    fn string_attr(&self, e: &EntityUid, name: &str) -> Option<String> {
        match self.attr(e, name)? {
            EvalResult::String(s) => Some(s),
            _ => None,
        }
    }

    fn is_in(&self, e: &EntityUid, group: &EntityUid) -> bool {
        self.src.is_in(e, std::slice::from_ref(group))
    }

    fn is_type(&self, e: &EntityUid, basename: &str) -> bool {
        e.type_name().to_string() == format!("{}::{basename}", self.ns)
    }

    /// Does `role` grant `action`: do its `grants` hold the action or a
    /// stronger scope of its family (an action group the action is in)?
    fn grants(&self, role: &EntityUid, action: &EntityUid) -> bool {
        match self.attr(role, "grants") {
            Some(EvalResult::Set(grants)) => grants.iter().any(|g| match g {
                EvalResult::EntityUid(g) => self.is_in(action, g),
                _ => false,
            }),
            _ => false,
        }
    }

    /// The explicit role `principal` holds in `workspace` (its tag), if it
    /// applies there and grants `action`.
    fn explicit(
        &self,
        p: &EntityUid,
        ws: &EntityUid,
        action: &EntityUid,
    ) -> Option<(Ground, String)> {
        let key = self.string_attr(ws, "key")?;
        let role = match self.src.tag(p, &key)? {
            EvalResult::EntityUid(r) => r,
            _ => return None,
        };
        if !self.grants(&role, action) {
            return None;
        }
        let role_id = role.id().unescaped().to_string();
        if let Some(org) = self.entity_attr(ws, "org") {
            let own_org = self
                .entity_attr(&role, "org")
                .is_none_or(|role_org| role_org == org);
            (self.is_in(p, &org) && own_org).then(|| {
                (
                    Ground::ExplicitRole,
                    format!("explicit role `{role_id}` (tag `{key}` of {p}, a member of {org})"),
                )
            })
        } else if let Some(owner) = self.entity_attr(ws, "owner") {
            let collaborator = self.role(COLLABORATOR);
            (self.is_type(p, "User") && self.grants(&collaborator, action)).then(|| {
                (Ground::Collaborator, format!("role `{role_id}` as a collaborator invited to the personal workspace of {owner} (tag `{key}`)"))
            })
        } else {
            None
        }
    }

    fn default_role(
        &self,
        p: &EntityUid,
        ws: &EntityUid,
        action: &EntityUid,
    ) -> Option<(Ground, String)> {
        let org = self.entity_attr(ws, "org")?;
        let role = self.entity_attr(ws, "defaultRole")?;
        let own_org = self
            .entity_attr(&role, "org")
            .is_none_or(|role_org| role_org == org);
        (self.is_type(p, "User") && self.is_in(p, &org) && own_org && self.grants(&role, action))
            .then(|| {
                (
                    Ground::DefaultRole,
                    format!(
                        "default role `{}` of the workspace, for every user of {org}",
                        role.id().unescaped()
                    ),
                )
            })
    }

    fn role(&self, id: &str) -> EntityUid {
        let ty: EntityTypeName = format!("{}::Role", self.ns)
            .parse()
            .expect("a valid type name");
        EntityUid::from_type_name_and_id(ty, EntityId::new(id))
    }

    fn org_admin(&self, p: &EntityUid, org: &EntityUid) -> Option<String> {
        let admins = self.entity_attr(org, "admins")?;
        (self.is_in(p, &admins) && self.is_in(p, org))
            .then(|| format!("admin of {org} (member of {admins})"))
    }
}

/// The facts behind each policy that granted `action` to `principal` on
/// `resource` (`policies`: the determining policies the engine reported).
pub fn explain(
    snap: &Snapshot,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    policies: &[String],
) -> Vec<Because> {
    explain_in(
        snap,
        &Loaded::of(snap),
        principal,
        action,
        resource,
        policies,
    )
}

/// [`explain`] on the facts of `src`.
pub fn explain_in<S: Source>(
    snap: &Snapshot,
    src: &S,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    policies: &[String],
) -> Vec<Because> {
    let facts = model(snap, src);
    policies
        .iter()
        .map(|policy| {
            let origin = snap
                .origins
                .get(&PolicyId::new(policy))
                .map(|o| match o.line {
                    Some(l) => format!("{}:{l}", o.file.display()),
                    None => o.file.display().to_string(),
                });
            let (grounds, found) = facts
                .as_ref()
                .map(|f| facts_for(f, policy, principal, action, resource))
                .unwrap_or_default()
                .into_iter()
                .unzip();
            Because {
                policy: policy.clone(),
                origin,
                facts: found,
                grounds,
            }
        })
        .collect()
}

fn model<'a, S: Source>(snap: &Snapshot, src: &'a S) -> Option<Facts<'a, S>> {
    crate::domain::applies(&snap.schema).then(|| Facts {
        src,
        ns: "Prefect".to_string(),
    })
}

fn facts_for<S: Source>(
    f: &Facts<'_, S>,
    policy: &str,
    p: &EntityUid,
    action: &EntityUid,
    r: &EntityUid,
) -> Vec<(Ground, String)> {
    let mut out = Vec::new();
    match policy {
        "union-of-default-and-explicit" => {
            out.extend(f.explicit(p, r, action));
            out.extend(f.default_role(p, r, action));
        }
        "admin-overrides" => {
            if let Some(org) = f.entity_attr(r, "org") {
                out.extend(f.org_admin(p, &org).map(|a| (Ground::AdminOverride, a)));
            }
        }
        "personal-owner" if f.entity_attr(r, "owner").as_ref() == Some(p) => {
            out.push((
                Ground::PersonalOwner,
                "owner of the personal workspace".to_string(),
            ));
        }
        "workspace-transfer-accept" => {
            if let Some(org) = f.entity_attr(r, "transferTo") {
                out.extend(f.org_admin(p, &org).map(|a| {
                    (
                        Ground::TransferTarget,
                        format!("{a}, the organization the workspace is being transferred to"),
                    )
                }));
            }
        }
        "org-admin-actions" => out.extend(f.org_admin(p, r).map(|a| (Ground::OrgAdmin, a))),
        "org-member-read" if f.is_in(p, r) => {
            out.push((Ground::OrgMember, format!("member of {r}")))
        }
        "invitation-accept" => {
            if let Some(email) = f.string_attr(r, "email") {
                out.push((
                    Ground::Invitee,
                    format!(
                        "invited as `{email}`, the principal's email, and the invitation is pending"
                    ),
                ));
            }
        }
        _ => {}
    }
    out
}

/// How `workspace` relates to `principal`, in the platform's model.
pub fn workspace_info(
    snap: &Snapshot,
    principal: &EntityUid,
    workspace: &EntityUid,
) -> Option<WorkspaceInfo> {
    workspace_info_in(snap, &Loaded::of(snap), principal, workspace)
}

/// [`workspace_info`] on the facts of `src`.
pub fn workspace_info_in<S: Source>(
    snap: &Snapshot,
    src: &S,
    principal: &EntityUid,
    workspace: &EntityUid,
) -> Option<WorkspaceInfo> {
    let f = model(snap, src)?;
    let handle = f.string_attr(workspace, "handle");
    if let Some(owner) = f.entity_attr(workspace, "owner") {
        let kind = if &owner == principal {
            "personal"
        } else {
            "shared"
        };
        return Some(WorkspaceInfo {
            kind,
            handle,
            organization: None,
            owner: Some(owner.id().unescaped().to_string()),
        });
    }
    let org = f.entity_attr(workspace, "org")?;
    Some(WorkspaceInfo {
        kind: "organization",
        handle,
        organization: Some(org.id().unescaped().to_string()),
        owner: None,
    })
}

/// `orgwarden explain`: the effective scopes of `principal` on `resource`,
/// each with the policies and facts that grant it, as text or JSON.
pub fn explain_report(
    snap: &Snapshot,
    principal: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
    as_json: bool,
) -> Result<String, crate::engine::RequestError> {
    let page = super::all_pages(|p| super::actions(snap, principal, resource, context, p))?;
    let explained: Vec<(String, Vec<Because>)> = page
        .items
        .iter()
        .map(|g| {
            let name = g.action.id().unescaped().to_string();
            (
                name,
                explain(snap, principal, &g.action, resource, &g.policies),
            )
        })
        .collect();
    if as_json {
        let actions: Vec<serde_json::Value> = explained
            .iter()
            .map(|(name, because)| serde_json::json!({ "action": name, "granted_by": because }))
            .collect();
        let body = serde_json::json!({
            "principal": principal.to_string(),
            "resource": resource.to_string(),
            "generation": snap.generation,
            "actions": actions,
        });
        return Ok(serde_json::to_string_pretty(&body).unwrap_or_default());
    }
    let mut out = format!(
        "{principal} on {resource}: {} action(s) allowed\n",
        explained.len()
    );
    for (name, because) in &explained {
        out.push_str(&format!("  {name}\n"));
        for b in because {
            match &b.origin {
                Some(o) => out.push_str(&format!("    {}  ({o})\n", b.policy)),
                None => out.push_str(&format!("    {}\n", b.policy)),
            }
            for fact in &b.facts {
                out.push_str(&format!("      because: {fact}\n"));
            }
        }
    }
    Ok(out)
}

/// `orgwarden who`: the principals of `types` who may perform `action` on
/// `resource`, each with the policies that allow it, as text or JSON.
pub fn who_report(
    snap: &Snapshot,
    types: &[EntityTypeName],
    action: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
    as_json: bool,
) -> Result<String, crate::engine::RequestError> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut notes = Vec::new();
    for ty in types {
        let page = super::all_pages(|p| super::subjects(snap, ty, action, resource, context, p))?;
        notes.push(match page.strategy {
            super::Strategy::Index => format!("{ty}: index, {} candidate(s)", page.candidates),
            super::Strategy::Scan => format!(
                "{ty}: scan of {} entities (unindexed: {})",
                page.candidates,
                page.unindexed.join(", ")
            ),
        });
        rows.extend(
            page.items
                .into_iter()
                .map(|h| (h.uid.to_string(), h.policies)),
        );
    }
    if as_json {
        let principals: Vec<serde_json::Value> = rows
            .iter()
            .map(|(uid, policies)| serde_json::json!({ "principal": uid, "policies": policies }))
            .collect();
        let body = serde_json::json!({
            "action": action.to_string(),
            "resource": resource.to_string(),
            "generation": snap.generation,
            "principals": principals,
            "strategy": notes,
        });
        return Ok(serde_json::to_string_pretty(&body).unwrap_or_default());
    }
    let width = rows.iter().map(|(u, _)| u.len()).max().unwrap_or(0);
    let mut out = format!(
        "{} principal(s) may {action} on {resource} ({})\n",
        rows.len(),
        notes.join("; ")
    );
    for (uid, policies) in &rows {
        out.push_str(&format!("  {uid:<width$}  {}\n", policies.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Paths, load};

    fn shipped() -> Snapshot {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        load(&Paths {
            policies: root.join("policies"),
            schema: root.join("schema"),
            entities: root.join("entities"),
            routes: None,
            identity: None,
        })
        .expect("the shipped model loads")
    }

    fn uid(text: &str) -> EntityUid {
        text.parse().unwrap()
    }

    #[test]
    fn each_fact_names_the_rule_it_instantiates() {
        let snap = shipped();
        let prod = uid(r#"Prefect::Workspace::"acme-prod""#);
        let run = uid(r#"Prefect::Action::"run_deployments""#);
        let see = uid(r#"Prefect::Action::"see_flows""#);
        let union = vec!["union-of-default-and-explicit".to_string()];
        let grounds = |who: &str, action: &EntityUid, ws: &EntityUid, policies: &[String]| {
            let because = explain(&snap, &uid(who), action, ws, policies);
            assert!(because.iter().all(|b| b.grounds.len() == b.facts.len()));
            because
                .into_iter()
                .flat_map(|b| b.grounds)
                .collect::<Vec<_>>()
        };
        let dana = r#"Prefect::User::"dana""#;
        assert_eq!(grounds(dana, &run, &prod, &union), [Ground::ExplicitRole]);
        assert_eq!(
            grounds(dana, &see, &prod, &union),
            [Ground::ExplicitRole, Ground::DefaultRole]
        );
        assert_eq!(
            grounds(r#"Prefect::User::"carol""#, &see, &prod, &union),
            [Ground::DefaultRole]
        );
        assert_eq!(
            grounds(
                r#"Prefect::User::"alice""#,
                &run,
                &prod,
                &["admin-overrides".to_string()]
            ),
            [Ground::AdminOverride]
        );
        let personal = uid(r#"Prefect::Workspace::"dave-personal""#);
        assert_eq!(
            grounds(
                r#"Prefect::User::"dave""#,
                &see,
                &personal,
                &["personal-owner".to_string()]
            ),
            [Ground::PersonalOwner]
        );
        assert_eq!(
            grounds(r#"Prefect::User::"erin""#, &see, &personal, &union),
            [Ground::Collaborator]
        );
        // The wire format is unchanged: grounds are not serialized.
        let b = explain(&snap, &uid(dana), &run, &prod, &union);
        let json = serde_json::to_value(&b).unwrap();
        assert!(json[0].get("grounds").is_none(), "{json}");
    }
}

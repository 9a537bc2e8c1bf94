//! The domain's load-time checks: facts that Cedar's schema cannot express.
//!
//! They run when the schema is the platform's model (namespace `Prefect` with
//! its `Workspace`, `Organization`, `User`, `ServiceAccount` and `Role`
//! types); a general Cedar schema skips them. Each names the rule it enforces:
//!
//! * R5: a service account is never an org Admin (the schema already forbids
//!   it; the error says so in the domain's words).
//! * R1: an Admin is a member of the organization it administers.
//! * R6: an explicit workspace role (a tag) is held only by a member of the
//!   workspace's organization, or by a user invited to a personal workspace;
//!   a service account belongs to the organization it names.
//! * R9: a custom role is used only in workspaces of its own organization,
//!   and a role grants workspace scopes only (actions in `workspace_scope`).
//! * R11: a workspace's handle is unique within its organization or account.
//! * API keys: every `apiKeyDigests` entry is a SHA-256 digest (64 lowercase
//!   hex digits), and no two principals hold the same one.
//! * References: the workspaces (by `key`) and roles named by tags, default
//!   roles, organizations and owners exist.

use std::collections::{HashMap, HashSet};

use cedar_policy::{Entities, Entity, EntityUid, EvalResult, Schema};

use crate::diag::Diagnostic;
use crate::gateway::keys;
use crate::source::{TextFile, locate_entity};

const NS: &str = "Prefect";

/// Does the schema describe the platform's model?
pub fn applies(schema: &Schema) -> bool {
    let types: HashSet<String> = schema.entity_types().map(ToString::to_string).collect();
    [
        "Workspace",
        "Organization",
        "User",
        "ServiceAccount",
        "Role",
        "OrgAdmins",
    ]
    .iter()
    .all(|t| types.contains(&format!("{NS}::{t}")))
}

/// A domain explanation for an entity Cedar rejected, when there is one
/// (R5: a service account among an organization's admins).
pub fn explain_entity_error(
    item: &serde_json::Value,
    err: &dyn std::error::Error,
) -> Option<String> {
    let uid = item.get("uid")?;
    let uid = uid.get("__entity").unwrap_or(uid);
    let ty = uid.get("type")?.as_str()?;
    if ty != format!("{NS}::ServiceAccount") {
        return None;
    }
    let admin_parent = item.get("parents")?.as_array()?.iter().find_map(|p| {
        let p = p.get("__entity").unwrap_or(p);
        (p.get("type")?.as_str()? == format!("{NS}::OrgAdmins"))
            .then(|| p.get("id")?.as_str().map(str::to_string))?
    })?;
    let id = uid.get("id")?.as_str()?;
    Some(format!(
        "R5: service account {ty}::{id:?} is listed among the admins {NS}::OrgAdmins::{admin_parent:?}; \
         a service account may only be a Member of an organization, never an Admin ({err})"
    ))
}

struct Checker<'a> {
    entities: &'a Entities,
    origin: &'a HashMap<EntityUid, usize>,
    files: &'a [TextFile],
    out: Vec<Diagnostic>,
    /// The `org` of each role used so far; `None` for a role that does not
    /// exist. Roles are few and used by every membership.
    role_org: HashMap<EntityUid, Option<Option<EntityUid>>>,
}

impl Checker<'_> {
    fn error(&mut self, at: &EntityUid, message: String) {
        let (file, position) = match self.origin.get(at).and_then(|i| self.files.get(*i)) {
            Some(f) => (Some(f.path.as_path()), locate_entity(&f.text, at)),
            None => (None, None),
        };
        self.out.push(Diagnostic::plain(file, position, message));
    }

    fn exists(&self, uid: &EntityUid) -> bool {
        self.entities.get(uid).is_some()
    }
}

fn ty(uid: &EntityUid) -> &str {
    uid.type_name().basename()
}

fn in_ns(uid: &EntityUid) -> bool {
    uid.type_name().namespace() == NS
}

fn entity_attr(e: &Entity, name: &str) -> Option<EntityUid> {
    match e.attr(name)? {
        Ok(EvalResult::EntityUid(u)) => Some(u),
        _ => None,
    }
}

fn string_attr(e: &Entity, name: &str) -> Option<String> {
    match e.attr(name)? {
        Ok(EvalResult::String(s)) => Some(s),
        _ => None,
    }
}

/// Run every domain check; an empty result means the facts are consistent.
pub fn check(
    entities: &Entities,
    origin: &HashMap<EntityUid, usize>,
    files: &[TextFile],
) -> Vec<Diagnostic> {
    let mut c = Checker {
        entities,
        origin,
        files,
        out: Vec::new(),
        role_org: HashMap::new(),
    };
    // Workspaces by key, and handles per owning account.
    let mut by_key: HashMap<String, &Entity> = HashMap::new();
    let mut handles: HashMap<(EntityUid, String), EntityUid> = HashMap::new();
    let mut sorted: Vec<&Entity> = entities.iter().filter(|e| in_ns(&e.uid())).collect();
    sorted.sort_by_cached_key(|e| e.uid().to_string());
    let org_of_admins: HashMap<EntityUid, EntityUid> = sorted
        .iter()
        .filter(|e| ty(&e.uid()) == "Organization")
        .filter_map(|e| Some((entity_attr(e, "admins")?, e.uid())))
        .collect();

    for e in &sorted {
        let uid = e.uid();
        match ty(&uid) {
            "Workspace" => check_workspace(&mut c, e, &mut by_key, &mut handles),
            "Organization" => {
                if let Some(admins) = entity_attr(e, "admins")
                    && !c.exists(&admins)
                {
                    c.error(
                        &uid,
                        format!("organization {uid}: its admins group {admins} does not exist"),
                    );
                }
            }
            "Invitation" => {
                if let Some(org) = entity_attr(e, "org")
                    && !c.exists(&org)
                {
                    c.error(
                        &uid,
                        format!("invitation {uid}: organization {org} does not exist"),
                    );
                }
            }
            "Role" => {
                if let Some(org) = entity_attr(e, "org")
                    && !c.exists(&org)
                {
                    c.error(
                        &uid,
                        format!("custom role {uid}: organization {org} does not exist"),
                    );
                }
                check_grants(&mut c, e);
            }
            _ => {}
        }
    }
    // Each workspace's uid and organization, by key, read once.
    let workspaces: HashMap<&str, (EntityUid, Option<EntityUid>)> = by_key
        .iter()
        .map(|(key, ws)| (key.as_str(), (ws.uid(), entity_attr(ws, "org"))))
        .collect();
    for e in &sorted {
        let uid = e.uid();
        match ty(&uid) {
            "User" | "ServiceAccount" => check_principal(&mut c, e, &workspaces, &org_of_admins),
            _ => {}
        }
    }
    check_api_keys(&mut c, &sorted);
    c.out
}

/// A key names exactly one principal: digests are well formed and unshared.
/// A malformed entry is never echoed (it may be a key written in clear).
fn check_api_keys(c: &mut Checker<'_>, sorted: &[&Entity]) {
    let mut holder: HashMap<String, EntityUid> = HashMap::new();
    for e in sorted {
        let uid = e.uid();
        if !matches!(ty(&uid), "User" | "ServiceAccount") {
            continue;
        }
        for (i, digest) in keys::declared_digests(e).into_iter().enumerate() {
            if keys::parse_digest(&digest).is_none() {
                c.error(&uid, format!("{uid}: `{}` entry #{} is not a SHA-256 digest: store 64 lowercase hex digits (`printf %s KEY | sha256sum`), never the key itself", keys::DIGEST_ATTR, i + 1));
                continue;
            }
            match holder.get(&digest) {
                Some(other) if *other != uid => c.error(
                    &uid,
                    format!("{uid}: API key digest {}... is also held by {other}; a key names exactly one principal", &digest[..12]),
                ),
                Some(_) => {}
                None => {
                    holder.insert(digest, uid.clone());
                }
            }
        }
    }
}

fn check_workspace<'a>(
    c: &mut Checker<'_>,
    e: &'a Entity,
    by_key: &mut HashMap<String, &'a Entity>,
    handles: &mut HashMap<(EntityUid, String), EntityUid>,
) {
    let uid = e.uid();
    let org = entity_attr(e, "org");
    let owner = entity_attr(e, "owner");
    // Register the key first, so that a workspace with another error does
    // not also make every tag naming it an error.
    if let Some(key) = string_attr(e, "key") {
        if let Some(prev) = by_key.get(&key) {
            c.error(
                &uid,
                format!(
                    "workspace {uid}: key {key:?} is already the key of {}",
                    prev.uid()
                ),
            );
        } else {
            by_key.insert(key, e);
        }
    }
    let account = match (&org, &owner) {
        (Some(o), None) => o.clone(),
        (None, Some(o)) => o.clone(),
        _ => {
            c.error(&uid, format!("workspace {uid}: exactly one of `org` (organization workspace) and `owner` (personal workspace) must be set"));
            return;
        }
    };
    if !c.exists(&account) {
        c.error(
            &uid,
            format!(
                "workspace {uid}: its {} {account} does not exist",
                if org.is_some() {
                    "organization"
                } else {
                    "owner"
                }
            ),
        );
    }
    if let Some(handle) = string_attr(e, "handle") {
        if let Some(prev) = handles.get(&(account.clone(), handle.clone())) {
            c.error(&uid, format!("R11: workspace {uid}: handle {handle:?} is already used by {prev} in {account}; a handle is unique within its account or organization"));
        } else {
            handles.insert((account.clone(), handle), uid.clone());
        }
    }
    if let Some(role) = entity_attr(e, "defaultRole") {
        check_role_use(c, &uid, &role, org.as_ref(), &"default role");
    }
    for attr in ["transferTo"] {
        if let Some(target) = entity_attr(e, attr)
            && !c.exists(&target)
        {
            c.error(
                &uid,
                format!("workspace {uid}: `{attr}` names {target}, which does not exist"),
            );
        }
    }
}

/// Every action a role grants is a workspace scope: a member of the
/// `workspace_scope` action group (an unknown action is in no group).
fn check_grants(c: &mut Checker<'_>, role: &Entity) {
    let Some(Ok(EvalResult::Set(grants))) = role.attr("grants") else {
        return;
    };
    let group: EntityUid = match format!("{NS}::Action::\"workspace_scope\"").parse() {
        Ok(g) => g,
        Err(_) => return,
    };
    for grant in grants.iter() {
        let EvalResult::EntityUid(action) = grant else {
            continue;
        };
        let is_scope = c
            .entities
            .ancestors(action)
            .is_some_and(|mut up| up.any(|a| *a == group));
        if !is_scope {
            let uid = role.uid();
            c.error(
                &uid,
                format!("R9: role {uid} grants {action}, which is not a workspace scope (an action in {group}); a role grants workspace scopes only"),
            );
        }
    }
}

/// "role in <workspace>", written only into an error.
struct RoleIn<'a>(&'a EntityUid);

impl std::fmt::Display for RoleIn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "role in {}", self.0)
    }
}

/// A role used in a workspace exists and, when custom, belongs to the
/// workspace's organization.
fn check_role_use(
    c: &mut Checker<'_>,
    at: &EntityUid,
    role: &EntityUid,
    org: Option<&EntityUid>,
    what: &dyn std::fmt::Display,
) {
    if !c.role_org.contains_key(role) {
        let known = c.entities.get(role).map(|r| entity_attr(r, "org"));
        c.role_org.insert(role.clone(), known);
    }
    let message = match c.role_org.get(role) {
        Some(None) => Some(format!("{at}: {what} {role} does not exist")),
        Some(Some(Some(role_org))) if Some(role_org) != org => {
            let place = org
                .map(|o| format!("a workspace of {o}"))
                .unwrap_or_else(|| "a personal workspace".into());
            Some(format!(
                "R9: {at}: {what} {role} is a custom role of {role_org} and cannot be used in {place}"
            ))
        }
        _ => None,
    };
    if let Some(message) = message {
        c.error(at, message);
    }
}

fn check_principal(
    c: &mut Checker<'_>,
    e: &Entity,
    workspaces: &HashMap<&str, (EntityUid, Option<EntityUid>)>,
    org_of_admins: &HashMap<EntityUid, EntityUid>,
) {
    let uid = e.uid();
    let ancestors: HashSet<EntityUid> = c
        .entities
        .ancestors(&uid)
        .map(|a| a.cloned().collect())
        .unwrap_or_default();
    let is_service_account = ty(&uid) == "ServiceAccount";
    // In a stable order, so that one load's errors are the next one's.
    let mut ordered: Vec<&EntityUid> = ancestors.iter().collect();
    if ordered.len() > 1 {
        ordered.sort_by_cached_key(|a| a.to_string());
    }
    for a in ordered {
        match ty(a) {
            "OrgAdmins" if is_service_account => c.error(
                &uid,
                format!("R5: service account {uid} is among the admins {a}; a service account is only ever a Member"),
            ),
            "OrgAdmins" => match org_of_admins.get(a) {
                Some(org) if ancestors.contains(org) => {}
                Some(org) => c.error(&uid, format!("R1: {uid} is an admin of {org} ({a}) but not a member of it; add {org} to its parents")),
                None => c.error(&uid, format!("{uid}: admin group {a} belongs to no organization")),
            },
            "Organization" if !c.exists(a) => c.error(&uid, format!("{uid}: organization {a} does not exist")),
            _ => {}
        }
    }
    if is_service_account
        && let Some(org) = entity_attr(e, "org")
        && !ancestors.contains(&org)
    {
        c.error(&uid, format!("R5: service account {uid} names `org` {org} but is not a member of it; add {org} to its parents"));
    }
    for (key, value) in e.tags() {
        let role = match value {
            Ok(EvalResult::EntityUid(r)) => r,
            _ => continue,
        };
        let Some((ws_uid, org)) = workspaces.get(key) else {
            c.error(
                &uid,
                format!(
                    "R6: {uid} has a role in workspace key {key:?}, but no workspace has that key"
                ),
            );
            continue;
        };
        match org {
            Some(org) if !ancestors.contains(org) => c.error(
                &uid,
                format!("R6: {uid} has role {role} in {ws_uid} but is not a member of its organization {org}; members and service accounts must belong to the organization first"),
            ),
            None if is_service_account => c.error(
                &uid,
                format!("R6: service account {uid} has role {role} in personal workspace {ws_uid}; only users can be collaborators"),
            ),
            _ => {}
        }
        check_role_use(c, &uid, &role, org.as_ref(), &RoleIn(ws_uid));
    }
}

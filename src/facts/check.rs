//! The domain's load-time checks ([`crate::domain`]), evaluated on the
//! entities a batch affects instead of on the whole world.
//!
//! Each check reads one entity and what it names; the view's indexes answer
//! the questions the full check answers with maps built over every entity
//! (workspaces by key, handles per account, API key digests, the
//! organization of each admins group). [`targets`] lists the entities whose
//! checks can change with a batch: the entities it changes, every entity
//! below one whose parents or existence changed, the entities naming a
//! changed entity, the holders of tags keyed by a changed workspace's key,
//! and the members of a changed organization's admins group. The
//! differential tests hold these checks to the full ones on random batches.

use std::collections::{HashMap, HashSet, VecDeque};

use cedar_policy_core::ast::{self, EntityUID, Literal, PartialValue, ValueKind};
use imbl::HashMap as PMap;
use smol_str::SmolStr;

use super::uidset::SmallSet as PSet;

use crate::gateway::keys;

/// What the checks read of a set of facts (a fact view implements it).
pub trait Lookup {
    /// An entity, with its closed ancestors.
    fn entity(&self, uid: &EntityUID) -> Option<&ast::Entity>;
    /// The entities naming `uid` as a direct parent.
    fn children(&self, uid: &EntityUID) -> Option<&PSet<EntityUID>>;
    /// The entities whose attributes or tags name `uid`.
    fn referrers(&self, uid: &EntityUID) -> Option<&PSet<EntityUID>>;
    /// The entities holding a tag keyed `key`.
    fn tag_holders(&self, key: &str) -> Option<&PSet<EntityUID>>;
    /// The domain's indexes.
    fn domain(&self) -> &DomainIndex;
}

const NS: &str = "Prefect";

/// The domain's indexes over a view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainIndex {
    /// Workspace key -> the workspaces with it.
    ws_by_key: PMap<SmolStr, PSet<EntityUID>>,
    /// (owning account, handle) -> the workspaces with it.
    handles: PMap<(EntityUID, SmolStr), PSet<EntityUID>>,
    /// API key digest (as written) -> the principals declaring it.
    digests: PMap<SmolStr, PSet<EntityUID>>,
    /// Admins group -> the organizations naming it as `admins`.
    admins_of: PMap<EntityUID, PSet<EntityUID>>,
}

/// The basename of a type in the domain's namespace, or none.
fn kind(uid: &EntityUID) -> Option<String> {
    let ty = uid.entity_type().to_string();
    let rest = ty.strip_prefix(NS)?.strip_prefix("::")?;
    (!rest.contains("::")).then(|| rest.to_string())
}

/// The basename of any type.
fn basename(uid: &EntityUID) -> String {
    let ty = uid.entity_type().to_string();
    ty.rsplit("::").next().unwrap_or(&ty).to_string()
}

pub(super) fn entity_attr(e: &ast::Entity, name: &str) -> Option<EntityUID> {
    match e.get(name)? {
        PartialValue::Value(v) => match &v.value {
            ValueKind::Lit(Literal::EntityUID(u)) => Some((**u).clone()),
            _ => None,
        },
        PartialValue::Residual(_) => None,
    }
}

fn string_attr(e: &ast::Entity, name: &str) -> Option<SmolStr> {
    match e.get(name)? {
        PartialValue::Value(v) => match &v.value {
            ValueKind::Lit(Literal::String(s)) => Some(s.clone()),
            _ => None,
        },
        PartialValue::Residual(_) => None,
    }
}

/// The strings of `apiKeyDigests` (none when absent or not a set).
fn digests(e: &ast::Entity) -> Vec<SmolStr> {
    match e.get(keys::DIGEST_ATTR) {
        Some(PartialValue::Value(v)) => match &v.value {
            ValueKind::Set(s) => s
                .authoritative
                .iter()
                .filter_map(|x| match &x.value {
                    ValueKind::Lit(Literal::String(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The account owning a workspace: its `org`, or its `owner`; none when
/// not exactly one is set.
fn account(e: &ast::Entity) -> Option<EntityUID> {
    match (entity_attr(e, "org"), entity_attr(e, "owner")) {
        (Some(o), None) | (None, Some(o)) => Some(o),
        _ => None,
    }
}

#[derive(Default)]
struct Facets {
    keys: HashSet<SmolStr>,
    handles: HashSet<(EntityUID, SmolStr)>,
    digests: HashSet<SmolStr>,
    admins: HashSet<EntityUID>,
}

fn facets(e: Option<&ast::Entity>) -> Facets {
    let mut f = Facets::default();
    let Some(e) = e else { return f };
    match kind(e.uid()).as_deref() {
        Some("Workspace") => {
            if let Some(key) = string_attr(e, "key") {
                f.keys.insert(key);
            }
            if let (Some(acc), Some(handle)) = (account(e), string_attr(e, "handle")) {
                f.handles.insert((acc, handle));
            }
        }
        Some("Organization") => {
            if let Some(a) = entity_attr(e, "admins") {
                f.admins.insert(a);
            }
        }
        Some("User" | "ServiceAccount") => f.digests = digests(e).into_iter().collect(),
        _ => {}
    }
    f
}

/// Apply to `index` the change of `uid`'s keys from `old` to `new` (the
/// domain's indexes here and the view's own).
pub(super) fn reindex<K: Clone + std::hash::Hash + Eq>(
    index: &mut PMap<K, PSet<EntityUID>>,
    uid: &EntityUID,
    old: &HashSet<K>,
    new: &HashSet<K>,
) {
    for k in old.difference(new) {
        let empty = match index.get_mut(k) {
            Some(set) => {
                set.remove(uid);
                set.is_empty()
            }
            None => false,
        };
        if empty {
            index.remove(k);
        }
    }
    for k in new.difference(old) {
        index.entry(k.clone()).or_default().insert(uid.clone());
    }
}

impl DomainIndex {
    /// `uid` changed from `old` to `new` (none: absent).
    pub fn update(
        &mut self,
        uid: &EntityUID,
        old: Option<&ast::Entity>,
        new: Option<&ast::Entity>,
    ) {
        let (a, b) = (facets(old), facets(new));
        reindex(&mut self.ws_by_key, uid, &a.keys, &b.keys);
        reindex(&mut self.handles, uid, &a.handles, &b.handles);
        reindex(&mut self.digests, uid, &a.digests, &b.digests);
        reindex(&mut self.admins_of, uid, &a.admins, &b.admins);
    }

    /// The one principal declaring the API key digest `digest` (lowercase
    /// hex, as stored); none when no principal or several do (the domain
    /// checks refuse a shared digest, and an ambiguous key is refused).
    pub fn digest_holder(&self, digest: &str) -> Option<&EntityUID> {
        let holders = self.digests.get(digest)?;
        let mut all = holders.iter();
        match (all.next(), all.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// The workspaces whose `key` is `key`.
    pub fn workspaces_with_key(&self, key: &str) -> Option<&PSet<EntityUID>> {
        self.ws_by_key.get(key)
    }

    /// The organization of an admins group: of those naming it, the last by
    /// uid (as the full check's map keeps it).
    fn org_of_admins(&self, admins: &EntityUID) -> Option<EntityUID> {
        self.admins_of
            .get(admins)?
            .iter()
            .max_by_key(|o| o.to_string())
            .cloned()
    }
}

fn descendants(
    view: &dyn Lookup,
    from: &EntityUID,
    out: &mut HashMap<EntityUID, usize>,
    op: usize,
) {
    let mut queue: VecDeque<EntityUID> = VecDeque::from([from.clone()]);
    let mut seen: HashSet<EntityUID> = HashSet::new();
    while let Some(u) = queue.pop_front() {
        if let Some(kids) = view.children(&u) {
            for k in kids {
                if seen.insert(k.clone()) {
                    out.entry(k.clone()).or_insert(op);
                    queue.push_back(k.clone());
                }
            }
        }
    }
}

/// The entities whose checks a batch can change, each with the operation
/// that made it one: `changed` lists the entities whose data changed (new
/// value, last operation on it), `below` every entity below one whose
/// parents or existence changed.
pub(super) fn targets(
    before: &dyn Lookup,
    after: &dyn Lookup,
    changed: &[(EntityUID, Option<ast::Entity>, usize)],
    below: &HashMap<EntityUID, usize>,
) -> HashMap<EntityUID, usize> {
    let mut out: HashMap<EntityUID, usize> = HashMap::new();
    for (uid, new, op) in changed {
        if new.is_some() {
            out.insert(uid.clone(), *op);
        }
    }
    for (uid, op) in below {
        out.entry(uid.clone()).or_insert(*op);
    }
    for (uid, new, op) in changed {
        let old = before.entity(uid);
        let attrs_changed = match (old, new) {
            (Some(o), Some(n)) => {
                o.attrs().collect::<std::collections::BTreeMap<_, _>>()
                    != n.attrs().collect::<std::collections::BTreeMap<_, _>>()
            }
            (None, None) => false,
            _ => true,
        };
        if !attrs_changed {
            continue;
        }
        if let Some(refs) = after.referrers(uid) {
            for r in refs {
                out.entry(r.clone()).or_insert(*op);
            }
        }
        let (a, b) = (facets(old), facets(new.as_ref()));
        for key in a.keys.union(&b.keys) {
            if let Some(holders) = after.tag_holders(key) {
                for h in holders {
                    out.entry(h.clone()).or_insert(*op);
                }
            }
        }
        for admins in a.admins.union(&b.admins) {
            descendants(after, admins, &mut out, *op);
        }
    }
    out
}

/// Run the checks of `targets` on `view`: (entity, message) for each error.
pub(super) fn check<'a>(
    view: &dyn Lookup,
    targets: impl Iterator<Item = &'a EntityUID>,
) -> Vec<(EntityUID, String)> {
    let mut c = Checker {
        view,
        out: Vec::new(),
        workspaces: HashMap::new(),
        roles_fine: HashMap::new(),
    };
    for uid in targets {
        let Some(e) = view.entity(uid) else { continue };
        match kind(uid).as_deref() {
            Some("Workspace") => c.workspace(e),
            Some("Organization") => {
                if let Some(admins) = entity_attr(e, "admins")
                    && !c.exists(&admins)
                {
                    c.error(
                        uid,
                        format!("organization {uid}: its admins group {admins} does not exist"),
                    );
                }
            }
            Some("Invitation") => {
                if let Some(org) = entity_attr(e, "org")
                    && !c.exists(&org)
                {
                    c.error(
                        uid,
                        format!("invitation {uid}: organization {org} does not exist"),
                    );
                }
            }
            Some("Role") => {
                if let Some(org) = entity_attr(e, "org")
                    && !c.exists(&org)
                {
                    c.error(
                        uid,
                        format!("custom role {uid}: organization {org} does not exist"),
                    );
                }
            }
            Some("User" | "ServiceAccount") => {
                c.principal(e);
                c.api_keys(e);
            }
            _ => {}
        }
    }
    c.out
}

/// The checks a change of `keys` of `uid`'s tags (each now set) can fail:
/// R6 and R9 for each of those tags ([`Checker::tag`], the rule the full
/// check runs for every tag). Nothing else a load checks reads a tag.
pub(super) fn check_tags(
    view: &dyn Lookup,
    uid: &EntityUID,
    keys: &[SmolStr],
) -> Vec<(EntityUID, String)> {
    let mut c = Checker {
        view,
        out: Vec::new(),
        workspaces: HashMap::new(),
        roles_fine: HashMap::new(),
    };
    let Some(e) = view.entity(uid) else {
        return c.out;
    };
    let is_service_account = match kind(uid).as_deref() {
        Some("User") => false,
        Some("ServiceAccount") => true,
        _ => return c.out,
    };
    let ancestors: HashSet<&EntityUID> = e.ancestors().collect();
    for key in keys {
        if let Some(value) = e.get_tag(key) {
            c.tag(uid, is_service_account, &ancestors, key, value);
        }
    }
    c.out
}

struct Checker<'a> {
    view: &'a dyn Lookup,
    out: Vec<(EntityUID, String)>,
    /// Memo of [`Checker::workspace_of`] (the view does not change during
    /// a check).
    workspaces: HashMap<SmolStr, Option<(EntityUID, Option<EntityUID>)>>,
    /// Role -> the workspace organizations it was found usable in.
    roles_fine: HashMap<EntityUID, Vec<Option<EntityUID>>>,
}

impl Checker<'_> {
    fn error(&mut self, at: &EntityUID, message: String) {
        self.out.push((at.clone(), message));
    }

    /// Does the entity exist (actions are not in the view: an action exists
    /// when the schema declares it, and no domain reference names one)?
    fn exists(&self, uid: &EntityUID) -> bool {
        self.view.entity(uid).is_some()
    }

    fn workspace(&mut self, e: &ast::Entity) {
        let uid = e.uid();
        let domain = self.view.domain();
        if let Some(key) = string_attr(e, "key")
            && let Some(holders) = domain.ws_by_key.get(&key)
            && holders.len() > 1
        {
            let mut others: Vec<String> = holders
                .iter()
                .filter(|h| *h != uid)
                .map(ToString::to_string)
                .collect();
            others.sort();
            self.error(
                uid,
                format!(
                    "workspace {uid}: key {key:?} is already the key of {}",
                    others.join(", ")
                ),
            );
        }
        let org = entity_attr(e, "org");
        let Some(acc) = account(e) else {
            self.error(uid, format!("workspace {uid}: exactly one of `org` (organization workspace) and `owner` (personal workspace) must be set"));
            return;
        };
        if !self.exists(&acc) {
            let what = if org.is_some() {
                "organization"
            } else {
                "owner"
            };
            self.error(
                uid,
                format!("workspace {uid}: its {what} {acc} does not exist"),
            );
        }
        if let Some(handle) = string_attr(e, "handle")
            && let Some(holders) = domain.handles.get(&(acc.clone(), handle.clone()))
            && holders.len() > 1
        {
            let mut others: Vec<String> = holders
                .iter()
                .filter(|h| *h != uid)
                .map(ToString::to_string)
                .collect();
            others.sort();
            self.error(uid, format!("R11: workspace {uid}: handle {handle:?} is already used by {} in {acc}; a handle is unique within its account or organization", others.join(", ")));
        }
        if let Some(role) = entity_attr(e, "defaultRole") {
            self.role_use(uid, &role, org.as_ref(), "default role".to_string());
        }
        if let Some(target) = entity_attr(e, "transferTo")
            && !self.exists(&target)
        {
            self.error(
                uid,
                format!("workspace {uid}: `transferTo` names {target}, which does not exist"),
            );
        }
    }

    /// A role used in a workspace exists and, when custom, belongs to the
    /// workspace's organization (R9).
    fn role_use(
        &mut self,
        at: &EntityUID,
        role: &EntityUID,
        org: Option<&EntityUID>,
        what: String,
    ) {
        let message = match self.view.entity(role) {
            None => Some(format!("{at}: {what} {role} does not exist")),
            Some(r) => match entity_attr(r, "org") {
                Some(role_org) if Some(&role_org) != org => {
                    let place = org
                        .map(|o| format!("a workspace of {o}"))
                        .unwrap_or_else(|| "a personal workspace".into());
                    Some(format!(
                        "R9: {at}: {what} {role} is a custom role of {role_org} and cannot be used in {place}"
                    ))
                }
                _ => None,
            },
        };
        if let Some(m) = message {
            self.error(at, m);
        }
    }

    fn principal(&mut self, e: &ast::Entity) {
        let uid = e.uid();
        let ancestors: HashSet<&EntityUID> = e.ancestors().collect();
        let is_service_account = kind(uid).as_deref() == Some("ServiceAccount");
        let mut ordered: Vec<&EntityUID> = ancestors.iter().copied().collect();
        ordered.sort_by_cached_key(|a| a.to_string());
        for a in ordered {
            match basename(a).as_str() {
                "OrgAdmins" if is_service_account => self.error(
                    uid,
                    format!("R5: service account {uid} is among the admins {a}; a service account is only ever a Member"),
                ),
                "OrgAdmins" => match self.view.domain().org_of_admins(a) {
                    Some(org) if ancestors.contains(&org) => {}
                    Some(org) => self.error(uid, format!("R1: {uid} is an admin of {org} ({a}) but not a member of it; add {org} to its parents")),
                    None => self.error(uid, format!("{uid}: admin group {a} belongs to no organization")),
                },
                "Organization" if !self.exists(a) => {
                    self.error(uid, format!("{uid}: organization {a} does not exist"))
                }
                _ => {}
            }
        }
        if is_service_account
            && let Some(org) = entity_attr(e, "org")
            && !ancestors.contains(&org)
        {
            self.error(uid, format!("R5: service account {uid} names `org` {org} but is not a member of it; add {org} to its parents"));
        }
        for (key, value) in e.tags() {
            self.tag(uid, is_service_account, &ancestors, key, value);
        }
    }

    /// The workspace a tag key names (of several with the key, the first by
    /// uid, as the full check's map keeps it) and its organization.
    fn workspace_of(&mut self, key: &SmolStr) -> Option<(EntityUID, Option<EntityUID>)> {
        if let Some(known) = self.workspaces.get(key) {
            return known.clone();
        }
        let view = self.view;
        let ws = view
            .domain()
            .ws_by_key
            .get(key)
            .and_then(|set| match set.len() {
                1 => set.iter().next().cloned(),
                _ => set.iter().min_by_key(|w| w.to_string()).cloned(),
            });
        let found = ws.map(|ws| {
            let org = view.entity(&ws).and_then(|w| entity_attr(w, "org"));
            (ws, org)
        });
        self.workspaces.insert(key.clone(), found.clone());
        found
    }

    /// R6 and R9 for one tag of a principal: the workspace its key names
    /// exists, the principal belongs to its organization (a service account
    /// holds no role in a personal workspace), and the role is usable there.
    fn tag(
        &mut self,
        uid: &EntityUID,
        is_service_account: bool,
        ancestors: &HashSet<&EntityUID>,
        key: &SmolStr,
        value: &PartialValue,
    ) {
        let role = match value {
            PartialValue::Value(v) => match &v.value {
                ValueKind::Lit(Literal::EntityUID(r)) => &**r,
                _ => return,
            },
            PartialValue::Residual(_) => return,
        };
        let Some((ws, org)) = self.workspace_of(key) else {
            self.error(
                uid,
                format!(
                    "R6: {uid} has a role in workspace key {key:?}, but no workspace has that key"
                ),
            );
            return;
        };
        match &org {
            Some(org) if !ancestors.contains(org) => self.error(
                uid,
                format!("R6: {uid} has role {role} in {ws} but is not a member of its organization {org}; members and service accounts must belong to the organization first"),
            ),
            None if is_service_account => self.error(
                uid,
                format!("R6: service account {uid} has role {role} in personal workspace {ws}; only users can be collaborators"),
            ),
            _ => {}
        }
        let fine = self
            .roles_fine
            .get(role)
            .is_some_and(|orgs| orgs.contains(&org));
        if fine {
            return;
        }
        let before = self.out.len();
        self.role_use(uid, role, org.as_ref(), format!("role in {ws}"));
        if self.out.len() == before {
            self.roles_fine.entry(role.clone()).or_default().push(org);
        }
    }

    /// Digests are well formed and name one principal. A malformed entry
    /// is never echoed (it may be a key written in clear).
    fn api_keys(&mut self, e: &ast::Entity) {
        let uid = e.uid();
        let mut all = digests(e);
        all.sort();
        for (i, digest) in all.iter().enumerate() {
            if keys::parse_digest(digest).is_none() {
                self.error(uid, format!("{uid}: `{}` entry #{} is not a SHA-256 digest: store 64 lowercase hex digits (`printf %s KEY | sha256sum`), never the key itself", keys::DIGEST_ATTR, i + 1));
                continue;
            }
            if let Some(holders) = self.view.domain().digests.get(digest)
                && let Some(other) = holders.iter().find(|h| *h != uid)
            {
                self.error(uid, format!("{uid}: API key digest {}... is also held by {other}; a key names exactly one principal", &digest[..12]));
            }
        }
    }
}

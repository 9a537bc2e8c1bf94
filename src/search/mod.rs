//! Search: who can do what. The resources of a type on which a principal may
//! perform an action, the principals of a type who may perform an action on
//! a resource, and the actions a principal may perform on a resource (its
//! effective scopes), each with the policies that grant it.
//!
//! # Exactness
//!
//! Every answer is a list of pairs on which [`crate::engine::decide`] said
//! Allow: search never re-implements a rule, so it cannot disagree with
//! `is_authorized`. Only the choice of the pairs to decide, the
//! *candidates*, comes from an index, and the candidates are a superset of
//! every pair that can be allowed. The argument:
//!
//! 1. Cedar allows a request only if some permit policy is satisfied (its
//!    scope and every condition evaluate to `true`). Forbids only remove
//!    allows. So the candidates only need to cover, for each permit policy
//!    that can match the action ([`crate::index`]), the entities that can
//!    satisfy it.
//! 2. For each permit policy, `plan` derives at load time a *necessary*
//!    condition: a formula of links (`x in y`, `x == y`, `y.contains(x)`,
//!    `x.hasTag(k)`/`x.getTag(k)`, `x is T`) between terms that are a
//!    variable followed by attribute accesses (`resource.org.admins`), a
//!    literal or the request's `action`. The rules (and why each is
//!    necessary) are in `plan`'s doc; anything else (context, arithmetic,
//!    extension calls, negation, `unless`) counts as "no constraint".
//! 3. At query time one side is known, and so is the action: each action
//!    is searched with its own value of `action`, so `action in
//!    resource.defaultRole.grants` names the workspaces whose default role
//!    lists the action or a group it is in (Cedar's `in` on the schema's
//!    action hierarchy, read from the stored action entities). A link that
//!    relates the unknown side to the known one (or to a literal) is
//!    answered from the relation index
//!    built once per snapshot ([`Relations`]): attribute references (any
//!    path, through records, sets included), hierarchy (descendants, and
//!    Cedar's own ancestor sets) and tag keys. A conjunction generates from
//!    its most selective link and checks the others per candidate (a check
//!    evaluates the link on the stored facts as Cedar would, and rejects a
//!    candidate only when the link surely fails); a disjunction needs every
//!    alternative constrained. For several actions at once (the workspace
//!    view) each action keeps its own candidates, so a resource is decided
//!    only for the actions that can be allowed on it.
//! 4. A policy whose condition gives no constraint on the unknown side for
//!    this known entity (for example `permit(principal, action, resource is
//!    Workspace);`, or a `when` that reads only the resource or the context
//!    when searching for principals) can allow *every* entity of the type:
//!    the search then scans every stored entity of the type
//!    ([`Strategy::Scan`], with the policies that forced it in
//!    [`Page::unindexed`]). Still exact, only slower.
//!
//! Search decides against the facts of a [`Source`] only (the snapshot's
//! loaded entities, [`Loaded`], or live facts at one revision,
//! [`live::LiveSource`]), with the request's context, and lists stored
//! entities only (an entity the facts never mention cannot be listed,
//! although `is_authorized` may allow it). Every search function has an
//! `_in` form that takes the source; the plain one searches the snapshot.
//!
//! # Pages
//!
//! Results come in the stable order of the index: by type, then by id. A
//! page token is opaque (hex) and names the snapshot generation, the last
//! entity or action returned, and a check over the snapshot's load time, the
//! search's parameters and the cursor. A token from another generation (the
//! facts or policies were reloaded), from another search or tampered with is
//! rejected with `invalid_page_token` (HTTP 400): the client restarts without
//! a token. Restarting silently would mix two generations in one listing.
//! On live facts the generation still binds a token (policies and schema),
//! but the facts move by revision without a reload: the cursor is the last
//! entity's uid, and the next page lists what follows it in the facts of
//! its own request (each page states its revision).
//! `limit` defaults to [`DEFAULT_LIMIT`] and is capped at [`MAX_LIMIT`] (a
//! PDP may return fewer results than asked, with a next token).

mod candidates;
pub mod explain;
pub mod live;
pub mod source;

use std::collections::{BTreeSet, HashMap};
use std::time::UNIX_EPOCH;

use cedar_policy::{Context, Effect, EntityTypeName, EntityUid, PolicyId, Request};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::{self, Facts, Outcome, Query, RequestError};
use crate::search_index::plan::Var;
pub use crate::search_index::{Relations, SearchIndex};
use crate::snapshot::Snapshot;
use candidates::{Cand, Ctx};
pub use source::{Loaded, Source};

/// Results per page when the request does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Most results a page holds.
pub const MAX_LIMIT: usize = 1000;

/// How the candidates were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// From the relation index: the cost follows the answer.
    Index,
    /// Every stored entity of the type (a permit policy can allow anyone).
    Scan,
}

/// A page request.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub token: Option<String>,
    pub limit: Option<usize>,
}

/// An entity the search found, with the policies that allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub uid: EntityUid,
    pub policies: Vec<String>,
}

/// An action allowed, with the policies that allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub action: EntityUid,
    pub policies: Vec<String>,
}

/// A resource with every action allowed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub resource: EntityUid,
    pub grants: Vec<Grant>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Token of the next page; `None` on the last one.
    pub next_token: Option<String>,
    pub generation: u64,
    pub strategy: Strategy,
    /// Candidates the index gave (decided or not).
    pub candidates: usize,
    /// Permit policies that forced a scan.
    pub unindexed: Vec<String>,
}

fn page_error(message: impl Into<String>) -> RequestError {
    RequestError::new("invalid_page_token", "page.token", message)
}

/// The longest cursor a token carries (an entity's uid, on live facts).
const MAX_CURSOR: usize = 4096;

fn malformed() -> RequestError {
    page_error("malformed page token: pass back `page.next_token` unchanged")
}

/// The cursor a token carries, checked against this snapshot and search.
fn read_token(
    snap: &Snapshot,
    fingerprint: &[u8; 32],
    token: &str,
) -> Result<Vec<u8>, RequestError> {
    let bytes = hex::decode(token.trim())
        .ok()
        .filter(|b| b.len() >= 17 && b.len() <= 17 + MAX_CURSOR && b[0] == 1)
        .ok_or_else(malformed)?;
    let generation = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    let (cursor, sum) = bytes[9..].split_at(bytes.len() - 17);
    if generation != snap.generation {
        return Err(page_error(format!(
            "expired page token: it belongs to generation {generation}, and the policies or facts \
             have since been reloaded (generation {}); restart the search without a token",
            snap.generation
        )));
    }
    if sum != check(snap, fingerprint, cursor) {
        return Err(page_error(
            "page token does not belong to this search (its parameters changed, or the server \
             restarted); restart the search without a token",
        ));
    }
    Ok(cursor.to_vec())
}

fn write_token(snap: &Snapshot, fingerprint: &[u8; 32], cursor: &[u8]) -> String {
    let mut bytes = vec![1u8];
    bytes.extend(snap.generation.to_be_bytes());
    bytes.extend(cursor);
    bytes.extend(check(snap, fingerprint, cursor));
    hex::encode(bytes)
}

fn check(snap: &Snapshot, fingerprint: &[u8; 32], cursor: &[u8]) -> [u8; 8] {
    let loaded = snap
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(loaded.to_be_bytes());
    h.update(snap.generation.to_be_bytes());
    h.update(fingerprint);
    h.update(cursor);
    h.finalize()[..8].try_into().expect("8 bytes")
}

fn fingerprint(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

struct Paging {
    cursor: Option<Vec<u8>>,
    limit: usize,
    fingerprint: [u8; 32],
}

fn paging(snap: &Snapshot, page: &PageRequest, parts: &[&str]) -> Result<Paging, RequestError> {
    let limit = match page.limit {
        None => DEFAULT_LIMIT,
        Some(0) => {
            return Err(RequestError::new(
                "invalid_page_limit",
                "page.limit",
                "`limit` must be at least 1",
            ));
        }
        Some(n) => n.min(MAX_LIMIT),
    };
    let fingerprint = fingerprint(parts);
    let cursor = match page.token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(read_token(snap, &fingerprint, t)?),
        None => None,
    };
    Ok(Paging {
        cursor,
        limit,
        fingerprint,
    })
}

/// Does `action` apply to these principal and resource types?
fn applies(
    snap: &Snapshot,
    action: &EntityUid,
    principal: &EntityTypeName,
    resource: &EntityTypeName,
) -> bool {
    let p = snap
        .schema
        .principals_for_action(action)
        .is_some_and(|mut i| i.any(|t| t == principal));
    let r = snap
        .schema
        .resources_for_action(action)
        .is_some_and(|mut i| i.any(|t| t == resource));
    p && r
}

fn not_applicable(
    field: &str,
    action: &EntityUid,
    principal: &EntityTypeName,
    resource: &EntityTypeName,
) -> RequestError {
    RequestError::new(
        "invalid_request",
        field,
        format!(
            "action {action} does not apply to principal type {principal} and resource type {resource}"
        ),
    )
}

/// Candidates of the unknown side for several actions.
struct Candidates<Id> {
    /// The union, sorted.
    all: Vec<Id>,
    /// Per action (in the order asked): `None` when it needs a scan.
    by_action: Vec<Option<Vec<Id>>>,
    strategy: Strategy,
    /// Permit policies that forced a scan, sorted.
    unindexed: Vec<String>,
}

impl<Id: Ord> Candidates<Id> {
    /// Can action number `i` be allowed on candidate `id`?
    fn may(&self, i: usize, id: &Id) -> bool {
        match &self.by_action[i] {
            None => true,
            Some(ids) => ids.binary_search(id).is_ok(),
        }
    }
}

/// The candidates of the unknown side for `actions`: the union, over the
/// permit policies that can match each action, of each policy's candidates
/// (each policy generated once).
fn candidates<S: Source>(
    snap: &Snapshot,
    facts: &S,
    known_var: Var,
    known: &EntityUid,
    actions: &[&EntityUid],
    unknown_type: &EntityTypeName,
) -> Candidates<S::Id> {
    // Candidates per policy, and per action for the policies whose
    // condition reads the action.
    let mut memo: HashMap<(PolicyId, Option<EntityUid>), Cand<S::Id>> = HashMap::new();
    let mut unindexed: BTreeSet<String> = BTreeSet::new();
    let mut by_action = Vec::with_capacity(actions.len());
    for action in actions {
        let ctx = Ctx {
            facts,
            known_var,
            known,
            action,
            unknown_type,
        };
        let set = match snap.index.for_action(action) {
            Some(ap) => &ap.policies,
            None => &snap.policies,
        };
        let mut ids: Option<Vec<S::Id>> = Some(Vec::new());
        for policy in set.policies().filter(|p| p.effect() == Effect::Permit) {
            let req = snap.search.plans.get(policy.id());
            let key = (
                policy.id().clone(),
                req.filter(|r| r.reads_action()).map(|_| (*action).clone()),
            );
            let generated = memo.entry(key).or_insert_with(|| match req {
                Some(req) => ctx.generate(req),
                None => Cand::All,
            });
            match generated {
                Cand::All => {
                    unindexed.insert(policy.id().to_string());
                    ids = None;
                }
                Cand::Some(found) => {
                    if let Some(ids) = ids.as_mut() {
                        ids.extend(found.iter().cloned());
                    }
                }
            }
        }
        if let Some(ids) = ids.as_mut() {
            ids.sort_unstable();
            ids.dedup();
        }
        by_action.push(ids);
    }
    let (all, strategy) = if unindexed.is_empty() {
        let mut all: Vec<S::Id> = by_action.iter().flatten().flatten().cloned().collect();
        all.sort_unstable();
        all.dedup();
        (all, Strategy::Index)
    } else {
        let all = facts.of_type(unknown_type);
        (all, Strategy::Scan)
    };
    Candidates {
        all,
        by_action,
        strategy,
        unindexed: unindexed.into_iter().collect(),
    }
}

/// Decide the candidates after the cursor in order, keeping the allowed
/// ones up to the page's limit.
/// `cursor` reads a token's cursor back (none: malformed), `encode` writes
/// one.
fn collect<T, Id: Ord + Clone>(
    snap: &Snapshot,
    cands: &[Id],
    paging: &Paging,
    cursor: impl Fn(&[u8]) -> Option<Id>,
    encode: impl Fn(&Id) -> Vec<u8>,
    mut decide: impl FnMut(&Id) -> Result<Option<T>, RequestError>,
) -> Result<(Vec<T>, Option<String>), RequestError> {
    let start = match &paging.cursor {
        Some(c) => {
            let c = cursor(c).ok_or_else(malformed)?;
            cands.partition_point(|x| *x <= c)
        }
        None => 0,
    };
    let mut items = Vec::new();
    let mut last = None;
    for id in &cands[start..] {
        if let Some(item) = decide(id)? {
            if items.len() == paging.limit {
                let cursor = encode(last.expect("a full page has a last item"));
                return Ok((items, Some(write_token(snap, &paging.fingerprint, &cursor))));
            }
            items.push(item);
            last = Some(id);
        }
    }
    Ok((items, None))
}

/// The known side of a resource or subject search.
#[derive(Debug, Clone, Copy)]
enum Known<'a> {
    Principal(&'a EntityUid),
    Resource(&'a EntityUid),
}

impl<'a> Known<'a> {
    /// The request's (principal, resource) with `other` on the unknown side.
    fn pair(self, other: &'a EntityUid) -> (&'a EntityUid, &'a EntityUid) {
        match self {
            Known::Principal(p) => (p, other),
            Known::Resource(r) => (other, r),
        }
    }
}

/// The resources of `resource_type` on which `principal` may perform `action`.
pub fn resources(
    snap: &Snapshot,
    principal: &EntityUid,
    action: &EntityUid,
    resource_type: &EntityTypeName,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Hit>, RequestError> {
    resources_in(
        snap,
        &Loaded::of(snap),
        principal,
        action,
        resource_type,
        context,
        page,
    )
}

/// [`resources`] on the facts of `facts`.
pub fn resources_in<S: Source>(
    snap: &Snapshot,
    facts: &S,
    principal: &EntityUid,
    action: &EntityUid,
    resource_type: &EntityTypeName,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Hit>, RequestError> {
    search_unknown(
        snap,
        facts,
        Known::Principal(principal),
        action,
        resource_type,
        context,
        page,
    )
}

/// The principals of `principal_type` who may perform `action` on `resource`.
pub fn subjects(
    snap: &Snapshot,
    principal_type: &EntityTypeName,
    action: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Hit>, RequestError> {
    subjects_in(
        snap,
        &Loaded::of(snap),
        principal_type,
        action,
        resource,
        context,
        page,
    )
}

/// [`subjects`] on the facts of `facts`.
pub fn subjects_in<S: Source>(
    snap: &Snapshot,
    facts: &S,
    principal_type: &EntityTypeName,
    action: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Hit>, RequestError> {
    search_unknown(
        snap,
        facts,
        Known::Resource(resource),
        action,
        principal_type,
        context,
        page,
    )
}

/// The entities of `unknown_type` that, on the side `known` leaves open,
/// make `action` allowed.
fn search_unknown<S: Source>(
    snap: &Snapshot,
    facts: &S,
    known: Known<'_>,
    action: &EntityUid,
    unknown_type: &EntityTypeName,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Hit>, RequestError> {
    let probe =
        EntityUid::from_type_name_and_id(unknown_type.clone(), cedar_policy::EntityId::new(""));
    let (principal, resource) = known.pair(&probe);
    if !applies(snap, action, principal.type_name(), resource.type_name()) {
        let field = match known {
            Known::Principal(_) => "resource.type",
            Known::Resource(_) => "subject.type",
        };
        return Err(not_applicable(
            field,
            action,
            principal.type_name(),
            resource.type_name(),
        ));
    }
    engine::build_query(
        snap,
        principal.clone(),
        action.clone(),
        resource.clone(),
        context.clone(),
    )?;
    let ctx_text = context.to_string();
    // The principal's (or its type's) and the resource's (or its type's) names.
    let (tag, known_var, known_uid, p_name, r_name) = match known {
        Known::Principal(p) => (
            "resource",
            Var::Principal,
            p,
            p.to_string(),
            unknown_type.to_string(),
        ),
        Known::Resource(r) => (
            "subject",
            Var::Resource,
            r,
            unknown_type.to_string(),
            r.to_string(),
        ),
    };
    let paging = paging(
        snap,
        page,
        &[tag, &p_name, &action.to_string(), &r_name, &ctx_text],
    )?;
    let Candidates {
        all: cands,
        strategy,
        unindexed,
        ..
    } = candidates(snap, facts, known_var, known_uid, &[action], unknown_type);
    let mut asker = Asker::new(snap, facts, context);
    let (items, next_token) = collect(
        snap,
        &cands,
        &paging,
        |c| facts.read_cursor(c),
        |id| facts.cursor(id),
        |id| {
            let uid = facts.uid(id);
            let (principal, resource) = known.pair(&uid);
            let o = asker.decide(principal, action, resource)?;
            Ok(o.allowed().then(|| Hit {
                uid: uid.clone(),
                policies: o.reasons,
            }))
        },
    )?;
    Ok(Page {
        items,
        next_token,
        generation: snap.generation,
        strategy,
        candidates: cands.len(),
        unindexed,
    })
}

/// Decides the pairs of one search with [`engine::decide`]. The context is
/// typed by the schema once per action, through [`engine::build_query`]
/// (which validates that first request whole); later requests of the action
/// reuse the typed context and skip Cedar's request validation, whose only
/// other checks (the principal and resource types) `applies` made.
struct Asker<'a, S: Source> {
    snap: &'a Snapshot,
    facts: &'a S,
    context: &'a serde_json::Value,
    typed: HashMap<EntityUid, Context>,
}

impl<'a, S: Source> Asker<'a, S> {
    fn new(snap: &'a Snapshot, facts: &'a S, context: &'a serde_json::Value) -> Self {
        Asker {
            snap,
            facts,
            context,
            typed: HashMap::new(),
        }
    }

    fn decide(
        &mut self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Outcome, RequestError> {
        let query = match self.typed.get(action) {
            Some(context) => Query {
                request: Request::new(
                    principal.clone(),
                    action.clone(),
                    resource.clone(),
                    context.clone(),
                    None,
                )
                .map_err(|e| {
                    RequestError::new("invalid_request", "request", crate::diag::one_line(&e))
                })?,
                principal: principal.clone(),
                action: action.clone(),
                resource: resource.clone(),
                facts: Facts::Loaded,
            },
            None => {
                let q = engine::build_query(
                    self.snap,
                    principal.clone(),
                    action.clone(),
                    resource.clone(),
                    self.context.clone(),
                )?;
                if let Some(c) = q.request.context() {
                    self.typed.insert(action.clone(), c.clone());
                }
                q
            }
        };
        Ok(self.facts.decide(self.snap, &query))
    }
}

/// The schema's actions that apply to these types, in the stable order.
pub fn applicable_actions<'a>(
    snap: &'a Snapshot,
    principal: &EntityTypeName,
    resource: &EntityTypeName,
) -> Vec<&'a EntityUid> {
    snap.names
        .actions()
        .into_iter()
        .filter(|a| applies(snap, a, principal, resource))
        .collect()
}

/// Every action `principal` may perform on `resource`, decided one by one.
fn grants<S: Source>(
    asker: &mut Asker<'_, S>,
    principal: &EntityUid,
    actions: &[&EntityUid],
    resource: &EntityUid,
) -> Result<Vec<Grant>, RequestError> {
    let mut out = Vec::new();
    for action in actions {
        let o = asker.decide(principal, action, resource)?;
        if o.allowed() {
            out.push(Grant {
                action: (*action).clone(),
                policies: o.reasons,
            });
        }
    }
    Ok(out)
}

/// The actions `principal` may perform on `resource` (its effective scopes),
/// in the order of the schema's action names.
pub fn actions(
    snap: &Snapshot,
    principal: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Grant>, RequestError> {
    actions_in(snap, &Loaded::of(snap), principal, resource, context, page)
}

/// [`actions`] on the facts of `facts`.
pub fn actions_in<S: Source>(
    snap: &Snapshot,
    facts: &S,
    principal: &EntityUid,
    resource: &EntityUid,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Grant>, RequestError> {
    let ctx_text = context.to_string();
    let paging = paging(
        snap,
        page,
        &[
            "action",
            &principal.to_string(),
            &resource.to_string(),
            &ctx_text,
        ],
    )?;
    let all = applicable_actions(snap, principal.type_name(), resource.type_name());
    let mut asker = Asker::new(snap, facts, context);
    let positions: Vec<u32> = (0..all.len() as u32).collect();
    let (items, next_token) = collect(
        snap,
        &positions,
        &paging,
        |c| Some(u32::from_be_bytes(c.try_into().ok()?)),
        |i| i.to_be_bytes().to_vec(),
        |i| {
            let action = all[*i as usize];
            Ok(grants(&mut asker, principal, &[action], resource)?.pop())
        },
    )?;
    Ok(Page {
        items,
        next_token,
        generation: snap.generation,
        strategy: Strategy::Index,
        candidates: all.len(),
        unindexed: Vec::new(),
    })
}

/// The resources of `resource_type` on which `principal` may perform at
/// least one action, each with every action allowed on it (for views such
/// as a workspace switcher).
pub fn accessible(
    snap: &Snapshot,
    principal: &EntityUid,
    resource_type: &EntityTypeName,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Access>, RequestError> {
    accessible_in(
        snap,
        &Loaded::of(snap),
        principal,
        resource_type,
        context,
        page,
    )
}

/// [`accessible`] on the facts of `facts`.
pub fn accessible_in<S: Source>(
    snap: &Snapshot,
    facts: &S,
    principal: &EntityUid,
    resource_type: &EntityTypeName,
    context: &serde_json::Value,
    page: &PageRequest,
) -> Result<Page<Access>, RequestError> {
    let all = applicable_actions(snap, principal.type_name(), resource_type);
    if all.is_empty() {
        return Err(RequestError::new(
            "invalid_request",
            "resource.type",
            format!(
                "no action applies to principal type {} and resource type {resource_type}",
                principal.type_name()
            ),
        ));
    }
    let ctx_text = context.to_string();
    let paging = paging(
        snap,
        page,
        &[
            "accessible",
            &principal.to_string(),
            &resource_type.to_string(),
            &ctx_text,
        ],
    )?;
    let found = candidates(snap, facts, Var::Principal, principal, &all, resource_type);
    let mut asker = Asker::new(snap, facts, context);
    let (items, next_token) = collect(
        snap,
        &found.all,
        &paging,
        |c| facts.read_cursor(c),
        |id| facts.cursor(id),
        |id| {
            let resource = facts.uid(id);
            // Only the actions whose candidates hold this resource can be allowed.
            let possible: Vec<&EntityUid> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| found.may(*i, id))
                .map(|(_, a)| *a)
                .collect();
            let grants = grants(&mut asker, principal, &possible, &resource)?;
            Ok((!grants.is_empty()).then_some(Access { resource, grants }))
        },
    )?;
    Ok(Page {
        items,
        next_token,
        generation: snap.generation,
        strategy: found.strategy,
        candidates: found.all.len(),
        unindexed: found.unindexed,
    })
}

/// Every page of a search, for tools that want the whole answer.
pub fn all_pages<T>(
    mut search: impl FnMut(&PageRequest) -> Result<Page<T>, RequestError>,
) -> Result<Page<T>, RequestError> {
    let mut request = PageRequest {
        token: None,
        limit: Some(MAX_LIMIT),
    };
    let mut first = search(&request)?;
    while let Some(token) = first.next_token.take() {
        request.token = Some(token);
        let next = search(&request)?;
        first.items.extend(next.items);
        first.next_token = next.next_token;
    }
    Ok(first)
}

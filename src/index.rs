//! The policy index: for each action of the schema, the policies whose scope
//! can match it, split by the principal or resource they name.
//!
//! Cedar evaluates every policy of a set for every request. A policy whose
//! scope does not hold for the request (its action constraint, or a
//! `principal == X` / `resource == X` constraint naming another entity) is
//! false without any error (the scope is checked before the conditions), so
//! leaving it out changes no decision, reason or error. The index is built
//! once per snapshot from the schema's action hierarchy: a request evaluates
//! its action's general policies (no `==` in the head) plus those naming its
//! own principal or resource, so per-user and per-workspace policies cost a
//! request nothing unless they name it.
//!
//! Each action also keeps a small memo of typed request contexts: Cedar
//! parses a context JSON against the action's context type the same way
//! every time, so a context seen before (most gateways send the same few)
//! is reused instead of parsed again.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Context, Entities, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};
use moka::sync::Cache;

/// Most distinct contexts remembered per action.
const CONTEXT_MEMO_ENTRIES: u64 = 4096;
/// Contexts whose JSON text is longer than this are parsed every time.
pub const CONTEXT_MEMO_MAX_KEY: usize = 1024;

/// The policies one action can match, and the entities they name.
#[derive(Debug)]
pub struct ActionPolicies {
    /// Every policy the action can match.
    pub policies: PolicySet,
    /// The policies whose head names no entity (`principal`, `principal is
    /// T`, and the same for `resource`): every request evaluates them.
    general: PolicySet,
    /// Policies keyed by an entity their head names (one bucket each, in
    /// this order of preference): `resource == X`, `principal == X`,
    /// `resource in X`, `principal in X` (with or without `is T`).
    resource_eq: HashMap<EntityUid, PolicySet>,
    principal_eq: HashMap<EntityUid, PolicySet>,
    resource_in: HashMap<EntityUid, PolicySet>,
    principal_in: HashMap<EntityUid, PolicySet>,
    /// Entity literals of these policies (sorted, unique): a request-scoped
    /// slice of the facts includes them.
    pub literals: Vec<EntityUid>,
    /// Context JSON text -> the context Cedar parsed from it for this action
    /// (valid ones only; bounded, least recently used evicted).
    pub contexts: Cache<String, Context>,
}

/// Which bucket a policy's head puts it in.
enum Key {
    ResourceEq(EntityUid),
    PrincipalEq(EntityUid),
    ResourceIn(EntityUid),
    PrincipalIn(EntityUid),
    General,
}

fn key_of(policy: &Policy) -> Key {
    match (policy.resource_constraint(), policy.principal_constraint()) {
        (ResourceConstraint::Eq(r), _) => Key::ResourceEq(r),
        (_, PrincipalConstraint::Eq(p)) => Key::PrincipalEq(p),
        (ResourceConstraint::In(r) | ResourceConstraint::IsIn(_, r), _) => Key::ResourceIn(r),
        (_, PrincipalConstraint::In(p) | PrincipalConstraint::IsIn(_, p)) => Key::PrincipalIn(p),
        _ => Key::General,
    }
}

impl ActionPolicies {
    /// The disjoint policy sets a request of this action from `principal`
    /// on `resource` can match, decided against `entities`: the general
    /// policies, those naming either entity with `==`, and those whose
    /// `in X` head names the entity itself or one of its ancestors in
    /// `entities` (a head `principal in X` is false for every other
    /// principal, without an error). Empty sets are left out.
    pub fn sets_for<'a>(
        &'a self,
        principal: &EntityUid,
        resource: &EntityUid,
        entities: &Entities,
    ) -> Vec<&'a PolicySet> {
        let mut sets: Vec<&PolicySet> = Vec::with_capacity(2);
        if !self.general.is_empty() {
            sets.push(&self.general);
        }
        sets.extend(self.resource_eq.get(resource));
        sets.extend(self.principal_eq.get(principal));
        for (map, uid) in [
            (&self.resource_in, resource),
            (&self.principal_in, principal),
        ] {
            if map.is_empty() {
                continue;
            }
            sets.extend(map.get(uid));
            if let Some(ancestors) = entities.ancestors(uid) {
                sets.extend(ancestors.filter(|a| *a != uid).filter_map(|a| map.get(a)));
            }
        }
        sets
    }
}

/// Per-action policy sets.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    by_action: HashMap<EntityUid, ActionPolicies>,
}

impl PolicyIndex {
    /// Index `policies` by the actions in `actions` (the schema's action
    /// entities, with their groups as ancestors).
    pub fn build(policies: &PolicySet, actions: &Entities) -> Self {
        let mut by_action: HashMap<EntityUid, ActionPolicies> = HashMap::new();
        for action in actions.iter() {
            let uid = action.uid();
            let ancestors: HashSet<&EntityUid> = actions
                .ancestors(&uid)
                .map(|a| a.collect())
                .unwrap_or_default();
            let mut ap = ActionPolicies {
                policies: PolicySet::new(),
                general: PolicySet::new(),
                resource_eq: HashMap::new(),
                principal_eq: HashMap::new(),
                resource_in: HashMap::new(),
                principal_in: HashMap::new(),
                literals: Vec::new(),
                contexts: Cache::new(CONTEXT_MEMO_ENTRIES),
            };
            for policy in policies.policies() {
                let matches = match policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == uid,
                    ActionConstraint::In(groups) => {
                        groups.iter().any(|g| *g == uid || ancestors.contains(g))
                    }
                };
                if !matches {
                    continue;
                }
                // Ids are unique in `policies`, so adding cannot fail.
                ap.policies
                    .add(policy.clone())
                    .expect("policy ids are unique");
                ap.literals.extend(policy.entity_literals());
                let set = match key_of(policy) {
                    Key::ResourceEq(r) => ap.resource_eq.entry(r).or_default(),
                    Key::PrincipalEq(p) => ap.principal_eq.entry(p).or_default(),
                    Key::ResourceIn(r) => ap.resource_in.entry(r).or_default(),
                    Key::PrincipalIn(p) => ap.principal_in.entry(p).or_default(),
                    Key::General => &mut ap.general,
                };
                set.add(policy.clone()).expect("policy ids are unique");
            }
            ap.literals.sort_by_key(|u| u.to_string());
            ap.literals.dedup();
            by_action.insert(uid, ap);
        }
        PolicyIndex { by_action }
    }

    /// The policies that can match `action`, or `None` for an action the
    /// schema does not declare (the caller then evaluates the whole set).
    pub fn for_action(&self, action: &EntityUid) -> Option<&ActionPolicies> {
        self.by_action.get(action)
    }

    /// How many policies a request for `action` evaluates at most.
    pub fn len_for(&self, action: &EntityUid) -> Option<usize> {
        self.for_action(action)
            .map(|s| s.policies.policies().count())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    fn ids(set: &PolicySet) -> Vec<String> {
        let mut v: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn requests_get_general_policies_plus_those_naming_their_entities() {
        // policy0 .. policy7, in order.
        let policies = PolicySet::from_str(
            r#"
            permit(principal, action == Action::"read", resource);
            permit(principal in Group::"g", action, resource);
            permit(principal == User::"alice", action == Action::"read", resource);
            forbid(principal, action == Action::"read", resource == Doc::"1");
            permit(principal == User::"alice", action, resource == Doc::"2");
            permit(principal, action == Action::"write", resource);
            permit(principal is User in Group::"h", action, resource in Folder::"f");
            permit(principal is User, action, resource is Doc);
            "#,
        )
        .unwrap();
        let actions = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Action", "id": "write"}, "attrs": {}, "parents": []},
            ]),
            None,
        )
        .unwrap();
        let facts = Entities::from_json_value(
            serde_json::json!([
                {"uid": {"type": "User", "id": "carl"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]},
                {"uid": {"type": "Group", "id": "g"}, "attrs": {}, "parents": [{"type": "Group", "id": "h"}]},
                {"uid": {"type": "Doc", "id": "3"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f"}]},
            ]),
            None,
        )
        .unwrap();
        let index = PolicyIndex::build(&policies, &actions);
        let read = index.for_action(&uid(r#"Action::"read""#)).unwrap();
        assert_eq!(read.policies.policies().count(), 7);
        let set = |p: &str, r: &str| {
            let sets = read.sets_for(&uid(p), &uid(r), &facts);
            let mut v: Vec<String> = sets.iter().flat_map(|s| ids(s)).collect();
            let n = v.len();
            v.sort();
            v.dedup();
            assert_eq!(v.len(), n, "the sets are disjoint");
            v
        };
        assert_eq!(set(r#"User::"bob""#, r#"Doc::"9""#), ["policy0", "policy7"]);
        assert_eq!(
            set(r#"User::"alice""#, r#"Doc::"9""#),
            ["policy0", "policy2", "policy7"]
        );
        assert_eq!(
            set(r#"User::"bob""#, r#"Doc::"1""#),
            ["policy0", "policy3", "policy7"]
        );
        assert_eq!(
            set(r#"User::"bob""#, r#"Doc::"2""#),
            ["policy0", "policy4", "policy7"]
        );
        // Keyed by both sides: both sets.
        assert_eq!(
            set(r#"User::"alice""#, r#"Doc::"1""#),
            ["policy0", "policy2", "policy3", "policy7"]
        );
        // `in` heads through the entity itself and its ancestors: carl is in
        // g and (through g) in h; Doc 3 is in folder f.
        assert_eq!(
            set(r#"User::"carl""#, r#"Doc::"9""#),
            ["policy0", "policy1", "policy7"]
        );
        assert_eq!(
            set(r#"Group::"g""#, r#"Doc::"9""#),
            ["policy0", "policy1", "policy7"]
        );
        assert_eq!(
            set(r#"User::"carl""#, r#"Doc::"3""#),
            ["policy0", "policy1", "policy6", "policy7"]
        );
        // Keyed by the resource side first: policy6 is looked up through
        // Doc 3's folder, whoever asks.
        assert_eq!(
            set(r#"User::"bob""#, r#"Doc::"3""#),
            ["policy0", "policy6", "policy7"]
        );
        assert_eq!(index.len_for(&uid(r#"Action::"write""#)), Some(5));
    }
}

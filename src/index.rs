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

use std::borrow::Cow;
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
    /// The policies without `principal ==` or `resource ==` in their head.
    general: PolicySet,
    /// `general` plus the policies whose head says `resource == uid`.
    by_resource: HashMap<EntityUid, PolicySet>,
    /// `general` plus the policies whose head says `principal == uid` (and
    /// no `resource ==`).
    by_principal: HashMap<EntityUid, PolicySet>,
    /// Entity literals of these policies (sorted, unique): a request-scoped
    /// slice of the facts includes them.
    pub literals: Vec<EntityUid>,
    /// Context JSON text -> the context Cedar parsed from it for this action
    /// (valid ones only; bounded, least recently used evicted).
    pub contexts: Cache<String, Context>,
}

impl ActionPolicies {
    /// The policies a request of this action from `principal` on `resource`
    /// can match: its general policies and those naming either entity.
    pub fn for_request(&self, principal: &EntityUid, resource: &EntityUid) -> Cow<'_, PolicySet> {
        match (
            self.by_principal.get(principal),
            self.by_resource.get(resource),
        ) {
            (None, None) => Cow::Borrowed(&self.general),
            (Some(p), None) => Cow::Borrowed(p),
            (None, Some(r)) => Cow::Borrowed(r),
            (Some(p), Some(r)) => {
                // Both name policies: the union (rare; built for this request).
                let mut both = r.clone();
                for policy in p.policies() {
                    if both.policy(policy.id()).is_none() {
                        both.add(policy.clone()).expect("ids checked");
                    }
                }
                Cow::Owned(both)
            }
        }
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
            let mut set = PolicySet::new();
            let mut literals = Vec::new();
            let mut general = PolicySet::new();
            let mut resource_keyed: HashMap<EntityUid, Vec<&Policy>> = HashMap::new();
            let mut principal_keyed: HashMap<EntityUid, Vec<&Policy>> = HashMap::new();
            for policy in policies.policies() {
                let matches = match policy.action_constraint() {
                    ActionConstraint::Any => true,
                    ActionConstraint::Eq(a) => a == uid,
                    ActionConstraint::In(groups) => {
                        groups.iter().any(|g| *g == uid || ancestors.contains(g))
                    }
                };
                if matches {
                    // Ids are unique in `policies`, so adding cannot fail.
                    set.add(policy.clone()).expect("policy ids are unique");
                    literals.extend(policy.entity_literals());
                    match (policy.resource_constraint(), policy.principal_constraint()) {
                        (ResourceConstraint::Eq(r), _) => {
                            resource_keyed.entry(r).or_default().push(policy)
                        }
                        (_, PrincipalConstraint::Eq(p)) => {
                            principal_keyed.entry(p).or_default().push(policy)
                        }
                        _ => {
                            general.add(policy.clone()).expect("policy ids are unique");
                        }
                    }
                }
            }
            let with_general = |keyed: HashMap<EntityUid, Vec<&Policy>>| {
                keyed
                    .into_iter()
                    .map(|(uid, extra)| {
                        let mut s = general.clone();
                        for p in extra {
                            s.add(p.clone()).expect("policy ids are unique");
                        }
                        (uid, s)
                    })
                    .collect()
            };
            let by_resource = with_general(resource_keyed);
            let by_principal = with_general(principal_keyed);
            literals.sort_by_key(|u| u.to_string());
            literals.dedup();
            by_action.insert(
                uid,
                ActionPolicies {
                    policies: set,
                    general,
                    by_resource,
                    by_principal,
                    literals,
                    contexts: Cache::new(CONTEXT_MEMO_ENTRIES),
                },
            );
        }
        PolicyIndex { by_action }
    }

    /// The policies that can match `action`, or `None` for an action the
    /// schema does not declare (the caller then evaluates the whole set).
    pub fn for_action(&self, action: &EntityUid) -> Option<&ActionPolicies> {
        self.by_action.get(action)
    }

    /// How many policies a request for `action` evaluates.
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
        // policy0 .. policy5, in order.
        let policies = PolicySet::from_str(
            r#"
            permit(principal, action == Action::"read", resource);
            permit(principal in Group::"g", action, resource);
            permit(principal == User::"alice", action == Action::"read", resource);
            forbid(principal, action == Action::"read", resource == Doc::"1");
            permit(principal == User::"alice", action, resource == Doc::"2");
            permit(principal, action == Action::"write", resource);
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
        let index = PolicyIndex::build(&policies, &actions);
        let read = index.for_action(&uid(r#"Action::"read""#)).unwrap();
        assert_eq!(read.policies.policies().count(), 5);
        let set = |p: &str, r: &str| ids(&read.for_request(&uid(p), &uid(r)));
        assert_eq!(set(r#"User::"bob""#, r#"Doc::"9""#), ["policy0", "policy1"]);
        assert_eq!(
            set(r#"User::"alice""#, r#"Doc::"9""#),
            ["policy0", "policy1", "policy2"]
        );
        assert_eq!(
            set(r#"User::"bob""#, r#"Doc::"1""#),
            ["policy0", "policy1", "policy3"]
        );
        assert_eq!(
            set(r#"User::"bob""#, r#"Doc::"2""#),
            ["policy0", "policy1", "policy4"]
        );
        // Keyed by both sides: the union.
        assert_eq!(
            set(r#"User::"alice""#, r#"Doc::"1""#),
            ["policy0", "policy1", "policy2", "policy3"]
        );
        assert_eq!(
            set(r#"User::"alice""#, r#"Doc::"2""#),
            ["policy0", "policy1", "policy2", "policy4"]
        );
        assert_eq!(index.len_for(&uid(r#"Action::"write""#)), Some(3));
    }
}

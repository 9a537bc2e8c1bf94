//! The policy index: for each action of the schema, the policies whose scope
//! can match it.
//!
//! Cedar evaluates every policy of a set for every request. A policy whose
//! action constraint does not hold for the request's action is false without
//! any error (the scope is checked before the conditions), so leaving it out
//! changes no decision, reason or error. The index is built once per snapshot
//! from the schema's action hierarchy; a request then evaluates only its
//! action's set.
//!
//! Each action also keeps a small memo of typed request contexts: Cedar
//! parses a context JSON against the action's context type the same way
//! every time, so a context seen before (most gateways send the same few)
//! is reused instead of parsed again.

use std::collections::{HashMap, HashSet};

use cedar_policy::{ActionConstraint, Context, Entities, EntityUid, PolicySet};
use moka::sync::Cache;

/// Most distinct contexts remembered per action.
const CONTEXT_MEMO_ENTRIES: u64 = 4096;
/// Contexts whose JSON text is longer than this are parsed every time.
pub const CONTEXT_MEMO_MAX_KEY: usize = 1024;

/// The policies one action can match, and the entities they name.
#[derive(Debug)]
pub struct ActionPolicies {
    pub policies: PolicySet,
    /// Entity literals of these policies (sorted, unique): a request-scoped
    /// slice of the facts includes them.
    pub literals: Vec<EntityUid>,
    /// Context JSON text -> the context Cedar parsed from it for this action
    /// (valid ones only; bounded, least recently used evicted).
    pub contexts: Cache<String, Context>,
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
                }
            }
            literals.sort_by_key(|u| u.to_string());
            literals.dedup();
            by_action.insert(
                uid,
                ActionPolicies {
                    policies: set,
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

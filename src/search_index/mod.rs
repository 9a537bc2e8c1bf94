//! The per-snapshot search index: the relations of the facts
//! ([`relations`]) and the necessary condition of every permit policy
//! ([`plan`]). Built once per snapshot by the loader, read by the search
//! queries ([`crate::search`]); it decides nothing and needs no engine.

pub mod plan;
pub mod relations;

use std::collections::HashMap;

use cedar_policy::{Effect, Entities, PolicyId, PolicySet};

use plan::Req;
pub use relations::Relations;

/// The per-snapshot search index: the relations of the facts and the
/// necessary condition of every permit policy.
#[derive(Debug, Default)]
pub struct SearchIndex {
    pub relations: Relations,
    pub(crate) plans: HashMap<PolicyId, Req>,
}

impl SearchIndex {
    /// Index `entities` and plan every permit policy of `policies`. Fails
    /// (with the reason) when the facts are too large to number.
    pub fn build(policies: &PolicySet, entities: &Entities) -> Result<Self, String> {
        let plans = policies
            .policies()
            .filter(|p| p.effect() == Effect::Permit)
            .map(|p| (p.id().clone(), plan::plan(p)))
            .collect();
        Ok(SearchIndex {
            relations: Relations::build(entities)?,
            plans,
        })
    }
}

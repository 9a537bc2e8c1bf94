//! Coverage: the policies that determined no decision of a run, and the
//! actions no test exercises.

use std::collections::HashSet;
use std::path::PathBuf;

use cedar_policy::{EntityUid, PolicyId};

use super::run::*;
use crate::names::EntityRef;
use crate::snapshot::Snapshot;

/// A policy that determined no decision of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusedPolicy {
    pub id: String,
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
}

/// What a run did not exercise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Policies of the snapshot that appear in no decision's reasons.
    pub unused_policies: Vec<UnusedPolicy>,
    /// Actions of the schema (that apply to a principal) no test requests.
    pub unexercised_actions: Vec<String>,
    /// How many policies and requestable actions there are.
    pub policies: usize,
    pub actions: usize,
}

/// The bare id of an action when it names it alone, else its full name.
fn action_name(snap: &Snapshot, uid: &EntityUid) -> String {
    let id = uid.id().unescaped().to_string();
    match snap.names.resolve_action(&EntityRef::Text(id.clone())) {
        Ok(u) if u == *uid => id,
        _ => uid.to_string(),
    }
}

/// What the run left unexercised in `snap`'s policies and schema.
pub fn coverage(report: &Report, snap: &Snapshot) -> Coverage {
    let used: HashSet<&str> = report
        .results()
        .flat_map(|(_, r)| r.outcome.reasons.iter().map(String::as_str))
        .collect();
    let mut ids: Vec<String> = snap
        .policies
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    ids.sort();
    let unused_policies = ids
        .iter()
        .filter(|id| !used.contains(id.as_str()))
        .map(|id| {
            let origin = snap.origins.get(&PolicyId::new(id));
            UnusedPolicy {
                id: id.clone(),
                file: origin.map(|o| o.file.clone()),
                line: origin.and_then(|o| o.line),
            }
        })
        .collect();
    let exercised: HashSet<&EntityUid> =
        report.results().map(|(_, r)| &r.spec.action_uid).collect();
    let requestable: Vec<&EntityUid> = snap
        .names
        .actions()
        .into_iter()
        .filter(|a| {
            snap.schema
                .principals_for_action(a)
                .is_some_and(|mut p| p.next().is_some())
        })
        .collect();
    let unexercised_actions = requestable
        .iter()
        .filter(|a| !exercised.contains(*a))
        .map(|a| action_name(snap, a))
        .collect();
    Coverage {
        unused_policies,
        unexercised_actions,
        policies: ids.len(),
        actions: requestable.len(),
    }
}

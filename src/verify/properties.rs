//! The properties file (YAML): the model's properties, each a verb over a
//! scope of requests and a selection of policies, read and checked against
//! the snapshot's schema and policies.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{PolicyId, PolicySet, RequestEnv, ValidationMode, Validator};
use serde::{Deserialize, Serialize};

use crate::names::EntityRef;
use crate::snapshot::Snapshot;
use crate::symbolic::{self};

/// The name of the built-in never-errors check.
pub const NEVER_ERRORS: &str = "never-errors";

/// How a property relates the policies under test to its reference set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    NeverAllows,
    MustImply,
    MustAllow,
    MustEqual,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::NeverAllows => "never_allows",
            Verb::MustImply => "must_imply",
            Verb::MustAllow => "must_allow",
            Verb::MustEqual => "must_equal",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    properties: Vec<RawProperty>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProperty {
    name: String,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    description: String,
    policies: Option<Vec<String>>,
    scope: Option<RawScope>,
    never_allows: Option<String>,
    must_imply: Option<String>,
    must_allow: Option<String>,
    must_equal: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    principal: Option<Vec<String>>,
    action: Option<Vec<String>>,
    resource: Option<Vec<String>>,
}

/// One property, validated against a snapshot.
#[derive(Debug)]
pub struct Property {
    pub name: String,
    pub rules: Vec<String>,
    pub description: String,
    pub verb: Verb,
    /// The reference policies' text, `{action}` placeholders included.
    pub reference_text: String,
    /// The policies under test: `None` for the whole model.
    pub subject: Option<Vec<PolicyId>>,
    /// The environments the property is checked in.
    pub envs: BTreeSet<RequestEnv>,
}

impl Property {
    /// `name (R1, R2)`.
    pub fn label(&self) -> String {
        label(&self.name, &self.rules)
    }

    /// The reference set for one environment (`{action}` replaced).
    pub(super) fn reference_for(&self, env: &RequestEnv) -> Result<PolicySet, String> {
        let id = env.action().id().unescaped().to_string();
        let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
        let text = self.reference_text.replace("{action}", &escaped);
        PolicySet::from_str(&text).map_err(|e| crate::diag::one_line(&e))
    }
}

pub(super) fn label(name: &str, rules: &[String]) -> String {
    if rules.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({})", rules.join(", "))
    }
}

/// Read and validate a properties file against the snapshot's schema and
/// policies. Every problem is reported, each naming the file and property.
pub fn read_properties(path: &Path, snap: &Snapshot) -> Result<Vec<Property>, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    parse_properties(path, &text, snap)
}

/// [`read_properties`] on a text already in memory.
pub fn parse_properties(
    path: &Path,
    text: &str,
    snap: &Snapshot,
) -> Result<Vec<Property>, Vec<String>> {
    let raw: RawFile = serde_saphyr::from_str(text)
        .map_err(|e| vec![format!("{}: invalid properties file: {e}", path.display())])?;
    let all_envs = symbolic::request_envs(&snap.schema);
    let validator = Validator::new(snap.schema.clone());
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for p in raw.properties {
        let at = format!("{}: property `{}`", path.display(), p.name);
        if p.name.trim().is_empty() || p.name == NEVER_ERRORS {
            errors.push(format!(
                "{at}: a property needs a name other than `{NEVER_ERRORS}`"
            ));
            continue;
        }
        if !seen.insert(p.name.clone()) {
            errors.push(format!("{at}: the name is used twice"));
            continue;
        }
        let verbs: Vec<(Verb, String)> = [
            (Verb::NeverAllows, p.never_allows),
            (Verb::MustImply, p.must_imply),
            (Verb::MustAllow, p.must_allow),
            (Verb::MustEqual, p.must_equal),
        ]
        .into_iter()
        .filter_map(|(v, t)| t.map(|t| (v, t)))
        .collect();
        let mut verbs = verbs.into_iter();
        let (Some((verb, reference_text)), None) = (verbs.next(), verbs.next()) else {
            errors.push(format!(
                "{at}: give exactly one of never_allows, must_imply, must_allow, must_equal"
            ));
            continue;
        };
        let reference = match PolicySet::from_str(&reference_text) {
            Ok(r) if r.policies().next().is_some() && r.templates().next().is_none() => r,
            Ok(_) => {
                errors.push(format!(
                    "{at}: {}: give one or more static Cedar policies",
                    verb.as_str()
                ));
                continue;
            }
            Err(e) => {
                errors.push(format!(
                    "{at}: {}: {}",
                    verb.as_str(),
                    crate::diag::one_line(&e)
                ));
                continue;
            }
        };
        let validation = validator.validate(&reference, ValidationMode::Strict);
        let invalid: Vec<String> = validation
            .validation_errors()
            .map(|e| crate::diag::one_line(e))
            .collect();
        if !invalid.is_empty() {
            errors.push(format!(
                "{at}: {}: not valid for the schema: {}",
                verb.as_str(),
                invalid.join("; ")
            ));
            continue;
        }
        let subject = match &p.policies {
            None => None,
            Some(patterns) => match select_policies(&snap.policies, patterns) {
                Ok(ids) => Some(ids),
                Err(e) => {
                    errors.push(format!("{at}: policies: {e}"));
                    continue;
                }
            },
        };
        let envs = match &p.scope {
            Some(scope) => match scope_envs(snap, &all_envs, scope) {
                Ok(envs) => envs,
                Err(e) => {
                    errors.push(format!("{at}: scope: {e}"));
                    continue;
                }
            },
            None => reference
                .policies()
                .flat_map(|r| r.get_valid_request_envs(&snap.schema))
                .collect(),
        };
        if envs.is_empty() {
            errors.push(format!(
                "{at}: applies to no request environment of the schema (check its scope)"
            ));
            continue;
        }
        out.push(Property {
            name: p.name,
            rules: p.rules,
            description: p.description,
            verb,
            reference_text,
            subject,
            envs,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The ids of the policies matching `patterns` (`id`, or `prefix*`); each
/// pattern must match at least one policy.
pub(super) fn select_policies(
    policies: &PolicySet,
    patterns: &[String],
) -> Result<Vec<PolicyId>, String> {
    let mut ids = BTreeSet::new();
    for pattern in patterns {
        let matches: Vec<PolicyId> = policies
            .policies()
            .map(|p| p.id().clone())
            .filter(|id| match pattern.strip_suffix('*') {
                Some(prefix) => id.to_string().starts_with(prefix),
                None => id.to_string() == *pattern,
            })
            .collect();
        if matches.is_empty() {
            return Err(format!("`{pattern}` matches no policy"));
        }
        ids.extend(matches.into_iter().map(|id| id.to_string()));
    }
    Ok(ids.into_iter().map(PolicyId::new).collect())
}

pub(super) fn scope_envs(
    snap: &Snapshot,
    all: &[RequestEnv],
    scope: &RawScope,
) -> Result<BTreeSet<RequestEnv>, String> {
    let types = |names: &Option<Vec<String>>| -> Result<Option<Vec<String>>, String> {
        names
            .as_ref()
            .map(|ns| {
                ns.iter()
                    .map(|n| {
                        snap.names
                            .resolve_type(n)
                            .map(|t| t.to_string())
                            .map_err(|e| e.to_string())
                    })
                    .collect()
            })
            .transpose()
    };
    let principals = types(&scope.principal)?;
    let resources = types(&scope.resource)?;
    let actions = scope
        .action
        .as_ref()
        .map(|ns| {
            ns.iter()
                .map(|n| {
                    snap.names
                        .resolve_action(&EntityRef::Text(n.clone()))
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let action_entities = snap
        .schema
        .action_entities()
        .map_err(|e| crate::diag::one_line(&e))?;
    let in_group = |action: &cedar_policy::EntityUid, group: &cedar_policy::EntityUid| {
        action == group
            || action_entities
                .ancestors(action)
                .is_some_and(|mut a| a.any(|g| g == group))
    };
    Ok(all
        .iter()
        .filter(|env| {
            principals
                .as_ref()
                .is_none_or(|ps| ps.contains(&env.principal().to_string()))
                && resources
                    .as_ref()
                    .is_none_or(|rs| rs.contains(&env.resource().to_string()))
                && actions
                    .as_ref()
                    .is_none_or(|acts| acts.iter().any(|g| in_group(env.action(), g)))
        })
        .cloned()
        .collect())
}

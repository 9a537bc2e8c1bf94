//! `orgwarden verify`: proofs, for every request environment of the schema
//! (principal type x action x resource type), that
//!
//! 1. every policy never errors on a well-formed request (`never-errors`), and
//! 2. the declared properties of the model hold for *every* entity store,
//!    not only the loaded one: the load-time checks are not assumed.
//!
//! This module owns the properties file format and the run; the solver,
//! the worker pool and counterexamples live in [`crate::symbolic`].
//!
//! # The properties file
//!
//! YAML (`properties/properties.yaml` by default), a list of properties, each
//! a *verb* and a reference policy set written in Cedar:
//!
//! ```yaml
//! properties:
//!   - name: tenant-isolation
//!     rules: [R14]
//!     description: A principal outside a workspace's organization gets nothing on it.
//!     never_allows: |
//!       permit (principal, action in Prefect::Action::"workspace", resource is Prefect::Workspace)
//!       when { resource has org && !(principal in resource.org) };
//! ```
//!
//! With *S* the policies under test (the whole model, or the policies named
//! by `policies:`, a list of `@id`s where a trailing `*` matches a prefix)
//! and *R* the reference set, the verbs are:
//!
//! | verb | holds when | counterexample |
//! |------|------------|----------------|
//! | `never_allows` | no request is allowed by both *S* and *R* | allowed by both |
//! | `must_imply` | every request *S* allows, *R* allows | allowed by *S*, denied by *R* |
//! | `must_allow` | every request *R* allows, *S* allows | allowed by *R*, denied by *S* |
//! | `must_equal` | *S* and *R* decide every request alike | decided differently |
//!
//! A property is checked in the request environments its reference policies
//! apply to (those in which one of them typechecks), or, when `scope:` is
//! given, in the environments it selects (`principal`, `action` (an action or
//! an action group), `resource`: lists; a missing list selects all). In the
//! reference text, `{action}` stands for the environment's action id, so that
//! `Prefect::Action::"{action}"` names the environment's action.
//!
//! # Output and exit codes
//!
//! One line per property and environment (`proved`, `counterexample`,
//! `unknown` with the solver's reason, or `error`). A counterexample comes
//! with its request and its entity store (minimized, in Cedar JSON), replayed
//! through the orgwarden engine to confirm it. Exit code 0 when everything is
//! proved, 1 when something is not, 2 when the inputs are invalid or the
//! solver cannot be run.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use cedar_policy::{
    Decision as CedarDecision, Policy, PolicyId, PolicySet, RequestEnv, ValidationMode, Validator,
};
use cedar_policy_symcc::{CompiledPolicy, CompiledPolicySet};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{Decision, Outcome};
use crate::load::{self, Paths, TextFile};
use crate::names::EntityRef;
use crate::snapshot::{FileKind, Snapshot};
use crate::symbolic::{self, Pool, Question, Verdict, Witness, Worker};

/// Exit code when everything is proved.
pub const EXIT_PROVED: u8 = 0;
/// Exit code when a check found a counterexample, or could not decide.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the inputs are invalid or the solver cannot be run.
pub const EXIT_INVALID: u8 = 2;

/// The name of the built-in never-errors check.
pub const NEVER_ERRORS: &str = "never-errors";

// ---------------------------------------------------------------------------
// The properties file
// ---------------------------------------------------------------------------

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
struct RawFile {
    properties: Vec<RawProperty>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProperty {
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
struct RawScope {
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
    fn reference_for(&self, env: &RequestEnv) -> Result<PolicySet, String> {
        let id = env.action().id().unescaped().to_string();
        let escaped = id.replace('\\', "\\\\").replace('"', "\\\"");
        let text = self.reference_text.replace("{action}", &escaped);
        PolicySet::from_str(&text).map_err(|e| crate::diag::one_line(&e))
    }
}

fn label(name: &str, rules: &[String]) -> String {
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
fn select_policies(policies: &PolicySet, patterns: &[String]) -> Result<Vec<PolicyId>, String> {
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

fn scope_envs(
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

// ---------------------------------------------------------------------------
// Running the checks
// ---------------------------------------------------------------------------

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Proved,
    Counterexample,
    Unknown,
    Error,
}

/// A counterexample's replay through the orgwarden engine.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// The engine's decision on the policies under test.
    pub outcome: Outcome,
    /// The reference set's decision, for properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<Decision>,
    /// Does the replay show the property failing, as the solver said?
    pub confirmed: bool,
}

/// One property in one environment.
#[derive(Debug, Clone)]
pub struct Check {
    pub property: String,
    pub rules: Vec<String>,
    pub env: RequestEnv,
    pub status: Status,
    /// The solver's reason (unknown), the error, or the failing policies.
    pub detail: Option<String>,
    pub witness: Option<Witness>,
    pub replay: Option<Result<Replay, String>>,
}

impl Check {
    fn new(property: &str, rules: &[String], env: &RequestEnv) -> Self {
        Check {
            property: property.to_string(),
            rules: rules.to_vec(),
            env: env.clone(),
            status: Status::Proved,
            detail: None,
            witness: None,
            replay: None,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "property": self.property,
            "rules": self.rules,
            "environment": symbolic::env_json(&self.env),
            "status": self.status,
        });
        if let Some(d) = &self.detail {
            v["detail"] = json!(d);
        }
        if let Some(w) = &self.witness {
            v["counterexample"] = w.to_json();
        }
        match &self.replay {
            Some(Ok(r)) => v["replay"] = json!(r),
            Some(Err(e)) => v["replay"] = json!({"error": e}),
            None => {}
        }
        v
    }
}

/// Everything `verify` found.
#[derive(Debug)]
pub struct Report {
    pub checks: Vec<Check>,
    pub solver: String,
    pub properties: usize,
    pub environments: usize,
    pub elapsed: std::time::Duration,
    pub workers: usize,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    pub fn all_proved(&self) -> bool {
        self.count(Status::Proved) == self.checks.len()
    }
}

/// The policies a property tests, as a snapshot the engine can decide with.
struct Subject {
    snapshot: Option<Snapshot>,
    policies: Option<PolicySet>,
}

/// Run every check: `never-errors` and each property, in every environment.
pub fn run(
    snap: &Snapshot,
    schema_files: &[TextFile],
    properties: &[Property],
    pool: &Pool,
    solver: String,
) -> Result<Report, String> {
    let started = Instant::now();
    let envs = symbolic::request_envs(&snap.schema);
    // Which policies can apply in which environment (the others cannot error).
    let mut relevant: HashMap<RequestEnv, Vec<&Policy>> = HashMap::new();
    for p in snap.policies.policies() {
        for env in p.get_valid_request_envs(&snap.schema) {
            relevant.entry(env).or_default().push(p);
        }
    }
    // The policies under test of properties that name a subset of the model.
    let mut subjects: Vec<Subject> = Vec::with_capacity(properties.len());
    for prop in properties {
        subjects.push(match &prop.subject {
            None => Subject {
                snapshot: None,
                policies: None,
            },
            Some(ids) => {
                let (snapshot, policies) = subset(snap, schema_files, ids)
                    .map_err(|e| format!("property `{}`: {e}", prop.name))?;
                Subject {
                    snapshot: Some(snapshot),
                    policies: Some(policies),
                }
            }
        });
    }
    let jobs: Vec<&RequestEnv> = envs.iter().collect();
    let per_env = pool.run(jobs, |worker, env| {
        let mut checks = Vec::new();
        let policies = relevant.get(env).map(Vec::as_slice).unwrap_or(&[]);
        checks.push(never_errors(worker, snap, env, policies));
        let mut model: Option<Result<CompiledPolicySet, String>> = None;
        for (prop, subject) in properties.iter().zip(&subjects) {
            if prop.envs.contains(env) {
                checks.push(check_property(worker, snap, env, prop, subject, &mut model));
            }
        }
        checks
    })?;
    Ok(Report {
        checks: per_env.into_iter().flatten().collect(),
        solver,
        properties: properties.len(),
        environments: envs.len(),
        elapsed: started.elapsed(),
        workers: pool.workers,
    })
}

/// A snapshot holding only the policies `ids` of `snap` (no entities).
fn subset(
    snap: &Snapshot,
    schema_files: &[TextFile],
    ids: &[PolicyId],
) -> Result<(Snapshot, PolicySet), String> {
    let mut set = PolicySet::new();
    let mut text = String::new();
    for id in ids {
        let p = snap
            .policies
            .policy(id)
            .ok_or_else(|| format!("no policy `{id}`"))?;
        set.add(p.clone()).map_err(|e| crate::diag::one_line(&e))?;
        text.push_str(&format!("@id({})\n", json!(id.to_string())));
        text.push_str(&policy_text_without_id(p));
        text.push_str("\n\n");
    }
    let file = TextFile {
        path: PathBuf::from("<policies under test>"),
        text,
    };
    let snapshot = load::build(schema_files, &[file], &[]).map_err(|d| d.to_string())?;
    Ok((snapshot, set))
}

/// A policy's Cedar text without its `@id` annotation (re-added by the caller).
fn policy_text_without_id(p: &Policy) -> String {
    let text = p.to_string();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("@id(") && t.trim_end().ends_with(')') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn record(check: &mut Check, verdict: Verdict) -> Option<Witness> {
    match verdict {
        Verdict::Proved => None,
        Verdict::Counterexample(env) => {
            check.status = Status::Counterexample;
            Some(Witness::from_env(&env))
        }
        Verdict::Unknown(reason) => {
            check.status = Status::Unknown;
            check.detail = Some(format!("solver: {reason}"));
            None
        }
        Verdict::Error(e) => {
            check.status = Status::Error;
            check.detail = Some(e);
            None
        }
    }
}

fn never_errors(
    worker: &mut Worker,
    snap: &Snapshot,
    env: &RequestEnv,
    policies: &[&Policy],
) -> Check {
    let mut check = Check::new(NEVER_ERRORS, &[], env);
    let mut failing = Vec::new();
    let mut undecided = Vec::new();
    for p in policies {
        let compiled = match CompiledPolicy::compile(p, env, &snap.schema) {
            Ok(c) => c,
            Err(e) => {
                undecided.push(format!(
                    "policy `{}`: {}",
                    p.id(),
                    crate::diag::one_line(&e)
                ));
                check.status = Status::Error;
                continue;
            }
        };
        let mut one = Check::new(NEVER_ERRORS, &[], env);
        let witness = record(
            &mut one,
            worker.check(symbolic::Question::Errors(&compiled)),
        );
        match one.status {
            Status::Counterexample => {
                failing.push(p.id().to_string());
                if check.witness.is_none() {
                    let id = format!("`{}`", p.id());
                    let w = witness.map(|w| {
                        let original = symbolic::replay(snap, &w)
                            .map(|o| o.errors)
                            .unwrap_or_default();
                        w.minimize(|w| {
                            symbolic::replay(snap, w).is_ok_and(|o| {
                                o.errors.iter().any(|e| e.contains(&id))
                                    && symbolic::errors_within(&o, &original)
                            })
                        })
                    });
                    check.replay = w.as_ref().map(|w| {
                        symbolic::replay(snap, w).map(|outcome| Replay {
                            confirmed: outcome.errors.iter().any(|e| e.contains(&id)),
                            outcome,
                            reference: None,
                        })
                    });
                    check.witness = w;
                }
            }
            Status::Unknown | Status::Error => {
                undecided.push(format!(
                    "policy `{}`: {}",
                    p.id(),
                    one.detail.unwrap_or_default()
                ));
                if check.status == Status::Proved {
                    check.status = one.status;
                }
            }
            Status::Proved => {}
        }
    }
    if !failing.is_empty() {
        check.status = Status::Counterexample;
        check.detail = Some(format!("can error: {}", failing.join(", ")));
    } else if !undecided.is_empty() {
        check.detail = Some(undecided.join("; "));
    }
    check
}

fn check_property(
    worker: &mut Worker,
    snap: &Snapshot,
    env: &RequestEnv,
    prop: &Property,
    subject: &Subject,
    model: &mut Option<Result<CompiledPolicySet, String>>,
) -> Check {
    let mut check = Check::new(&prop.name, &prop.rules, env);
    let fail = |mut check: Check, e: String| {
        check.status = Status::Error;
        check.detail = Some(e);
        check
    };
    let reference = match prop.reference_for(env) {
        Ok(r) => r,
        Err(e) => return fail(check, e),
    };
    let compiled_ref = match CompiledPolicySet::compile(&reference, env, &snap.schema) {
        Ok(c) => c,
        Err(e) => return fail(check, crate::diag::one_line(&e)),
    };
    let own;
    let compiled_subject = match &subject.policies {
        Some(policies) => {
            own = CompiledPolicySet::compile(policies, env, &snap.schema)
                .map_err(|e| crate::diag::one_line(&e));
            &own
        }
        None => model.get_or_insert_with(|| {
            CompiledPolicySet::compile(&snap.policies, env, &snap.schema)
                .map_err(|e| crate::diag::one_line(&e))
        }),
    };
    let compiled_subject = match compiled_subject {
        Ok(c) => c,
        Err(e) => return fail(check, e.clone()),
    };
    let question = match prop.verb {
        Verb::NeverAllows => Question::AllowedByBoth(compiled_subject, &compiled_ref),
        Verb::MustImply => Question::AllowedByFirstOnly(compiled_subject, &compiled_ref),
        Verb::MustAllow => Question::AllowedByFirstOnly(&compiled_ref, compiled_subject),
        Verb::MustEqual => Question::DecidedDifferently(compiled_subject, &compiled_ref),
    };
    let Some(witness) = record(&mut check, worker.check(question)) else {
        return check;
    };
    let engine_snap = subject.snapshot.as_ref().unwrap_or(snap);
    let decide = |w: &Witness| -> Result<(Outcome, Decision), String> {
        let outcome = symbolic::replay(engine_snap, w)?;
        let reference = match symbolic::decide_plain(&snap.schema, &reference, w)? {
            CedarDecision::Allow => Decision::Allow,
            CedarDecision::Deny => Decision::Deny,
        };
        Ok((outcome, reference))
    };
    let violated = |outcome: &Outcome, reference: Decision| -> bool {
        let s = outcome.decision;
        match prop.verb {
            Verb::NeverAllows => s == Decision::Allow && reference == Decision::Allow,
            Verb::MustImply => s == Decision::Allow && reference == Decision::Deny,
            Verb::MustAllow => reference == Decision::Allow && s == Decision::Deny,
            Verb::MustEqual => s != reference,
        }
    };
    // Minimize without introducing evaluation errors the solver's store had not.
    let original = decide(&witness).map(|(o, _)| o.errors).unwrap_or_default();
    let witness = witness.minimize(|w| {
        decide(w).is_ok_and(|(o, r)| violated(&o, r) && symbolic::errors_within(&o, &original))
    });
    check.replay = Some(decide(&witness).map(|(outcome, reference)| Replay {
        confirmed: violated(&outcome, reference),
        outcome,
        reference: Some(reference),
    }));
    check.witness = Some(witness);
    check
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Proved => "proved",
        Status::Counterexample => "counterexample",
        Status::Unknown => "unknown",
        Status::Error => "error",
    }
}

/// The text report: one line per check, details under failures, a summary.
pub fn render_text(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for c in &report.checks {
        write!(
            out,
            "{:<15} {} {}",
            status_word(c.status),
            label(&c.property, &c.rules),
            symbolic::env_label(&c.env)
        )?;
        if let Some(d) = &c.detail {
            write!(out, ": {d}")?;
        }
        writeln!(out)?;
        if let Some(w) = &c.witness {
            writeln!(
                out,
                "    request:  {}",
                symbolic::compact(&w.request_json())
            )?;
            writeln!(
                out,
                "    entities: {}",
                symbolic::compact(&w.entities_json())
            )?;
        }
        match &c.replay {
            Some(Ok(r)) => {
                let reference = r
                    .reference
                    .map(|d| format!("; reference: {d:?}"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "    replay:   orgwarden engine: {}{reference} -> {}",
                    symbolic::describe(&r.outcome),
                    if r.confirmed {
                        "confirmed"
                    } else {
                        "NOT confirmed (solver and engine disagree)"
                    }
                )?;
            }
            Some(Err(e)) => writeln!(out, "    replay:   failed: {e}")?,
            None => {}
        }
    }
    writeln!(
        out,
        "verify: {} checks ({} properties and {NEVER_ERRORS} over {} request environments): \
         {} proved, {} counterexample(s), {} unknown, {} error(s) in {:.1}s ({} solver process(es), {})",
        report.checks.len(),
        report.properties,
        report.environments,
        report.count(Status::Proved),
        report.count(Status::Counterexample),
        report.count(Status::Unknown),
        report.count(Status::Error),
        report.elapsed.as_secs_f64(),
        report.workers,
        report.solver,
    )
}

/// The JSON report.
pub fn render_json(report: &Report) -> Value {
    json!({
        "result": if report.all_proved() { "proved" } else { "failed" },
        "solver": report.solver,
        "elapsed_ms": report.elapsed.as_millis() as u64,
        "summary": {
            "checks": report.checks.len(),
            "properties": report.properties,
            "environments": report.environments,
            "proved": report.count(Status::Proved),
            "counterexamples": report.count(Status::Counterexample),
            "unknown": report.count(Status::Unknown),
            "errors": report.count(Status::Error),
        },
        "checks": report.checks.iter().map(Check::to_json).collect::<Vec<_>>(),
    })
}

/// Output formats of `verify` and `diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The command: load, read the properties, check, report. Returns the exit code.
pub fn execute(paths: &Paths, properties_path: Option<&Path>, format: Format, pool: &Pool) -> u8 {
    let snap = match load::load(paths) {
        Ok(s) => s,
        Err(diags) => {
            eprintln!("{diags}");
            return EXIT_INVALID;
        }
    };
    let schema_files = match load::read_texts(&paths.schema, FileKind::Schema) {
        Ok(f) => f,
        Err(diags) => {
            eprintln!("{diags}");
            return EXIT_INVALID;
        }
    };
    let default_path = PathBuf::from(DEFAULT_PROPERTIES);
    let properties = match properties_path {
        Some(p) => read_properties(p, &snap),
        None if default_path.exists() => read_properties(&default_path, &snap),
        None => {
            eprintln!(
                "note: no properties file at {DEFAULT_PROPERTIES}: checking `{NEVER_ERRORS}` only"
            );
            Ok(Vec::new())
        }
    };
    let properties = match properties {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return EXIT_INVALID;
        }
    };
    let solver = match symbolic::solver_version() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let report = match run(&snap, &schema_files, &properties, pool, solver) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = match format {
        Format::Text => render_text(&report, &mut out),
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&render_json(&report)).unwrap_or_default()
        ),
    };
    if written.is_err() {
        return EXIT_INVALID;
    }
    if report.all_proved() {
        EXIT_PROVED
    } else {
        EXIT_FAILED
    }
}

/// Where `verify` looks for properties when `--properties` is not given.
pub const DEFAULT_PROPERTIES: &str = "properties/properties.yaml";

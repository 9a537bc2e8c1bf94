//! The proof run: every property, and `never-errors` for every request
//! environment, compiled by `cedar-policy-symcc` and decided by the solver,
//! into a [`Report`] (a counterexample is replayed through the engine).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use cedar_policy::{Decision as CedarDecision, Policy, PolicyId, PolicySet, RequestEnv};
use cedar_policy_symcc::{CompiledPolicy, CompiledPolicySet};
use serde::Serialize;
use serde_json::{Value, json};

use super::properties::{NEVER_ERRORS, Property, Verb};
use crate::engine::{Decision, Outcome};
use crate::load::{self, TextFile};
use crate::snapshot::Snapshot;
use crate::symbolic::{self, Pool, Question, Verdict, Witness, Worker};

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
pub(super) struct Subject {
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
pub(super) fn subset(
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
pub(super) fn policy_text_without_id(p: &Policy) -> String {
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

pub(super) fn record(check: &mut Check, verdict: Verdict) -> Option<Witness> {
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

pub(super) fn never_errors(
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

pub(super) fn check_property(
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

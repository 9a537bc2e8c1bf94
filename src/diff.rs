//! `orgwarden diff OLD NEW`: the semantic difference between two policy sets,
//! per request environment of the schema, for every entity store.
//!
//! For each environment (principal type x action x resource type) two
//! questions go to the solver ([`crate::symbolic`]): does NEW allow a request
//! that OLD denies (NEW is *more permissive*), and does OLD allow a request
//! that NEW denies (NEW is *more restrictive*)? The environment is
//! `equivalent` when neither happens, `more_permissive` or
//! `more_restrictive` when one does, `both` when both do. Each direction
//! that changed comes with a witness (a request and a minimized entity
//! store), replayed through the orgwarden engine against both sets.
//!
//! Exit codes: 0 when the sets are equivalent everywhere, 1 when they differ
//! somewhere, 2 on an error (invalid input, no solver, or a question the
//! solver could not decide, since then equivalence is not established).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use cedar_policy::RequestEnv;
use cedar_policy_symcc::CompiledPolicySet;
use serde::Serialize;
use serde_json::{Value, json};

use crate::engine::{Decision, Outcome};
use crate::load::{self, TextFile};
use crate::snapshot::{FileKind, Snapshot};
use crate::symbolic::{self, Pool, Question, Verdict, Witness, Worker};
use crate::verify::{Format, print_report};

/// Exit code when the two sets are equivalent.
pub const EXIT_EQUIVALENT: u8 = 0;
/// Exit code when they differ in some environment.
pub const EXIT_CHANGED: u8 = 1;
/// Exit code on an error (including an undecided environment).
pub const EXIT_ERROR: u8 = 2;

/// How NEW differs from OLD in one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Equivalent,
    MorePermissive,
    MoreRestrictive,
    Both,
    /// The solver could not decide a direction, or it failed.
    Unknown,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Equivalent => "equivalent",
            Change::MorePermissive => "more_permissive",
            Change::MoreRestrictive => "more_restrictive",
            Change::Both => "both",
            Change::Unknown => "unknown",
        }
    }
}

/// One direction of change: a witness request, or why there is none.
#[derive(Debug, Clone)]
pub enum Direction {
    Unchanged,
    Changed {
        witness: Box<Witness>,
        /// The engine's decisions as (OLD, NEW).
        replay: Result<(Outcome, Outcome), String>,
        confirmed: bool,
    },
    Undecided(String),
}

impl Direction {
    fn to_json(&self) -> Value {
        match self {
            Direction::Unchanged => Value::Null,
            Direction::Undecided(reason) => json!({"undecided": reason}),
            Direction::Changed {
                witness,
                replay,
                confirmed,
            } => {
                let mut v = witness.to_json();
                match replay {
                    Ok((old, new)) => {
                        v["replay"] = json!({"old": old, "new": new, "confirmed": confirmed})
                    }
                    Err(e) => v["replay"] = json!({"error": e}),
                }
                v
            }
        }
    }
}

/// One environment's result.
#[derive(Debug, Clone)]
pub struct EnvDiff {
    pub env: RequestEnv,
    pub change: Change,
    /// A request NEW allows and OLD denies.
    pub permissive: Direction,
    /// A request OLD allows and NEW denies.
    pub restrictive: Direction,
}

/// The whole difference.
#[derive(Debug)]
pub struct Report {
    pub envs: Vec<EnvDiff>,
    pub solver: String,
    pub elapsed: std::time::Duration,
}

impl Report {
    pub fn count(&self, change: Change) -> usize {
        self.envs.iter().filter(|e| e.change == change).count()
    }

    /// `equivalent`, `changed` or `unknown` for the whole pair of sets.
    pub fn result(&self) -> &'static str {
        if self.count(Change::Unknown) > 0 {
            "unknown"
        } else if self.count(Change::Equivalent) == self.envs.len() {
            "equivalent"
        } else {
            "changed"
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.result() {
            "equivalent" => EXIT_EQUIVALENT,
            "changed" => EXIT_CHANGED,
            _ => EXIT_ERROR,
        }
    }
}

/// Load the policies at `path` (a file or a directory) against the schema
/// texts, with the loader's validation and `@id` naming, and no entities.
pub fn load_policies(schema: &[TextFile], path: &Path) -> Result<Snapshot, String> {
    let files = load::read_texts(path, FileKind::Policies).map_err(|d| d.to_string())?;
    if files.is_empty() {
        return Err(format!("{}: no .cedar policy file", path.display()));
    }
    load::build(schema, &files, &[]).map_err(|d| d.to_string())
}

/// Compare two loaded policy sets (same schema) in every environment.
pub fn run(old: &Snapshot, new: &Snapshot, pool: &Pool, solver: String) -> Result<Report, String> {
    let started = Instant::now();
    let envs = symbolic::request_envs(&old.schema);
    let jobs: Vec<&RequestEnv> = envs.iter().collect();
    let envs = pool.run(jobs, |worker, env| diff_env(worker, old, new, env))?;
    Ok(Report {
        envs,
        solver,
        elapsed: started.elapsed(),
    })
}

fn diff_env(worker: &mut Worker, old: &Snapshot, new: &Snapshot, env: &RequestEnv) -> EnvDiff {
    let compile = |s: &Snapshot| {
        CompiledPolicySet::compile(&s.policies, env, &s.schema)
            .map_err(|e| crate::diag::one_line(&e))
    };
    let (permissive, restrictive) = match (compile(old), compile(new)) {
        (Ok(o), Ok(n)) => (
            direction(worker, Question::AllowedByFirstOnly(&n, &o), new, old, true),
            direction(
                worker,
                Question::AllowedByFirstOnly(&o, &n),
                old,
                new,
                false,
            ),
        ),
        (Err(e), _) | (_, Err(e)) => (Direction::Undecided(e.clone()), Direction::Undecided(e)),
    };
    let change = match (&permissive, &restrictive) {
        (Direction::Undecided(_), _) | (_, Direction::Undecided(_)) => Change::Unknown,
        (Direction::Unchanged, Direction::Unchanged) => Change::Equivalent,
        (Direction::Changed { .. }, Direction::Unchanged) => Change::MorePermissive,
        (Direction::Unchanged, Direction::Changed { .. }) => Change::MoreRestrictive,
        (Direction::Changed { .. }, Direction::Changed { .. }) => Change::Both,
    };
    EnvDiff {
        env: env.clone(),
        change,
        permissive,
        restrictive,
    }
}

/// Ask for a request that `allows` allows and `denies` denies; `new_allows`
/// says which of the two is NEW, so that replays read (OLD, NEW).
fn direction(
    worker: &mut Worker,
    question: Question<'_>,
    allows: &Snapshot,
    denies: &Snapshot,
    new_allows: bool,
) -> Direction {
    let env = match worker.check(question) {
        Verdict::Proved => return Direction::Unchanged,
        Verdict::Unknown(reason) => return Direction::Undecided(format!("solver: {reason}")),
        Verdict::Error(e) => return Direction::Undecided(e),
        Verdict::Counterexample(env) => env,
    };
    let decide = |w: &Witness| -> Result<(Outcome, Outcome), String> {
        Ok((symbolic::replay(allows, w)?, symbolic::replay(denies, w)?))
    };
    let holds =
        |(a, d): &(Outcome, Outcome)| a.decision == Decision::Allow && d.decision == Decision::Deny;
    // Minimize without introducing evaluation errors the solver's store had not.
    let witness = Witness::from_env(&env);
    let original: Vec<String> = decide(&witness)
        .map(|(a, d)| a.errors.into_iter().chain(d.errors).collect())
        .unwrap_or_default();
    let witness = witness.minimize(|w| {
        decide(w).is_ok_and(|r| {
            holds(&r)
                && symbolic::errors_within(&r.0, &original)
                && symbolic::errors_within(&r.1, &original)
        })
    });
    let replay = decide(&witness);
    let confirmed = replay.as_ref().is_ok_and(holds);
    let replay = replay.map(|(a, d)| if new_allows { (d, a) } else { (a, d) });
    Direction::Changed {
        witness: Box::new(witness),
        replay,
        confirmed,
    }
}

// ---------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------

/// The text report: one line per environment, witnesses under changes.
pub fn render_text(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    for e in &report.envs {
        writeln!(
            out,
            "{:<17} {}",
            e.change.as_str(),
            symbolic::env_label(&e.env)
        )?;
        for (what, d) in [
            ("allowed by NEW, denied by OLD", &e.permissive),
            ("allowed by OLD, denied by NEW", &e.restrictive),
        ] {
            match d {
                Direction::Unchanged => {}
                Direction::Undecided(reason) => writeln!(out, "    {what}? undecided: {reason}")?,
                Direction::Changed {
                    witness,
                    replay,
                    confirmed,
                } => {
                    writeln!(out, "    {what}:")?;
                    writeln!(
                        out,
                        "      request:  {}",
                        symbolic::compact(&witness.request_json())
                    )?;
                    writeln!(
                        out,
                        "      entities: {}",
                        symbolic::compact(&witness.entities_json())
                    )?;
                    match replay {
                        Ok((old, new)) => writeln!(
                            out,
                            "      replay:   OLD {}; NEW {} -> {}",
                            symbolic::describe(old),
                            symbolic::describe(new),
                            if *confirmed {
                                "confirmed"
                            } else {
                                "NOT confirmed (solver and engine disagree)"
                            }
                        )?,
                        Err(err) => writeln!(out, "      replay:   failed: {err}")?,
                    }
                }
            }
        }
    }
    writeln!(
        out,
        "diff: {}: {} environments: {} equivalent, {} more permissive, {} more restrictive, \
         {} both, {} unknown in {:.1}s ({})",
        report.result(),
        report.envs.len(),
        report.count(Change::Equivalent),
        report.count(Change::MorePermissive),
        report.count(Change::MoreRestrictive),
        report.count(Change::Both),
        report.count(Change::Unknown),
        report.elapsed.as_secs_f64(),
        report.solver,
    )
}

/// The JSON report, for CI bots.
pub fn render_json(report: &Report) -> Value {
    json!({
        "result": report.result(),
        "solver": report.solver,
        "elapsed_ms": report.elapsed.as_millis() as u64,
        "summary": {
            "environments": report.envs.len(),
            "equivalent": report.count(Change::Equivalent),
            "more_permissive": report.count(Change::MorePermissive),
            "more_restrictive": report.count(Change::MoreRestrictive),
            "both": report.count(Change::Both),
            "unknown": report.count(Change::Unknown),
        },
        "environments": report.envs.iter().map(|e| json!({
            "environment": symbolic::env_json(&e.env),
            "change": e.change,
            "more_permissive": e.permissive.to_json(),
            "more_restrictive": e.restrictive.to_json(),
        })).collect::<Vec<_>>(),
    })
}

/// The command: load both sets against the schema, compare, report.
/// Returns the exit code.
pub fn execute(old: &Path, new: &Path, schema: &Path, format: Format, pool: &Pool) -> u8 {
    let result = (|| -> Result<Report, String> {
        let schema_files = load::read_texts(schema, FileKind::Schema).map_err(|d| d.to_string())?;
        let old = load_policies(&schema_files, old).map_err(|e| format!("OLD: {e}"))?;
        let new = load_policies(&schema_files, new).map_err(|e| format!("NEW: {e}"))?;
        let solver = symbolic::solver_version()?;
        run(&old, &new, pool, solver)
    })();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    let text = |out: &mut dyn Write| render_text(&report, out);
    if !print_report(format, text, || render_json(&report)) {
        return EXIT_ERROR;
    }
    report.exit_code()
}

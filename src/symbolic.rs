//! Symbolic analysis: questions about whole policy sets, answered by Cedar's
//! symbolic compiler (`cedar-policy-symcc`) and the cvc5 SMT solver, shared by
//! `orgwarden verify` ([`crate::verify`]) and `orgwarden diff` ([`crate::diff`]).
//!
//! This module owns four things:
//!
//! * [`Cvc5`]: one cvc5 process speaking SMT-LIB on stdin/stdout (the
//!   executable named by the `CVC5` environment variable, or `cvc5` on the
//!   `PATH`), with a per-query time limit, which also asks the solver *why*
//!   when it answers `unknown`;
//! * [`Pool`]: a few worker threads, each with its own solver, that run one
//!   job per request environment (principal type x action x resource type);
//! * [`Worker::check`]: one [`Question`] to a [`Verdict`]: proved, a
//!   counterexample (a request and an entity store), or unknown with the
//!   solver's reason;
//! * [`Witness`]: a counterexample as Cedar JSON, [`Witness::minimize`]d by
//!   dropping entities while a concrete predicate still holds, and
//!   [`replay`]ed through the orgwarden engine ([`engine::decide`] with
//!   [`engine::Facts::Replaced`]) so that every reported counterexample is
//!   confirmed by the same code that answers live requests.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::Mutex;

use cedar_policy::{
    Authorizer, Decision, Entities, Entity, PolicySet, Request, RequestEnv, Schema,
};
use cedar_policy_symcc::err::Error as SymccError;
use cedar_policy_symcc::solver::{Decision as SatDecision, DecisionWithModel, Solver, SolverError};
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::engine::{self, Outcome, RequestInput};
use crate::names::EntityRef;
use crate::snapshot::{Snapshot, is_action};

/// Default time limit of one solver query, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// The solver program: `$CVC5`, or `cvc5` on the `PATH`.
pub fn solver_program() -> OsString {
    std::env::var_os("CVC5").unwrap_or_else(|| "cvc5".into())
}

/// The solver's version line (`This is cvc5 version 1.0.3`), or why it cannot
/// be run.
pub fn solver_version() -> Result<String, String> {
    let program = solver_program();
    let out = std::process::Command::new(&program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run the SMT solver `{}` ({e}); install cvc5 (`apt-get install cvc5`, \
                 as scripts/test does) or point the CVC5 environment variable at a cvc5 executable",
                program.to_string_lossy()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if !out.status.success() || line.is_empty() {
        return Err(format!(
            "`{} --version` failed ({}): is it cvc5?",
            program.to_string_lossy(),
            out.status
        ));
    }
    Ok(line)
}

// ---------------------------------------------------------------------------
// The solver process
// ---------------------------------------------------------------------------

/// One cvc5 process in interactive SMT-LIB mode (`--lang smt`), reused across
/// queries (symcc sends `(reset)` before each one), with `--tlimit-per`
/// bounding every `check-sat`.
#[derive(Debug)]
pub struct Cvc5 {
    child: Child,
    stdin: BufWriter<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// The solver's `:reason-unknown` after its last `unknown` answer.
    reason_unknown: Option<String>,
}

impl Cvc5 {
    /// Start a solver whose queries each stop after `timeout_ms`.
    pub fn spawn(timeout_ms: u64) -> std::io::Result<Self> {
        let mut child = Command::new(solver_program())
            .args(["--lang", "smt"])
            .arg(format!("--tlimit-per={timeout_ms}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("no pipes to the solver process"));
        };
        Ok(Cvc5 {
            child,
            stdin: BufWriter::new(stdin),
            stdout: BufReader::new(stdout),
            reason_unknown: None,
        })
    }

    /// The reason the solver gave for its last `unknown`, once.
    pub fn take_reason_unknown(&mut self) -> Option<String> {
        self.reason_unknown.take()
    }

    async fn send(&mut self, command: &str) -> Result<(), SolverError> {
        self.stdin.write_all(command.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn read_line(&mut self) -> Result<String, SolverError> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).await? == 0 {
            let status = self.child.try_wait()?;
            return Err(SolverError::Solver(format!(
                "the solver process ended unexpectedly ({status:?})"
            )));
        }
        Ok(line)
    }

    fn unexpected(line: &str) -> SolverError {
        let line = line.trim();
        match line
            .strip_prefix("(error \"")
            .and_then(|s| s.strip_suffix("\")"))
        {
            Some(message) => SolverError::Solver(message.replace("\"\"", "\"")),
            None => SolverError::UnrecognizedSolverOutput(line.to_string()),
        }
    }

    /// `(check-sat)`; on `unknown`, also `(get-info :reason-unknown)`.
    async fn decide(&mut self) -> Result<SatDecision, SolverError> {
        self.reason_unknown = None;
        self.send("(check-sat)").await?;
        let line = self.read_line().await?;
        match line.trim() {
            "sat" => Ok(SatDecision::Sat),
            "unsat" => Ok(SatDecision::Unsat),
            s if s.starts_with("unknown") => {
                self.send("(get-info :reason-unknown)").await?;
                let reason = self.read_line().await?;
                let reason = reason.trim();
                let reason = reason
                    .strip_prefix("(:reason-unknown ")
                    .and_then(|r| r.strip_suffix(')'))
                    .unwrap_or(reason);
                self.reason_unknown = Some(reason.to_string());
                Ok(SatDecision::Unknown)
            }
            other => Err(Self::unexpected(other)),
        }
    }
}

impl Solver for Cvc5 {
    fn smtlib_input(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        &mut self.stdin
    }

    async fn enable_models(&mut self) -> Result<(), SolverError> {
        self.stdin
            .write_all(b"(set-option :produce-models true)\n")
            .await?;
        Ok(())
    }

    async fn check_sat(&mut self) -> Result<SatDecision, SolverError> {
        self.decide().await
    }

    async fn check_sat_with_model(&mut self) -> Result<DecisionWithModel, SolverError> {
        match self.decide().await? {
            SatDecision::Unsat => Ok(DecisionWithModel::Unsat),
            SatDecision::Unknown => Ok(DecisionWithModel::Unknown),
            SatDecision::Sat => {
                // The model is "(" on a line, the definitions, then ")" alone.
                self.send("(get-model)").await?;
                let first = self.read_line().await?;
                if first.trim() != "(" {
                    return Err(Self::unexpected(&first));
                }
                let mut model = first;
                loop {
                    let line = self.read_line().await?;
                    let end = line.trim() == ")";
                    model.push_str(&line);
                    if end {
                        break;
                    }
                }
                Ok(DecisionWithModel::Sat { model })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Questions and verdicts
// ---------------------------------------------------------------------------

/// One question to the solver, about policies compiled for one request
/// environment.
pub enum Question<'a> {
    /// Can this policy error on a well-formed request? Witness: one where it does.
    Errors(&'a CompiledPolicy),
    /// Does some request get allowed by both sets? Witness: one that is.
    AllowedByBoth(&'a CompiledPolicySet, &'a CompiledPolicySet),
    /// Does the first set allow a request the second denies? Witness: one.
    AllowedByFirstOnly(&'a CompiledPolicySet, &'a CompiledPolicySet),
    /// Do the two sets decide some request differently? Witness: one.
    DecidedDifferently(&'a CompiledPolicySet, &'a CompiledPolicySet),
}

/// The answer to a [`Question`]: `Proved` means "no such request exists".
#[derive(Debug)]
pub enum Verdict {
    Proved,
    Counterexample(Box<Env>),
    /// The solver could not decide (its reason, e.g. `timeout`).
    Unknown(String),
    /// The question could not be asked (compilation or solver failure).
    Error(String),
}

/// A worker: its own single-threaded runtime and its own solver process.
pub struct Worker {
    runtime: tokio::runtime::Runtime,
    compiler: Option<CedarSymCompiler<Cvc5>>,
    timeout_ms: u64,
}

impl Worker {
    fn new(timeout_ms: u64) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Worker {
            runtime,
            compiler: None,
            timeout_ms,
        })
    }

    /// Ask the solver one question (starting a solver if none is running).
    pub fn check(&mut self, question: Question<'_>) -> Verdict {
        if self.compiler.is_none() {
            let timeout_ms = self.timeout_ms;
            let spawned = self.runtime.block_on(async { Cvc5::spawn(timeout_ms) });
            match spawned.map_err(|e| e.to_string()).and_then(|solver| {
                CedarSymCompiler::new(solver).map_err(|e| crate::diag::one_line(&e))
            }) {
                Ok(c) => self.compiler = Some(c),
                Err(e) => {
                    return Verdict::Error(format!(
                        "cannot start the solver `{}`: {e}",
                        solver_program().to_string_lossy()
                    ));
                }
            }
        }
        let Some(compiler) = self.compiler.as_mut() else {
            return Verdict::Error("no solver".into());
        };
        let answer = self.runtime.block_on(async {
            match question {
                Question::Errors(p) => compiler.check_never_errors_with_counterexample_opt(p).await,
                Question::AllowedByBoth(a, b) => {
                    compiler.check_disjoint_with_counterexample_opt(a, b).await
                }
                Question::AllowedByFirstOnly(a, b) => {
                    compiler.check_implies_with_counterexample_opt(a, b).await
                }
                Question::DecidedDifferently(a, b) => {
                    compiler
                        .check_equivalent_with_counterexample_opt(a, b)
                        .await
                }
            }
        });
        match answer {
            Ok(None) => Verdict::Proved,
            Ok(Some(env)) => Verdict::Counterexample(Box::new(env)),
            Err(SymccError::SolverUnknown) => Verdict::Unknown(
                compiler
                    .solver_mut()
                    .take_reason_unknown()
                    .unwrap_or_else(|| "no reason given".into()),
            ),
            Err(e) => {
                // The solver may be in any state now: start a fresh one next time.
                self.compiler = None;
                Verdict::Error(crate::diag::one_line(&e))
            }
        }
    }
}

/// Runs jobs on a few threads, each with its own [`Worker`].
pub struct Pool {
    pub workers: usize,
    pub timeout_ms: u64,
}

impl Pool {
    /// The number of workers to use when none is given: one per core.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }

    /// Run `f` on every job; the results come back in the jobs' order.
    pub fn run<J, R, F>(&self, jobs: Vec<J>, f: F) -> Result<Vec<R>, String>
    where
        J: Send,
        R: Send,
        F: Fn(&mut Worker, J) -> R + Sync,
    {
        let total = jobs.len();
        let queue = Mutex::new(jobs.into_iter().enumerate());
        let results: Mutex<Vec<Option<R>>> = Mutex::new((0..total).map(|_| None).collect());
        let workers = self.workers.clamp(1, total.max(1));
        std::thread::scope(|s| -> Result<(), String> {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| -> Result<(), String> {
                        let mut worker = Worker::new(self.timeout_ms).map_err(|e| e.to_string())?;
                        loop {
                            let next = queue.lock().map_err(|e| e.to_string())?.next();
                            let Some((i, job)) = next else { break };
                            let r = f(&mut worker, job);
                            results.lock().map_err(|e| e.to_string())?[i] = Some(r);
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| "a worker thread panicked".to_string())??;
            }
            Ok(())
        })?;
        results
            .into_inner()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| r.ok_or_else(|| "a job was not run".to_string()))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Request environments
// ---------------------------------------------------------------------------

/// Every request environment of the schema, in a stable order.
pub fn request_envs(schema: &Schema) -> Vec<RequestEnv> {
    let mut envs: Vec<RequestEnv> = schema.request_envs().collect();
    envs.sort_by_key(env_key);
    envs.dedup_by(|a, b| env_key(a) == env_key(b));
    envs
}

fn env_key(env: &RequestEnv) -> (String, String, String) {
    (
        env.action().to_string(),
        env.principal().to_string(),
        env.resource().to_string(),
    )
}

/// `[Prefect::User, Prefect::Action::"see_flows", Prefect::Workspace]`.
pub fn env_label(env: &RequestEnv) -> String {
    format!(
        "[{}, {}, {}]",
        env.principal(),
        env.action(),
        env.resource()
    )
}

/// The environment as JSON: `{"principal": type, "action": uid, "resource": type}`.
pub fn env_json(env: &RequestEnv) -> Value {
    json!({
        "principal": env.principal().to_string(),
        "action": env.action().to_string(),
        "resource": env.resource().to_string(),
    })
}

// ---------------------------------------------------------------------------
// Witnesses
// ---------------------------------------------------------------------------

/// A concrete counterexample: a request and the entities it is decided
/// against (the schema's actions left out: every store has them).
#[derive(Debug, Clone)]
pub struct Witness {
    pub request: Request,
    pub entities: Vec<Entity>,
}

impl Witness {
    /// The witness of a solver counterexample.
    pub fn from_env(env: &Env) -> Self {
        let mut entities: Vec<Entity> = env
            .entities
            .iter()
            .filter(|e| !is_action(&e.uid()))
            .cloned()
            .collect();
        entities.sort_by_key(|e| e.uid().to_string());
        Witness {
            request: env.request.clone(),
            entities,
        }
    }

    /// The request as orgwarden's wire request (cedar-agent's shape).
    pub fn request_json(&self) -> Value {
        let uid = |u: Option<&cedar_policy::EntityUid>| match u {
            Some(u) => json!({"type": u.type_name().to_string(), "id": u.id().unescaped()}),
            None => Value::Null,
        };
        let context = self
            .request
            .context()
            .and_then(|c| c.to_json_value().ok())
            .unwrap_or_else(|| json!({}));
        json!({
            "principal": uid(self.request.principal()),
            "action": uid(self.request.action()),
            "resource": uid(self.request.resource()),
            "context": context,
        })
    }

    /// The entities in Cedar's JSON entity format.
    pub fn entities_json(&self) -> Value {
        Value::Array(
            self.entities
                .iter()
                .map(|e| e.to_json_value().unwrap_or(Value::Null))
                .collect(),
        )
    }

    /// The request and entities as one JSON object.
    pub fn to_json(&self) -> Value {
        json!({"request": self.request_json(), "entities": self.entities_json()})
    }

    /// The entity store with the schema's actions, for Cedar's authorizer.
    pub fn store(&self, schema: &Schema) -> Result<Entities, String> {
        let actions = schema
            .action_entities()
            .map_err(|e| crate::diag::one_line(&e))?;
        Entities::from_entities(
            self.entities.iter().cloned().chain(actions.iter().cloned()),
            None,
        )
        .map_err(|e| crate::diag::one_line(&e))
    }

    /// Drop entities one at a time, keeping each removal after which
    /// `holds` still holds: the result is minimal for single removals.
    /// `holds` must hold for `self`; the solver's store is returned otherwise.
    pub fn minimize(mut self, holds: impl Fn(&Witness) -> bool) -> Self {
        if !holds(&self) {
            return self;
        }
        let mut i = self.entities.len();
        while i > 0 {
            i -= 1;
            let mut smaller = self.clone();
            smaller.entities.remove(i);
            if holds(&smaller) {
                self = smaller;
            }
        }
        self
    }
}

/// Decide a witness with the orgwarden engine, its entities replacing the
/// snapshot's facts (as a request with `entities` does over HTTP).
pub fn replay(snap: &Snapshot, witness: &Witness) -> Result<Outcome, String> {
    let r = witness.request_json();
    let entity_ref = |v: &Value| -> Option<EntityRef> {
        Some(EntityRef::Object {
            type_name: v.get("type")?.as_str()?.to_string(),
            id: v.get("id")?.as_str()?.to_string(),
        })
    };
    let input = RequestInput {
        principal: entity_ref(&r["principal"]),
        action: entity_ref(&r["action"]),
        resource: entity_ref(&r["resource"]),
        context: Some(r["context"].clone()),
        entities: Some(witness.entities_json()),
        additional_entities: None,
        token: None,
    };
    let query = engine::prepare(snap, &input).map_err(|e| e.to_string())?;
    Ok(engine::decide(snap, &query))
}

/// Decide a witness with Cedar's authorizer on any policy set (reference
/// policies that are not part of a snapshot).
pub fn decide_plain(
    schema: &Schema,
    policies: &PolicySet,
    witness: &Witness,
) -> Result<Decision, String> {
    let store = witness.store(schema)?;
    Ok(Authorizer::new()
        .is_authorized(&witness.request, policies, &store)
        .decision())
}

/// Are all of `outcome`'s evaluation errors among `allowed`? (Minimizing a
/// witness must not make it lean on errors, e.g. a dropped entity that a
/// policy still reads.)
pub fn errors_within(outcome: &Outcome, allowed: &[String]) -> bool {
    outcome.errors.iter().all(|e| allowed.contains(e))
}

/// `Allow (p1, p2)` / `Deny` / `Deny, errors: ...` for reports.
pub fn describe(outcome: &Outcome) -> String {
    let mut s = format!("{:?}", outcome.decision);
    if !outcome.reasons.is_empty() {
        s.push_str(&format!(" ({})", outcome.reasons.join(", ")));
    }
    if !outcome.errors.is_empty() {
        s.push_str(&format!(", errors: {}", outcome.errors.join("; ")));
    }
    s
}

/// A one-line JSON rendering (for text reports).
pub fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

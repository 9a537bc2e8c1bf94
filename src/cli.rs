//! The command line: one function per subcommand, diagnostics rendered once.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::str::FromStr;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderName;

use crate::decision_log::{LogTarget, Overflow};
use crate::engine::{self, RequestInput};
use crate::gateway::forward_auth::{ForwardAuthConfig, MethodOverride, Unmatched};
use crate::grpc::GrpcConfig;
use crate::http::HttpConfig;
use crate::load::{self, Paths};
use crate::names::EntityRef;
use crate::reload::WatchConfig;
use crate::request_facts::RequestEntities;
use crate::server::{LogFormat, ServerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "orgwarden",
    version,
    about = "Authorization sidecar: Cedar policies served over HTTP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the policies, schema and entities are (files or directories).
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Policies: a `.cedar` file or a directory of them [default: `policies`].
    #[arg(long, env = "ORGWARDEN_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Schema: a `.cedarschema` / `.cedarschema.json` file or a directory
    /// [default: `schema`].
    #[arg(long, env = "ORGWARDEN_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// Entities: a JSON file (an array of entities) or a directory of them
    /// [default: `entities`].
    #[arg(long, env = "ORGWARDEN_ENTITIES")]
    pub entities: Option<PathBuf>,
    /// Forward-auth routes: a `.yaml` file or a directory of them [default:
    /// `routes`, when that directory exists and the schema is the default
    /// one; with `--schema`, only these].
    #[arg(long, env = "ORGWARDEN_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Identity sources (trusted OIDC issuers for bearer JWTs): a `.yaml`
    /// file or a directory of them [default: `identity`, when that directory
    /// exists and the schema is the default one; with `--schema`, only these].
    #[arg(long, env = "ORGWARDEN_IDENTITY")]
    pub identity: Option<PathBuf>,
}

impl PathArgs {
    /// The paths to load. Routes name the schema's actions and types, so the
    /// default `routes` directory goes with the default schema only: a
    /// model given with `--schema` never picks up routes written for another.
    pub fn paths(&self) -> Paths {
        let defaults = Paths::default();
        let routes = match (&self.routes, &self.schema) {
            (Some(routes), _) => Some(routes.clone()),
            (None, None) => crate::gateway::routes::default_path(),
            (None, Some(_)) => None,
        };
        let identity = match (&self.identity, &self.schema) {
            (Some(identity), _) => Some(identity.clone()),
            (None, None) => Some(PathBuf::from("identity")).filter(|p| p.is_dir()),
            (None, Some(_)) => None,
        };
        Paths {
            policies: self.policies.clone().unwrap_or(defaults.policies),
            schema: self.schema.clone().unwrap_or(defaults.schema),
            entities: self.entities.clone().unwrap_or(defaults.entities),
            routes,
            identity,
        }
    }
}

/// A parser for an option whose values are `names`, each read by `T`'s
/// `FromStr` (so that the library's enums need no clap).
fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policies, schema and entities; print diagnostics.
    Check(CheckArgs),
    /// Decide one request and print the decision as JSON.
    Authorize(AuthorizeArgs),
    /// Run the HTTP sidecar.
    Serve(Box<ServeArgs>),
    /// Generate a large world of entities for benchmarks and scale tests.
    Gen(GenArgs),
    /// Run allow/deny matrices and cases (YAML) against the policies.
    Test(TestArgs),
    /// Prove, for every request environment, that no policy errors and that
    /// the model's properties hold for every entity store (SMT solver cvc5).
    Verify(VerifyArgs),
    /// The semantic difference between two policy sets, per request environment.
    Diff(DiffArgs),
    /// The effective scopes of a principal on a resource, and what grants each.
    Explain(ExplainArgs),
    /// The principals who may perform an action on a resource, and the policies.
    Who(WhoArgs),
    /// Facts in a durable store (`sqlite:PATH`, `postgres://...`).
    #[command(subcommand)]
    Facts(FactsCommand),
}

#[derive(Debug, Subcommand)]
pub enum FactsCommand {
    /// Validate entity files as `check` does and write them into a store as
    /// one revision.
    Import(FactsImportArgs),
    /// Write a store's entities to entity files, one per entity type.
    Export(FactsExportArgs),
    /// Create or upgrade a store's tables.
    Migrate(FactsStoreArg),
}

#[derive(Debug, Args)]
pub struct FactsImportArgs {
    /// Entities: a JSON file or a directory of them.
    #[arg(value_name = "DIR")]
    pub entities: PathBuf,
    /// The store, e.g. `sqlite:facts.db` (created when missing).
    #[arg(long, value_name = "STORE")]
    pub into: String,
    /// Replace the facts of a store that holds some (one revision).
    #[arg(long)]
    pub replace: bool,
    /// Policies: a `.cedar` file or a directory of them.
    #[arg(long, env = "ORGWARDEN_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Schema: a `.cedarschema` / `.cedarschema.json` file or a directory.
    #[arg(long, env = "ORGWARDEN_SCHEMA", default_value = "schema")]
    pub schema: PathBuf,
}

#[derive(Debug, Args)]
pub struct FactsExportArgs {
    /// The store, e.g. `sqlite:facts.db`.
    #[arg(value_name = "STORE")]
    pub store: String,
    /// A new or empty directory for the entity files.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct FactsStoreArg {
    /// The store, e.g. `sqlite:facts.db`.
    #[arg(value_name = "STORE")]
    pub store: String,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The principal, e.g. `User::"bob"`.
    #[arg(long)]
    pub principal: String,
    /// The resource, e.g. `Workspace::"acme-prod"`.
    #[arg(long)]
    pub resource: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

#[derive(Debug, Args)]
pub struct WhoArgs {
    /// The action, e.g. `run_deployments`.
    #[arg(long)]
    pub action: String,
    /// The resource, e.g. `Workspace::"acme-prod"`.
    #[arg(long)]
    pub resource: String,
    /// Only principals of this type (default: every type the action applies to).
    #[arg(long = "type")]
    pub principal_type: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories searched recursively for `*.yaml`/`*.yml`.
    #[arg(value_name = "PATHS", default_value = "tests/matrices")]
    pub inputs: Vec<PathBuf>,
    /// How to print the report.
    #[arg(long, value_parser = choice::<crate::matrix::Format>(crate::matrix::Format::NAMES), default_value = "pretty")]
    pub format: crate::matrix::Format,
    /// Also list the policies that determined no decision and the actions no test exercises.
    #[arg(long)]
    pub coverage: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub paths: PathArgs,
}

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// The principal, e.g. `User::"alice"`.
    #[arg(long)]
    pub principal: String,
    /// The action, e.g. `see_flows` or `Action::"see_flows"`.
    #[arg(long)]
    pub action: String,
    /// The resource, e.g. `Workspace::"acme-prod"`.
    #[arg(long)]
    pub resource: String,
    /// The context as a JSON object.
    #[arg(long)]
    pub context: Option<String>,
    /// A JSON file of entities added to the loaded ones for this decision.
    #[arg(long)]
    pub additional_entities: Option<PathBuf>,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// `orgwarden serve`'s options; [`ServeArgs::config`] turns them into the
/// server's plain configuration.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub paths: PathArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "ORGWARDEN_LISTEN", default_value = "127.0.0.1:8180")]
    pub listen: SocketAddr,
    /// Most requests in one batch.
    #[arg(long, env = "ORGWARDEN_MAX_BATCH", default_value_t = 100)]
    pub max_batch: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "ORGWARDEN_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most entities one request may bring.
    #[arg(long, env = "ORGWARDEN_MAX_REQUEST_ENTITIES", default_value_t = 1000)]
    pub max_request_entities: usize,
    /// What the entities a decision request brings of its own may do:
    /// `add` (new entities only; nothing the loaded facts say may change),
    /// `replace` (cedar-agent's semantics: they replace loaded entities) or
    /// `off` (refused).
    #[arg(
        long,
        env = "ORGWARDEN_REQUEST_ENTITIES",
        value_parser = choice::<RequestEntities>(RequestEntities::NAMES),
        default_value = "add"
    )]
    pub request_entities: RequestEntities,
    /// Connections served at once (kept below the descriptor limit); a few
    /// more are answered only for health checks, with 503 for the rest.
    #[arg(long, env = "ORGWARDEN_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Time a client has to send a whole request head, in milliseconds.
    #[arg(long, env = "ORGWARDEN_HEADER_READ_TIMEOUT_MS", default_value_t = 5000)]
    pub header_read_timeout_ms: u64,
    /// A connection that moves no byte for this long is closed, in milliseconds.
    #[arg(long, env = "ORGWARDEN_IDLE_TIMEOUT_MS", default_value_t = 30000)]
    pub idle_timeout_ms: u64,
    /// Threads deciding requests with request facts at once (default: the cores).
    #[arg(long, env = "ORGWARDEN_DECISION_WORKERS")]
    pub decision_workers: Option<usize>,
    /// Decisions with request facts that may wait for a thread; beyond them
    /// the answer is 503 with `Retry-After`.
    #[arg(long, env = "ORGWARDEN_DECISION_QUEUE", default_value_t = 64)]
    pub decision_queue: usize,
    /// Time limit of one HTTP request or gRPC check, in milliseconds.
    #[arg(long, env = "ORGWARDEN_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Entries in the decision cache; 0 turns it off.
    #[arg(long, env = "ORGWARDEN_CACHE_SIZE", default_value_t = 100_000)]
    pub cache_size: u64,
    /// Where decision log lines go: `stdout`, `off`, or a file path.
    #[arg(long, env = "ORGWARDEN_DECISION_LOG", default_value = "stdout")]
    pub decision_log: LogTarget,
    /// Log only denied decisions.
    #[arg(long, env = "ORGWARDEN_DECISION_LOG_DENIES_ONLY")]
    pub decision_log_denies_only: bool,
    /// When the decision log's writer cannot keep up: `block` (requests wait
    /// for room; no record is lost) or `drop` (records are dropped and
    /// counted in `orgwarden_decision_log_dropped_total`).
    #[arg(
        long,
        env = "ORGWARDEN_DECISION_LOG_OVERFLOW",
        value_parser = choice::<Overflow>(Overflow::NAMES),
        default_value = "block"
    )]
    pub decision_log_overflow: Overflow,
    /// Bearer token for admin endpoints (`POST /v1/reload`); unset refuses them.
    #[arg(long, env = "ORGWARDEN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Base URL advertised by `/.well-known/authzen-configuration`.
    #[arg(long, env = "ORGWARDEN_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// What `/v1/forward-auth` answers for a request that no route matches.
    #[arg(
        long,
        env = "ORGWARDEN_FORWARD_AUTH_UNMATCHED",
        value_parser = choice::<Unmatched>(Unmatched::NAMES),
        default_value = "deny"
    )]
    pub forward_auth_unmatched: Unmatched,
    /// What `/v1/forward-auth` does with `X-HTTP-Method-Override` (and
    /// `X-HTTP-Method`, `X-Method-Override`): `refuse` the request (403), or
    /// `honor` it (decide on the method it names, for upstreams that do).
    #[arg(
        long,
        env = "ORGWARDEN_FORWARD_AUTH_METHOD_OVERRIDE",
        value_parser = choice::<MethodOverride>(MethodOverride::NAMES),
        default_value = "refuse"
    )]
    pub forward_auth_method_override: MethodOverride,
    /// Header, set by a trusted authenticator in front, that names the
    /// principal of `/v1/forward-auth` requests (`User::"alice"`); when
    /// unset, no such header is read.
    #[arg(long, env = "ORGWARDEN_TRUSTED_PRINCIPAL_HEADER")]
    pub trusted_principal_header: Option<HeaderName>,
    /// Also serve Envoy's ext_authz v3 gRPC `Authorization` service (and
    /// `grpc.health.v1`) on this address; unset: no gRPC listener.
    #[arg(long, env = "ORGWARDEN_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// gRPC `Check`: remove the `Authorization` header from allowed
    /// requests before Envoy sends them upstream.
    #[arg(long, env = "ORGWARDEN_STRIP_CREDENTIALS")]
    pub strip_credentials: bool,
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "ORGWARDEN_GRPC_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,
    /// Format of the server's own log on stderr (filter with RUST_LOG).
    #[arg(
        long,
        env = "ORGWARDEN_LOG_FORMAT",
        value_parser = choice::<LogFormat>(LogFormat::NAMES),
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Quiet time after a file change before reloading, in milliseconds.
    #[arg(long, env = "ORGWARDEN_RELOAD_DEBOUNCE_MS", default_value_t = 100)]
    pub reload_debounce_ms: u64,
    /// Do not watch the files; reload only on SIGHUP or `POST /v1/reload`.
    #[arg(long, env = "ORGWARDEN_NO_WATCH")]
    pub no_watch: bool,
    /// Keep facts in a store (`sqlite:PATH`, `postgres://...`) and accept
    /// writes through `/v1/facts`; unset: facts come from the entity files.
    #[arg(long, env = "ORGWARDEN_FACTS")]
    pub facts: Option<String>,
    /// Bearer token for the fact API (`/v1/facts`); unset refuses it.
    #[arg(long, env = "ORGWARDEN_FACTS_TOKEN", hide_env_values = true)]
    pub facts_token: Option<String>,
    /// Keep the files of every good snapshot in this directory, and serve
    /// them (stale) when a start finds the files invalid.
    #[arg(long, env = "ORGWARDEN_LAST_GOOD_DIR")]
    pub last_good_dir: Option<PathBuf>,
    /// How long a request with `Orgwarden-Min-Revision` waits for the facts
    /// to reach that revision before `503 stale_facts`, in milliseconds.
    #[arg(long, env = "ORGWARDEN_CONSISTENCY_WAIT_MS", default_value_t = 1000)]
    pub consistency_wait_ms: u64,
    /// With --facts: how often to read the store for writes made through
    /// other sidecars, in milliseconds (on PostgreSQL, `NOTIFY` also wakes
    /// the sidecar at once; this poll is the fallback). The facts are
    /// reported stale when not confirmed current for 3 polls (at least 1 s).
    #[arg(long, env = "ORGWARDEN_FACTS_POLL_MS", default_value_t = crate::live_facts::DEFAULT_POLL_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub facts_poll_ms: u64,
    /// With --facts: keep this many revisions of the store's change log and
    /// prune older ones (checked every 10 s; 0 keeps everything). A sidecar
    /// behind the pruned log re-loads a snapshot of the store.
    #[arg(long, env = "ORGWARDEN_FACTS_RETAIN_CHANGES", default_value_t = crate::live_facts::DEFAULT_RETAIN_CHANGES)]
    pub facts_retain_changes: u64,
    /// Serve the read-only web console for policy authors at `/console`;
    /// with --admin-token, the console asks for it.
    #[arg(long, env = "ORGWARDEN_CONSOLE")]
    pub console: bool,
    /// The matrix files the console runs (a file or a directory).
    #[arg(
        long,
        env = "ORGWARDEN_CONSOLE_MATRICES",
        default_value = "tests/matrices"
    )]
    pub console_matrices: PathBuf,
    /// The properties file the console's `verify` proves.
    #[arg(long, env = "ORGWARDEN_CONSOLE_PROPERTIES", default_value = crate::verify::DEFAULT_PROPERTIES)]
    pub console_properties: PathBuf,
    /// Time limit of one console run of the matrices or of `verify`, in seconds.
    #[arg(long, env = "ORGWARDEN_CONSOLE_RUN_TIMEOUT_S", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub console_run_timeout_s: u64,
}

impl ServeArgs {
    pub fn config(&self) -> ServerConfig {
        let forward_auth = ForwardAuthConfig {
            unmatched: self.forward_auth_unmatched,
            method_override: self.forward_auth_method_override,
            trusted_principal_header: self.trusted_principal_header.clone(),
        };
        ServerConfig {
            grpc: GrpcConfig {
                listen: self.grpc_listen,
                strip_credentials: self.strip_credentials,
                max_message_bytes: self.grpc_max_message_bytes,
                timeout: Duration::from_millis(self.request_timeout_ms),
                consistency_wait: Duration::from_millis(self.consistency_wait_ms),
                forward_auth: forward_auth.clone(),
            },
            paths: self.paths.paths(),
            listen: self.listen,
            http: HttpConfig {
                max_body_bytes: self.max_body_bytes,
                max_batch: self.max_batch,
                max_request_entities: self.max_request_entities,
                request_timeout: Duration::from_millis(self.request_timeout_ms),
                admin_token: self.admin_token.clone(),
                public_url: self.public_url.clone(),
                forward_auth,
                facts_token: self.facts_token.clone(),
                consistency_wait: Duration::from_millis(self.consistency_wait_ms),
                request_entities: self.request_entities,
                connections: crate::http::listen::ConnLimits {
                    max_connections: self.max_connections,
                    header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                    idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                },
                decision_workers: self
                    .decision_workers
                    .unwrap_or_else(crate::pdp::default_workers),
                decision_queue: self.decision_queue,
            },
            facts: self.facts.clone(),
            follow: crate::live_facts::FollowOptions {
                poll: Duration::from_millis(self.facts_poll_ms),
                retain_changes: self.facts_retain_changes,
            },
            last_good_dir: self.last_good_dir.clone(),
            console: self.console.then(|| crate::console::ConsoleConfig {
                matrices: self.console_matrices.clone(),
                properties: self.console_properties.clone(),
                run_timeout: Duration::from_secs(self.console_run_timeout_s),
            }),
            cache_size: self.cache_size,
            decision_log: self.decision_log.clone(),
            decision_log_denies_only: self.decision_log_denies_only,
            decision_log_overflow: self.decision_log_overflow,
            log_format: self.log_format,
            watch: (!self.no_watch).then(|| WatchConfig {
                debounce: Duration::from_millis(self.reload_debounce_ms),
            }),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Authorize(args) => authorize(&args),
        Command::Serve(args) => crate::server::run(args.config()),
        Command::Gen(args) => generate(&args),
        Command::Test(args) => test(&args),
        Command::Verify(args) => verify(&args),
        Command::Diff(args) => diff(&args),
        Command::Explain(args) => explain(&args),
        Command::Who(args) => who(&args),
        Command::Facts(cmd) => facts(cmd),
    }
}

fn facts(cmd: FactsCommand) -> ExitCode {
    use crate::facts::{store::Store, transfer};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: Result<String, String> = runtime.block_on(async move {
        match cmd {
            FactsCommand::Import(a) => {
                let paths = Paths {
                    policies: a.policies,
                    schema: a.schema,
                    entities: a.entities,
                    routes: None,
                    identity: None,
                };
                let entities = transfer::read_entities(&paths).map_err(|d| d.to_string())?;
                let store = Store::open(&a.into).await.map_err(|e| e.to_string())?;
                let r = transfer::import(&store, entities, a.replace)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "imported {} entities into {} at revision {} ({} deleted)",
                    r.entities,
                    store.describe(),
                    r.revision,
                    r.deleted
                ))
            }
            FactsCommand::Export(a) => {
                let store = Store::connect(&a.store).await.map_err(|e| e.to_string())?;
                let r = transfer::export(&store, &a.out)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "exported {} entities at revision {} to {} files in {}",
                    r.entities,
                    r.revision,
                    r.files.len(),
                    a.out.display()
                ))
            }
            FactsCommand::Migrate(a) => {
                let store = Store::attach(&a.store).await.map_err(|e| e.to_string())?;
                let (from, to) = store.migrate().await.map_err(|e| e.to_string())?;
                Ok(format!(
                    "{}: schema version {to} (was {from})",
                    store.describe()
                ))
            }
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    match load::load(&args.paths.paths()) {
        Ok(snap) => {
            for w in &snap.warnings {
                eprintln!("{w}\n");
            }
            println!(
                "ok: {} policies, {} entities, {} routes, {} files ({} warning(s))",
                snap.policy_count(),
                snap.entity_count(),
                snap.routes.len(),
                snap.files.len(),
                snap.warnings.len()
            );
            // The process exits now: freeing a large world entity by entity
            // would only add to its run time (~7% at 1M memberships).
            std::mem::forget(snap);
            ExitCode::SUCCESS
        }
        Err(diags) => {
            eprintln!("{diags}");
            ExitCode::from(1)
        }
    }
}

fn authorize(args: &AuthorizeArgs) -> ExitCode {
    let snap = match load::load(&args.paths.paths()) {
        Ok(s) => s,
        Err(diags) => {
            eprintln!("{diags}");
            return ExitCode::from(1);
        }
    };
    let parse_json = |what: &str, text: &str| -> Result<serde_json::Value, String> {
        serde_json::from_str(text).map_err(|e| format!("{what}: invalid JSON: {e}"))
    };
    let context = match args
        .context
        .as_deref()
        .map(|c| parse_json("--context", c))
        .transpose()
    {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let additional_entities = match args
        .additional_entities
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| format!("{}: {e}", p.display()))
                .and_then(|t| parse_json(&p.display().to_string(), &t))
        })
        .transpose()
    {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let input = RequestInput {
        principal: Some(EntityRef::Text(args.principal.clone())),
        action: Some(EntityRef::Text(args.action.clone())),
        resource: Some(EntityRef::Text(args.resource.clone())),
        context,
        entities: None,
        additional_entities,
        token: None,
    };
    let query = match engine::prepare(&snap, &input) {
        Ok(q) => q,
        Err(e) => return fail(&format!("invalid request: {e}")),
    };
    let outcome = engine::decide(&snap, &query);
    let body = serde_json::json!({
        "decision": outcome.decision,
        "diagnostics": { "reason": outcome.reasons, "errors": outcome.errors },
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&body).unwrap_or_default()
    );
    if outcome.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Directory to write the entity files into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub orgs: usize,
    #[arg(long, default_value_t = 10)]
    pub workspaces_per_org: usize,
    #[arg(long, default_value_t = 20)]
    pub users_per_org: usize,
    #[arg(long, default_value_t = 2)]
    pub service_accounts_per_org: usize,
    #[arg(long, default_value_t = 2)]
    pub custom_roles_per_org: usize,
    /// Explicit workspace memberships in all.
    #[arg(long, default_value_t = 1000)]
    pub memberships: usize,
    /// Users with a personal workspace.
    #[arg(long, default_value_t = 10)]
    pub personal: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn generate(args: &GenArgs) -> ExitCode {
    let spec = crate::world::WorldSpec {
        orgs: args.orgs,
        workspaces_per_org: args.workspaces_per_org,
        users_per_org: args.users_per_org,
        service_accounts_per_org: args.service_accounts_per_org,
        custom_roles_per_org: args.custom_roles_per_org,
        memberships: args.memberships,
        personal: args.personal,
        seed: args.seed,
    };
    match crate::world::write(&spec, &args.out) {
        Ok(n) => {
            println!("wrote {n} entity files under {}", args.out.display());
            println!(
                "serve them with: orgwarden serve --entities {}",
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `orgwarden test`: exit 0 when every test passes, 1 when one fails, 2 when
/// a file is invalid.
fn test(args: &TestArgs) -> ExitCode {
    let opts = crate::matrix::Options {
        inputs: args.inputs.clone(),
        world: args.paths.paths(),
        format: args.format,
        coverage: args.coverage,
    };
    let code = crate::matrix::execute(&opts, &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

/// Solver settings shared by `verify` and `diff`.
#[derive(Debug, Clone, Args)]
pub struct SolverArgs {
    /// Solver processes run in parallel (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Time limit of one solver query, in milliseconds (past it: `unknown`).
    #[arg(long, default_value_t = crate::symbolic::DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// How to print the report.
    #[arg(long, value_parser = choice::<crate::verify::Format>(crate::verify::Format::NAMES), default_value = "text")]
    pub format: crate::verify::Format,
}

impl SolverArgs {
    fn pool(&self) -> crate::symbolic::Pool {
        crate::symbolic::Pool {
            workers: self
                .workers
                .unwrap_or_else(crate::symbolic::Pool::default_workers),
            timeout_ms: self.timeout_ms,
        }
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The properties file (YAML); default `properties/properties.yaml`.
    #[arg(long, env = "ORGWARDEN_PROPERTIES")]
    pub properties: Option<PathBuf>,
    #[command(flatten)]
    pub solver: SolverArgs,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Exit code 0: everything proved; 1: a counterexample or an undecided
/// check; 2: invalid input or no solver.
fn verify(args: &VerifyArgs) -> ExitCode {
    ExitCode::from(crate::verify::execute(
        &args.paths.paths(),
        args.properties.as_deref(),
        args.solver.format,
        &args.solver.pool(),
    ))
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The old policies: a `.cedar` file or a directory of them.
    pub old: PathBuf,
    /// The new policies: a `.cedar` file or a directory of them.
    pub new: PathBuf,
    /// The schema both are validated and compared against.
    #[arg(long, env = "ORGWARDEN_SCHEMA", default_value = "schema")]
    pub schema: PathBuf,
    #[command(flatten)]
    pub solver: SolverArgs,
}

/// Exit code 0: equivalent; 1: changed; 2: error or undecided.
fn diff(args: &DiffArgs) -> ExitCode {
    ExitCode::from(crate::diff::execute(
        &args.old,
        &args.new,
        &args.schema,
        args.solver.format,
        &args.solver.pool(),
    ))
}

/// `orgwarden explain`: exit 0, or 1 on invalid files or names.
fn explain(args: &ExplainArgs) -> ExitCode {
    let snap = match load::load(&args.paths.paths()) {
        Ok(s) => s,
        Err(diags) => return fail(&diags.to_string()),
    };
    let resolve = |r: &str| snap.names.resolve_entity(&EntityRef::Text(r.to_string()));
    let (principal, resource) = match (resolve(&args.principal), resolve(&args.resource)) {
        (Ok(p), Ok(r)) => (p, r),
        (Err(e), _) | (_, Err(e)) => return fail(&e.to_string()),
    };
    let context = serde_json::json!({});
    match crate::search::explain::explain_report(&snap, &principal, &resource, &context, args.json)
    {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// `orgwarden who`: exit 0, or 1 on invalid files or names.
fn who(args: &WhoArgs) -> ExitCode {
    let snap = match load::load(&args.paths.paths()) {
        Ok(s) => s,
        Err(diags) => return fail(&diags.to_string()),
    };
    let action = match snap
        .names
        .resolve_action(&EntityRef::Text(args.action.clone()))
    {
        Ok(a) => a,
        Err(e) => return fail(&e.to_string()),
    };
    let resource = match snap
        .names
        .resolve_entity(&EntityRef::Text(args.resource.clone()))
    {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let types = match &args.principal_type {
        Some(t) => match snap.names.resolve_type(t) {
            Ok(t) => vec![t],
            Err(e) => return fail(&e.to_string()),
        },
        None => snap
            .schema
            .principals_for_action(&action)
            .map(|i| i.cloned().collect())
            .unwrap_or_default(),
    };
    let context = serde_json::json!({});
    match crate::search::explain::who_report(&snap, &types, &action, &resource, &context, args.json)
    {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

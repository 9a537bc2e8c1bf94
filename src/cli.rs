//! The command line: one function per subcommand, diagnostics rendered once.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::engine::{self, RequestInput};
use crate::load::{self, Paths};
use crate::names::EntityRef;

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
    /// Policies: a `.cedar` file or a directory of them.
    #[arg(long, env = "ORGWARDEN_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// Schema: a `.cedarschema` / `.cedarschema.json` file or a directory.
    #[arg(long, env = "ORGWARDEN_SCHEMA", default_value = "schema")]
    pub schema: PathBuf,
    /// Entities: a JSON file (an array of entities) or a directory of them.
    #[arg(long, env = "ORGWARDEN_ENTITIES", default_value = "entities")]
    pub entities: PathBuf,
}

impl PathArgs {
    pub fn paths(&self) -> Paths {
        Paths {
            policies: self.policies.clone(),
            schema: self.schema.clone(),
            entities: self.entities.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policies, schema and entities; print diagnostics.
    Check(CheckArgs),
    /// Decide one request and print the decision as JSON.
    Authorize(AuthorizeArgs),
    /// Run the HTTP sidecar.
    Serve(crate::server::ServeArgs),
    /// Generate a large world of entities for benchmarks and scale tests.
    Gen(GenArgs),
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Authorize(args) => authorize(&args),
        Command::Serve(args) => crate::server::run(args),
        Command::Gen(args) => generate(&args),
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    match load::load(&args.paths.paths()) {
        Ok(snap) => {
            for w in &snap.warnings {
                eprintln!("{w}\n");
            }
            println!(
                "ok: {} policies, {} entities, {} files ({} warning(s))",
                snap.policy_count(),
                snap.entity_count(),
                snap.files.len(),
                snap.warnings.len()
            );
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

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(1)
}

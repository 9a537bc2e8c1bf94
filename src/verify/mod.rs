//! `orgwarden verify`: proofs, for every request environment of the schema
//! (principal type x action x resource type), that
//!
//! 1. every policy never errors on a well-formed request (`never-errors`), and
//! 2. the declared properties of the model hold for *every* entity store,
//!    not only the loaded one: the load-time checks are not assumed.
//!
//! This module owns the command; `properties` owns the properties file
//! format, `prove` the run and `render` the reports. The solver, the worker
//! pool and counterexamples live in [`crate::symbolic`].
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

mod properties;
mod prove;
mod render;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::load::{self, Paths};
use crate::snapshot::FileKind;
use crate::symbolic::{self, Pool};

pub use properties::*;
pub use prove::*;
pub use render::*;

/// Exit code when everything is proved.
pub const EXIT_PROVED: u8 = 0;
/// Exit code when a check found a counterexample, or could not decide.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the inputs are invalid or the solver cannot be run.
pub const EXIT_INVALID: u8 = 2;

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
    let text = |out: &mut dyn Write| render_text(&report, out);
    if !print_report(format, text, || render_json(&report)) {
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

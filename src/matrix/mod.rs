//! Matrices: `orgwarden test`, allow/deny tables that policy authors and CI
//! assert about the policies.
//!
//! This module owns the test-file format (YAML files holding `matrix` tables
//! of principals x actions per resource, and single `cases`), and the four
//! steps of a run, each its own function:
//!
//! * [`parse`]: one file's text to a [`TestFile`], schema-free, every item
//!   with its line, column and field path (`matrix[0].expect."User::\"alice\""`);
//! * [`prepare`]: a [`TestFile`] against a snapshot to a [`Suite`]: names
//!   resolved in the schema, requests validated, principals and resources
//!   checked to exist in the facts. A mistyped name is an error, never a
//!   silent deny;
//! * [`run`]: every test of the suites through [`engine::decide`] (never a
//!   separate evaluator) to a [`Report`];
//! * [`render_pretty`], [`render_json`], [`render_junit`] and [`coverage`].
//!
//! Each step is a submodule: `format` (the file format and [`FileError`]),
//! `prepare`, `run`, `coverage` and `render` (with `pretty`, `json` and
//! `junit`); this module re-exports their items and owns the command.
//!
//! [`execute`] ties them together for the CLI: exit code 0 when every test
//! passes, 1 when one fails, 2 when a file (or the policies) is invalid.

mod coverage;
mod format;
mod prepare;
mod render;
mod run;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::load::{self, Paths};

pub use coverage::*;
pub use format::*;
pub use prepare::*;
pub use render::json::*;
pub use render::junit::*;
pub use render::pretty::*;
pub use render::*;
pub use run::*;

/// Exit code when every test passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code when at least one test failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when a test file, or the policies, schema or entities, are invalid.
pub const EXIT_INVALID: u8 = 2;

/// How to print the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Pretty,
    Json,
    Junit,
}

crate::words::words!(Format { "pretty" => Pretty, "json" => Json, "junit" => Junit });

/// What `orgwarden test` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Test files or directories (searched recursively for `*.yaml`, `*.yml`).
    pub inputs: Vec<PathBuf>,
    /// Policies, schema and entities.
    pub world: Paths,
    pub format: Format,
    pub coverage: bool,
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The test files under `inputs`: a file is taken as given, a directory is
/// searched recursively (hidden entries skipped). Sorted, each once.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, FileError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| FileError::new(input, None, "", format!("cannot read: {e}")))?;
        if meta.is_file() {
            out.push(input.clone());
            continue;
        }
        let mut found = Vec::new();
        let mut stack = vec![input.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir)
                .map_err(|e| FileError::new(&dir, None, "", format!("cannot read: {e}")))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| FileError::new(&dir, None, "", format!("cannot read: {e}")))?
                    .path();
                let hidden = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'));
                match std::fs::metadata(&path) {
                    _ if hidden => {}
                    Ok(m) if m.is_dir() => stack.push(path),
                    Ok(m) if m.is_file() && is_test_file(&path) => found.push(path),
                    _ => {}
                }
            }
        }
        if found.is_empty() {
            return Err(FileError::new(
                input,
                None,
                "",
                "no test files (*.yaml, *.yml) found here",
            ));
        }
        found.sort();
        out.extend(found);
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

/// Read, parse and prepare every test file, or every error found.
pub fn load_suites(files: &[PathBuf], worlds: &mut Worlds) -> Result<Vec<Suite>, Vec<FileError>> {
    let mut suites = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(FileError::new(path, None, "", format!("cannot read: {e}")));
                continue;
            }
        };
        let parsed = match parse(path, &text) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match prepare(&parsed, worlds) {
            Ok(s) => suites.push(s),
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(suites)
    } else {
        Err(errors)
    }
}

/// Run `orgwarden test`: the report on `out`, problems on `err`; returns
/// the exit code.
pub fn execute(opts: &Options, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let files = match discover(&opts.inputs) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_INVALID;
        }
    };
    let base = match load::load(&opts.world) {
        Ok(s) => Arc::new(s),
        Err(diags) => {
            let _ = writeln!(err, "{diags}");
            return EXIT_INVALID;
        }
    };
    let mut worlds = Worlds::new(base.clone(), opts.world.clone());
    let suites = match load_suites(&files, &mut worlds) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(err, "error: {e}");
            }
            let _ = writeln!(err, "{} invalid test file problem(s)", errors.len());
            return EXIT_INVALID;
        }
    };
    let report = run(&suites);
    let cov = opts.coverage.then(|| coverage(&report, &base));
    let text = match opts.format {
        Format::Pretty => render_pretty(&report, cov.as_ref()),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&render_json(&report, cov.as_ref()))
                .unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Junit => render_junit(&report, cov.as_ref()),
    };
    if out.write_all(text.as_bytes()).is_err() {
        return EXIT_INVALID;
    }
    if report.failed() == 0 {
        EXIT_PASSED
    } else {
        EXIT_FAILED
    }
}

#[cfg(test)]
mod tests;

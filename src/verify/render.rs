//! Rendering a [`Report`]: text for a terminal, JSON for CI; and the
//! output [`Format`] of `verify` and `diff`.

use std::io::Write;

use serde_json::{Value, json};

use super::properties::{NEVER_ERRORS, label};
use super::prove::{Check, Report, Status};
use crate::symbolic::{self};

pub(super) fn status_word(s: Status) -> &'static str {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

crate::words::words!(Format { "text" => Text, "json" => Json });

/// Print a report on stdout in `format`: `text` writes the text form,
/// `json` builds the JSON one. False when stdout cannot be written.
pub fn print_report(
    format: Format,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    json: impl FnOnce() -> Value,
) -> bool {
    let mut out = std::io::stdout().lock();
    let written = match format {
        Format::Text => text(&mut out),
        Format::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json()).unwrap_or_default()
        ),
    };
    written.is_ok()
}

//! Rendering a [`Report`]: the words and marks the three renderers share;
//! [`pretty`] (tables for a terminal), [`json`] and [`junit`] (for CI).

pub mod json;
pub mod junit;
pub mod pretty;

use super::coverage::*;
use super::run::*;
use crate::engine::Decision;

const ALLOW_MARK: &str = "✓";
const DENY_MARK: &str = "✗";
const FAIL_MARK: &str = "FAIL";
/// Tables wider than this number their action columns and list them below.
const MAX_TABLE_WIDTH: usize = 140;

fn word(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    }
}

fn mark(d: Decision) -> &'static str {
    match d {
        Decision::Allow => ALLOW_MARK,
        Decision::Deny => DENY_MARK,
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad(s: &str, w: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', w.saturating_sub(width(s))));
    out
}

fn list_or(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.join(", ")
    }
}

/// Why a test failed, on one line.
pub fn failure_message(r: &TestResult) -> String {
    if !r.decision_matches() {
        format!(
            "expected {}, got {}",
            word(r.spec.expect),
            word(r.outcome.decision)
        )
    } else {
        format!(
            "{} as expected, but determined by [{}] instead of [{}]",
            word(r.outcome.decision),
            r.outcome.reasons.join(", "),
            r.spec.reasons.as_deref().unwrap_or_default().join(", ")
        )
    }
}

/// The details of a failed test, several lines, no indentation.
fn failure_details(f: &FileReport, r: &TestResult) -> Vec<String> {
    let s = &r.spec;
    let mut lines = vec![
        format!("{}:{}: {}", f.file.display(), s.pos, s.field),
        format!("request:  {} {} {}", s.principal, s.action, s.resource),
        format!("expected: {}", word(s.expect)),
        format!("actual:   {}", word(r.outcome.decision)),
    ];
    if let Some(want) = &s.reasons {
        lines.push(format!(
            "expected determining policies: {}",
            list_or(want, "none")
        ));
    }
    lines.push(format!(
        "determining policies: {}",
        list_or(&r.outcome.reasons, "none (no policy applied: default deny)")
    ));
    if !r.outcome.errors.is_empty() {
        lines.push(format!("errors: {}", r.outcome.errors.join("; ")));
    }
    lines
}

pub(crate) fn render_coverage_text(out: &mut String, cov: &Coverage) {
    out.push_str("coverage:\n");
    out.push_str(&format!(
        "  policies that determined no decision: {} of {}\n",
        cov.unused_policies.len(),
        cov.policies
    ));
    for p in &cov.unused_policies {
        let at = match (&p.file, p.line) {
            (Some(f), Some(l)) => format!("  ({}:{l})", f.display()),
            (Some(f), None) => format!("  ({})", f.display()),
            _ => String::new(),
        };
        out.push_str(&format!("    {}{at}\n", p.id));
    }
    out.push_str(&format!(
        "  actions no test exercises: {} of {}\n",
        cov.unexercised_actions.len(),
        cov.actions
    ));
    for a in &cov.unexercised_actions {
        out.push_str(&format!("    {a}\n"));
    }
}

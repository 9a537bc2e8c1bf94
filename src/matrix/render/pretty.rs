//! The pretty report: per file, the matrices as tables of marks and the
//! failures with their expected and actual decisions, then the totals.

use std::collections::HashMap;

use super::*;
use crate::matrix::coverage::*;
use crate::matrix::prepare::*;
use crate::matrix::run::*;

fn render_table(out: &mut String, f: &FileReport, mi: usize, layout: &MatrixLayout) {
    let cells: HashMap<(usize, usize), &TestResult> = f
        .results
        .iter()
        .filter_map(|r| match r.spec.kind {
            TestKind::Cell {
                matrix,
                row,
                column,
            } if matrix == mi => Some(((row, column), r)),
            _ => None,
        })
        .collect();
    out.push_str(&format!("  {} on {}", layout.field, layout.resource));
    if let Some(ctx) = &layout.context
        && ctx.as_object().is_some_and(|o| !o.is_empty())
    {
        out.push_str(&format!(" with context {ctx}"));
    }
    out.push('\n');
    let text = |row: usize, col: usize| -> String {
        match cells.get(&(row, col)) {
            Some(r) if r.pass => mark(r.outcome.decision).to_string(),
            Some(r) => format!("{} {FAIL_MARK}", mark(r.outcome.decision)),
            None => "?".to_string(),
        }
    };
    let first = layout
        .principals
        .iter()
        .map(|p| width(p))
        .max()
        .unwrap_or(0);
    let cell_width = |c: usize| -> usize {
        (0..layout.principals.len())
            .map(|r| width(&text(r, c)))
            .max()
            .unwrap_or(1)
    };
    let full: usize = 4
        + first
        + layout
            .actions
            .iter()
            .enumerate()
            .map(|(c, a)| 2 + width(a).max(cell_width(c)))
            .sum::<usize>();
    let numbered = full > MAX_TABLE_WIDTH;
    let headers: Vec<String> = layout
        .actions
        .iter()
        .enumerate()
        .map(|(c, a)| {
            if numbered {
                format!("[{}]", c + 1)
            } else {
                a.clone()
            }
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(c, h)| width(h).max(cell_width(c)))
        .collect();
    let mut line = format!("    {}", pad("", first));
    for (h, w) in headers.iter().zip(&widths) {
        line.push_str("  ");
        line.push_str(&pad(h, *w));
    }
    out.push_str(line.trim_end());
    out.push('\n');
    for (ri, p) in layout.principals.iter().enumerate() {
        let mut line = format!("    {}", pad(p, first));
        for (ci, w) in widths.iter().enumerate() {
            line.push_str("  ");
            line.push_str(&pad(&text(ri, ci), *w));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if numbered {
        let mut line = String::from("    actions:");
        for (c, a) in layout.actions.iter().enumerate() {
            let entry = format!("  [{}] {a}", c + 1);
            if width(&line) + width(&entry) > MAX_TABLE_WIDTH {
                out.push_str(&line);
                out.push('\n');
                line = format!("{:14}{}", "", entry.trim_start());
            } else {
                line.push_str(&entry);
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// The report for people: tables, case lines, failures, coverage, and the
/// closing `N passed, M failed` line.
pub fn render_pretty(report: &Report, cov: Option<&Coverage>) -> String {
    let mut out = String::new();
    if report.files.iter().any(|f| !f.matrices.is_empty()) {
        out.push_str(&format!(
            "cells: {ALLOW_MARK} allow, {DENY_MARK} deny; `{FAIL_MARK}` marks a cell whose decision (the mark) is not the expected one\n\n"
        ));
    }
    for f in &report.files {
        out.push_str(&format!(
            "{} ({}): {} passed, {} failed\n",
            f.file.display(),
            f.name,
            f.passed(),
            f.failed()
        ));
        for (mi, layout) in f.matrices.iter().enumerate() {
            render_table(&mut out, f, mi, layout);
        }
        let cases: Vec<&TestResult> = f
            .results
            .iter()
            .filter(|r| matches!(r.spec.kind, TestKind::Case { .. }))
            .collect();
        if !cases.is_empty() {
            out.push_str("  cases\n");
        }
        for r in cases {
            let s = &r.spec;
            let status = if r.pass { "ok  " } else { FAIL_MARK };
            let request = format!("{} {} {}", s.principal, s.action, s.resource);
            let label = if s.name == request {
                String::new()
            } else {
                format!("{}: ", s.name)
            };
            let mut line = format!(
                "    {status}  {label}{request} -> {}",
                word(r.outcome.decision)
            );
            if !r.pass {
                line.push_str(&format!(" ({})", failure_message(r)));
            }
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    let failures: Vec<(&FileReport, &TestResult)> =
        report.results().filter(|(_, r)| !r.pass).collect();
    if !failures.is_empty() {
        out.push_str("failures:\n");
        for (i, (f, r)) in failures.iter().enumerate() {
            let details = failure_details(f, r);
            out.push_str(&format!("  {}) {}\n", i + 1, details[0]));
            for d in &details[1..] {
                out.push_str(&format!("     {d}\n"));
            }
        }
        out.push('\n');
    }
    let with_errors = report
        .results()
        .filter(|(_, r)| r.pass && !r.outcome.errors.is_empty())
        .count();
    if with_errors > 0 {
        out.push_str(&format!(
            "note: {with_errors} passing decision(s) met evaluation errors (see --format json)\n\n"
        ));
    }
    if let Some(cov) = cov {
        render_coverage_text(&mut out, cov);
        out.push('\n');
    }
    out.push_str(&format!(
        "{} passed, {} failed\n",
        report.passed(),
        report.failed()
    ));
    out
}

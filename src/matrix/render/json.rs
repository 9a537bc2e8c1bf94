//! The JSON report: every file, test and failure, and the coverage.

use serde_json::{Value, json};

use super::*;
use crate::matrix::coverage::*;
use crate::matrix::prepare::*;
use crate::matrix::run::*;

/// The report for machines.
pub fn render_json(report: &Report, cov: Option<&Coverage>) -> Value {
    let files: Vec<Value> = report
        .files
        .iter()
        .map(|f| {
            let tests: Vec<Value> = f
                .results
                .iter()
                .map(|r| {
                    let s = &r.spec;
                    let (kind, at) = match s.kind {
                        TestKind::Cell {
                            matrix,
                            row,
                            column,
                        } => (
                            "cell",
                            json!({"matrix": matrix, "row": row, "column": column}),
                        ),
                        TestKind::Case { index } => ("case", json!({"case": index})),
                    };
                    json!({
                        "kind": kind,
                        "index": at,
                        "name": s.name,
                        "field": s.field,
                        "line": s.pos.line,
                        "column": s.pos.column,
                        "principal": s.principal,
                        "action": s.action,
                        "resource": s.resource,
                        "request": {
                            "principal": s.principal_uid.to_string(),
                            "action": s.action_uid.to_string(),
                            "resource": s.resource_uid.to_string(),
                        },
                        "expected": word(s.expect),
                        "expected_reasons": s.reasons,
                        "actual": word(r.outcome.decision),
                        "reasons": r.outcome.reasons,
                        "errors": r.outcome.errors,
                        "pass": r.pass,
                        "message": (!r.pass).then(|| failure_message(r)),
                    })
                })
                .collect();
            json!({
                "file": f.file.display().to_string(),
                "name": f.name,
                "passed": f.passed(),
                "failed": f.failed(),
                "tests": tests,
            })
        })
        .collect();
    let mut body = json!({
        "passed": report.passed(),
        "failed": report.failed(),
        "files": files,
    });
    if let Some(cov) = cov {
        body["coverage"] = json!({
            "unused_policies": cov.unused_policies.iter().map(|p| json!({
                "id": p.id,
                "file": p.file.as_ref().map(|f| f.display().to_string()),
                "line": p.line,
            })).collect::<Vec<_>>(),
            "unexercised_actions": cov.unexercised_actions,
            "policies": cov.policies,
            "actions": cov.actions,
        });
    }
    body
}

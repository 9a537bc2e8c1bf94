//! Running: every test of the suites through [`crate::engine::decide`]
//! (never a separate evaluator) to a [`Report`].

use std::path::PathBuf;

use super::prepare::*;
use crate::engine::{self, Facts, Outcome, Query};

/// One test's result.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub spec: TestSpec,
    pub outcome: Outcome,
    pub pass: bool,
}

impl TestResult {
    /// Did the decision match (whatever the reasons)?
    pub fn decision_matches(&self) -> bool {
        self.outcome.decision == self.spec.expect
    }
}

/// One file's results.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub file: PathBuf,
    pub name: String,
    pub matrices: Vec<MatrixLayout>,
    pub results: Vec<TestResult>,
}

impl FileReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.pass).count()
    }
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

/// The results of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<FileReport>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.files.iter().map(FileReport::passed).sum()
    }
    pub fn failed(&self) -> usize {
        self.files.iter().map(FileReport::failed).sum()
    }
    pub fn results(&self) -> impl Iterator<Item = (&FileReport, &TestResult)> {
        self.files
            .iter()
            .flat_map(|f| f.results.iter().map(move |r| (f, r)))
    }
}

/// Decide one test with the engine.
pub fn decide(suite: &Suite, spec: &TestSpec) -> Outcome {
    let facts = if suite.extra.is_empty() {
        Facts::Loaded
    } else {
        Facts::Additional(suite.extra.clone())
    };
    let query = Query {
        request: spec.request.clone(),
        principal: spec.principal_uid.clone(),
        action: spec.action_uid.clone(),
        resource: spec.resource_uid.clone(),
        facts,
    };
    engine::decide(&suite.snapshot, &query)
}

/// Run every test of every suite.
pub fn run(suites: &[Suite]) -> Report {
    let files = suites
        .iter()
        .map(|suite| FileReport {
            file: suite.file.clone(),
            name: suite.name.clone(),
            matrices: suite.matrices.clone(),
            results: suite
                .tests
                .iter()
                .map(|spec| {
                    let outcome = decide(suite, spec);
                    let reasons_match = spec
                        .reasons
                        .as_ref()
                        .is_none_or(|want| *want == outcome.reasons);
                    TestResult {
                        pass: outcome.decision == spec.expect && reasons_match,
                        spec: spec.clone(),
                        outcome,
                    }
                })
                .collect(),
        })
        .collect();
    Report { files }
}

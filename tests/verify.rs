//! `orgwarden verify` and `orgwarden diff`, end to end: the binary on the
//! shipped model and on deliberately changed copies of its policies, with the
//! cvc5 solver. Every counterexample the binary reports is replayed here
//! again, through the library's engine, to check it is real.
//!
//! Without a solver these tests fail under CI (`CI` set) and are skipped,
//! with a message, elsewhere. Properties-file errors need no solver.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use orgwarden::engine::{self, Decision, RequestInput};
use orgwarden::names::EntityRef;
use orgwarden::{Paths, Snapshot, load};
use serde_json::Value;

use common::{copy_of_shipped, root, shipped};

/// Is the solver there? Under CI it must be.
fn solver() -> bool {
    match orgwarden::symbolic::solver_version() {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("the SMT solver is required under CI (scripts/install-cvc5): {e}")
        }
        Err(e) => {
            eprintln!("skipping: no SMT solver: {e}");
            false
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "output is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

fn orgwarden(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_orgwarden"))
        .current_dir(root())
        .env_remove("ORGWARDEN_POLICIES")
        .env_remove("ORGWARDEN_SCHEMA")
        .env_remove("ORGWARDEN_ENTITIES")
        .env_remove("ORGWARDEN_PROPERTIES")
        .args(args)
        .output()
        .expect("run orgwarden");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Replace `from` (which must occur) by `to` in the file.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// The text of the policy `@id(id)` in `file` (up to the next `@id`).
fn policy_block(file: &Path, id: &str) -> (String, usize, usize) {
    let text = std::fs::read_to_string(file).unwrap();
    let start = text
        .find(&format!("@id(\"{id}\")"))
        .unwrap_or_else(|| panic!("no policy {id}"));
    let end = text[start + 4..]
        .find("@id(")
        .map(|i| start + 4 + i)
        .unwrap_or(text.len());
    (text, start, end)
}

/// Change one policy's text in `file`.
fn edit_policy(file: &Path, id: &str, from: &str, to: &str) {
    let (text, start, end) = policy_block(file, id);
    let block = &text[start..end];
    assert!(
        block.contains(from),
        "policy {id} does not contain {from:?}"
    );
    let changed = format!(
        "{}{}{}",
        &text[..start],
        block.replacen(from, to, 1),
        &text[end..]
    );
    std::fs::write(file, changed).unwrap();
}

const UNION: &str = "union-of-default-and-explicit.cedar";

/// The weakening of R7 for one scope: for `see_flows`, the default-role
/// branch forgets `principal is Prefect::User`, so service accounts get the
/// default role's `see_flows`.
fn weaken_default_role(policies: &Path) {
    edit_policy(
        &policies.join(UNION),
        "union-of-default-and-explicit",
        "(principal is Prefect::User &&\n   resource has org &&",
        "((principal is Prefect::User || action == Prefect::Action::\"see_flows\") &&\n   resource has org &&",
    );
}

/// Decide a reported counterexample with the engine, on `paths`.
fn replay(paths: &Paths, counterexample: &Value) -> engine::Outcome {
    let snap: Snapshot = load(paths).unwrap_or_else(|d| panic!("{d}"));
    let request = &counterexample["request"];
    let entity = |v: &Value| {
        Some(EntityRef::Object {
            type_name: v["type"].as_str().unwrap().to_string(),
            id: v["id"].as_str().unwrap().to_string(),
        })
    };
    let input = RequestInput {
        principal: entity(&request["principal"]),
        action: entity(&request["action"]),
        resource: entity(&request["resource"]),
        context: Some(request["context"].clone()),
        entities: Some(counterexample["entities"].clone()),
        additional_entities: None,
        token: None,
    };
    let query = engine::prepare(&snap, &input).unwrap_or_else(|e| panic!("replay: {e}"));
    engine::decide(&snap, &query)
}

fn checks(report: &Value) -> &Vec<Value> {
    report["checks"].as_array().expect("checks")
}

fn failing(report: &Value) -> Vec<&Value> {
    checks(report)
        .iter()
        .filter(|c| c["status"] != "proved")
        .collect()
}

/// The entity of `uid` (`{"type", "id"}`) in a counterexample's store.
fn find_entity<'a>(counterexample: &'a Value, uid: &Value) -> Option<&'a Value> {
    counterexample["entities"]
        .as_array()?
        .iter()
        .find(|e| e["uid"]["type"] == uid["type"] && e["uid"]["id"] == uid["id"])
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

#[test]
fn verify_proves_every_property_of_the_shipped_model() {
    if !solver() {
        return;
    }
    let run = orgwarden(&["verify", "--format", "json"]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    assert_eq!(report["result"], "proved");
    assert!(failing(&report).is_empty(), "{:#?}", failing(&report));

    // Every environment has its never-errors check, every property its
    // environments, and nothing else ran.
    let snap = load(&shipped()).unwrap();
    let envs = orgwarden::symbolic::request_envs(&snap.schema);
    let properties = orgwarden::verify::read_properties(
        &root().join(orgwarden::verify::DEFAULT_PROPERTIES),
        &snap,
    )
    .unwrap();
    assert!(properties.len() >= 9, "the shipped properties are there");
    let expected = envs.len() + properties.iter().map(|p| p.envs.len()).sum::<usize>();
    assert_eq!(checks(&report).len(), expected);
    let count = |name: &str| {
        checks(&report)
            .iter()
            .filter(|c| c["property"] == name)
            .count()
    };
    assert_eq!(count("never-errors"), envs.len());
    for p in &properties {
        assert_eq!(count(&p.name), p.envs.len(), "{}", p.name);
    }
    // ~70 actions, for users and service accounts alike.
    let actions: BTreeSet<&str> = checks(&report)
        .iter()
        .filter_map(|c| c["environment"]["action"].as_str())
        .collect();
    assert!(actions.len() >= 60, "{} actions", actions.len());
    assert!(actions.contains("Prefect::Action::\"accept:invitation\""));
}

#[test]
fn admin_override_without_membership_check_breaks_r3_and_only_r3() {
    if !solver() {
        return;
    }
    let (_dir, paths) = copy_of_shipped();
    let file = paths.policies.join("admin-overrides.cedar");
    edit(
        &file,
        "principal in resource.org.admins &&\n  principal in resource.org",
        "principal in resource.org.admins",
    );
    let run = orgwarden(&[
        "verify",
        "--format",
        "json",
        "--policies",
        s(&paths.policies),
        "--schema",
        s(&paths.schema),
        "--entities",
        s(&paths.entities),
    ]);
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.json();
    assert_eq!(report["result"], "failed");
    let failing = failing(&report);
    let names: BTreeSet<&str> = failing
        .iter()
        .map(|c| c["property"].as_str().unwrap())
        .collect();
    // The tenant-boundary forbid still protects the model; the override on
    // its own no longer does.
    assert_eq!(names, BTreeSet::from(["admin-override-own-org-only"]));
    assert!(
        failing.len() >= 40,
        "every workspace action: {}",
        failing.len()
    );
    // The property tests the override alone: replay on that policy alone.
    let only_override = Paths {
        policies: file.clone(),
        ..paths.clone()
    };
    for c in &failing {
        assert_eq!(c["status"], "counterexample");
        assert_eq!(c["replay"]["confirmed"], true, "{c:#}");
        let cex = &c["counterexample"];
        let outcome = replay(&only_override, cex);
        assert_eq!(outcome.decision, Decision::Allow, "{c:#}");
        assert_eq!(outcome.reasons, vec!["admin-overrides".to_string()]);
        // The admin is not a member of the workspace's organization.
        let principal = find_entity(cex, &cex["request"]["principal"]).expect("principal");
        let workspace = find_entity(cex, &cex["request"]["resource"]).expect("workspace");
        let org = &workspace["attrs"]["org"]["__entity"];
        let parents = principal["parents"].as_array().unwrap();
        assert!(
            !parents
                .iter()
                .any(|p| p["type"] == org["type"] && p["id"] == org["id"]),
            "{c:#}"
        );
    }
    // The whole weakened model still denies them (defence in depth).
    let outcome = replay(&paths, &failing[0]["counterexample"]);
    assert_eq!(outcome.decision, Decision::Deny);
}

#[test]
fn default_role_for_service_accounts_breaks_r7() {
    if !solver() {
        return;
    }
    let (_dir, paths) = copy_of_shipped();
    weaken_default_role(&paths.policies);
    let run = orgwarden(&[
        "verify",
        "--policies",
        s(&paths.policies),
        "--schema",
        s(&paths.schema),
        "--entities",
        s(&paths.entities),
    ]);
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    // Text output: one line per check, the failure with its details.
    let failures: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("proved") && !l.starts_with("verify:"))
        .collect();
    assert_eq!(
        failures,
        vec![
            "counterexample  service-accounts-no-default-role (R7) [Prefect::ServiceAccount, \
             Prefect::Action::\"see_flows\", Prefect::Workspace]"
        ],
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("    request:  {"));
    assert!(run.stdout.contains("    entities: ["));
    assert!(
        run.stdout
            .contains("orgwarden engine: Allow (union-of-default-and-explicit)")
    );
    assert!(run.stdout.contains("-> confirmed"));
    let summary = run.stdout.lines().last().unwrap();
    assert!(
        summary.contains("1 counterexample(s), 0 unknown"),
        "{summary}"
    );

    // The request and entities lines are JSON: replay them on the whole
    // weakened model.
    let line = |prefix: &str| -> Value {
        let l = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line"));
        serde_json::from_str(l).unwrap()
    };
    let cex = &serde_json::json!({
        "request": line("    request:  "),
        "entities": line("    entities: "),
    });
    let outcome = replay(&paths, cex);
    assert_eq!(outcome.decision, Decision::Allow);
    assert_eq!(
        cex["request"]["principal"]["type"],
        "Prefect::ServiceAccount"
    );
    // No explicit role on the workspace: the default role did it.
    let sa = find_entity(cex, &cex["request"]["principal"]);
    let workspace = find_entity(cex, &cex["request"]["resource"]).expect("workspace");
    let key = workspace["attrs"]["key"].as_str().unwrap();
    assert!(sa.is_none_or(|sa| sa["tags"].get(key).is_none()), "{cex:#}");
    assert!(workspace["attrs"].get("defaultRole").is_some(), "{cex:#}");
    // The shipped model denies the same request on the same facts.
    assert_eq!(replay(&shipped(), cex).decision, Decision::Deny);
}

#[test]
fn a_policy_that_can_error_is_a_never_errors_counterexample() {
    if !solver() {
        return;
    }
    let (_dir, paths) = copy_of_shipped();
    std::fs::write(
        paths.policies.join("deadline.cedar"),
        r#"@id("deadline")
permit (principal is Prefect::User, action == Prefect::Action::"see_flows", resource is Prefect::Workspace)
when { context has time && context.time.offset(duration("1000000000d")) > datetime("2020-01-01") };
"#,
    )
    .unwrap();
    let run = orgwarden(&[
        "verify",
        "--format",
        "json",
        "--policies",
        s(&paths.policies),
        "--schema",
        s(&paths.schema),
        "--entities",
        s(&paths.entities),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    let errors: Vec<&Value> = failing(&report)
        .into_iter()
        .filter(|c| c["property"] == "never-errors")
        .collect();
    assert_eq!(errors.len(), 1, "{report:#}");
    let c = errors[0];
    assert_eq!(c["detail"], "can error: deadline");
    assert_eq!(c["replay"]["confirmed"], true);
    let outcome = replay(&paths, &c["counterexample"]);
    assert!(
        outcome.errors.iter().any(|e| e.contains("`deadline`")),
        "{outcome:?}"
    );
}

#[test]
fn undecided_queries_are_unknown_with_the_solvers_reason() {
    if !solver() {
        return;
    }
    // One millisecond per query: most time out.
    let run = orgwarden(&["verify", "--format", "json", "--timeout-ms", "1"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["result"], "failed");
    assert_eq!(report["summary"]["counterexamples"], 0);
    let unknown: Vec<&Value> = checks(&report)
        .iter()
        .filter(|c| c["status"] == "unknown")
        .collect();
    assert!(!unknown.is_empty());
    assert!(
        unknown
            .iter()
            .all(|c| c["detail"].as_str().unwrap().contains("solver: timeout")),
        "{unknown:#?}"
    );

    // diff cannot call undecided sets equivalent: exit 2.
    let (_dir, paths) = copy_of_shipped();
    weaken_default_role(&paths.policies);
    let run = orgwarden(&[
        "diff",
        s(&root().join("policies")),
        s(&paths.policies),
        "--format",
        "json",
        "--timeout-ms",
        "1",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["result"], "unknown");
    assert!(report["summary"]["unknown"].as_u64().unwrap() > 0);
}

#[test]
fn invalid_properties_are_reported_without_asking_the_solver() {
    let snap = load(&shipped()).unwrap();
    let path = PathBuf::from("props.yaml");
    let parse = |text: &str| orgwarden::verify::parse_properties(&path, text, &snap);
    let error = |text: &str| -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(errors) => errors.join("\n"),
        }
    };
    let permit_all = "permit (principal, action, resource);";
    let two_verbs = format!(
        "properties:\n  - name: a\n    never_allows: '{permit_all}'\n    must_imply: '{permit_all}'\n"
    );
    assert!(error(&two_verbs).contains("exactly one of"));
    assert!(error("properties:\n  - name: a\n").contains("exactly one of"));
    let bad_attr = "properties:\n  - name: a\n    never_allows: 'permit (principal, action, resource is Prefect::Workspace) when { resource.nope };'\n";
    assert!(error(bad_attr).contains("not valid for the schema"));
    let bad_cedar = "properties:\n  - name: a\n    never_allows: 'permit (principal'\n";
    assert!(error(bad_cedar).contains("property `a`: never_allows"));
    let unknown_policy = format!(
        "properties:\n  - name: a\n    policies: [no-such-policy]\n    never_allows: '{permit_all}'\n"
    );
    assert!(error(&unknown_policy).contains("`no-such-policy` matches no policy"));
    let bad_scope = format!(
        "properties:\n  - name: a\n    scope: {{principal: [Robot]}}\n    must_imply: '{permit_all}'\n"
    );
    assert!(error(&bad_scope).contains("scope"));
    let twice = format!(
        "properties:\n  - name: a\n    never_allows: '{permit_all}'\n  - name: a\n    never_allows: '{permit_all}'\n"
    );
    assert!(error(&twice).contains("used twice"));
    assert!(error("properties: [{name: a, typo: 1}]").contains("invalid properties file"));

    // A valid one: its scope selects environments by action group.
    let ok = parse(&format!(
        "properties:\n  - name: a\n    policies: ['tenant-boundary*']\n    scope: {{action: [org_admin]}}\n    never_allows: '{permit_all}'\n"
    ))
    .unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].subject.as_ref().map(Vec::len), Some(2));
    assert!(
        ok[0]
            .envs
            .iter()
            .all(|e| e.resource().to_string() == "Prefect::Organization")
    );
    assert_eq!(ok[0].envs.len(), 11 * 2);

    // The binary says so and exits 2.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, &two_verbs).unwrap();
    let run = orgwarden(&["verify", "--properties", s(&file)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("exactly one of"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------

fn diff(old: &Path, new: &Path) -> (i32, Value) {
    let run = orgwarden(&["diff", s(old), s(new), "--format", "json"]);
    assert!(
        run.code == 0 || run.code == 1,
        "exit {}: {}",
        run.code,
        run.stderr
    );
    (run.code, run.json())
}

fn changed(report: &Value) -> Vec<(String, String)> {
    report["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["change"] != "equivalent")
        .map(|e| {
            (
                format!(
                    "{} {}",
                    e["environment"]["principal"].as_str().unwrap(),
                    e["environment"]["action"].as_str().unwrap()
                ),
                e["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Check a witness: `allows` allows it and `denies` denies it, here too.
fn check_witness(witness: &Value, allows: &Paths, denies: &Paths) {
    assert_eq!(witness["replay"]["confirmed"], true, "{witness:#}");
    assert_eq!(
        replay(allows, witness).decision,
        Decision::Allow,
        "{witness:#}"
    );
    assert_eq!(
        replay(denies, witness).decision,
        Decision::Deny,
        "{witness:#}"
    );
}

#[test]
fn diff_of_a_reformatted_copy_is_equivalent() {
    if !solver() {
        return;
    }
    // One file, policies in reverse order, comments gone, one line each.
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    files.sort();
    files.reverse();
    let mut text = String::new();
    for f in files {
        let body: Vec<String> = std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| l.trim().to_string())
            .collect();
        for policy in body.join(" ").split_inclusive(';') {
            text.push_str(policy.trim());
            text.push('\n');
        }
    }
    let new = dir.path().join("all.cedar");
    std::fs::write(&new, &text).unwrap();
    let (code, report) = diff(&root().join("policies"), &new);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["result"], "equivalent");
    assert!(changed(&report).is_empty());
    assert_eq!(
        report["summary"]["equivalent"],
        report["summary"]["environments"]
    );
}

#[test]
fn diff_of_a_widened_policy_is_more_permissive_with_a_witness() {
    if !solver() {
        return;
    }
    let (_dir, paths) = copy_of_shipped();
    weaken_default_role(&paths.policies);
    let (code, report) = diff(&root().join("policies"), &paths.policies);
    assert_eq!(code, 1);
    assert_eq!(report["result"], "changed");
    assert_eq!(
        changed(&report),
        vec![(
            "Prefect::ServiceAccount Prefect::Action::\"see_flows\"".to_string(),
            "more_permissive".to_string()
        )]
    );
    let env = report["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["change"] == "more_permissive")
        .unwrap();
    assert!(env["more_restrictive"].is_null());
    check_witness(&env["more_permissive"], &paths, &shipped());
}

#[test]
fn diff_of_a_narrowed_set_is_more_restrictive_with_a_witness() {
    if !solver() {
        return;
    }
    let (_dir, paths) = copy_of_shipped();
    let file = paths.policies.join("org-admin-actions.cedar");
    let (text, start, end) = policy_block(&file, "org-member-read");
    std::fs::write(&file, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (code, report) = diff(&root().join("policies"), &paths.policies);
    assert_eq!(code, 1);
    let mut got = changed(&report);
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "Prefect::ServiceAccount Prefect::Action::\"read:account\"".to_string(),
                "more_restrictive".to_string()
            ),
            (
                "Prefect::User Prefect::Action::\"read:account\"".to_string(),
                "more_restrictive".to_string()
            ),
        ]
    );
    for env in report["environments"].as_array().unwrap() {
        if env["change"] == "more_restrictive" {
            check_witness(&env["more_restrictive"], &shipped(), &paths);
        }
    }
}

#[test]
fn diff_of_a_swap_changes_both_ways_with_two_witnesses() {
    if !solver() {
        return;
    }
    // `see_flows` and `see_blocks` are decided by each other's grants.
    let (_dir, paths) = copy_of_shipped();
    let file = paths.policies.join(UNION);
    let swapped = "(if action == Prefect::Action::\"see_flows\" then Prefect::Action::\"see_blocks\" \
                   else if action == Prefect::Action::\"see_blocks\" then Prefect::Action::\"see_flows\" \
                   else action)";
    for grants in [
        "principal.getTag(resource.key).grants",
        "Prefect::Role::\"collaborator\".grants",
        "resource.defaultRole.grants",
    ] {
        edit_policy(
            &file,
            "union-of-default-and-explicit",
            &format!("action in {grants}"),
            &format!("{swapped} in {grants}"),
        );
    }
    let (code, report) = diff(&root().join("policies"), &paths.policies);
    assert_eq!(code, 1);
    let mut got = changed(&report);
    got.sort();
    let both = |p: &str, a: &str| {
        (
            format!("Prefect::{p} Prefect::Action::\"{a}\""),
            "both".to_string(),
        )
    };
    assert_eq!(
        got,
        vec![
            both("ServiceAccount", "see_blocks"),
            both("ServiceAccount", "see_flows"),
            both("User", "see_blocks"),
            both("User", "see_flows"),
        ]
    );
    assert_eq!(report["summary"]["both"], 4);
    for env in report["environments"].as_array().unwrap() {
        if env["change"] == "both" {
            check_witness(&env["more_permissive"], &paths, &shipped());
            check_witness(&env["more_restrictive"], &shipped(), &paths);
        }
    }
    // The text report says the same, with both directions.
    let run = orgwarden(&["diff", s(&root().join("policies")), s(&paths.policies)]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("allowed by NEW, denied by OLD:"));
    assert!(run.stdout.contains("allowed by OLD, denied by NEW:"));
    assert!(run.stdout.lines().last().unwrap().contains("4 both"));
}

#[test]
fn diff_of_invalid_policies_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action, resource) when { resource.nope };",
    )
    .unwrap();
    let run = orgwarden(&["diff", s(&root().join("policies")), s(&bad)]);
    assert_eq!(run.code, 2, "{}", run.stdout);
    assert!(run.stderr.contains("NEW"), "{}", run.stderr);
}

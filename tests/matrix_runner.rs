//! `orgwarden test`: the shipped allow/deny matrices pass and cover every
//! rule, policy and action; and the runner fails when it should (a changed
//! policy, an invalid file, facts the loader rejects), in every format.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use orgwarden::load::{self, Paths};
use orgwarden::matrix::{self, Worlds};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// `Paths` has more inputs than these three (optional ones); the rest keep
// their defaults.
#[allow(clippy::field_reassign_with_default)]
fn shipped_paths() -> Paths {
    let mut paths = Paths::default();
    paths.policies = root().join("policies");
    paths.schema = root().join("schema");
    paths.entities = root().join("entities");
    paths
}

/// Run the binary from the crate root (where the default paths are).
fn orgwarden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orgwarden"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn shipped_report() -> matrix::Report {
    let files = matrix::discover(&[root().join("tests/matrices")]).expect("matrices exist");
    let paths = shipped_paths();
    let base = Arc::new(load::load(&paths).expect("the sample world loads"));
    let mut worlds = Worlds::new(base, paths);
    let suites = match matrix::load_suites(&files, &mut worlds) {
        Ok(s) => s,
        Err(errors) => panic!(
            "invalid shipped matrices:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    matrix::run(&suites)
}

#[test]
fn the_shipped_matrices_all_pass() {
    let report = shipped_report();
    assert!(
        report.passed() > 1000,
        "the matrices hold {} tests",
        report.passed()
    );
    let failures: Vec<String> = report
        .results()
        .filter(|(_, r)| !r.pass)
        .map(|(f, r)| {
            format!(
                "{}:{}: {}: {} {} {}: {}",
                f.file.strip_prefix(root()).unwrap_or(&f.file).display(),
                r.spec.pos,
                r.spec.field,
                r.spec.principal,
                r.spec.action,
                r.spec.resource,
                matrix::failure_message(r)
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} matrix test(s) fail: the policies disagree with DOMAIN.md here:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_shipped_matrices_cover_every_rule_policy_and_action() {
    let report = shipped_report();
    let base = load::load(&shipped_paths()).unwrap();
    let cov = matrix::coverage(&report, &base);
    let unused: Vec<&str> = cov.unused_policies.iter().map(|p| p.id.as_str()).collect();
    assert!(unused.is_empty(), "policies no test exercises: {unused:?}");
    assert!(
        cov.unexercised_actions.is_empty(),
        "actions no test requests: {:?}",
        cov.unexercised_actions
    );
    // One file (or more) per rule: r01-r02-org-roles.yaml covers R1 and R2.
    let mut rules = std::collections::BTreeSet::new();
    for f in &report.files {
        let name = f.file.file_name().unwrap().to_string_lossy().into_owned();
        let numbers: Vec<u32> = name
            .split(['-', '.'])
            .take_while(|part| part.starts_with('r') && part[1..].parse::<u32>().is_ok())
            .map(|part| part[1..].parse().unwrap())
            .collect();
        rules.extend(numbers);
    }
    let missing: Vec<u32> = (1..=15).filter(|n| !rules.contains(n)).collect();
    assert!(missing.is_empty(), "no matrix file for rules {missing:?}");
}

#[test]
fn the_cli_runs_the_default_directory() {
    let out = orgwarden(&["test"]);
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    let (passed, failed) = parse_counts(&last);
    assert!(passed > 1000, "{last}");
    let report = shipped_report();
    assert_eq!((passed, failed), (report.passed(), report.failed()));
    let code = if failed == 0 { 0 } else { 1 };
    assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
}

/// `N passed, M failed`, the closing line, exactly.
fn parse_counts(line: &str) -> (usize, usize) {
    let words: Vec<&str> = line.split(' ').collect();
    match words.as_slice() {
        [p, "passed,", f, "failed"] => (p.parse().unwrap(), f.parse().unwrap()),
        _ => panic!("not a closing line: {line:?}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn a_changed_policy_flips_a_cell_and_the_runner_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &policies);
    // Anyone may now accept any pending invitation.
    let file = policies.join("invitations.cedar");
    let original = std::fs::read_to_string(&file).unwrap();
    let changed = original.replace(
        "principal.email == resource.email",
        "principal.email like \"*\"",
    );
    assert_ne!(original, changed);
    std::fs::write(&file, changed).unwrap();
    let policies = policies.to_string_lossy().into_owned();
    let matrix_file = "tests/matrices/r04-invitations.yaml";

    let out = orgwarden(&["test", matrix_file, "--policies", &policies]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    // alice's `accept:invitation` cell is the first of its failures.
    let cell = r#"r04-invitations.yaml:11:23: matrix[0].expect."User::\"alice\""[0]"#;
    assert!(stdout.contains(cell), "{stdout}");
    let details = &stdout[stdout.find(cell).unwrap()..];
    assert!(details.contains("expected: deny"), "{details}");
    assert!(details.contains("actual:   allow"), "{details}");
    assert!(
        details.contains("determining policies: invitation-accept"),
        "{details}"
    );
    let row = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("User::\"alice\""))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[1..],
        ["✓", "FAIL"]
    );
    let (_, failed) = parse_counts(stdout.lines().last().unwrap());
    // alice, bob, gina, dave and erin may all accept it now.
    assert_eq!(failed, 5, "{stdout}");

    let out = orgwarden(&[
        "test",
        matrix_file,
        "--policies",
        &policies,
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["failed"], 5);
    let failing: Vec<&Value> = report["files"][0]["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pass"] == false)
        .collect();
    assert_eq!(failing.len(), 5);
    assert_eq!(failing[0]["principal"], r#"User::"alice""#);
    assert_eq!(failing[0]["action"], "accept:invitation");
    assert_eq!(failing[0]["expected"], "deny");
    assert_eq!(failing[0]["actual"], "allow");
    assert_eq!(
        failing[0]["reasons"],
        serde_json::json!(["invitation-accept"])
    );
}

#[test]
fn an_invalid_file_exits_2_naming_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"name: bad
matrix:
  - resource: Workspace::"acme-prod"
    actions: [see_flows, run_deployments, manage_workspace_users]
    expect:
      User::"alice": [allow, allow]
"#,
    )
    .unwrap();
    let out = orgwarden(&["test", &bad.to_string_lossy()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        r#"{}:6:7: matrix[0].expect."User::\"alice\"": 2 decisions for 3 actions"#,
        bad.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(out.stdout.is_empty());

    // Mistyped names are errors too, each at its field.
    std::fs::write(
        &bad,
        r#"matrix:
  - resource: Workspace::"acme-prod"
    actions: [see_flows, run_deploymentz]
    expect:
      User::"alise": [allow, allow]
      ServiceAccount::"ci-bot": [allow, allow]
cases:
  - principal: ServiceAccount::"ci-bot"
    action: "accept:invitation"
    resource: Invitation::"acme-ivan"
    expect: deny
  - principal: Organisation::"acme"
    action: see_flows
    resource: Workspace::"acme-prod"
    expect: deny
"#,
    )
    .unwrap();
    let out = orgwarden(&["test", &bad.to_string_lossy()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = bad.display().to_string();
    for want in [
        format!("{file}:3:26: matrix[0].actions[1]: unknown action `run_deploymentz`"),
        format!(
            r#"{file}:5:7: matrix[0].expect."User::\"alise\"": principal Prefect::User::"alise" is not in the facts"#
        ),
        format!(
            "{file}:8:16: cases[0].principal: for action `accept:invitation`: principal type `Prefect::ServiceAccount` is not valid"
        ),
        format!("{file}:12:16: cases[1].principal: principal: unknown entity type `Organisation`"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in\n{stderr}");
    }
}

#[test]
fn junit_output_is_xml_with_the_right_counts() {
    use quick_xml::events::Event;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("tests/matrices/r04-invitations.yaml"),
        tmp.path().join("a.yaml"),
    )
    .unwrap();
    // One wrong expectation, with characters XML must escape in its name.
    std::fs::write(
        tmp.path().join("b.yaml"),
        r#"name: "<b> & \"c\""
cases:
  - name: "carol <runs> & 'deploys'"
    principal: User::"carol"
    action: run_deployments
    resource: Workspace::"acme-prod"
    expect: allow
"#,
    )
    .unwrap();
    let out = orgwarden(&["test", &tmp.path().to_string_lossy(), "--format", "junit"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let xml = text(&out.stdout);
    let mut reader = quick_xml::Reader::from_str(&xml);
    // Per suite: (name, tests attr, failures attr, testcases seen, failures seen).
    let mut suites: Vec<(String, usize, usize, usize, usize)> = Vec::new();
    let mut totals = (0, 0);
    let attr = |e: &quick_xml::events::BytesStart, name: &str| -> String {
        e.try_get_attribute(name)
            .unwrap()
            .unwrap()
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .unwrap()
            .into_owned()
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                "testsuites" => {
                    totals = (
                        attr(&e, "tests").parse().unwrap(),
                        attr(&e, "failures").parse().unwrap(),
                    )
                }
                "testsuite" => suites.push((
                    attr(&e, "name"),
                    attr(&e, "tests").parse().unwrap(),
                    attr(&e, "failures").parse().unwrap(),
                    0,
                    0,
                )),
                "testcase" => suites.last_mut().unwrap().3 += 1,
                "failure" => {
                    assert!(attr(&e, "message").contains("expected allow, got deny"));
                    suites.last_mut().unwrap().4 += 1;
                }
                _ => {}
            },
            _ => {}
        }
    }
    assert_eq!(suites.len(), 2, "{xml}");
    for (name, tests, failures, seen_tests, seen_failures) in &suites {
        assert_eq!((tests, failures), (seen_tests, seen_failures), "{name}");
    }
    assert_eq!(suites[1].0, r#"<b> & "c""#);
    assert_eq!((suites[1].1, suites[1].2), (1, 1));
    assert_eq!(suites[0].2, 0);
    let all: usize = suites.iter().map(|s| s.1).sum();
    assert_eq!(totals, (all, 1));
}

#[test]
fn coverage_names_the_policies_and_actions_a_run_left_out() {
    let out = orgwarden(&["test", "tests/matrices/r04-invitations.yaml", "--coverage"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let section = &stdout[stdout.find("coverage:").expect("a coverage section")..];
    let unused: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.contains("policies that determined no decision"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(unused.contains(&"personal-owner"), "{section}");
    assert!(unused.contains(&"admin-overrides"), "{section}");
    assert!(!unused.contains(&"invitation-accept"), "{section}");
    assert!(!unused.contains(&"tenant-boundary"), "{section}");
    assert!(
        section.contains("personal-owner  (policies/personal-owner.cedar:"),
        "{section}"
    );
    let actions: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.contains("actions no test exercises"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert!(actions.contains(&"manage_workers"), "{section}");
    assert!(actions.contains(&"delete:workspace"), "{section}");
    assert!(!actions.contains(&"accept:invitation"), "{section}");
    assert!(!actions.contains(&"see_flows"), "{section}");
    // The closing line stays last.
    parse_counts(stdout.lines().last().unwrap());

    let out = orgwarden(&[
        "test",
        "tests/matrices/r04-invitations.yaml",
        "--coverage",
        "--format",
        "json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = report["coverage"]["unused_policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"personal-owner"), "{ids:?}");
    assert!(!ids.contains(&"invitation-accept"), "{ids:?}");
}

/// A world the loader must reject, used through a matrix's `entities_path`:
/// the runner reports an invalid file (exit 2) with the loader's reason.
fn rejected_world(change: impl Fn(&mut Vec<Value>), rule: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let world = tmp.path().join("world");
    copy_dir(&root().join("entities"), &world);
    let acme = world.join("acme.json");
    let mut entities: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&acme).unwrap()).unwrap();
    change(&mut entities);
    std::fs::write(&acme, serde_json::to_string_pretty(&entities).unwrap()).unwrap();
    let file = tmp.path().join("t.yaml");
    std::fs::write(
        &file,
        "name: t\nentities_path: world\ncases:\n  - {principal: User::\"alice\", action: see_flows, resource: Workspace::\"acme-prod\", expect: allow}\n",
    )
    .unwrap();
    let out = orgwarden(&["test", &file.to_string_lossy()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!("{}:2:16: entities_path: the entities at", file.display());
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.contains(rule), "{rule} in {stderr}");

    // The same file on the unchanged world passes.
    copy_dir(&root().join("entities"), &world);
    let out = orgwarden(&["test", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

fn entity<'a>(entities: &'a mut [Value], id: &str) -> &'a mut Value {
    entities
        .iter_mut()
        .find(|e| e["uid"]["id"] == id)
        .unwrap_or_else(|| panic!("no entity {id}"))
}

#[test]
fn r5_a_service_account_among_the_admins_is_rejected_at_load_time() {
    rejected_world(
        |es| {
            let bot = entity(es, "ci-bot");
            bot["parents"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "Prefect::OrgAdmins", "id": "acme-admins"}));
        },
        "R5",
    );
}

#[test]
fn r6_a_grant_to_someone_outside_the_organization_is_rejected_at_load_time() {
    rejected_world(
        |es| {
            // carol leaves acme but keeps a role in acme-prod.
            let carol = entity(es, "carol");
            carol["parents"] = serde_json::json!([]);
            carol["tags"] = serde_json::json!({
                "acme-prod": {"__entity": {"type": "Prefect::Role", "id": "runner"}}
            });
        },
        "R6",
    );
}

#[test]
fn r11_a_duplicate_handle_in_an_organization_is_rejected_at_load_time() {
    rejected_world(
        |es| {
            entity(es, "acme-sandbox")["attrs"]["handle"] = Value::from("prod");
        },
        "R11",
    );
}

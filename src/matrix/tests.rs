//! Unit tests of the matrix module: parsing, preparing, running and
//! rendering small files against a small model.

use super::format::join_key;
use super::*;
use crate::engine::Decision;
use serde_json::json;

const SCHEMA: &str = r#"
        namespace T {
          entity Group;
          entity User in [Group] = { email: String };
          entity Bot;
          entity Doc = { owner: User };
          action docs;
          action read in [docs] appliesTo { principal: [User, Bot], resource: [Doc], context: { ip?: ipaddr } };
          action write in [docs] appliesTo { principal: [User], resource: [Doc] };
          action delete appliesTo { principal: [User], resource: [Doc] };
        }
    "#;
const POLICIES: &str = r#"
        @id("owner-writes")
        permit (principal, action in [T::Action::"read", T::Action::"write"], resource)
        when { resource.owner == principal };
        @id("readers-read")
        permit (principal in T::Group::"readers", action == T::Action::"read", resource);
        @id("never-deletes")
        permit (principal in T::Group::"nobody", action == T::Action::"delete", resource);
    "#;
const ENTITIES: &str = r#"[
        {"uid": {"type": "T::Group", "id": "readers"}, "attrs": {}, "parents": []},
        {"uid": {"type": "T::User", "id": "ann"}, "attrs": {"email": "ann@x"}, "parents": []},
        {"uid": {"type": "T::User", "id": "ben"}, "attrs": {"email": "ben@x"},
         "parents": [{"type": "T::Group", "id": "readers"}]},
        {"uid": {"type": "T::Bot", "id": "b1"}, "attrs": {}, "parents": []},
        {"uid": {"type": "T::Doc", "id": "d1"},
         "attrs": {"owner": {"__entity": {"type": "T::User", "id": "ann"}}}, "parents": []}
    ]"#;

/// A tiny world on disk, and the worlds of a run on it.
struct World {
    dir: tempfile::TempDir,
    worlds: Worlds,
}

// `Paths` has more inputs than these three (optional ones); the rest keep
// their defaults.
#[allow(clippy::field_reassign_with_default)]
fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("schema/t.cedarschema", SCHEMA);
    write("policies/p.cedar", POLICIES);
    write("entities/e.json", ENTITIES);
    let mut paths = Paths::default();
    paths.policies = dir.path().join("policies");
    paths.schema = dir.path().join("schema");
    paths.entities = dir.path().join("entities");
    let base = Arc::new(load::load(&paths).expect("the test world loads"));
    World {
        worlds: Worlds::new(base, paths),
        dir,
    }
}

fn parse_str(text: &str) -> Result<TestFile, FileError> {
    parse(Path::new("t.yaml"), text)
}

fn prepare_str(w: &mut World, text: &str) -> Result<Suite, Vec<FileError>> {
    let path = w.dir.path().join("tests/t.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = parse(&path, text).map_err(|e| vec![e])?;
    prepare(&file, &mut w.worlds)
}

fn errors_of(w: &mut World, text: &str) -> Vec<String> {
    prepare_str(w, text)
        .expect_err("the file is invalid")
        .iter()
        .map(|e| format!("{}: {}: {}", e.pos.unwrap(), e.field, e.message))
        .collect()
}

const GOOD: &str = r#"name: docs
matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, allow]
      User::"ben": [allow, deny]
      Bot::"b1": [deny]
cases:
  - name: ann reads her doc
    principal: User::"ann"
    action: read
    resource: T::Doc::"d1"
    expect: allow
    reasons: [owner-writes]
"#;

#[test]
fn a_row_with_the_wrong_number_of_decisions_names_file_line_and_field() {
    let e = parse_str(GOOD).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"t.yaml:8:7: matrix[0].expect."Bot::\"b1\"": 1 decision for 2 actions"#
    );
}

#[test]
fn parsing_keeps_rows_in_order_with_their_positions() {
    let f = parse_str(&GOOD.replace("[deny]", "[deny, deny]")).unwrap();
    assert_eq!(f.name, "docs");
    let m = &f.matrices[0];
    let rows: Vec<(&str, Pos)> = m
        .rows
        .iter()
        .map(|r| (r.principal.value.as_str(), r.principal.pos))
        .collect();
    assert_eq!(
        rows,
        [
            ("User::\"ann\"", Pos { line: 6, column: 7 }),
            ("User::\"ben\"", Pos { line: 7, column: 7 }),
            ("Bot::\"b1\"", Pos { line: 8, column: 7 }),
        ]
    );
    assert_eq!(m.rows[1].decisions[1].value, Decision::Deny);
    assert_eq!(
        m.rows[1].decisions[1].field,
        r#"matrix[0].expect."User::\"ben\""[1]"#
    );
    assert_eq!(
        m.actions[1].pos,
        Pos {
            line: 4,
            column: 21
        }
    );
    assert_eq!(f.cases[0].field, "cases[0]");
    assert_eq!(
        f.cases[0].reasons.as_ref().unwrap()[0].value,
        "owner-writes"
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let e = parse_str("matrix:\n  - resource: Doc::\"d1\"\n    actoins: [read]\n").unwrap_err();
    assert_eq!(e.field, "matrix[0].actoins");
    assert_eq!(e.pos, Some(Pos { line: 3, column: 5 }));
    assert!(e.message.contains("unknown field `actoins`"), "{e}");
    let e = parse_str("name: x\ncase: []\n").unwrap_err();
    assert_eq!(e.field, "case");
    let e = parse_str("cases:\n  - principal: User::\"ann\"\n    action: read\n    resource: Doc::\"d1\"\n    expect: allow\n    reason: []\n").unwrap_err();
    assert_eq!(e.field, "cases[0].reason");
}

#[test]
fn shape_errors_inside_a_row_name_the_row() {
    let e = parse_str(
        "matrix:\n  - resource: D\n    actions: [a]\n    expect:\n      User::\"ann\": allow\n",
    )
    .unwrap_err();
    assert_eq!(e.field, r#"matrix[0].expect."User::\"ann\"""#);
    assert_eq!(e.pos.map(|p| p.line), Some(5));
}

#[test]
fn decisions_are_allow_or_deny() {
    let e = parse_str("matrix:\n  - resource: D\n    actions: [a, b]\n    expect:\n      U::\"x\": [allow, alow]\n")
            .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"t.yaml:5:23: matrix[0].expect."U::\"x\""[1]: `alow` is not a decision: write allow or deny"#
    );
    let e = parse_str(
        "cases:\n  - {principal: U::\"x\", action: a, resource: D::\"d\", expect: maybe}\n",
    )
    .unwrap_err();
    assert_eq!(e.field, "cases[0].expect");
}

#[test]
fn a_file_without_tests_is_invalid() {
    assert!(parse_str("name: nothing\n").is_err());
    assert!(parse_str("").is_err());
    assert!(parse_str("matrix: []\ncases: []\n").is_err());
    let e = parse_str("matrix:\n  - resource: D\n    actions: []\n    expect: {}\n").unwrap_err();
    assert_eq!(e.field, "matrix[0].actions");
    let e =
        parse_str("matrix:\n  - resource: D\n    actions: [a, a]\n    expect: {}\n").unwrap_err();
    assert_eq!(e.field, "matrix[0].actions[1]");
}

#[test]
fn field_paths_quote_keys_that_are_not_identifiers() {
    assert_eq!(join_key("", "matrix"), "matrix");
    assert_eq!(join_key("a", "entities_path"), "a.entities_path");
    assert_eq!(join_key("a", r#"User::"x""#), r#"a."User::\"x\"""#);
    assert_eq!(join_key("a", "1x"), r#"a."1x""#);
}

#[test]
fn mistyped_names_are_errors_not_denials() {
    let mut w = world();
    let errors = errors_of(
        &mut w,
        r#"matrix:
  - resource: Doc::"d1"
    actions: [read, wirte, docs, Action::"read"]
    expect:
      User::"ann": [allow, allow, allow, allow]
      Usr::"ann": [allow, allow, allow, allow]
      User::"zoe": [allow, allow, allow, allow]
cases:
  - principal: Bot::"b1"
    action: write
    resource: Doc::"d1"
    expect: deny
  - principal: User::"ann"
    action: read
    resource: Doc::"d2"
    context: { ip: "nope" }
    expect: deny
  - principal: User::"ann"
    action: read
    resource: Doc::"d1"
    context: { ip: "nope" }
    expect: deny
    reasons: [owner-write]
"#,
    );
    let expected = [
        "3:21: matrix[0].actions[1]: unknown action `wirte`",
        "3:28: matrix[0].actions[2]: action T::Action::\"docs\" is an action group: it applies to no principal or resource",
        "3:34: matrix[0].actions[3]: `Action::\"read\"` is the same action as `read`",
        "6:7: matrix[0].expect.\"Usr::\\\"ann\\\"\": principal: unknown entity type `Usr`",
        "7:7: matrix[0].expect.\"User::\\\"zoe\\\"\": principal T::User::\"zoe\" is not in the facts (no such entity is loaded)",
        "9:16: cases[0].principal: for action `write`: principal type `T::Bot` is not valid for `T::Action::\"write\"`",
        "15:15: cases[1].resource: resource T::Doc::\"d2\" is not in the facts (no such entity is loaded)",
        "21:14: cases[2].context: for action `read`: error while evaluating `ipaddr` extension function: invalid IP address: nope",
        "23:15: cases[2].reasons[0]: no policy has the id `owner-write`",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(expected) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}

#[test]
fn a_principal_type_the_action_does_not_allow_names_the_cell() {
    let mut w = world();
    let errors = errors_of(
        &mut w,
        "matrix:\n  - resource: Doc::\"d1\"\n    actions: [read, write]\n    expect:\n      Bot::\"b1\": [deny, deny]\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
            errors[0].starts_with(
                "5:25: matrix[0].expect.\"Bot::\\\"b1\\\"\"[1]: for action `write`: principal type `T::Bot` is not valid"
            ),
            "{errors:?}"
        );
}

#[test]
fn rows_written_two_ways_for_one_principal_are_rejected() {
    let mut w = world();
    let errors = errors_of(
        &mut w,
        "matrix:\n  - resource: Doc::\"d1\"\n    actions: [read]\n    expect:\n      User::\"ann\": [allow]\n      T::User::\"ann\": [allow]\n",
    );
    assert_eq!(
        errors,
        [
            "6:7: matrix[0].expect.\"T::User::\\\"ann\\\"\": this is the same principal as the row `User::\"ann\"`"
        ]
    );
}

#[test]
fn runs_through_the_engine_and_reports_each_cell_and_case() {
    let mut w = world();
    let suite = prepare_str(
        &mut w,
        r#"matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, allow]
      User::"ben": [allow, allow]
      Bot::"b1": [deny, deny]
cases:
  - principal: User::"ann"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
  - principal: User::"ben"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
"#,
    );
    // Bot::"b1" cannot `write` (schema): fix the row and run.
    assert!(suite.is_err());
    let suite = prepare_str(
        &mut w,
        r#"matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, allow]
      User::"ben": [allow, allow]
cases:
  - principal: User::"ann"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
  - principal: User::"ben"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [owner-writes]
  - principal: Bot::"b1"
    action: read
    resource: Doc::"d1"
    expect: deny
"#,
    )
    .unwrap();
    let report = run(&[suite]);
    let verdicts: Vec<(&str, bool)> = report
        .results()
        .map(|(_, r)| (r.spec.field.as_str(), r.pass))
        .collect();
    assert_eq!(
        verdicts,
        [
            (r#"matrix[0].expect."User::\"ann\""[0]"#, true),
            (r#"matrix[0].expect."User::\"ann\""[1]"#, true),
            (r#"matrix[0].expect."User::\"ben\""[0]"#, true),
            // ben is a reader, not the owner: write is denied.
            (r#"matrix[0].expect."User::\"ben\""[1]"#, false),
            ("cases[0]", true),
            // Allowed as expected, but by readers-read.
            ("cases[1]", false),
            ("cases[2]", true),
        ]
    );
    assert_eq!((report.passed(), report.failed()), (5, 2));
    let (_, ben_write) = report.results().nth(3).unwrap();
    assert_eq!(failure_message(ben_write), "expected allow, got deny");
    let (_, ben_read) = report.results().nth(5).unwrap();
    assert_eq!(
        failure_message(ben_read),
        "allow as expected, but determined by [readers-read] instead of [owner-writes]"
    );
}

#[test]
fn file_entities_are_added_to_the_facts_for_that_file_only() {
    let mut w = world();
    let text = r#"entities:
  - uid: { type: T::User, id: cy }
    attrs: { email: cy@x }
    parents: [{ type: T::Group, id: readers }]
cases:
  - principal: User::"cy"
    action: read
    resource: Doc::"d1"
    expect: allow
    reasons: [readers-read]
"#;
    let report = run(&[prepare_str(&mut w, text).unwrap()]);
    assert_eq!((report.passed(), report.failed()), (1, 0));
    // Without the file's entities, cy does not exist.
    let without = text.split_once("cases:").unwrap().1;
    let errors = errors_of(&mut w, &format!("cases:{without}"));
    assert!(errors[0].contains("is not in the facts"), "{errors:?}");
    // An entity that does not conform to the schema is an error at its item.
    let errors = errors_of(&mut w, &text.replace("attrs: { email: cy@x }", "attrs: {}"));
    assert!(errors[0].starts_with("2:5: entities[0]: "), "{errors:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn entities_path_replaces_the_entities_relative_to_the_file() {
    let mut w = world();
    let other = w.dir.path().join("tests/fixtures/other");
    std::fs::create_dir_all(&other).unwrap();
    // Here ann is a reader and ben is not.
    let swapped = ENTITIES
            .replace(r#""id": "ann"}, "attrs": {"email": "ann@x"}, "parents": []"#, r#""id": "ann"}, "attrs": {"email": "ann@x"}, "parents": [{"type": "T::Group", "id": "readers"}]"#)
            .replace(r#"{"email": "ben@x"},
         "parents": [{"type": "T::Group", "id": "readers"}]"#, r#"{"email": "ben@x"}, "parents": []"#);
    assert_ne!(swapped, ENTITIES);
    std::fs::write(other.join("e.json"), swapped).unwrap();
    let suite = prepare_str(
        &mut w,
        r#"entities_path: fixtures/other
matrix:
  - resource: Doc::"d1"
    actions: [read]
    expect:
      User::"ben": [deny]
"#,
    )
    .unwrap();
    assert_eq!(run(&[suite]).failed(), 0);
    let errors = errors_of(
        &mut w,
        "entities_path: fixtures/none\ncases:\n  - {principal: User::\"ann\", action: read, resource: Doc::\"d1\", expect: allow}\n",
    );
    assert!(
        errors[0].starts_with("1:16: entities_path: cannot read"),
        "{errors:?}"
    );
}

fn sample_report(w: &mut World) -> Report {
    let suite = prepare_str(
        w,
        r#"name: "docs <&> \"quoted\""
matrix:
  - resource: Doc::"d1"
    actions: [read, write]
    expect:
      User::"ann": [allow, deny]
cases:
  - name: "a <case> & 'more'"
    principal: User::"ben"
    action: read
    resource: Doc::"d1"
    expect: allow
"#,
    )
    .unwrap();
    run(&[suite])
}

#[test]
fn pretty_output_ends_with_the_counts_and_marks_failing_cells() {
    let mut w = world();
    let report = sample_report(&mut w);
    let text = render_pretty(&report, None);
    assert_eq!(text.lines().last(), Some("2 passed, 1 failed"));
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("User::\"ann\""))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["User::\"ann\"", "✓", "✓", "FAIL"]
    );
    assert!(text.contains("expected: deny"), "{text}");
    assert!(text.contains("actual:   allow"), "{text}");
    assert!(
        text.contains("determining policies: owner-writes"),
        "{text}"
    );
    assert!(
        text.contains("    ok    a <case> & 'more': User::\"ben\" read Doc::\"d1\" -> allow"),
        "{text}"
    );
}

#[test]
fn junit_is_well_formed_and_counts_tests_and_failures() {
    use quick_xml::events::Event;
    let mut w = world();
    let report = sample_report(&mut w);
    let cov = coverage(&report, &w.worlds.base);
    let xml = render_junit(&report, Some(&cov));
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut cases, mut failures) = (0, 0);
    let mut names = Vec::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                "testcase" => cases += 1,
                "failure" => failures += 1,
                "testsuite" => {
                    let name = e.try_get_attribute("name").unwrap().unwrap();
                    let name = name
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap();
                    names.push(name.to_string());
                }
                _ => {}
            },
            _ => {}
        }
    }
    assert_eq!((cases, failures), (3, 1), "{xml}");
    assert_eq!(names, ["docs <&> \"quoted\"", "coverage"]);
    assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
    assert!(
        xml.contains("a &lt;case&gt; &amp; &apos;more&apos;"),
        "{xml}"
    );
    assert!(
        xml.contains("never-deletes"),
        "coverage is in the report: {xml}"
    );
}

#[test]
fn json_report_has_each_test_with_expected_actual_reasons_and_pass() {
    let mut w = world();
    let report = sample_report(&mut w);
    let v = render_json(&report, None);
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64()),
        (Some(2), Some(1))
    );
    let t = &v["files"][0]["tests"][1];
    assert_eq!(t["kind"], "cell");
    assert_eq!(t["action"], "write");
    assert_eq!(t["request"]["principal"], "T::User::\"ann\"");
    assert_eq!(
        (t["expected"].as_str(), t["actual"].as_str()),
        (Some("deny"), Some("allow"))
    );
    assert_eq!(t["reasons"], json!(["owner-writes"]));
    assert_eq!(t["pass"], false);
    assert_eq!(t["line"], 6);
    assert!(v.get("coverage").is_none());
}

#[test]
fn coverage_lists_unused_policies_and_unexercised_actions() {
    let mut w = world();
    let report = sample_report(&mut w);
    let cov = coverage(&report, &w.worlds.base);
    let unused: Vec<&str> = cov.unused_policies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(unused, ["never-deletes"]);
    assert_eq!(cov.unused_policies[0].line, Some(7));
    assert_eq!(cov.unexercised_actions, ["delete"]);
    assert_eq!((cov.policies, cov.actions), (3, 3));
}

#[test]
fn discover_finds_yaml_files_recursively_and_rejects_empty_directories() {
    let dir = tempfile::tempdir().unwrap();
    for rel in [
        "b.yaml",
        "a/c.yml",
        "a/d.json",
        ".hidden/e.yaml",
        "a/.f.yaml",
    ] {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }
    let found = discover(&[dir.path().to_path_buf()]).unwrap();
    let rel: Vec<_> = found
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
        .collect();
    assert_eq!(rel, [PathBuf::from("a/c.yml"), PathBuf::from("b.yaml")]);
    let empty = dir.path().join(".hidden");
    std::fs::remove_file(empty.join("e.yaml")).unwrap();
    assert!(discover(&[empty]).is_err());
    assert!(discover(&[dir.path().join("missing")]).is_err());
}

#[test]
fn execute_exit_codes_are_0_1_and_2() {
    let w = world();
    let tests = w.dir.path().join("tests");
    std::fs::create_dir_all(&tests).unwrap();
    let file = tests.join("t.yaml");
    let opts = Options {
        inputs: vec![tests.clone()],
        world: w.worlds.paths.clone(),
        format: Format::Pretty,
        coverage: false,
    };
    let exec = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = execute(&opts, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    let case = |expect: &str| {
        format!(
            "cases:\n  - {{principal: User::\"ann\", action: read, resource: Doc::\"d1\", expect: {expect}}}\n"
        )
    };
    let (code, out, _) = exec(&case("allow"));
    assert_eq!(
        (code, out.lines().last()),
        (EXIT_PASSED, Some("1 passed, 0 failed"))
    );
    let (code, out, _) = exec(&case("deny"));
    assert_eq!(
        (code, out.lines().last()),
        (EXIT_FAILED, Some("0 passed, 1 failed"))
    );
    let (code, out, err) = exec(&case("perhaps"));
    assert_eq!(code, EXIT_INVALID);
    assert!(out.is_empty());
    assert!(
        err.contains("t.yaml:2:73: cases[0].expect: `perhaps` is not a decision"),
        "{err}"
    );
}

//! Load-time checks: bad facts, policies and schemas are refused with a
//! message that names the rule, the file and, where possible, the line.
//!
//! Each test copies the shipped model into a temporary directory, makes one
//! bad edit, loads, and looks at the diagnostic a user would read. The last
//! tests go through the `orgwarden` binary: exit codes and output of
//! `check` and `authorize`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use orgwarden::diag::{Diagnostic, Diagnostics};
use orgwarden::load::{self, Paths};
use serde_json::{Value, json};

/// A copy of the shipped model in a temporary directory.
struct Model {
    dir: tempfile::TempDir,
}

impl Model {
    fn shipped() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for sub in ["policies", "schema", "entities"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(root.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    std::fs::copy(&path, dir.path().join(sub).join(path.file_name().unwrap()))
                        .unwrap();
                }
            }
        }
        Model { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).unwrap();
    }

    /// Replace the first `from` in `rel` (which must contain it).
    fn replace(&self, rel: &str, from: &str, to: &str) {
        let text = self.read(rel);
        assert!(text.contains(from), "{rel} does not contain {from:?}");
        self.write(rel, &text.replacen(from, to, 1));
    }

    /// Edit an entities file as JSON; it is written back pretty-printed.
    fn edit_entities(&self, rel: &str, edit: impl FnOnce(&mut Vec<Value>)) {
        let mut items: Vec<Value> = serde_json::from_str(&self.read(rel)).unwrap();
        edit(&mut items);
        self.write(rel, &serde_json::to_string_pretty(&items).unwrap());
    }

    fn paths(&self) -> Paths {
        Paths {
            policies: self.path("policies"),
            schema: self.path("schema"),
            entities: self.path("entities"),
            ..Paths::default()
        }
    }

    fn load(&self) -> Result<orgwarden::Snapshot, Diagnostics> {
        load::load(&self.paths())
    }

    /// The load must fail; its errors.
    fn errors(&self) -> Vec<Diagnostic> {
        match self.load() {
            Ok(_) => panic!("the model loaded, but an error was expected"),
            Err(d) => d.errors().cloned().collect(),
        }
    }

    /// The load must fail with exactly one error, containing every needle.
    fn only_error(&self, needles: &[&str]) -> Diagnostic {
        let errors = self.errors();
        let shown: Vec<String> = errors.iter().map(Diagnostic::summary).collect();
        assert_eq!(errors.len(), 1, "expected one error, got {shown:#?}");
        let d = errors.into_iter().next().unwrap();
        for n in needles {
            assert!(d.message.contains(n), "{n:?} not in {:?}", d.message);
        }
        d
    }

    /// The load must fail with an error containing every needle (others
    /// may follow from it).
    fn error_with(&self, needles: &[&str]) -> Diagnostic {
        let errors = self.errors();
        let shown: Vec<String> = errors.iter().map(Diagnostic::summary).collect();
        errors
            .into_iter()
            .find(|d| needles.iter().all(|n| d.message.contains(n)))
            .unwrap_or_else(|| panic!("no error with {needles:?} in {shown:#?}"))
    }

    /// `d` is in file `rel`, at a line where (or within 3 lines after) `needle` appears.
    fn assert_points_at(&self, d: &Diagnostic, rel: &str, needle: &str) {
        assert_eq!(
            d.file.as_deref(),
            Some(self.path(rel).as_path()),
            "{}",
            d.summary()
        );
        let line = d
            .line
            .unwrap_or_else(|| panic!("no line in {}", d.summary()));
        let text = self.read(rel);
        let window: Vec<&str> = text.lines().skip(line - 1).take(4).collect();
        assert!(
            window.iter().any(|l| l.contains(needle)),
            "{} does not point at {needle:?}: lines {line}.. are {window:#?}",
            d.summary()
        );
        assert!(
            d.summary()
                .starts_with(&format!("{}:{line}", self.path(rel).display()))
        );
    }
}

fn entity<'a>(items: &'a mut [Value], ty: &str, id: &str) -> &'a mut Value {
    items
        .iter_mut()
        .find(|e| e["uid"]["type"] == format!("Prefect::{ty}") && e["uid"]["id"] == id)
        .unwrap_or_else(|| panic!("no {ty} {id}"))
}

fn uid(ty: &str, id: &str) -> Value {
    json!({"type": format!("Prefect::{ty}"), "id": id})
}

fn role_ref(id: &str) -> Value {
    json!({"__entity": uid("Role", id)})
}

/// 1-based line and column of the first `needle` in `text`.
fn position_of(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

#[test]
fn shipped_model_loads() {
    let m = Model::shipped();
    let snap = m.load().unwrap_or_else(|d| panic!("{d}"));
    assert!(snap.policy_count() > 0 && snap.entity_count() > 0);
}

// ---------------------------------------------------------------------------
// Facts.

#[test]
fn r5_service_account_among_admins_is_refused_in_the_domains_words() {
    let m = Model::shipped();
    m.edit_entities("entities/acme.json", |items| {
        let bot = entity(items, "ServiceAccount", "ci-bot");
        bot["parents"]
            .as_array_mut()
            .unwrap()
            .push(uid("OrgAdmins", "acme-admins"));
    });
    let d = m.only_error(&["R5", "ci-bot", "acme-admins", "never an Admin"]);
    assert!(d.message.contains("only be a Member"), "{}", d.message);
    m.assert_points_at(&d, "entities/acme.json", "\"ci-bot\"");
}

#[test]
fn r1_admin_who_is_not_a_member_is_refused() {
    let m = Model::shipped();
    m.edit_entities("entities/acme.json", |items| {
        entity(items, "User", "alice")["parents"] = json!([uid("OrgAdmins", "acme-admins")]);
    });
    let d = m.only_error(&["R1", "alice", "not a member"]);
    assert!(
        d.message.contains("Organization::\"acme\""),
        "{}",
        d.message
    );
    m.assert_points_at(&d, "entities/acme.json", "\"alice\"");
}

#[test]
fn r6_workspace_role_for_a_principal_outside_the_org_is_refused() {
    let m = Model::shipped();
    m.edit_entities("entities/globex.json", |items| {
        entity(items, "User", "hank")["tags"] = json!({"acme-prod": role_ref("developer")});
    });
    let d = m.only_error(&[
        "R6",
        "hank",
        "acme-prod",
        "not a member of its organization",
    ]);
    m.assert_points_at(&d, "entities/globex.json", "\"hank\"");
}

#[test]
fn r6_service_account_as_collaborator_on_a_personal_workspace_is_refused() {
    let m = Model::shipped();
    m.edit_entities("entities/acme.json", |items| {
        entity(items, "ServiceAccount", "deployer-bot")["tags"]["dave-personal"] =
            role_ref("collaborator");
    });
    let d = m.only_error(&["R6", "deployer-bot", "personal workspace", "only users"]);
    m.assert_points_at(&d, "entities/acme.json", "\"deployer-bot\"");
}

#[test]
fn tag_for_a_workspace_key_that_does_not_exist_is_refused() {
    let m = Model::shipped();
    m.edit_entities("entities/acme.json", |items| {
        entity(items, "User", "carol")["tags"] = json!({"acme-nope": role_ref("viewer")});
    });
    let d = m.only_error(&["carol", "\"acme-nope\"", "no workspace has that key"]);
    m.assert_points_at(&d, "entities/acme.json", "\"carol\"");
}

#[test]
fn tag_naming_a_role_that_does_not_exist_is_refused() {
    let m = Model::shipped();
    m.edit_entities("entities/acme.json", |items| {
        entity(items, "User", "carol")["tags"] = json!({"acme-prod": role_ref("superuser")});
    });
    let d = m.only_error(&["carol", "Role::\"superuser\"", "does not exist"]);
    m.assert_points_at(&d, "entities/acme.json", "\"carol\"");
}

#[test]
fn r9_custom_role_of_another_org_is_refused() {
    // As an explicit role...
    let m = Model::shipped();
    m.edit_entities("entities/globex.json", |items| {
        entity(items, "User", "hank")["tags"] =
            json!({"globex-main": role_ref("acme-incident-responder")});
    });
    let d = m.only_error(&["R9", "acme-incident-responder", "custom role of", "acme"]);
    assert!(d.message.contains("globex"), "{}", d.message);
    m.assert_points_at(&d, "entities/globex.json", "\"hank\"");
    // ... and as a workspace's default role.
    let m = Model::shipped();
    m.edit_entities("entities/globex.json", |items| {
        entity(items, "Workspace", "globex-main")["attrs"]["defaultRole"] =
            role_ref("acme-incident-responder");
    });
    let d = m.only_error(&["R9", "default role", "acme-incident-responder"]);
    m.assert_points_at(&d, "entities/globex.json", "\"globex-main\"");
}

#[test]
fn r9_a_role_granting_an_action_that_is_not_a_workspace_scope_is_refused() {
    let granting = |action: &str| {
        let m = Model::shipped();
        m.edit_entities("entities/roles.json", |items| {
            entity(items, "Role", "worker")["attrs"]["grants"]
                .as_array_mut()
                .unwrap()
                .push(json!({"__entity": {"type": "Prefect::Action", "id": action}}));
        });
        m
    };
    // An action of the schema that is not a scope, or the scopes' group.
    for action in ["delete:workspace", "workspace_scope"] {
        let m = granting(action);
        let d = m.only_error(&["R9", "Role::\"worker\"", action, "not a workspace scope"]);
        m.assert_points_at(&d, "entities/roles.json", "\"worker\"");
    }
    // An action the schema does not declare: the schema refuses it.
    let m = granting("no_such_scope");
    let d = m.only_error(&[
        "Role::\"worker\"",
        "no_such_scope",
        "not declared as an action",
    ]);
    m.assert_points_at(&d, "entities/roles.json", "\"worker\"");
}

fn org_workspace(id: &str, handle: &str, org: &str) -> Value {
    json!({
        "uid": uid("Workspace", id),
        "attrs": {"key": id, "handle": handle, "org": {"__entity": uid("Organization", org)}},
        "parents": [],
    })
}

#[test]
fn r11_duplicate_handle_in_one_org_is_refused_but_fine_across_orgs() {
    let m = Model::shipped();
    m.edit_entities("entities/acme.json", |items| {
        items.push(org_workspace("acme-prod-2", "prod", "acme"))
    });
    let d = m.only_error(&["R11", "\"prod\"", "acme-prod", "unique"]);
    m.assert_points_at(&d, "entities/acme.json", "\"acme-prod-2\"");

    // The same handle in another organization is another workspace.
    let m = Model::shipped();
    m.edit_entities("entities/globex.json", |items| {
        items.push(org_workspace("globex-prod", "prod", "globex"))
    });
    let snap = m.load().unwrap_or_else(|d| panic!("{d}"));
    let ws = cedar_policy::EntityUid::from_str(r#"Prefect::Workspace::"globex-prod""#).unwrap();
    assert!(snap.entities.get(&ws).is_some());
}

#[test]
fn workspace_with_both_or_neither_org_and_owner_is_refused() {
    for (_case, edit) in [
        ("both", json!({"owner": {"__entity": uid("User", "alice")}})),
        ("neither", Value::Null),
    ] {
        let m = Model::shipped();
        m.edit_entities("entities/acme.json", |items| {
            let attrs = &mut entity(items, "Workspace", "acme-sandbox")["attrs"];
            match &edit {
                Value::Null => {
                    attrs.as_object_mut().unwrap().remove("org");
                }
                v => attrs["owner"] = v["owner"].clone(),
            }
        });
        // The workspace is refused (and, as a consequence, so is the tag
        // naming its key: the checker reports that one too).
        let d = m.error_with(&["acme-sandbox", "exactly one of `org`", "`owner`"]);
        m.assert_points_at(&d, "entities/acme.json", "\"acme-sandbox\"");
    }
}

#[test]
fn duplicate_entity_across_two_files_names_both_files() {
    let m = Model::shipped();
    let bob = {
        let items: Vec<Value> = serde_json::from_str(&m.read("entities/acme.json")).unwrap();
        items
            .into_iter()
            .find(|e| e["uid"] == uid("User", "bob"))
            .unwrap()
    };
    m.edit_entities("entities/globex.json", |items| items.push(bob));
    let d = m.only_error(&["duplicate entity", "bob"]);
    // Reported at the second definition, naming the first file.
    m.assert_points_at(&d, "entities/globex.json", "\"bob\"");
    assert!(
        d.message
            .contains(&m.path("entities/acme.json").display().to_string()),
        "{}",
        d.message
    );
}

#[test]
fn invalid_json_names_line_and_column() {
    let m = Model::shipped();
    m.replace(
        "entities/acme.json",
        "\"handle\": \"acme\",",
        "\"handle\": \"acme\",,",
    );
    let text = m.read("entities/acme.json");
    let (line, col) = position_of(&text, ",,");
    let d = m.only_error(&["invalid JSON"]);
    assert_eq!(
        d.file.as_deref(),
        Some(m.path("entities/acme.json").as_path())
    );
    assert_eq!(d.line, Some(line), "{}", d.summary());
    // serde points at the second comma, the first character it cannot read.
    assert_eq!(d.column, Some(col + 1), "{}", d.summary());
}

// ---------------------------------------------------------------------------
// Policies and schema.

#[test]
fn policy_parse_error_names_file_line_col_and_shows_the_line() {
    let m = Model::shipped();
    let text = "// a typo below\n@id(\"typo\")\npermit (principal, action, resource)\nwhen { principal.email == };\n";
    m.write("policies/typo.cedar", text);
    let errors = m.errors();
    assert!(!errors.is_empty());
    // Cedar's own label, turned into a position in this file.
    let err = cedar_policy::PolicySet::from_str(text).unwrap_err();
    let offset = miette::Diagnostic::labels(&err)
        .and_then(|mut l| l.next())
        .expect("cedar labels its parse errors")
        .offset();
    let (line, col) = position_of(text, &text[offset..]);
    let d = &errors[0];
    assert_eq!(
        d.file.as_deref(),
        Some(m.path("policies/typo.cedar").as_path())
    );
    assert_eq!(
        (d.line, d.column),
        (Some(line), Some(col)),
        "{}",
        d.summary()
    );
    assert_eq!(line, 4, "the error is on the `when` line");
    assert!(
        d.rendered.contains("when { principal.email == };"),
        "{}",
        d.rendered
    );
    assert!(d.rendered.contains(&format!("typo.cedar:{line}:{col}")));
}

#[test]
fn strict_validation_error_names_file_line_col() {
    let m = Model::shipped();
    let text = "@id(\"typo\")\npermit (principal is Prefect::User, action, resource)\nwhen { principal.nope == 1 };\n";
    m.write("policies/typo.cedar", text);
    let d = m.only_error(&["nope", "not found"]);
    let (line, col) = position_of(text, "principal.nope");
    assert_eq!(
        d.file.as_deref(),
        Some(m.path("policies/typo.cedar").as_path())
    );
    assert_eq!(
        (d.line, d.column),
        (Some(line), Some(col)),
        "{}",
        d.summary()
    );
    assert!(
        d.rendered.contains("when { principal.nope == 1 };"),
        "{}",
        d.rendered
    );
}

#[test]
fn duplicate_policy_id_across_files_names_both_places() {
    let m = Model::shipped();
    // Loaded after `admin-overrides.cedar` (files load in path order).
    let text = "// the same id again\n@id(\"admin-overrides\")\nforbid (principal, action, resource) when { false };\n";
    m.write("policies/again.cedar", text);
    let first_line = position_of(&m.read("policies/admin-overrides.cedar"), "@id(").0;
    let d = m.only_error(&["duplicate policy id `admin-overrides`"]);
    let first = format!(
        "{}:{first_line}",
        m.path("policies/admin-overrides.cedar").display()
    );
    let second = format!("{}:2", m.path("policies/again.cedar").display());
    assert!(d.message.contains(&first), "{first} not in {}", d.message);
    assert!(d.message.contains(&second), "{second} not in {}", d.message);
    assert_eq!(
        d.file.as_deref(),
        Some(m.path("policies/again.cedar").as_path())
    );
    assert_eq!(d.line, Some(2));
}

#[test]
fn policies_without_id_are_numbered_across_files_in_load_order() {
    let m = Model::shipped();
    let shipped = m.load().unwrap().policy_count();
    let p = "permit (principal is Prefect::User, action == Prefect::Action::\"read:account\", resource is Prefect::Organization) when { false };\n";
    // Two files after every shipped one: `zz-a` then `zz-b`.
    m.write("policies/zz-a.cedar", &format!("{p}{p}@id(\"named\")\n{p}"));
    m.write("policies/zz-b.cedar", p);
    let snap = m.load().unwrap_or_else(|d| panic!("{d}"));
    let n = shipped;
    let expect = [
        (format!("policy{n}"), "zz-a.cedar"),
        (format!("policy{}", n + 1), "zz-a.cedar"),
        ("named".to_string(), "zz-a.cedar"),
        // The third policy of zz-a took number n+2 (as in one concatenated text).
        (format!("policy{}", n + 3), "zz-b.cedar"),
    ];
    for (id, file) in &expect {
        let pid = cedar_policy::PolicyId::new(id);
        assert!(snap.policies.policy(&pid).is_some(), "no policy {id}");
        assert_eq!(
            snap.origins[&pid].file,
            m.path(&format!("policies/{file}")),
            "{id}"
        );
    }
    assert!(
        snap.policies
            .policy(&cedar_policy::PolicyId::new(format!("policy{}", n + 2)))
            .is_none()
    );
    assert_eq!(snap.policy_count(), shipped + 4);
}

#[test]
fn schema_syntax_error_names_file_line_col() {
    let m = Model::shipped();
    m.replace(
        "schema/prefect.cedarschema",
        "    name: String,",
        "    name String,",
    );
    let text = m.read("schema/prefect.cedarschema");
    let (line, _) = position_of(&text, "name String,");
    let errors = m.errors();
    let d = &errors[0];
    assert_eq!(
        d.file.as_deref(),
        Some(m.path("schema/prefect.cedarschema").as_path())
    );
    assert_eq!(d.line, Some(line), "{}", d.summary());
    let col = d.column.expect("a column");
    let source_line = text.lines().nth(line - 1).unwrap();
    assert!(col <= source_line.chars().count() + 1, "{}", d.summary());
    assert!(d.rendered.contains("name String,"), "{}", d.rendered);
}

#[test]
fn missing_paths_are_named() {
    let m = Model::shipped();
    for which in ["policies", "schema", "entities"] {
        let mut paths = m.paths();
        let missing = m.path(&format!("no-{which}"));
        match which {
            "policies" => paths.policies = missing.clone(),
            "schema" => paths.schema = missing.clone(),
            _ => paths.entities = missing.clone(),
        }
        let Err(diags) = load::load(&paths) else {
            panic!("loaded without {which}");
        };
        let d = diags.errors().next().unwrap();
        assert_eq!(
            d.file.as_deref(),
            Some(missing.as_path()),
            "{}",
            d.summary()
        );
        assert!(d.message.contains("cannot read"), "{}", d.message);
        assert!(d.message.contains(which), "{}", d.message);
    }
}

// ---------------------------------------------------------------------------
// The binary.

fn orgwarden(m: &Model, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orgwarden"));
    cmd.args(args)
        .arg("--policies")
        .arg(m.path("policies"))
        .arg("--schema")
        .arg(m.path("schema"))
        .arg("--entities")
        .arg(m.path("entities"))
        .current_dir(m.dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("ORGWARDEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run orgwarden")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_exits_0_on_the_shipped_model_and_1_with_file_line_col_on_a_broken_policy() {
    let m = Model::shipped();
    let ok = orgwarden(&m, &["check"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("ok:"), "{}", text(&ok.stdout));

    let policy = "@id(\"typo\")\npermit (principal is Prefect::User, action, resource)\nwhen { principal.nope == 1 };\n";
    m.write("policies/typo.cedar", policy);
    let (line, col) = position_of(policy, "principal.nope");
    let bad = orgwarden(&m, &["check"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    let at = format!("{}:{line}:{col}", m.path("policies/typo.cedar").display());
    assert!(err.contains(&at), "{at} not in:\n{err}");
}

fn authorize(
    m: &Model,
    principal: &str,
    action: &str,
    resource: &str,
) -> (Option<i32>, Value, String) {
    let out = orgwarden(
        m,
        &[
            "authorize",
            "--principal",
            principal,
            "--action",
            action,
            "--resource",
            resource,
            "--context",
            r#"{"ip": "10.0.0.1"}"#,
        ],
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), json, text(&out.stderr))
}

#[test]
fn authorize_exits_0_on_allow_2_on_deny_1_on_an_invalid_request() {
    let m = Model::shipped();
    // Allow: bob is a Developer in acme-prod.
    let (code, body, err) = authorize(
        &m,
        r#"User::"bob""#,
        "manage_deployments",
        r#"Workspace::"acme-prod""#,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        body,
        json!({
            "decision": "Allow",
            "diagnostics": {
                "reason": ["union-of-default-and-explicit"],
                "errors": [],
            },
        })
    );
    // Deny at the tenant boundary: gina is in globex.
    let (code, body, err) = authorize(
        &m,
        r#"User::"gina""#,
        "see_flows",
        r#"Workspace::"acme-prod""#,
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(body["decision"], "Deny");
    assert_eq!(body["diagnostics"]["reason"], json!(["tenant-boundary"]));
    assert_eq!(body["diagnostics"]["errors"], json!([]));
    // Invalid: an unknown type; nothing on stdout, the field on stderr.
    let (code, body, err) = authorize(
        &m,
        r#"Nobody::"x""#,
        "see_flows",
        r#"Workspace::"acme-prod""#,
    );
    assert_eq!(code, Some(1));
    assert_eq!(body, Value::Null);
    assert!(err.contains("principal") && err.contains("Nobody"), "{err}");
    // Invalid: the action does not apply to the resource type.
    let (code, _, err) = authorize(
        &m,
        r#"User::"alice""#,
        "see_flows",
        r#"Organization::"acme""#,
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("resource"), "{err}");
}

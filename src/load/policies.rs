//! The schema and the policies: parsed file by file (each error names its
//! file), policy ids from `@id` annotations checked unique, every policy
//! validated strictly against the schema and added to one set (a policy
//! that cannot be added is an error, never silently absent).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    PolicyId, PolicySet, PolicySetError, Schema, SchemaFragment, ValidationMode, Validator,
};

use super::read::json_syntax;
use crate::diag::{Diagnostic, Diagnostics, line_col};
use crate::snapshot::PolicyOrigin;
use crate::source::TextFile;

pub(super) fn parse_schema(files: &[TextFile], diags: &mut Diagnostics) -> Option<Schema> {
    let mut fragments = Vec::new();
    for f in files {
        let name = f.path.to_string_lossy();
        if name.ends_with(".json") {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&f.text) {
                diags.push(json_syntax(&f.path, &e));
                continue;
            }
            match SchemaFragment::from_json_str(&f.text) {
                Ok(frag) => fragments.push(frag),
                Err(e) => diags.push(Diagnostic::from_miette(&f.path, &f.text, &e)),
            }
        } else {
            match SchemaFragment::from_cedarschema_str(&f.text) {
                Ok((frag, _warnings)) => fragments.push(frag),
                Err(e) => diags.push(Diagnostic::from_miette(&f.path, &f.text, &e)),
            }
        }
    }
    if diags.has_errors() {
        return None;
    }
    match Schema::from_schema_fragments(fragments) {
        Ok(s) => Some(s),
        Err(e) => {
            let file = (files.len() == 1).then(|| files[0].path.as_path());
            match file {
                Some(p) if miette::Diagnostic::labels(&e).is_some() => {
                    diags.push(Diagnostic::from_miette(p, &files[0].text, &e))
                }
                _ => diags.push(Diagnostic::from_error(file, &e)),
            }
            None
        }
    }
}

/// Parse every policy file, give each policy its `@id` (or Cedar's default
/// `policyN`, numbered across files in load order as if the files were one),
/// and validate strictly.
pub(super) fn parse_policies(
    schema: &Schema,
    files: &[TextFile],
    diags: &mut Diagnostics,
) -> (Option<PolicySet>, HashMap<PolicyId, PolicyOrigin>) {
    let validator = Validator::new(schema.clone());
    let mut all = PolicySet::new();
    let mut origins: HashMap<PolicyId, PolicyOrigin> = HashMap::new();
    let mut offset = 0usize;
    let mut ok = true;
    for f in files {
        let parsed = match PolicySet::from_str(&f.text) {
            Ok(p) => p,
            Err(errs) => {
                for e in errs.iter() {
                    diags.push(Diagnostic::from_miette(&f.path, &f.text, e));
                }
                ok = false;
                continue;
            }
        };
        let mut file_set = PolicySet::new();
        let count = parsed.policies().count() + parsed.templates().count();
        let renamed = |id: &PolicyId, annotation: Option<&str>| -> PolicyId {
            match annotation {
                Some(name) => PolicyId::new(name),
                None => {
                    let n: usize = id
                        .to_string()
                        .trim_start_matches("policy")
                        .parse()
                        .unwrap_or(0);
                    PolicyId::new(format!("policy{}", n + offset))
                }
            }
        };
        let mut add_origin =
            |new_id: &PolicyId, annotated: bool, diags: &mut Diagnostics| -> bool {
                let line = if annotated {
                    find_annotation_line(&f.text, new_id.as_ref())
                } else {
                    None
                };
                if let Some(prev) = origins.get(new_id) {
                    let here = location(&f.path, line);
                    let there = location(&prev.file, prev.line);
                    diags.push(Diagnostic::plain(
                        Some(&f.path),
                        line.map(|l| (l, 1)),
                        format!(
                            "duplicate policy id `{new_id}`: defined at {there} and again at {here}"
                        ),
                    ));
                    return false;
                }
                origins.insert(
                    new_id.clone(),
                    PolicyOrigin {
                        file: f.path.clone(),
                        line,
                    },
                );
                true
            };
        for t in parsed.templates() {
            let id = renamed(t.id(), t.annotation("id"));
            if !add_origin(&id, t.annotation("id").is_some(), diags) {
                ok = false;
                continue;
            }
            let added = file_set.add_template(t.new_id(id.clone()));
            let line = t
                .annotation("id")
                .and_then(|i| find_annotation_line(&f.text, i));
            ok &= added_or_reported(added, &id, f, line, diags);
        }
        for p in parsed.policies() {
            let id = renamed(p.id(), p.annotation("id"));
            if !add_origin(&id, p.annotation("id").is_some(), diags) {
                ok = false;
                continue;
            }
            let added = file_set.add(p.new_id(id.clone()));
            let line = p
                .annotation("id")
                .and_then(|i| find_annotation_line(&f.text, i));
            ok &= added_or_reported(added, &id, f, line, diags);
        }
        offset += count;
        let result = validator.validate(&file_set, ValidationMode::Strict);
        for e in result.validation_errors() {
            diags.push(Diagnostic::from_miette(&f.path, &f.text, e));
            ok = false;
        }
        for w in result.validation_warnings() {
            diags.push(Diagnostic::from_miette(&f.path, &f.text, w).warning());
        }
        for t in file_set.templates() {
            let added = all.add_template(t.clone());
            let line = origins.get(t.id()).and_then(|o| o.line);
            ok &= added_or_reported(added, t.id(), f, line, diags);
        }
        for p in file_set.policies() {
            let added = all.add(p.clone());
            let line = origins.get(p.id()).and_then(|o| o.line);
            ok &= added_or_reported(added, p.id(), f, line, diags);
        }
    }
    (ok.then_some(all), origins)
}

/// A policy that cannot be added to its set is a load error at its
/// `file:line` (never a policy silently absent: a missing `forbid` would
/// fail open). True when it was added.
pub(super) fn added_or_reported(
    added: Result<(), PolicySetError>,
    id: &PolicyId,
    f: &TextFile,
    line: Option<usize>,
    diags: &mut Diagnostics,
) -> bool {
    let Err(e) = added else { return true };
    diags.push(Diagnostic::plain(
        Some(&f.path),
        line.map(|l| (l, 1)),
        format!(
            "policy `{id}` cannot be added to the policy set: {}",
            crate::diag::one_line(&e)
        ),
    ));
    false
}

pub(super) fn location(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", file.display()),
        None => file.display().to_string(),
    }
}

/// The line of `@id("<id>")` in `text`.
pub(super) fn find_annotation_line(text: &str, id: &str) -> Option<usize> {
    let escaped = serde_json::to_string(id).ok()?;
    let mut from = 0;
    while let Some(at) = text[from..].find("@id") {
        let start = from + at;
        let rest = text[start + 3..].trim_start();
        if let Some(rest) = rest.strip_prefix('(')
            && rest.trim_start().starts_with(&escaped)
        {
            return Some(line_col(text, start).0);
        }
        from = start + 3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_that_cannot_be_added_is_a_load_error_at_its_line() {
        let text = "@id(\"only\")\npermit(principal, action, resource);\n";
        let f = TextFile {
            path: "p.cedar".into(),
            text: text.into(),
        };
        let policy = PolicySet::from_str(text)
            .unwrap()
            .policies()
            .next()
            .unwrap()
            .clone();
        let id = PolicyId::new("only");
        let line = find_annotation_line(text, "only");
        let mut set = PolicySet::new();
        let mut diags = Diagnostics::default();
        let first = set.add(policy.new_id(id.clone()));
        assert!(added_or_reported(first, &id, &f, line, &mut diags));
        assert!(diags.0.is_empty());
        let again = set.add(policy.new_id(id.clone()));
        assert!(!added_or_reported(again, &id, &f, line, &mut diags));
        let d = &diags.0[0];
        assert_eq!(d.file.as_deref(), Some(std::path::Path::new("p.cedar")));
        assert_eq!(d.line, Some(1));
        assert!(
            d.message.contains("`only` cannot be added"),
            "{}",
            d.message
        );
    }
}

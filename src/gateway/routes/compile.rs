//! The routes file format (YAML) and its compiler: every route checked
//! against the schema (the action exists and applies to the resource type,
//! every placeholder of the resource is in the path, no two routes are the
//! same), each problem reported with its file, line and field.

use std::fmt;
use std::path::Path;

use cedar_policy::{EntityTypeName, Schema};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::*;
use crate::diag::Diagnostic;
use crate::names::{EntityRef, Names};
use crate::source::TextFile;
use crate::yaml::{self, Pairs};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    prefix: Option<Spanned<String>>,
    resource: Option<Spanned<String>>,
    /// In file order, with the position of every key.
    #[serde(deserialize_with = "yaml::pairs_or_empty")]
    routes: Pairs<Spanned<String>, Spanned<Target>>,
}

/// What a route maps to: an action (on the file's resource), or both.
#[derive(Debug)]
enum Target {
    Action(String),
    Rule(Rule),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    action: Spanned<String>,
    resource: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an action, or a mapping with `action` and `resource`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Target, E> {
                Ok(Target::Action(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Target, A::Error> {
                Rule::deserialize(de::value::MapAccessDeserializer::new(map)).map(Target::Rule)
            }
        }
        d.deserialize_any(V)
    }
}

/// Characters of a literal template segment: RFC 3986 `pchar` without
/// percent-encoding (write segments decoded).
fn literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@".contains(c)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse a path template into segments (a trailing slash is ignored).
fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
    if template.contains(['?', '#']) {
        return Err(format!(
            "`{template}`: a route matches paths only; the query string is ignored, leave it out"
        ));
    }
    let rest = template
        .strip_prefix('/')
        .ok_or_else(|| format!("`{template}`: a path must start with `/`"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for s in rest.split('/') {
        if s.is_empty() {
            return Err(format!("`{template}`: empty segment (`//`)"));
        }
        if let Some(name) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            if !is_ident(name) {
                return Err(format!(
                    "`{template}`: `{s}` is not a placeholder: write `{{name}}` with a name of letters, digits and `_`"
                ));
            }
            if out.contains(&Segment::Param(name.to_string())) {
                return Err(format!(
                    "`{template}`: placeholder `{{{name}}}` appears twice"
                ));
            }
            out.push(Segment::Param(name.to_string()));
        } else if s.contains(['{', '}']) {
            return Err(format!(
                "`{template}`: `{s}`: a placeholder must be a whole segment"
            ));
        } else if s == "." || s == ".." {
            return Err(format!("`{template}`: `.` and `..` segments never match"));
        } else if let Some(bad) = s.chars().find(|c| !literal_char(*c)) {
            return Err(format!(
                "`{template}`: `{bad}` is not allowed in a path segment (write segments decoded, without `%`)"
            ));
        } else {
            out.push(Segment::Literal(s.to_string()));
        }
    }
    Ok(out)
}

/// Parse `Type::"id {placeholders}"` into its type and id pieces.
fn parse_resource(text: &str, params: &[&str]) -> Result<(String, Vec<Piece>), String> {
    let malformed = || {
        format!(
            "`{text}` is not a resource template: write `Type::\"id\"`, e.g. `Workspace::\"{{workspace}}\"`"
        )
    };
    let (ty, rest) = text.trim().split_once("::\"").ok_or_else(malformed)?;
    let id = rest.strip_suffix('"').ok_or_else(malformed)?;
    if ty.trim().is_empty() || id.is_empty() {
        return Err(malformed());
    }
    if id.contains(['"', '\\']) {
        return Err(format!(
            "`{text}`: quotes and backslashes are not allowed in a resource id template"
        ));
    }
    let mut pieces = Vec::new();
    let mut rest = id;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                pieces.push(Piece::Text(rest.to_string()));
                break;
            }
            Some(at) => {
                if at > 0 {
                    pieces.push(Piece::Text(rest[..at].to_string()));
                }
                let after = &rest[at..];
                let close = after
                    .strip_prefix('{')
                    .and_then(|a| a.find('}'))
                    .ok_or_else(|| format!("`{text}`: unbalanced `{{` or `}}`"))?;
                let name = &after[1..close + 1];
                if !is_ident(name) {
                    return Err(format!("`{text}`: `{{{name}}}` is not a placeholder"));
                }
                let n = params.iter().position(|p| *p == name).ok_or_else(|| {
                    let known = if params.is_empty() {
                        "the path has none".to_string()
                    } else {
                        format!(
                            "the path has {}",
                            params
                                .iter()
                                .map(|p| format!("`{{{p}}}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    format!("`{text}`: placeholder `{{{name}}}` is not in the path ({known})")
                })?;
                pieces.push(Piece::Param(n));
                rest = &after[close + 2..];
            }
        }
    }
    Ok((ty.trim().to_string(), pieces))
}

fn parse_method(word: &str) -> Result<MethodMatch, String> {
    if word == "ANY" || word == "*" {
        return Ok(MethodMatch::Any);
    }
    if METHODS.contains(&word) {
        return Ok(MethodMatch::One(word.to_string()));
    }
    let upper = word.to_ascii_uppercase();
    let hint = if METHODS.contains(&upper.as_str()) || upper == "ANY" {
        format!(" (write `{upper}`)")
    } else {
        String::new()
    };
    Err(format!(
        "`{word}` is not a method{hint}: use one of {}, or ANY",
        METHODS.join(", ")
    ))
}

/// A field path segment for a route key: `routes."GET /x"`.
fn route_field(key: &str) -> String {
    format!(
        "routes.{}",
        serde_json::to_string(key).unwrap_or_else(|_| key.to_string())
    )
}

struct Compiler<'a> {
    names: &'a Names,
    schema: &'a Schema,
    out: Routes,
    /// Where each route came from, to name both places of a duplicate.
    diags: Vec<Diagnostic>,
}

impl Compiler<'_> {
    fn error(
        &mut self,
        file: &Path,
        at: Option<(usize, usize)>,
        field: &str,
        message: impl fmt::Display,
    ) {
        self.diags.push(Diagnostic::plain(
            Some(file),
            at,
            format!("{field}: {message}"),
        ));
    }

    fn file(&mut self, f: &TextFile) {
        let raw: RawFile = match yaml::parse_file(&f.path, &f.text, "routes") {
            Ok(r) => r,
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        let prefix = match &raw.prefix {
            Some(p) => match parse_template(&p.value) {
                Ok(segments) => segments,
                Err(message) => {
                    self.error(&f.path, yaml::position(&p.referenced), "prefix", message);
                    return;
                }
            },
            None => Vec::new(),
        };
        let prefix_text = raw
            .prefix
            .as_ref()
            .map(|p| p.value.trim_end_matches('/').to_string())
            .unwrap_or_default();
        for (key, target) in raw.routes.0 {
            self.route(f, &prefix, &prefix_text, raw.resource.as_ref(), key, target);
        }
    }

    fn route(
        &mut self,
        f: &TextFile,
        prefix: &[Segment],
        prefix_text: &str,
        default_resource: Option<&Spanned<String>>,
        key: Spanned<String>,
        target: Spanned<Target>,
    ) {
        let field = route_field(&key.value);
        let key_at = yaml::position(&key.referenced);
        let Some((method, path)) = key.value.trim().split_once(char::is_whitespace) else {
            self.error(
                &f.path,
                key_at,
                &field,
                "write a route as `METHOD /path`, e.g. `GET /flows/{id}`",
            );
            return;
        };
        let method = match parse_method(method) {
            Ok(m) => m,
            Err(message) => return self.error(&f.path, key_at, &field, message),
        };
        let path = path.trim();
        let segments = match parse_template(path) {
            Ok(s) => s,
            Err(message) => return self.error(&f.path, key_at, &field, message),
        };
        let mut all: Vec<Segment> = prefix.to_vec();
        for s in segments {
            if let Segment::Param(name) = &s
                && all.contains(&s)
            {
                return self.error(
                    &f.path,
                    key_at,
                    &field,
                    format!("placeholder `{{{name}}}` is already in the prefix"),
                );
            }
            all.push(s);
        }
        let params: Vec<&str> = all
            .iter()
            .filter_map(|s| match s {
                Segment::Param(p) => Some(p.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        let (action_text, action_at, resource) = match &target.value {
            Target::Action(a) => (
                a.clone(),
                yaml::position(&target.referenced),
                default_resource,
            ),
            Target::Rule(rule) => (
                rule.action.value.clone(),
                yaml::position(&rule.action.referenced).or(yaml::position(&target.referenced)),
                rule.resource.as_ref().or(default_resource),
            ),
        };
        let action = match self
            .names
            .resolve_action(&EntityRef::Text(action_text.trim().to_string()))
        {
            Ok(a) => a,
            Err(e) => {
                return self.error(&f.path, action_at, &format!("{field}.action"), e);
            }
        };
        let Some(resource) = resource else {
            return self.error(
                &f.path,
                key_at,
                &field,
                "no resource: give the route a `resource`, or the file a default `resource`",
            );
        };
        let resource_field = match &target.value {
            Target::Rule(r) if r.resource.is_some() => format!("{field}.resource"),
            _ => "resource".to_string(),
        };
        let resource_at = yaml::position(&resource.referenced);
        let (type_text, resource_id) = match parse_resource(&resource.value, &params) {
            Ok(r) => r,
            Err(message) => {
                // The file's default resource is reported where the route is.
                let at = if resource_field == "resource" {
                    key_at
                } else {
                    resource_at
                };
                let field = if resource_field == "resource" {
                    format!("{field} (with the file's `resource`)")
                } else {
                    resource_field
                };
                return self.error(&f.path, at, &field, message);
            }
        };
        let resource_type = match self.names.resolve_type(&type_text) {
            Ok(t) => t,
            Err(e) => return self.error(&f.path, resource_at, &resource_field, e),
        };
        if let Some(types) = self.schema.resources_for_action(&action) {
            let types: Vec<&EntityTypeName> = types.collect();
            if !types.contains(&&resource_type) {
                let allowed: Vec<String> = types.iter().map(|t| format!("`{t}`")).collect();
                let message = format!(
                    "action `{action}` does not apply to resources of type `{resource_type}` (it applies to {})",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                );
                return self.error(&f.path, action_at, &format!("{field}.action"), message);
            }
        }
        let template = if path.trim_end_matches('/').is_empty() {
            if prefix_text.is_empty() {
                "/".to_string()
            } else {
                prefix_text.to_string()
            }
        } else {
            format!("{prefix_text}{}", path.trim_end_matches('/'))
        };
        let line = key_at.map(|(l, _)| l);
        let origin = match line {
            Some(l) => format!("{}:{l}", f.path.display()),
            None => f.path.display().to_string(),
        };
        let route = Route {
            method,
            template,
            action,
            resource_type,
            resource_id,
            origin,
        };
        let name = route.name();
        if let Err(existing) = self.out.insert(&all, route) {
            let other = &self.out.routes[existing];
            let message = format!(
                "`{name}` is the same route as `{}` at {}",
                other.name(),
                other.origin
            );
            self.error(&f.path, key_at, &field, message);
        }
    }
}

/// Compile every routes file against the snapshot's schema; every problem
/// is reported, and any error rejects the whole set.
pub fn compile(
    names: &Names,
    schema: &Schema,
    files: &[TextFile],
) -> Result<Routes, Vec<Diagnostic>> {
    let mut c = Compiler {
        names,
        schema,
        out: Routes::default(),
        diags: Vec::new(),
    };
    for f in files {
        c.file(f);
    }
    if c.diags.is_empty() {
        Ok(c.out)
    } else {
        Err(c.diags)
    }
}

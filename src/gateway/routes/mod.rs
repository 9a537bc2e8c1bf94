//! Routes: which Cedar action on which resource an HTTP request is.
//!
//! A routes file is YAML. Its `routes` map `METHOD /path/template` to an
//! action, on the file's default `resource` or on a resource of its own; a
//! `prefix` is put before every path of the file:
//!
//! ```yaml
//! prefix: /api/accounts/{account}/workspaces/{workspace}
//! resource: Workspace::"{workspace}"
//! routes:
//!   GET /flows/{id}: see_flows
//!   POST /deployments/{id}/create_flow_run: run_deployments
//!   DELETE /:
//!     action: delete:workspace
//! ```
//!
//! A method is `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS` or
//! `ANY`; a `GET` route also answers `HEAD`. A placeholder (`{id}`) is a whole
//! segment. The resource is `Type::"id"`, where the id may use the path's
//! placeholders (`Workspace::"{workspace}"`). [`compile`] checks every route
//! against the schema (the action exists, applies to the resource type, every
//! placeholder of the resource is in the path, no two routes are the same)
//! and reports each problem with its file, line and field.
//!
//! Matching ([`Routes::find`]) walks a tree of segments: an exact segment is
//! tried before a placeholder, so the most specific route wins, then a route
//! of the request's method before an `ANY` route. The query string is
//! ignored, a trailing slash is optional, and segments are percent-decoded.
//! A request path with empty, `.` or `..` segments, an encoded `/`, or bad
//! percent-encoding matches nothing: it is refused ([`PathError`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::{MessageFormatter, Spanned};

use crate::diag::Diagnostic;
use crate::names::{EntityRef, Names};
use crate::source::TextFile;

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 8192;
/// Most segments in a request path.
pub const MAX_SEGMENTS: usize = 64;

/// Methods a route may name (`ANY` matches every method).
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The method a route answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MethodMatch {
    One(String),
    Any,
}

impl fmt::Display for MethodMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodMatch::One(m) => f.write_str(m),
            MethodMatch::Any => f.write_str("ANY"),
        }
    }
}

/// A piece of a resource id template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The value of the n-th placeholder of the path.
    Param(usize),
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: MethodMatch,
    /// The whole path template, prefix included (`/api/.../{id}`).
    pub template: String,
    pub action: EntityUid,
    pub resource_type: EntityTypeName,
    resource_id: Vec<Piece>,
    /// `file:line` of the route, for errors and status.
    pub origin: String,
}

impl Route {
    /// The route as written: `POST /api/.../{id}`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// A request matched to a route.
#[derive(Debug, Clone)]
pub struct Matched<'r> {
    pub route: &'r Route,
    /// The resource id, placeholders filled with the request's segments.
    pub resource_id: String,
}

impl Matched<'_> {
    /// The resource as a uid (the id taken as is, never parsed).
    pub fn resource_uid(&self) -> EntityUid {
        EntityUid::from_type_name_and_id(
            self.route.resource_type.clone(),
            EntityId::new(&self.resource_id),
        )
    }
}

#[derive(Debug, Default, Clone)]
struct Node {
    exact: HashMap<String, usize>,
    param: Option<usize>,
    /// Routes ending here, by method.
    routes: Vec<(MethodMatch, usize)>,
}

/// Every route of a snapshot, as a tree of segments. Empty when no routes
/// path is configured (every request is then unmatched).
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
    nodes: Vec<Node>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            routes: Vec::new(),
            nodes: vec![Node::default()],
        }
    }
}

/// Why a request path cannot be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with `/`")]
    NotAbsolute,
    #[error("the request target is longer than {MAX_TARGET_BYTES} bytes")]
    TooLong,
    #[error("the request path has more than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("the request path has an empty segment (`//`)")]
    EmptySegment,
    #[error("the request path has a `.` or `..` segment")]
    DotSegment,
    #[error("the request path has invalid percent-encoding")]
    BadEncoding,
    #[error("the request path has an encoded `/` in a segment")]
    EncodedSlash,
}

/// The decoded segments of a request target: query and fragment dropped,
/// one trailing slash ignored.
pub fn request_segments(target: &str) -> Result<Vec<String>, PathError> {
    if target.len() > MAX_TARGET_BYTES {
        return Err(PathError::TooLong);
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in rest.split('/') {
        if out.len() == MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
        if raw.is_empty() {
            return Err(PathError::EmptySegment);
        }
        let decoded = percent_decode(raw)?;
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if decoded.contains('/') {
            return Err(PathError::EncodedSlash);
        }
        out.push(decoded);
    }
    Ok(out)
}

/// Strict percent-decoding: every `%` starts two hex digits, and the result
/// is UTF-8.
fn percent_decode(s: &str) -> Result<String, PathError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

impl Routes {
    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route, in load order.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The most specific route for `method` and the decoded `segments`.
    pub fn find(&self, method: &str, segments: &[String]) -> Option<Matched<'_>> {
        let mut captured = Vec::new();
        let index = self.walk_from(0, segments, 0, method, &mut captured)?;
        let route = &self.routes[index];
        let mut resource_id = String::new();
        for piece in &route.resource_id {
            match piece {
                Piece::Text(t) => resource_id.push_str(t),
                Piece::Param(n) => resource_id.push_str(&segments[captured[*n]]),
            }
        }
        Some(Matched { route, resource_id })
    }

    /// Depth-first, exact segments before placeholders: the first route
    /// found is the most specific. Each node is visited at most once.
    fn walk_from(
        &self,
        node: usize,
        segments: &[String],
        at: usize,
        method: &str,
        captured: &mut Vec<usize>,
    ) -> Option<usize> {
        let n = &self.nodes[node];
        if at == segments.len() {
            return Self::by_method(&n.routes, method);
        }
        if let Some(&child) = n.exact.get(&segments[at])
            && let Some(found) = self.walk_from(child, segments, at + 1, method, captured)
        {
            return Some(found);
        }
        if let Some(child) = n.param {
            captured.push(at);
            if let Some(found) = self.walk_from(child, segments, at + 1, method, captured) {
                return Some(found);
            }
            captured.pop();
        }
        None
    }

    /// The request's method, then `GET` for a `HEAD`, then `ANY`.
    fn by_method(routes: &[(MethodMatch, usize)], method: &str) -> Option<usize> {
        let find = |m: &MethodMatch| routes.iter().find(|(rm, _)| rm == m).map(|(_, i)| *i);
        find(&MethodMatch::One(method.to_string()))
            .or_else(|| {
                (method == "HEAD")
                    .then(|| find(&MethodMatch::One("GET".into())))
                    .flatten()
            })
            .or_else(|| find(&MethodMatch::Any))
    }

    /// Add a route whose template segments are `segments`; returns the
    /// index of the route it duplicates, if any.
    fn insert(&mut self, segments: &[Segment], route: Route) -> Result<(), usize> {
        let mut node = 0;
        for s in segments {
            node = match s {
                Segment::Literal(text) => match self.nodes[node].exact.get(text) {
                    Some(&child) => child,
                    None => {
                        let child = self.new_node();
                        self.nodes[node].exact.insert(text.clone(), child);
                        child
                    }
                },
                Segment::Param(_) => match self.nodes[node].param {
                    Some(child) => child,
                    None => {
                        let child = self.new_node();
                        self.nodes[node].param = Some(child);
                        child
                    }
                },
            };
        }
        if let Some((_, existing)) = self.nodes[node]
            .routes
            .iter()
            .find(|(m, _)| *m == route.method)
        {
            return Err(*existing);
        }
        let index = self.routes.len();
        self.nodes[node].routes.push((route.method.clone(), index));
        self.routes.push(route);
        Ok(())
    }

    fn new_node(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }
}

// ---------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    prefix: Option<Spanned<String>>,
    resource: Option<Spanned<String>>,
    routes: Entries,
}

/// The `routes` mapping, in file order, with the position of every key.
#[derive(Debug, Default)]
struct Entries(Vec<(Spanned<String>, Spanned<Target>)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of `METHOD /path` to an action")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Entries, E> {
                Ok(Entries::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
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

/// A segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
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

fn pos(l: &serde_saphyr::Location) -> Option<(usize, usize)> {
    let line = usize::try_from(l.line()).ok()?;
    let column = usize::try_from(l.column()).ok()?;
    (line > 0 && column > 0).then_some((line, column))
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
        let raw: RawFile = match serde_saphyr::from_str(&f.text) {
            Ok(r) => r,
            Err(e) => {
                let message =
                    serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet());
                let message: String = message
                    .split(", set DuplicateKeyPolicy")
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let at = e.location().as_ref().and_then(pos);
                self.diags.push(Diagnostic::plain(
                    Some(&f.path),
                    at,
                    format!("invalid routes file: {message}"),
                ));
                return;
            }
        };
        let prefix = match &raw.prefix {
            Some(p) => match parse_template(&p.value) {
                Ok(segments) => segments,
                Err(message) => {
                    self.error(&f.path, pos(&p.referenced), "prefix", message);
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
        let key_at = pos(&key.referenced);
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
            Target::Action(a) => (a.clone(), pos(&target.referenced), default_resource),
            Target::Rule(rule) => (
                rule.action.value.clone(),
                pos(&rule.action.referenced).or(pos(&target.referenced)),
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
        let resource_at = pos(&resource.referenced);
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

/// The routes directory used when none is configured: `routes`, if it is a
/// directory.
pub fn default_path() -> Option<PathBuf> {
    let p = PathBuf::from("routes");
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn schema() -> Schema {
        Schema::from_str(
            r#"namespace P {
                 entity User; entity Organization; entity Workspace; entity Invitation;
                 action see_flows, run_deployments appliesTo { principal: User, resource: Workspace };
                 action "create:invitation" appliesTo { principal: User, resource: Organization };
                 action "accept:invitation" appliesTo { principal: User, resource: Invitation };
               }"#,
        )
        .unwrap()
    }

    fn compile_texts(texts: &[(&str, &str)]) -> Result<Routes, Vec<Diagnostic>> {
        let schema = schema();
        let names = Names::new(&schema);
        let files: Vec<TextFile> = texts
            .iter()
            .map(|(p, t)| TextFile {
                path: PathBuf::from(p),
                text: t.to_string(),
            })
            .collect();
        compile(&names, &schema, &files)
    }

    fn errors(texts: &[(&str, &str)]) -> Vec<String> {
        compile_texts(texts)
            .expect_err("the routes should be rejected")
            .iter()
            .map(|d| format!("{}: {}", d.location(), d.message))
            .collect()
    }

    const WORKSPACE: &str = r#"
prefix: /api/accounts/{account}/workspaces/{workspace}
resource: Workspace::"{workspace}"
routes:
  GET /flows/{id}: see_flows
  POST /flows/filter: see_flows
  GET /flows/filter: run_deployments
  POST /deployments/{id}/create_flow_run: run_deployments
  ANY /deployments/{id}: see_flows
"#;

    const ORG: &str = r#"
prefix: /api/accounts/{account}
resource: Organization::"{account}"
routes:
  POST /invitations/: "create:invitation"
  POST /invitations/{id}/accept:
    action: accept:invitation
    resource: Invitation::"{account}/{id}"
"#;

    fn find(routes: &Routes, method: &str, target: &str) -> Option<(String, String)> {
        let segments = request_segments(target).unwrap();
        routes.find(method, &segments).map(|m| {
            (
                m.route.action.id().unescaped().to_string(),
                format!("{}::{:?}", m.route.resource_type, m.resource_id),
            )
        })
    }

    fn both() -> Routes {
        compile_texts(&[("ws.yaml", WORKSPACE), ("org.yaml", ORG)]).unwrap()
    }

    #[test]
    fn routes_map_requests_to_an_action_and_a_resource() {
        let r = both();
        assert_eq!(r.len(), 7);
        assert_eq!(
            find(
                &r,
                "POST",
                "/api/accounts/acme/workspaces/acme-prod/deployments/d1/create_flow_run"
            ),
            Some((
                "run_deployments".into(),
                r#"P::Workspace::"acme-prod""#.into()
            ))
        );
        assert_eq!(
            find(&r, "POST", "/api/accounts/acme/invitations"),
            Some((
                "create:invitation".into(),
                r#"P::Organization::"acme""#.into()
            ))
        );
        assert_eq!(
            find(&r, "POST", "/api/accounts/acme/invitations/i-1/accept"),
            Some((
                "accept:invitation".into(),
                r#"P::Invitation::"acme/i-1""#.into()
            ))
        );
    }

    #[test]
    fn exact_segments_beat_placeholders_and_methods_beat_any() {
        let r = both();
        let ws = "/api/accounts/a/workspaces/w";
        // `filter` is exact for GET and POST; another id is the placeholder.
        assert_eq!(
            find(&r, "GET", &format!("{ws}/flows/filter")).unwrap().0,
            "run_deployments"
        );
        assert_eq!(
            find(&r, "POST", &format!("{ws}/flows/filter")).unwrap().0,
            "see_flows"
        );
        assert_eq!(
            find(&r, "GET", &format!("{ws}/flows/f-9")).unwrap().0,
            "see_flows"
        );
        // No PUT under `filter` nor `{id}`: backtracking finds nothing.
        assert_eq!(find(&r, "PUT", &format!("{ws}/flows/filter")), None);
        // HEAD falls back to GET; ANY takes every method.
        assert_eq!(
            find(&r, "HEAD", &format!("{ws}/flows/f-9")).unwrap().0,
            "see_flows"
        );
        assert_eq!(
            find(&r, "DELETE", &format!("{ws}/deployments/d"))
                .unwrap()
                .0,
            "see_flows"
        );
    }

    #[test]
    fn the_leftmost_exact_segment_decides() {
        let text = r#"
routes:
  GET /w/{w}/{kind}/{id}: { action: see_flows, resource: 'Workspace::"any-{kind}-{id}"' }
  GET /w/{w}/{kind}/latest: { action: see_flows, resource: 'Workspace::"latest-{kind}"' }
  GET /w/{w}/flows/{id}: { action: see_flows, resource: 'Workspace::"flow-{id}"' }
"#;
        let r = compile_texts(&[("a.yaml", text)]).unwrap();
        let resource = |t: &str| find(&r, "GET", t).unwrap().1;
        assert_eq!(resource("/w/x/runs/1"), r#"P::Workspace::"any-runs-1""#);
        assert_eq!(
            resource("/w/x/runs/latest"),
            r#"P::Workspace::"latest-runs""#
        );
        assert_eq!(resource("/w/x/flows/1"), r#"P::Workspace::"flow-1""#);
        // `flows` (exact, second segment) beats `{kind}` even though
        // `{kind}/latest` is exact further right.
        assert_eq!(
            resource("/w/x/flows/latest"),
            r#"P::Workspace::"flow-latest""#
        );
    }

    #[test]
    fn an_action_must_apply_to_the_resource_type() {
        let text = "resource: Workspace::\"{w}\"\nroutes:\n  POST /w/{w}: \"create:invitation\"\n";
        let e = errors(&[("a.yaml", text)]);
        assert!(
            e[0].contains("action `P::Action::\"create:invitation\"` does not apply to resources of type `P::Workspace` (it applies to `P::Organization`)"),
            "{e:?}"
        );
    }

    #[test]
    fn query_trailing_slash_and_encoding_are_normalized() {
        let r = both();
        let expect = Some((
            "see_flows".to_string(),
            r#"P::Workspace::"acme prod""#.to_string(),
        ));
        for target in [
            "/api/accounts/acme/workspaces/acme%20prod/flows/f1",
            "/api/accounts/acme/workspaces/acme%20prod/flows/f1/",
            "/api/accounts/acme/workspaces/acme%20prod/flows/f1?limit=5&x=/..",
            "/api/accounts/acme/workspaces/acme%20prod/flows/f1/#top",
            "/api/%61ccounts/acme/workspaces/acme%20prod/flows/f1",
        ] {
            assert_eq!(find(&r, "GET", target), expect, "{target}");
        }
        assert_eq!(
            find(&r, "GET", "/api/accounts/acme/workspaces/w/flows"),
            None
        );
        assert_eq!(find(&r, "GET", "/"), None);
    }

    #[test]
    fn suspicious_paths_are_refused() {
        for (target, e) in [
            ("api/x", PathError::NotAbsolute),
            ("/api//x", PathError::EmptySegment),
            ("/api/./x", PathError::DotSegment),
            ("/api/../x", PathError::DotSegment),
            ("/api/%2e%2E/x", PathError::DotSegment),
            ("/api/a%2Fb", PathError::EncodedSlash),
            ("/api/%zz", PathError::BadEncoding),
            ("/api/%4", PathError::BadEncoding),
            ("/api/%ff", PathError::BadEncoding),
        ] {
            assert_eq!(request_segments(target), Err(e), "{target}");
        }
        let long = format!("/{}", "a/".repeat(MAX_SEGMENTS + 1));
        assert_eq!(request_segments(&long), Err(PathError::TooManySegments));
        let huge = format!("/{}", "a".repeat(MAX_TARGET_BYTES));
        assert_eq!(request_segments(&huge), Err(PathError::TooLong));
        assert_eq!(request_segments("/").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let text = "resource: Workspace::\"{w}\"\nroutes:\n  GET /w/{w}: see_flow\n";
        let e = errors(&[("routes/a.yaml", text)]);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("routes/a.yaml:3:"), "{e:?}");
        assert!(
            e[0].contains(r#"routes."GET /w/{w}".action: unknown action `see_flow`"#),
            "{e:?}"
        );

        let text =
            "routes:\n  GET /w/{w}:\n    action: see_flows\n    resource: Workspace::\"{x}\"\n";
        let e = errors(&[("b.yaml", text)]);
        assert!(e[0].starts_with("b.yaml:4:"), "{e:?}");
        assert!(e[0].contains(".resource:"), "{e:?}");
        assert!(
            e[0].contains("placeholder `{x}` is not in the path (the path has `{w}`)"),
            "{e:?}"
        );

        let text = "resource: Space::\"{w}\"\nroutes:\n  GET /w/{w}: see_flows\n";
        let e = errors(&[("c.yaml", text)]);
        assert!(e[0].contains("unknown entity type `Space`"), "{e:?}");
    }

    #[test]
    fn malformed_templates_methods_and_files_are_rejected() {
        let cases = [
            ("routes:\n  GET w/{w}: see_flows\n", "must start with `/`"),
            (
                "routes:\n  GET /w/x{w}: see_flows\n",
                "a placeholder must be a whole segment",
            ),
            (
                "routes:\n  GET /w/{w-1}: see_flows\n",
                "is not a placeholder",
            ),
            ("routes:\n  GET /w/{w}/{w}: see_flows\n", "appears twice"),
            ("routes:\n  GET /w//x: see_flows\n", "empty segment"),
            ("routes:\n  GET /w/a%20b: see_flows\n", "without `%`"),
            ("routes:\n  GET /w?x=1: see_flows\n", "query string"),
            ("routes:\n  get /w/{w}: see_flows\n", "write `GET`"),
            ("routes:\n  FETCH /w/{w}: see_flows\n", "is not a method"),
            ("routes:\n  /w/{w}: see_flows\n", "METHOD /path"),
            ("routes:\n  GET /w/{w}: see_flows\n", "no resource"),
            ("prefix: w\nroutes: {}\n", "prefix: `w`: a path must start"),
            (
                "routes:\n  GET /w/{w}: [see_flows]\n",
                "invalid routes file",
            ),
            ("rutes: {}\n", "invalid routes file"),
            (
                "resource: Workspace\nroutes:\n  GET /w/{w}: see_flows\n",
                "not a resource template",
            ),
            (
                "resource: Workspace::\"{w\"\nroutes:\n  GET /w/{w}: see_flows\n",
                "unbalanced",
            ),
        ];
        for (text, expected) in cases {
            let e = errors(&[("x.yaml", text)]);
            assert!(e.iter().any(|m| m.contains(expected)), "{text:?}: {e:?}");
        }
    }

    #[test]
    fn duplicate_routes_name_both_places() {
        let a = "resource: Workspace::\"{w}\"\nroutes:\n  GET /w/{w}/flows: see_flows\n";
        let b = "resource: Workspace::\"{ws}\"\nroutes:\n  POST /w/{ws}/flows: see_flows\n  GET /w/{ws}/flows/: see_flows\n";
        let e = errors(&[("a.yaml", a), ("b.yaml", b)]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("b.yaml:4:"), "{e:?}");
        assert!(
            e[0].contains("is the same route as `GET /w/{w}/flows` at a.yaml:3"),
            "{e:?}"
        );
    }

    #[test]
    fn an_empty_routes_set_matches_nothing() {
        let r = Routes::default();
        assert!(r.is_empty());
        assert!(r.find("GET", &[]).is_none());
        assert!(r.find("GET", &["x".to_string()]).is_none());
    }
}

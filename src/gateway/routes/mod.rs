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
//!
//! This module owns the segment tree ([`Routes`]); `path` parses request
//! paths and `compile` reads and checks the files.
mod compile;
mod path;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

pub use compile::compile;
pub use path::{MAX_SEGMENTS, MAX_TARGET_BYTES, PathError, request_segments};

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

/// A segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
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

/// The routes directory used when none is configured: `routes`, if it is a
/// directory.
pub fn default_path() -> Option<PathBuf> {
    let p = PathBuf::from("routes");
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diagnostic;
    use crate::names::Names;
    use crate::source::TextFile;
    use cedar_policy::Schema;
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

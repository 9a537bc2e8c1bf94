//! The identity-source file format (YAML) and its compiler: every issuer
//! checked (its URL, where its keys come from, its audiences, the claim and
//! entity type naming its principals, its algorithms, the claims it shows to
//! policies against the schema's `context.token` record), each problem
//! reported with its file, line, column and field.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{EntityTypeName, Schema};
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::schema::{ClaimKind, TokenSchema};
use crate::diag::Diagnostic;
use crate::names::Names;
use crate::source::TextFile;
use crate::yaml;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    issuers: Vec<Spanned<RawIssuer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: Spanned<String>,
    jwks: Spanned<String>,
    audiences: Spanned<Vec<String>>,
    principal: Spanned<OneOrMany<RawPrincipal>>,
    groups_claim: Option<Spanned<String>>,
    algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    leeway_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    claims: Vec<Spanned<String>>,
    jwks_cache: Option<Spanned<RawCache>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    #[serde(rename = "type")]
    type_name: String,
    claim: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    min_seconds: Option<u64>,
    max_seconds: Option<u64>,
    default_seconds: Option<u64>,
    unknown_kid_seconds: Option<u64>,
    timeout_seconds: Option<u64>,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// A local JWKS file (`file:PATH`, relative to the identity file).
    File(PathBuf),
    /// A JWKS URL (`https://...`).
    Url(String),
    /// OIDC discovery: `jwks_uri` of `ISSUER/.well-known/openid-configuration`.
    Discovery,
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "file:{}", p.display()),
            JwksSource::Url(u) => f.write_str(u),
            JwksSource::Discovery => f.write_str("discovery"),
        }
    }
}

/// One rule naming a principal: the first rule whose claim the token
/// carries (as a non-empty string) names it, `Type::"<prefix><claim>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrincipalRule {
    pub type_name: EntityTypeName,
    pub claim: String,
    pub prefix: String,
}

/// How long fetched keys are trusted and how often they may be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheBounds {
    /// Least time keys are kept (a `max-age` below it is raised to it).
    pub min: Duration,
    /// Most time keys are trusted without a successful refresh.
    pub max: Duration,
    /// Time keys are kept when the response has no `max-age`.
    pub default: Duration,
    /// Least time between two refreshes caused by an unknown `kid`.
    pub unknown_kid: Duration,
    /// Bound of one fetch (connect, headers and body).
    pub timeout: Duration,
}

impl Default for CacheBounds {
    fn default() -> Self {
        CacheBounds {
            min: Duration::from_secs(60),
            max: Duration::from_secs(24 * 3600),
            default: Duration::from_secs(3600),
            unknown_kid: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A claim shown to policies under `context.token`, with the type the
/// schema gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShownClaim {
    pub name: String,
    pub kind: ClaimKind,
}

/// One trusted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Issuer {
    /// The `iss` its tokens carry, exactly.
    pub issuer: String,
    pub jwks: JwksSource,
    /// Accepted `aud` values (API audiences, or client ids for ID tokens).
    pub audiences: Vec<String>,
    pub principals: Vec<PrincipalRule>,
    /// A claim holding the principal's groups, shown as `context.token.groups`.
    pub groups_claim: Option<String>,
    /// Accepted signature algorithms (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Allowed clock skew for `exp` and `nbf`.
    pub leeway: Duration,
    /// The claims shown to policies (and the decision log) besides `iss`,
    /// `sub` and the groups.
    pub claims: Vec<ShownClaim>,
    pub cache: CacheBounds,
    /// `file:line` of the issuer's entry, for messages.
    pub origin: String,
}

/// Every configured issuer, by `iss`.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub issuers: Vec<Arc<Issuer>>,
    by_iss: HashMap<String, usize>,
    /// Actions whose context declares a `token` record.
    pub token_actions: HashSet<String>,
}

impl Sources {
    /// The issuer whose `iss` is `iss`.
    pub fn issuer(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.by_iss.get(iss).map(|&i| &self.issuers[i])
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.issuers.len()
    }

    /// Whether the context of `action` (`Prefect::Action::"x"`) declares
    /// `token`, so that verified claims can be given to it.
    pub fn action_takes_token(&self, action: &str) -> bool {
        self.token_actions.contains(action)
    }
}

/// The signature algorithms an issuer may use (the asymmetric ones).
const ASYMMETRIC: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Default algorithms: RS256 (what every OIDC provider supports), ES256, EdDSA.
const DEFAULT_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// The claims orgwarden itself writes into `context.token`.
const RESERVED: [&str; 3] = ["iss", "sub", "groups"];

struct Compiler<'a> {
    names: &'a Names,
    schema: &'a Schema,
    token: Option<&'a TokenSchema>,
    out: Sources,
    diags: Vec<Diagnostic>,
}

impl Compiler<'_> {
    fn error(&mut self, file: &Path, at: Option<(usize, usize)>, field: &str, message: String) {
        self.diags.push(Diagnostic::plain(
            Some(file),
            at,
            format!("invalid identity source ({field}): {message}"),
        ));
    }

    fn file(&mut self, f: &TextFile) {
        let raw: RawFile = match yaml::parse_file(&f.path, &f.text, "identity") {
            Ok(r) => r,
            Err(d) => {
                self.diags.push(d);
                return;
            }
        };
        for (i, issuer) in raw.issuers.into_iter().enumerate() {
            self.issuer(f, i, issuer);
        }
    }

    fn issuer(&mut self, f: &TextFile, i: usize, raw: Spanned<RawIssuer>) {
        let before = self.diags.len();
        let at = yaml::position(&raw.referenced);
        let origin = match at {
            Some((line, _)) => format!("{}:{line}", f.path.display()),
            None => f.path.display().to_string(),
        };
        let raw = raw.value;
        let field = |name: &str| format!("issuers[{i}].{name}");
        let pos = |s: &serde_saphyr::Location| yaml::position(s);

        let issuer = raw.issuer.value.trim().to_string();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) || issuer.len() < 9 {
            self.error(
                &f.path,
                pos(&raw.issuer.referenced),
                &field("issuer"),
                format!(
                    "`{issuer}` is not an http(s) URL: write the `iss` the provider's tokens carry"
                ),
            );
        }
        if self.out.by_iss.contains_key(&issuer) {
            self.error(
                &f.path,
                pos(&raw.issuer.referenced),
                &field("issuer"),
                format!("issuer `{issuer}` is configured twice"),
            );
        }

        let jwks_text = raw.jwks.value.trim();
        let jwks = if jwks_text == "discovery" {
            Some(JwksSource::Discovery)
        } else if let Some(path) = jwks_text.strip_prefix("file:") {
            let path = Path::new(path);
            let path = if path.is_relative() {
                f.path.parent().unwrap_or(Path::new(".")).join(path)
            } else {
                path.to_path_buf()
            };
            Some(JwksSource::File(path))
        } else if jwks_text.starts_with("https://") || jwks_text.starts_with("http://") {
            Some(JwksSource::Url(jwks_text.to_string()))
        } else {
            self.error(
                &f.path,
                pos(&raw.jwks.referenced),
                &field("jwks"),
                format!("`{jwks_text}`: write `discovery`, `file:PATH` or an http(s) URL"),
            );
            None
        };

        let audiences: Vec<String> = raw
            .audiences
            .value
            .iter()
            .map(|a| a.trim().to_string())
            .collect();
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            self.error(
                &f.path,
                pos(&raw.audiences.referenced),
                &field("audiences"),
                "list at least one audience, none empty: a token for another audience must never pass".into(),
            );
        }

        let rules = match raw.principal.value {
            OneOrMany::One(r) => vec![r],
            OneOrMany::Many(rs) => rs,
        };
        let principal_at = pos(&raw.principal.referenced);
        if rules.is_empty() {
            self.error(
                &f.path,
                principal_at,
                &field("principal"),
                "name at least one principal rule".into(),
            );
        }
        let mut principals = Vec::new();
        for (j, r) in rules.into_iter().enumerate() {
            let name = format!("principal[{j}]");
            match self.names.resolve_type(r.type_name.trim()) {
                Ok(t) if self.schema.principals().any(|p| *p == t) => {
                    if r.claim.trim().is_empty() {
                        self.error(
                            &f.path,
                            principal_at,
                            &field(&name),
                            "`claim` is empty".into(),
                        );
                    }
                    principals.push(PrincipalRule {
                        type_name: t,
                        claim: r.claim.trim().to_string(),
                        prefix: r.prefix,
                    });
                }
                Ok(t) => self.error(
                    &f.path,
                    principal_at,
                    &field(&name),
                    format!("`{t}` is the principal of no action in the schema"),
                ),
                Err(e) => self.error(&f.path, principal_at, &field(&name), e.to_string()),
            }
        }

        let algorithms = match &raw.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => {
                let mut algs = Vec::new();
                for a in &list.value {
                    match ASYMMETRIC.iter().find(|(n, _)| *n == a.value.trim()) {
                        Some((_, alg)) => algs.push(*alg),
                        None => self.error(
                            &f.path,
                            pos(&a.referenced),
                            &field("algorithms"),
                            format!(
                                "`{}` is not accepted: one of {} (never `none`, never an HMAC algorithm with a provider's keys)",
                                a.value,
                                ASYMMETRIC.map(|(n, _)| n).join(", ")
                            ),
                        ),
                    }
                }
                if list.value.is_empty() {
                    self.error(
                        &f.path,
                        pos(&list.referenced),
                        &field("algorithms"),
                        "list at least one algorithm".into(),
                    );
                }
                algs
            }
        };

        let leeway = raw.leeway_seconds.as_ref().map_or(30, |l| l.value);
        if leeway > 300 {
            let at = raw.leeway_seconds.as_ref().and_then(|l| pos(&l.referenced));
            self.error(
                &f.path,
                at,
                &field("leeway_seconds"),
                format!("{leeway} s is more clock skew than any deployment needs (at most 300)"),
            );
        }

        let mut claims = Vec::new();
        let mut seen = HashSet::new();
        for c in &raw.claims {
            let name = c.value.trim();
            let at = pos(&c.referenced);
            if RESERVED.contains(&name) {
                self.error(
                    &f.path,
                    at,
                    &field("claims"),
                    format!("`{name}` is always in `context.token`: do not list it"),
                );
                continue;
            }
            if !seen.insert(name.to_string()) {
                self.error(
                    &f.path,
                    at,
                    &field("claims"),
                    format!("`{name}` is listed twice"),
                );
                continue;
            }
            match self.token.map(|t| t.attribute(name)) {
                None => self.error(
                    &f.path,
                    at,
                    &field("claims"),
                    "the schema declares no `token` record in any action's context: declare `token?: { iss: String, sub: String, ... }` to show claims to policies".into(),
                ),
                Some(None) => self.error(
                    &f.path,
                    at,
                    &field("claims"),
                    format!("`{name}` is not an attribute of the schema's `context.token` record: declare it there"),
                ),
                Some(Some(ClaimKind::Unsupported)) => self.error(
                    &f.path,
                    at,
                    &field("claims"),
                    format!("`{name}` has a type in `context.token` that a claim cannot fill: use String, Long, Bool or Set<String>"),
                ),
                Some(Some(kind)) => claims.push(ShownClaim {
                    name: name.to_string(),
                    kind,
                }),
            }
        }
        if let Some(g) = &raw.groups_claim
            && self.token.is_some_and(|t| t.attribute("groups").is_none())
        {
            self.error(
                &f.path,
                pos(&g.referenced),
                &field("groups_claim"),
                "the schema's `context.token` record has no `groups` attribute (declare `groups?: Set<String>`)".into(),
            );
        }

        let mut cache = CacheBounds::default();
        if let Some(c) = &raw.jwks_cache {
            let v = &c.value;
            let secs = Duration::from_secs;
            cache.min = v.min_seconds.map_or(cache.min, secs);
            cache.max = v.max_seconds.map_or(cache.max, secs);
            cache.default = v.default_seconds.map_or(cache.default, secs);
            cache.unknown_kid = v.unknown_kid_seconds.map_or(cache.unknown_kid, secs);
            cache.timeout = v.timeout_seconds.map_or(cache.timeout, secs);
            if cache.max.is_zero()
                || cache.min > cache.max
                || cache.timeout.is_zero()
                || cache.unknown_kid.is_zero()
            {
                self.error(
                    &f.path,
                    pos(&c.referenced),
                    &field("jwks_cache"),
                    "need 0 < min_seconds <= max_seconds, timeout_seconds > 0 and unknown_kid_seconds > 0".into(),
                );
            }
        }

        if self.diags.len() > before {
            return;
        }
        let Some(jwks) = jwks else { return };
        self.out
            .by_iss
            .insert(issuer.clone(), self.out.issuers.len());
        self.out.issuers.push(Arc::new(Issuer {
            issuer,
            jwks,
            audiences,
            principals,
            groups_claim: raw.groups_claim.map(|g| g.value.trim().to_string()),
            algorithms,
            leeway: Duration::from_secs(leeway),
            claims,
            cache,
            origin,
        }));
    }
}

/// Compile the identity files against the schema (`schema_files` are its
/// texts, read for the type of `context.token`).
pub fn compile(
    names: &Names,
    schema: &Schema,
    schema_files: &[TextFile],
    files: &[TextFile],
) -> Result<Sources, Vec<Diagnostic>> {
    if files.is_empty() {
        return Ok(Sources::default());
    }
    let token = TokenSchema::read(schema_files);
    let mut c = Compiler {
        names,
        schema,
        token: token.as_ref(),
        out: Sources::default(),
        diags: Vec::new(),
    };
    for f in files {
        c.file(f);
    }
    if let Some(t) = &token {
        c.out.token_actions = t.actions.iter().cloned().collect();
    }
    if c.diags.is_empty() {
        Ok(c.out)
    } else {
        Err(c.diags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    const SCHEMA: &str = r#"namespace App {
        entity User; entity Bot; entity Doc;
        type Token = { iss: String, sub: String, groups?: Set<String>, amr?: Set<String>, n?: Long, x?: Set<Long> };
        action read appliesTo { principal: [User, Bot], resource: [Doc], context: { token?: Token } };
    }"#;

    fn compile_text(text: &str) -> Result<Sources, Vec<Diagnostic>> {
        let schema = Schema::from_str(SCHEMA).unwrap();
        let names = Names::new(&schema);
        let schema_files = [TextFile {
            path: "s.cedarschema".into(),
            text: SCHEMA.into(),
        }];
        let files = [TextFile {
            path: "identity/idp.yaml".into(),
            text: text.into(),
        }];
        compile(&names, &schema, &schema_files, &files)
    }

    #[test]
    fn an_issuer_compiles_with_its_defaults() {
        let s = compile_text(
            "issuers:\n  - issuer: https://idp.example.com\n    jwks: file:keys.json\n    audiences: [api]\n    principal:\n      - { type: User, claim: email }\n      - { type: Bot, claim: client_id, prefix: 'idp-' }\n    groups_claim: groups\n    claims: [amr, n]\n",
        )
        .unwrap();
        let i = s.issuer("https://idp.example.com").unwrap();
        assert_eq!(i.jwks, JwksSource::File("identity/keys.json".into()));
        assert_eq!(i.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(i.leeway, Duration::from_secs(30));
        assert_eq!(i.principals.len(), 2);
        assert_eq!(i.principals[1].prefix, "idp-");
        assert_eq!(
            i.claims
                .iter()
                .map(|c| (c.name.as_str(), c.kind))
                .collect::<Vec<_>>(),
            [("amr", ClaimKind::StringSet), ("n", ClaimKind::Long)]
        );
        assert!(s.action_takes_token(r#"App::Action::"read""#));
        assert!(s.issuer("https://other.example.com").is_none());
    }

    #[test]
    fn every_mistake_is_reported_with_its_position() {
        let errors = compile_text(
            "issuers:\n  - issuer: idp.example.com\n    jwks: ldap://x\n    audiences: []\n    principal: { type: Doc, claim: sub }\n    algorithms: [RS256, none, HS256]\n    claims: [email, sub, x]\n",
        )
        .unwrap_err();
        let text: Vec<String> = errors
            .iter()
            .map(|d| {
                format!(
                    "{}:{} {}",
                    d.line.unwrap_or(0),
                    d.column.unwrap_or(0),
                    d.message
                )
            })
            .collect();
        let has = |line: usize, what: &str| {
            assert!(
                text.iter()
                    .any(|t| t.starts_with(&format!("{line}:")) && t.contains(what)),
                "no `{what}` at line {line}: {text:#?}"
            )
        };
        has(2, "issuers[0].issuer");
        has(3, "issuers[0].jwks");
        has(4, "issuers[0].audiences");
        has(5, "`App::Doc` is the principal of no action");
        has(6, "`none` is not accepted");
        has(6, "`HS256` is not accepted");
        has(7, "`email` is not an attribute");
        has(7, "`sub` is always in `context.token`");
        has(7, "`x` has a type");
    }

    #[test]
    fn yaml_errors_and_unknown_keys_have_positions() {
        let errors = compile_text("issuers:\n  - issuer: https://a.example\n    jwk: discovery\n")
            .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("jwk"), "{}", errors[0].message);
        assert!(errors[0].line.is_some());
    }
}

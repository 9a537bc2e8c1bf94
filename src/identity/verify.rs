//! Verifying a bearer JWT: from its text to the issuer, the principal and
//! the claims shown to policies, or a reason to refuse it.
//!
//! The order is fixed and fails closed: the size is bounded before
//! anything is parsed ([`MAX_TOKEN_BYTES`]); the header must name an
//! algorithm the token's issuer allows (never `none`, never HMAC); the
//! issuer is picked by the unverified `iss` only to find its keys, and the
//! signature, `iss`, `aud`, `exp` and `nbf` (with the issuer's leeway) are
//! then checked by `jsonwebtoken` before any claim is read. The principal
//! is named by the issuer's first principal rule whose claim the token
//! carries. A [`TokenError`] says why in words that never hold the token or
//! a claim's value.
//!
//! A verified token is remembered by its SHA-256 digest (bounded, never the
//! token itself): seen again, it is accepted without a signature check
//! while its issuer's configuration is unchanged, the very key that
//! verified it is still among the issuer's fresh keys (a refresh or a
//! removed key sends it through the full check again), and `exp` and `nbf`
//! still hold with the leeway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cedar_policy::{EntityId, EntityUid};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use sha2::{Digest, Sha256};

use super::config::{Issuer, Sources};
use super::jwks::{CacheStatus, Key, KeyCache, KeyError};
use super::schema::ClaimKind;

/// The longest bearer JWT read; a longer one is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A verified token.
#[derive(Debug, Clone)]
pub struct Verified {
    pub issuer: Arc<str>,
    pub principal: EntityUid,
    /// The `context.token` record: `iss`, `sub`, `groups` (with a groups
    /// claim) and the claims the issuer lists, typed by the schema.
    pub token: Value,
}

/// Why a token is refused: a stable code and a message that holds neither
/// the token nor a claim's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub code: &'static str,
    pub message: String,
}

impl TokenError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        TokenError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// Whether a bearer credential is a JWT (three base64url parts joined by
/// dots) rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3
        && credential
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// What identifies a key cache: an issuer's `iss`, key source and bounds.
/// A reload that keeps them keeps the cached keys.
type CacheId = (String, String, super::config::CacheBounds);

/// Tokens verified before, by digest.
const SEEN_TOKENS: u64 = 10_000;

/// A token verified before: what it verified to, and what must still hold.
struct Seen {
    verified: Verified,
    issuer: Arc<Issuer>,
    cache: Arc<KeyCache>,
    key: Arc<Key>,
    kid: Option<String>,
    alg: Algorithm,
    exp: u64,
    nbf: Option<u64>,
}

impl Seen {
    /// Whether the verification still stands against `sources` now.
    fn stands(&self, sources: &Sources) -> bool {
        let same_issuer = sources
            .issuer(&self.issuer.issuer)
            .is_some_and(|i| Arc::ptr_eq(i, &self.issuer) || **i == *self.issuer);
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = self.issuer.leeway.as_secs();
        same_issuer
            && self.exp >= now.saturating_sub(leeway)
            && self.nbf.is_none_or(|nbf| nbf <= now + leeway)
            && self
                .cache
                .fresh_key(self.kid.as_deref(), self.alg)
                .is_some_and(|k| Arc::ptr_eq(&k, &self.key))
    }
}

/// The verifier of a server: key caches by issuer, tokens verified before,
/// and outcome counts.
pub struct Verifier {
    client: reqwest::Client,
    caches: Mutex<HashMap<CacheId, Arc<KeyCache>>>,
    seen: moka::sync::Cache<[u8; 32], Arc<Seen>>,
    outcomes: Mutex<HashMap<&'static str, u64>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

#[derive(serde::Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl Verifier {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("orgwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Verifier {
            client,
            caches: Mutex::new(HashMap::new()),
            seen: moka::sync::Cache::builder()
                .max_capacity(SEEN_TOKENS)
                .time_to_live(std::time::Duration::from_secs(600))
                .build(),
            outcomes: Mutex::new(HashMap::new()),
        }
    }

    /// The key cache of `issuer` (created on first use).
    pub fn cache(&self, issuer: &Arc<Issuer>) -> Arc<KeyCache> {
        let id = (issuer.issuer.clone(), issuer.jwks.to_string(), issuer.cache);
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches
            .entry(id)
            .or_insert_with(|| Arc::new(KeyCache::new(issuer.clone(), self.client.clone())))
            .clone()
    }

    /// Fetch the keys of every issuer of `sources` that has none yet, and
    /// forget the caches of issuers no longer configured.
    pub async fn warm(&self, sources: &Sources) {
        let wanted: Vec<CacheId> = sources
            .issuers
            .iter()
            .map(|i| (i.issuer.clone(), i.jwks.to_string(), i.cache))
            .collect();
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| wanted.contains(id));
        for issuer in &sources.issuers {
            let cache = self.cache(issuer);
            if cache.fetch_count() == 0 {
                cache.refresh(true).await;
            }
        }
    }

    /// The state of every configured issuer's keys.
    pub fn status(&self, sources: &Sources) -> Vec<CacheStatus> {
        sources
            .issuers
            .iter()
            .map(|i| self.cache(i).status())
            .collect()
    }

    /// Tokens verified and refused so far, by outcome code (`verified` or
    /// the [`TokenError`] code).
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        v.sort();
        v
    }

    fn count(&self, code: &'static str) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Verify `token` against the issuers of `sources`.
    pub async fn verify(&self, sources: &Sources, token: &str) -> Result<Verified, TokenError> {
        let result = self.verify_inner(sources, token).await;
        self.count(match &result {
            Ok(_) => "verified",
            Err(e) => e.code,
        });
        result
    }

    async fn verify_inner(&self, sources: &Sources, token: &str) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::new(
                "token_too_large",
                format!("the token is longer than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        if !looks_like_jwt(token) {
            return Err(TokenError::new(
                "malformed_token",
                "not a JWT: three base64url parts joined by dots",
            ));
        }
        if sources.is_empty() {
            return Err(TokenError::new(
                "no_identity_source",
                "no identity source is configured: bearer JWTs are not accepted",
            ));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(seen) = self.seen.get(&digest)
            && seen.stands(sources)
        {
            return Ok(seen.verified.clone());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) => TokenError::new(
                "invalid_algorithm",
                "the token's header names no accepted algorithm (`none` and unknown algorithms are refused)",
            ),
            _ => TokenError::new("malformed_token", "the token's header cannot be read"),
        })?;
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode::<Unverified>(token)
            .map(|d| d.claims)
            .map_err(|_| TokenError::new("malformed_token", "the token's claims cannot be read"))?;
        let Some(issuer) = unverified.iss.as_deref().and_then(|i| sources.issuer(i)) else {
            return Err(TokenError::new(
                "unknown_issuer",
                "the token's issuer is not a configured identity source",
            ));
        };
        if !issuer.algorithms.contains(&header.alg) {
            return Err(TokenError::new(
                "invalid_algorithm",
                format!(
                    "algorithm {:?} is not accepted for issuer {}",
                    header.alg, issuer.issuer
                ),
            ));
        }
        let cache = self.cache(issuer);
        let key = cache
            .key(header.kid.as_deref(), header.alg)
            .await
            .map_err(|e| match e {
                KeyError::UnknownKid => TokenError::new(
                    "unknown_key",
                    format!(
                        "no key of issuer {} matches the token's `kid` and algorithm",
                        issuer.issuer
                    ),
                ),
                KeyError::Unavailable(why) => TokenError::new("keys_unavailable", why),
            })?;
        let validation = validation(issuer, header.alg);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let principal = principal(issuer, &claims)?;
        let verified = Verified {
            issuer: Arc::from(issuer.issuer.as_str()),
            principal,
            token: token_record(issuer, &claims),
        };
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            self.seen.insert(
                digest,
                Arc::new(Seen {
                    verified: verified.clone(),
                    issuer: issuer.clone(),
                    cache,
                    key,
                    kid: header.kid,
                    alg: header.alg,
                    exp,
                    nbf: claims.get("nbf").and_then(Value::as_u64),
                }),
            );
        }
        Ok(verified)
    }
}

fn validation(issuer: &Issuer, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.set_issuer(&[&issuer.issuer]);
    v.set_audience(&issuer.audiences);
    v.leeway = issuer.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn refusal(kind: &ErrorKind) -> TokenError {
    let (code, message) = match kind {
        ErrorKind::ExpiredSignature => ("token_expired", "the token has expired"),
        ErrorKind::ImmatureSignature => ("token_not_yet_valid", "the token is not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => ("invalid_issuer", "the token's issuer is not accepted"),
        ErrorKind::InvalidAudience => (
            "invalid_audience",
            "the token is not for an accepted audience",
        ),
        ErrorKind::InvalidSignature => {
            ("invalid_signature", "the token's signature does not verify")
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => (
            "invalid_algorithm",
            "the token's algorithm does not fit the issuer's key",
        ),
        ErrorKind::MissingRequiredClaim(_) => {
            ("missing_claim", "the token lacks `exp`, `iss` or `aud`")
        }
        ErrorKind::InvalidClaimFormat(_) => {
            ("malformed_token", "a registered claim has the wrong type")
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => (
            "invalid_signature",
            "the token's signature does not verify with the issuer's key",
        ),
        _ => ("malformed_token", "the token cannot be read"),
    };
    TokenError::new(code, message)
}

/// The principal of verified `claims`: the first rule whose claim is a
/// non-empty string.
fn principal(issuer: &Issuer, claims: &Map<String, Value>) -> Result<EntityUid, TokenError> {
    for rule in &issuer.principals {
        if let Some(Value::String(v)) = claims.get(&rule.claim)
            && !v.is_empty()
        {
            let id = format!("{}{v}", rule.prefix);
            return Ok(EntityUid::from_type_name_and_id(
                rule.type_name.clone(),
                EntityId::new(id),
            ));
        }
    }
    let names: Vec<&str> = issuer.principals.iter().map(|r| r.claim.as_str()).collect();
    Err(TokenError::new(
        "no_principal",
        format!(
            "the token carries none of the claims naming a principal ({})",
            names.join(", ")
        ),
    ))
}

/// The `context.token` record of verified `claims`.
fn token_record(issuer: &Issuer, claims: &Map<String, Value>) -> Value {
    let mut record = Map::new();
    record.insert("iss".into(), Value::String(issuer.issuer.clone()));
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    record.insert("sub".into(), Value::String(sub.to_string()));
    if let Some(g) = &issuer.groups_claim
        && let Some(v) = claims.get(g).and_then(|v| typed(v, ClaimKind::StringSet))
    {
        record.insert("groups".into(), v);
    }
    for c in &issuer.claims {
        if let Some(v) = claims.get(&c.name).and_then(|v| typed(v, c.kind)) {
            record.insert(c.name.clone(), v);
        }
    }
    Value::Object(record)
}

/// A claim's value as the schema types it; none when it does not fit
/// (the claim is then absent from the record).
fn typed(v: &Value, kind: ClaimKind) -> Option<Value> {
    match (kind, v) {
        (ClaimKind::String, Value::String(_)) => Some(v.clone()),
        (ClaimKind::Long, Value::Number(n)) => n.as_i64().map(Value::from),
        (ClaimKind::Bool, Value::Bool(_)) => Some(v.clone()),
        (ClaimKind::StringSet, Value::Array(items)) => items
            .iter()
            .all(Value::is_string)
            .then(|| Value::Array(items.clone())),
        // A space-separated list (`scope`), or one value.
        (ClaimKind::StringSet, Value::String(s)) => Some(Value::Array(
            s.split_whitespace()
                .map(|x| Value::String(x.into()))
                .collect(),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwts_and_api_keys_are_told_apart() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("ow_demo_carol_78b196c1ef5b8c5dbaa1ed39"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b+.c"));
    }

    #[test]
    fn claims_are_typed_by_the_schema() {
        assert_eq!(
            typed(&json!(["pwd", "mfa"]), ClaimKind::StringSet),
            Some(json!(["pwd", "mfa"]))
        );
        assert_eq!(
            typed(&json!("read write"), ClaimKind::StringSet),
            Some(json!(["read", "write"]))
        );
        assert_eq!(typed(&json!([1]), ClaimKind::StringSet), None);
        assert_eq!(typed(&json!(3), ClaimKind::Long), Some(json!(3)));
        assert_eq!(typed(&json!(3.5), ClaimKind::Long), None);
        assert_eq!(typed(&json!("x"), ClaimKind::Bool), None);
    }
}

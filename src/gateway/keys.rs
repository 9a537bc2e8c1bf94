//! API-key principals: `Authorization: Bearer <key>` to the user or service
//! account that holds the key.
//!
//! Keys are never stored: a principal's facts list the SHA-256 digests of its
//! keys (lowercase hex) in its `apiKeyDigests` attribute. [`KeyIndex`] maps
//! every digest to its principal once per snapshot, so resolving a key costs
//! one hash and one map lookup, never a scan. Rotating a key is a change of
//! facts: the new snapshot's index no longer holds the old digest.
//!
//! Nothing here logs or keeps a key; errors say what is wrong with the
//! header, never what it held.

use std::collections::HashMap;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use cedar_policy::{Entities, Entity, EntityUid, EvalResult};
use sha2::{Digest, Sha256};

/// The attribute holding a principal's key digests.
pub const DIGEST_ATTR: &str = "apiKeyDigests";

/// Longest key accepted, in bytes; a longer one is refused unhashed.
pub const MAX_KEY_BYTES: usize = 512;

/// Longest bearer credential read (an API key or a JWT), in bytes; a
/// longer `Authorization` header is malformed, and nothing in it is parsed.
pub const MAX_BEARER_BYTES: usize = crate::identity::verify::MAX_TOKEN_BYTES;

/// The SHA-256 digest of `key`, as stored in the facts (lowercase hex).
pub fn digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A stored digest as bytes: exactly 64 lowercase hex digits.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The strings of an entity's `apiKeyDigests` attribute (none when absent).
pub fn declared_digests(e: &Entity) -> Vec<String> {
    match e.attr(DIGEST_ATTR) {
        Some(Ok(EvalResult::Set(set))) => set
            .iter()
            .filter_map(|v| match v {
                EvalResult::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Key digest to principal, built once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    by_digest: HashMap<[u8; 32], EntityUid>,
}

impl KeyIndex {
    /// Index every well-formed digest of `entities`. A digest declared by
    /// two principals resolves to neither (the domain checks reject such
    /// facts at load; a general schema gets the fail-closed reading).
    pub fn build(entities: &Entities) -> Self {
        let mut by_digest: HashMap<[u8; 32], EntityUid> = HashMap::new();
        let mut ambiguous: Vec<[u8; 32]> = Vec::new();
        for e in entities.iter() {
            for text in declared_digests(e) {
                let Some(digest) = parse_digest(&text) else {
                    continue;
                };
                let uid = e.uid();
                match by_digest.get(&digest) {
                    Some(other) if *other != uid => ambiguous.push(digest),
                    _ => {
                        by_digest.insert(digest, uid);
                    }
                }
            }
        }
        for d in ambiguous {
            by_digest.remove(&d);
        }
        KeyIndex { by_digest }
    }

    /// Number of indexed keys.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The principal holding `key`, if any.
    pub fn resolve(&self, key: &str) -> Option<&EntityUid> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest.get(&digest)
    }
}

/// The facts a gateway asks about its caller: who holds an API key, and
/// whether a principal exists. A snapshot's entity files answer without a
/// fact store; the store's live view answers with one, so that a key or a
/// principal written through the fact API counts at the next revision.
pub trait Principals {
    /// The principal holding `key`, when exactly one does.
    fn key_holder(&self, key: &str) -> Option<EntityUid>;
    /// Whether the facts hold the entity `uid`.
    fn holds(&self, uid: &EntityUid) -> bool;
}

/// What the `Authorization` header of a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// No `Authorization` header.
    Missing,
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// Anything else: another scheme, several headers, an empty or oversized
    /// token, bytes that are not visible ASCII.
    Malformed,
}

/// Read the bearer token of `headers` (the scheme is case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Credential<'_> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Credential::Missing;
    };
    if values.next().is_some() {
        return Credential::Malformed;
    }
    let Ok(text) = value.to_str() else {
        return Credential::Malformed;
    };
    let Some((scheme, token)) = text.trim().split_once(' ') else {
        return Credential::Malformed;
    };
    let token = token.trim_start();
    let visible = token.bytes().all(|b| b.is_ascii_graphic());
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.len() > MAX_BEARER_BYTES
        || !visible
    {
        return Credential::Malformed;
    }
    Credential::Bearer(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use cedar_policy::Schema;
    use std::str::FromStr;

    fn entities(json: serde_json::Value) -> Entities {
        let schema = Schema::from_str(
            "entity User = { apiKeyDigests?: Set<String> }; entity Bot = { apiKeyDigests?: Set<String> };",
        )
        .unwrap();
        Entities::from_json_value(json, Some(&schema)).unwrap()
    }

    fn with_keys(keys: &[(&str, &str, &[&str])]) -> Entities {
        let items: Vec<serde_json::Value> = keys
            .iter()
            .map(|(ty, id, ks)| {
                let digests: Vec<String> = ks.iter().map(|k| digest_hex(k)).collect();
                serde_json::json!({
                    "uid": {"type": ty, "id": id},
                    "attrs": {"apiKeyDigests": digests},
                    "parents": []
                })
            })
            .collect();
        entities(serde_json::Value::Array(items))
    }

    #[test]
    fn a_key_resolves_to_the_principal_holding_its_digest() {
        let index = with_keys(&[
            ("User", "alice", &["ow_alice_1", "ow_alice_2"]),
            ("Bot", "ci", &["ow_ci"]),
        ]);
        let index = KeyIndex::build(&index);
        assert_eq!(index.len(), 3);
        let uid = |s: &str| EntityUid::from_str(s).unwrap();
        assert_eq!(index.resolve("ow_alice_1"), Some(&uid(r#"User::"alice""#)));
        assert_eq!(index.resolve("ow_alice_2"), Some(&uid(r#"User::"alice""#)));
        assert_eq!(index.resolve("ow_ci"), Some(&uid(r#"Bot::"ci""#)));
        assert_eq!(index.resolve("ow_alice_3"), None);
        assert_eq!(index.resolve(""), None);
        assert_eq!(index.resolve(&"x".repeat(MAX_KEY_BYTES + 1)), None);
    }

    #[test]
    fn a_rotated_key_no_longer_resolves() {
        let before = KeyIndex::build(&with_keys(&[("Bot", "ci", &["old"])]));
        let after = KeyIndex::build(&with_keys(&[("Bot", "ci", &["new"])]));
        assert!(before.resolve("old").is_some());
        assert!(after.resolve("old").is_none());
        assert!(after.resolve("new").is_some());
    }

    #[test]
    fn a_shared_or_malformed_digest_resolves_to_nobody() {
        let shared = KeyIndex::build(&with_keys(&[
            ("User", "a", &["same", "mine"]),
            ("User", "b", &["same"]),
        ]));
        assert!(shared.resolve("same").is_none());
        assert!(shared.resolve("mine").is_some());
        let raw = entities(serde_json::json!([{
            "uid": {"type": "User", "id": "u"},
            "attrs": {"apiKeyDigests": ["not-hex", digest_hex("k").to_uppercase()]},
            "parents": []
        }]));
        assert!(KeyIndex::build(&raw).is_empty());
    }

    #[test]
    fn digests_are_64_lowercase_hex_digits() {
        let d = digest_hex("abc");
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_digest(&d).is_some());
        assert!(parse_digest(&d.to_uppercase()).is_none());
        assert!(parse_digest(&d[..63]).is_none());
        assert!(parse_digest(&format!("{}g", &d[..63])).is_none());
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let read = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            match bearer(&h) {
                Credential::Bearer(t) => Ok(t.to_string()),
                Credential::Missing => Err("missing"),
                Credential::Malformed => Err("malformed"),
            }
        };
        assert_eq!(read(&[]), Err("missing"));
        assert_eq!(read(&["Bearer ow_k"]), Ok("ow_k".into()));
        assert_eq!(read(&["bearer  ow_k "]), Ok("ow_k".into()));
        assert_eq!(read(&["Basic dXNlcjpwYXNz"]), Err("malformed"));
        assert_eq!(read(&["Bearer"]), Err("malformed"));
        assert_eq!(read(&["Bearer a b"]), Err("malformed"));
        assert_eq!(read(&["Bearer a", "Bearer b"]), Err("malformed"));
        // A JWT may be longer than a key; past the bearer bound nothing is read.
        let jwt_sized = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            read(&[format!("Bearer {jwt_sized}").as_str()]),
            Ok(jwt_sized)
        );
        let long = format!("Bearer {}", "k".repeat(MAX_BEARER_BYTES + 1));
        assert_eq!(read(&[long.as_str()]), Err("malformed"));
    }
}

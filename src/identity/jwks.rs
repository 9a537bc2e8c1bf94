//! An issuer's signing keys: fetched (a JWKS URL, OIDC discovery or a
//! local file), cached, refreshed, and trusted only for a bounded time.
//!
//! * Keys are refetched when the response's `Cache-Control: max-age` says
//!   (clamped to the issuer's `min`..`max`; `default` without one), and on
//!   a token whose `kid` is unknown, at most once per `unknown_kid`
//!   interval: a flood of tokens with made-up `kid`s makes one fetch per
//!   interval, never one per token. Fetches are single-flight: callers that
//!   need a refresh while one runs wait for it.
//! * A fetch is bounded in time (the issuer's `timeout`) and size
//!   ([`MAX_JWKS_BYTES`]); symmetric keys (`kty: oct`) and encryption keys
//!   are dropped, so a token can never be checked with HMAC against a
//!   provider's key.
//! * When the provider cannot be reached, the keys of the last successful
//!   fetch keep working until `max` after it; then every token of the
//!   issuer is refused (fail closed) and [`KeyCache::status`] says why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::config::{CacheBounds, Issuer, JwksSource};

/// The largest JWKS or discovery document read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One verification key.
pub struct Key {
    pub decoding: DecodingKey,
    /// The algorithm the JWK pins (`alg`), when it does.
    pub alg: Option<Algorithm>,
}

impl Key {
    /// Whether a token signed with `alg` may be checked with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.decoding.family() == alg.family()
    }
}

/// The keys of one fetch.
struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys without a `kid`.
    unnamed: Vec<Arc<Key>>,
    fetched: SystemTime,
    /// When to fetch again.
    refresh_at: Instant,
    /// When the keys stop being trusted without a newer fetch.
    expires_at: Instant,
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The keys are fresh and none has this `kid`.
    UnknownKid,
    /// No keys can be trusted: never fetched, or expired with the provider
    /// unreachable (the last error).
    Unavailable(String),
}

/// What `/readyz`, `/v1/status` and the metrics tell about an issuer's keys.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheStatus {
    pub issuer: String,
    pub jwks: String,
    /// Keys trusted now.
    pub keys: usize,
    /// Whether tokens of this issuer can be verified now.
    pub ready: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub fetches: u64,
    pub fetch_failures: u64,
    /// Seconds since the last successful fetch.
    pub age_seconds: Option<f64>,
    /// Seconds until the keys stop being trusted (negative: expired).
    pub expires_in_seconds: Option<f64>,
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Gate {
    last_attempt: Option<Instant>,
    /// The discovered `jwks_uri`.
    jwks_uri: Option<String>,
}

/// The cached keys of one issuer.
pub struct KeyCache {
    issuer: Arc<Issuer>,
    client: reqwest::Client,
    current: arc_swap::ArcSwapOption<KeySet>,
    gate: tokio::sync::Mutex<Gate>,
    fetches: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Between two fetches after a failure while no keys can be trusted.
const RETRY_WHEN_UNAVAILABLE: Duration = Duration::from_secs(1);

impl KeyCache {
    pub fn new(issuer: Arc<Issuer>, client: reqwest::Client) -> Self {
        KeyCache {
            issuer,
            client,
            current: arc_swap::ArcSwapOption::empty(),
            gate: tokio::sync::Mutex::new(Gate::default()),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn set(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// The key for `kid` and `alg` while no refresh is due, without
    /// waiting: the check of a token verified before.
    pub fn fresh_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
        let set = self.current.load();
        let set = set.as_ref()?;
        if Instant::now() >= set.refresh_at {
            return None;
        }
        find(set, kid, alg)
    }

    /// Successful and failed fetches so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key for a token's `kid` (none: the only key without one),
    /// fetching when the keys are due or the `kid` is unknown, within the
    /// rate limits.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, KeyError> {
        let now = Instant::now();
        match self.set() {
            Some(set) if now < set.refresh_at => {
                if let Some(k) = find(&set, kid, alg) {
                    return Ok(k);
                }
                self.refresh(false).await;
            }
            Some(set) if now < set.expires_at => {
                // Due but still trusted: one caller refreshes, the others
                // go on with the cached keys rather than wait for it.
                if let Ok(gate) = self.gate.try_lock() {
                    self.refresh_locked(gate, true, now).await;
                } else if find(&set, kid, alg).is_none() {
                    self.refresh(false).await;
                }
            }
            // Expired or never fetched.
            _ => self.refresh(true).await,
        }
        self.lookup(kid, alg)
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<Key>, KeyError> {
        let now = Instant::now();
        match self.set() {
            Some(set) if now < set.expires_at => find(&set, kid, alg).ok_or(KeyError::UnknownKid),
            _ => Err(KeyError::Unavailable(self.unavailable_reason())),
        }
    }

    fn unavailable_reason(&self) -> String {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match (self.set(), last) {
            (Some(_), Some(e)) => format!("the issuer's keys expired and cannot be refreshed: {e}"),
            (Some(_), None) => "the issuer's keys expired".into(),
            (None, Some(e)) => format!("the issuer's keys cannot be fetched: {e}"),
            (None, None) => "the issuer's keys were not fetched yet".into(),
        }
    }

    /// Fetch once unless another caller just did (single-flight) or the
    /// rate limit forbids: `due` is a refresh the cache headers (or no
    /// keys) ask for, else an unknown `kid` asks.
    pub async fn refresh(&self, due: bool) {
        let started = Instant::now();
        let gate = self.gate.lock().await;
        self.refresh_locked(gate, due, started).await;
    }

    async fn refresh_locked(
        &self,
        mut gate: tokio::sync::MutexGuard<'_, Gate>,
        due: bool,
        started: Instant,
    ) {
        let now = Instant::now();
        // Another caller fetched while this one waited.
        if gate.last_attempt.is_some_and(|t| t >= started) {
            return;
        }
        let bounds = &self.issuer.cache;
        if let Some(last) = gate.last_attempt {
            let fresh = self.set().is_some_and(|s| now < s.refresh_at);
            let wait = if due && !fresh {
                // Keys are due: retry soon, but not on every token.
                RETRY_WHEN_UNAVAILABLE.min(bounds.unknown_kid)
            } else {
                bounds.unknown_kid
            };
            if now.duration_since(last) < wait {
                return;
            }
        }
        gate.last_attempt = Some(now);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch(&mut gate).await {
            Ok((jwks, max_age)) => {
                let set = key_set(&jwks, max_age, bounds);
                self.current.store(Some(Arc::new(set)));
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(issuer = %self.issuer.issuer, jwks = %self.issuer.jwks, error = %e, "identity: cannot fetch the issuer's keys");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                // A discovered URI may have moved: discover again next time.
                gate.jwks_uri = None;
            }
        }
    }

    async fn fetch(&self, gate: &mut Gate) -> Result<(JwkSet, Option<Duration>), String> {
        let timeout = self.issuer.cache.timeout;
        match &self.issuer.jwks {
            JwksSource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!(
                        "{}: larger than {MAX_JWKS_BYTES} bytes",
                        path.display()
                    ));
                }
                let set = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
                Ok((set, None))
            }
            JwksSource::Url(url) => {
                let (body, max_age) = get(&self.client, url, timeout).await?;
                let set =
                    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS: {e}"))?;
                Ok((set, max_age))
            }
            JwksSource::Discovery => {
                let uri = match &gate.jwks_uri {
                    Some(u) => u.clone(),
                    None => {
                        let uri = discover(&self.client, &self.issuer.issuer, timeout).await?;
                        gate.jwks_uri = Some(uri.clone());
                        uri
                    }
                };
                let (body, max_age) = get(&self.client, &uri, timeout).await?;
                let set =
                    serde_json::from_slice(&body).map_err(|e| format!("{uri}: not a JWKS: {e}"))?;
                Ok((set, max_age))
            }
        }
    }

    /// The state of the keys now.
    pub fn status(&self) -> CacheStatus {
        let now = Instant::now();
        let set = self.set();
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let ready = set.as_ref().is_some_and(|s| now < s.expires_at);
        let secs = |later: Instant| {
            if later >= now {
                later.duration_since(now).as_secs_f64()
            } else {
                -now.duration_since(later).as_secs_f64()
            }
        };
        CacheStatus {
            issuer: self.issuer.issuer.clone(),
            jwks: self.issuer.jwks.to_string(),
            keys: set
                .as_ref()
                .filter(|_| ready)
                .map_or(0, |s| s.by_kid.len() + s.unnamed.len()),
            ready,
            reason: (!ready).then(|| self.unavailable_reason()),
            fetches: self.fetches.load(Ordering::Relaxed),
            fetch_failures: self.failures.load(Ordering::Relaxed),
            age_seconds: set
                .as_ref()
                .and_then(|s| s.fetched.elapsed().ok())
                .map(|d| d.as_secs_f64()),
            expires_in_seconds: set.as_ref().map(|s| secs(s.expires_at)),
            last_error,
        }
    }
}

fn find(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<Arc<Key>> {
    match kid {
        Some(kid) => set.by_kid.get(kid).filter(|k| k.accepts(alg)).cloned(),
        None => {
            // Without a `kid`, only an unambiguous key will do.
            let mut candidates = set
                .unnamed
                .iter()
                .chain(set.by_kid.values())
                .filter(|k| k.accepts(alg));
            let first = candidates.next()?;
            candidates.next().is_none().then(|| first.clone())
        }
    }
}

/// The usable signature keys of `jwks`, trusted per `bounds`.
fn key_set(jwks: &JwkSet, max_age: Option<Duration>, bounds: &CacheBounds) -> KeySet {
    let mut by_kid = HashMap::new();
    let mut unnamed = Vec::new();
    for jwk in &jwks.keys {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        if matches!(
            jwk.algorithm,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
        ) {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        if decoding.family() == AlgorithmFamily::Hmac {
            continue;
        }
        // A key pinned to an algorithm that is not a signature one we
        // accept (`RSA-OAEP`, `HS256`) is not a verification key.
        let alg = match jwk.common.key_algorithm {
            Some(a) => match key_algorithm(a) {
                Some(alg) => Some(alg),
                None => continue,
            },
            None => None,
        };
        let key = Arc::new(Key { decoding, alg });
        match &jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid.clone(), key);
            }
            None => unnamed.push(key),
        }
    }
    let now = Instant::now();
    let ttl = max_age
        .unwrap_or(bounds.default)
        .clamp(bounds.min, bounds.max);
    KeySet {
        by_kid,
        unnamed,
        fetched: SystemTime::now(),
        refresh_at: now + ttl,
        expires_at: now + bounds.max.max(ttl),
    }
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// `Cache-Control: max-age=N` of a response (`no-store`/`no-cache`: 0).
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            age = n
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// GET `url`: its body (at most [`MAX_JWKS_BYTES`]) and `max-age`.
async fn get(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<Duration>), String> {
    let work = async {
        let mut response = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("{url}: larger than {MAX_JWKS_BYTES} bytes"));
        }
        let age = max_age(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("{url}: larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, age))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The `jwks_uri` of `issuer`'s discovery document, whose `issuer` must be
/// `issuer` exactly (OpenID Connect Discovery 1.0, section 4.3).
async fn discover(
    client: &reqwest::Client,
    issuer: &str,
    timeout: Duration,
) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let (body, _) = get(client, &url, timeout).await?;
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let d: Discovery = serde_json::from_slice(&body)
        .map_err(|e| format!("{url}: not a discovery document: {e}"))?;
    if d.issuer != issuer {
        return Err(format!(
            "{url}: the document names issuer `{}`, not `{issuer}`",
            d.issuer
        ));
    }
    if !(d.jwks_uri.starts_with("https://") || d.jwks_uri.starts_with("http://")) {
        return Err(format!("{url}: `jwks_uri` is not an http(s) URL"));
    }
    Ok(d.jwks_uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert("cache-control", "public, max-age=600".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert("cache-control", "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
    }

    #[test]
    fn symmetric_and_encryption_keys_are_dropped() {
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "sig", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}))
        .unwrap();
        let set = key_set(&jwks, None, &CacheBounds::default());
        let kids: Vec<&String> = set.by_kid.keys().collect();
        assert_eq!(kids, ["sig"]);
        assert!(find(&set, Some("sig"), Algorithm::EdDSA).is_some());
        assert!(find(&set, Some("sig"), Algorithm::RS256).is_none());
        assert!(find(&set, Some("h"), Algorithm::HS256).is_none());
    }

    #[test]
    fn the_ttl_is_clamped_and_trust_lasts_max() {
        let bounds = CacheBounds {
            min: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            ..CacheBounds::default()
        };
        let empty = JwkSet { keys: vec![] };
        let s = key_set(&empty, Some(Duration::from_secs(1)), &bounds);
        let ttl = s.refresh_at - Instant::now();
        assert!(ttl > Duration::from_secs(55) && ttl <= Duration::from_secs(60));
        let s = key_set(&empty, Some(Duration::from_secs(1_000_000)), &bounds);
        assert!(s.refresh_at - Instant::now() <= Duration::from_secs(3600));
        assert!(s.expires_at - Instant::now() > Duration::from_secs(3500));
    }
}

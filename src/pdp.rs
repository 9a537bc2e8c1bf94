//! The decision point: the engine plus what a server adds around it.
//!
//! [`Pdp::authorize`] is the one path every server API takes to a decision:
//! the decision cache (keyed by snapshot generation and fact revision, so
//! neither a reload nor a fact write ever serves an older answer),
//! [`crate::engine`] (with a fact store: a slice of the live facts,
//! [`crate::facts::slice`]), metrics, the decision log and a fresh decision
//! id. It fails closed: an invalid request is an
//! error for the caller to report, and nothing here can turn into an Allow.
//!
//! Deciding is synchronous; handing the record to the decision log is the
//! one `await` (it waits only when the log's queue is full and the log
//! blocks on overflow), so a stalled log never holds a runtime thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::sync::Cache;
use tokio::sync::Semaphore;
use uuid::Uuid;

pub use crate::decision_log::Entry;
use crate::decision_log::{DecisionLog, DecisionRecord, Recorded};
use cedar_policy::EntityUid;

use crate::engine::{self, Query, RequestError, RequestInput};
use crate::live_facts::{At, LiveFacts};
use crate::metrics::{DecisionLabels, ErrorLabels, Metrics};
use crate::names::EntityRef;
use crate::reload::Live;
use crate::request_facts::{RequestEntities, RequestFacts};

/// The response header naming the fact revision a decision used.
pub const REVISION_HEADER: &str = "orgwarden-revision";

/// The request header naming the least fact revision a decision may use.
pub const MIN_REVISION_HEADER: &str = "orgwarden-min-revision";

/// The revision in an `Orgwarden-Min-Revision` value: a non-negative
/// integer, spaces around it allowed; none when it is anything else.
pub fn parse_min_revision(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Why a request's `Orgwarden-Min-Revision` cannot be met; every transport
/// answers `Invalid` with 400 `invalid_header` and `Behind` with 503
/// `stale_facts`, with this as the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MinRevisionError {
    /// The header is not a revision.
    Invalid,
    /// The facts are still behind it after the wait.
    Behind(Behind),
}

impl std::fmt::Display for MinRevisionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinRevisionError::Invalid => {
                f.write_str("Orgwarden-Min-Revision must be a revision: a non-negative integer")
            }
            MinRevisionError::Behind(behind) => behind.fmt(f),
        }
    }
}

/// Facts still behind a requested minimum revision after the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    /// The revision decisions would use now.
    pub revision: u64,
    /// The revision asked for.
    pub min: u64,
    /// How long the request waited.
    pub waited: Duration,
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the facts are at revision {}, behind the requested minimum {} after waiting {} ms",
            self.revision,
            self.min,
            self.waited.as_millis()
        )
    }
}

/// A decision as a server reports it.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision_id: Uuid,
    pub generation: u64,
    pub cached: bool,
    /// Time to decide (parsing, cache and evaluation).
    pub latency: Duration,
    pub entry: Arc<Entry>,
}

/// A cache key: the snapshot generation, the fact revision and the request,
/// as written on the wire or as resolved uids. The revision is exact: a
/// write publishes a new revision, so every entry cached at an older one
/// becomes unreachable (and ages out of the cache) without a wholesale flush.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Wire {
        generation: u64,
        revision: u64,
        request: String,
    },
    Resolved {
        generation: u64,
        revision: u64,
        /// Principal, action and resource.
        uids: Box<[EntityUid; 3]>,
        /// The context's JSON text (a verified token's claims), when not empty.
        context: Option<Box<str>>,
    },
}

/// The decisions already made for one batch, by request: a request that a
/// batch repeats is decided once against the batch's snapshot (every batch
/// item still gets its own decision id, metrics and log record). Only
/// requests without entities of their own are remembered.
#[derive(Debug, Default)]
pub struct BatchMemo {
    entries: HashMap<String, Arc<Entry>>,
}

/// The server's decision point.
pub struct Pdp {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    cache: Option<Cache<CacheKey, Arc<Entry>>>,
    log: DecisionLog,
    /// Store mode: the live facts decisions read instead of the snapshot's
    /// entities.
    pub facts: Option<Arc<LiveFacts>>,
    /// What a request's own entities may do.
    pub request_facts: Arc<RequestFacts>,
    /// Decisions with request facts: waiting (queue) and running permits.
    heavy: Heavy,
    /// Bearer-JWT verification against the snapshot's identity sources,
    /// with the issuers' cached keys.
    pub identity: Arc<crate::identity::Verifier>,
}

/// The bounds of decisions with request facts, which run off the async
/// workers: at most `run` at once, at most `queue` more waiting.
struct Heavy {
    queue: Arc<Semaphore>,
    run: Arc<Semaphore>,
}

impl Heavy {
    fn new(workers: usize, queue: usize) -> Heavy {
        let workers = workers.max(1);
        Heavy {
            queue: Arc::new(Semaphore::new(workers + queue)),
            run: Arc::new(Semaphore::new(workers)),
        }
    }
}

/// Threads deciding requests with request facts, by default: the cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Pdp {
    /// `cache_size` 0 turns the decision cache off.
    pub fn new(live: Arc<Live>, metrics: Arc<Metrics>, cache_size: u64, log: DecisionLog) -> Self {
        let cache = (cache_size > 0).then(|| Cache::new(cache_size));
        if let Some(probe) = log.probe() {
            metrics.watch_decision_log(probe);
        }
        Pdp {
            live,
            metrics,
            cache,
            log,
            facts: None,
            request_facts: Arc::new(RequestFacts::new(RequestEntities::default())),
            heavy: Heavy::new(default_workers(), 64),
            identity: Arc::new(crate::identity::Verifier::new()),
        }
    }

    /// What a request's own entities may do (default: add new ones only).
    pub fn with_request_entities(mut self, mode: RequestEntities) -> Self {
        self.request_facts = Arc::new(RequestFacts::new(mode));
        self
    }

    /// Decisions with request facts: `workers` at once, `queue` more
    /// waiting; beyond that a request is refused (`overloaded`, 503).
    pub fn with_heavy_limits(mut self, workers: usize, queue: usize) -> Self {
        self.heavy = Heavy::new(workers, queue);
        self
    }

    /// Decide on live facts from a store.
    pub fn with_facts(mut self, facts: Arc<LiveFacts>) -> Self {
        self.facts = Some(facts);
        self
    }

    /// What a request decides against now: the live snapshot and, in store
    /// mode, the published facts.
    pub fn at(&self) -> At {
        let snap = self.live.snapshot();
        match &self.facts {
            Some(facts) => facts.at(snap),
            None => At::files(snap),
        }
    }

    /// What a request decides against: the current facts, or, when it
    /// carries an `Orgwarden-Min-Revision` (`min_revision`, the header's
    /// value), the facts once they reach it, waiting up to `patience`.
    pub async fn at_min_revision(
        &self,
        min_revision: Option<&[u8]>,
        patience: Duration,
    ) -> Result<At, MinRevisionError> {
        let Some(value) = min_revision else {
            return Ok(self.at());
        };
        let min = parse_min_revision(value).ok_or(MinRevisionError::Invalid)?;
        self.at_least(min, patience)
            .await
            .map_err(MinRevisionError::Behind)
    }

    /// What to decide against once the facts reach revision `min` (a
    /// client's `Orgwarden-Min-Revision`): waits up to `patience`, then
    /// says how far behind they still are. Without a fact store the
    /// revision is the snapshot's generation, which reloads raise.
    pub async fn at_least(&self, min: u64, patience: Duration) -> Result<At, Behind> {
        let reached = match &self.facts {
            Some(facts) => facts.wait_for(min, patience).await,
            None => {
                let deadline = tokio::time::Instant::now() + patience;
                loop {
                    if self.live.snapshot().generation >= min {
                        break true;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let at = self.at();
        if !reached || at.revision() < min {
            return Err(Behind {
                revision: at.revision(),
                min,
                waited: patience,
            });
        }
        Ok(at)
    }

    /// Waits for the decision log's writer once the decision point is gone.
    pub fn log_closer(&self) -> Option<crate::decision_log::Closer> {
        self.log.closer()
    }

    /// Decide `input` against `snap`, what the caller took for this HTTP
    /// request (so that a batch is decided against one generation and one
    /// fact revision).
    pub async fn authorize(
        &self,
        snap: &At,
        input: &RequestInput,
        api: &'static str,
    ) -> Result<Decided, RequestError> {
        self.authorize_logged(snap, input, api, None).await
    }

    /// [`Pdp::authorize`] for one item of a batch decided against `snap`:
    /// an item the batch repeats takes the answer of its first occurrence
    /// from `memo` (the same request on the same snapshot and fact
    /// revision, so the same answer).
    pub async fn authorize_in_batch(
        &self,
        snap: &At,
        input: &RequestInput,
        api: &'static str,
        memo: &mut BatchMemo,
    ) -> Result<Decided, RequestError> {
        if input.entities.is_some() || input.additional_entities.is_some() {
            return self.authorize(snap, input, api).await;
        }
        let decided = self.decide(snap, input, Some(memo))?;
        self.log(&decided, api, None).await;
        Ok(decided)
    }

    /// Decide a request whose parts are already resolved (forward-auth's
    /// route and principal), with an empty context, against `snap`.
    pub async fn authorize_uids(
        &self,
        snap: &At,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        api: &'static str,
    ) -> Result<Decided, RequestError> {
        let decided = self.decide_uids(snap, principal, action, resource, None)?;
        self.log(&decided, api, None).await;
        Ok(decided)
    }

    /// [`Pdp::authorize_uids`] for a principal named by a verified token:
    /// `context` is the request context (`{"token": {...}}`, typed by the
    /// action's context), and the decision log names the token's `issuer`.
    pub async fn authorize_token(
        &self,
        snap: &At,
        [principal, action, resource]: [EntityUid; 3],
        context: Option<serde_json::Value>,
        issuer: &str,
        api: &'static str,
    ) -> Result<Decided, RequestError> {
        let decided = self.decide_uids(snap, principal, action, resource, context)?;
        self.log(&decided, api, Some(issuer)).await;
        Ok(decided)
    }

    /// [`Pdp::authorize`] of a request whose principal a verified token
    /// named: the decision log names the token's `issuer`.
    pub async fn authorize_with_issuer(
        &self,
        snap: &At,
        input: &RequestInput,
        issuer: &str,
        api: &'static str,
    ) -> Result<Decided, RequestError> {
        self.authorize_logged(snap, input, api, Some(issuer)).await
    }

    /// Decide `input` against `snap` (with its own entities when it brings
    /// any) and log the decision, naming `issuer` when a token named the
    /// principal.
    async fn authorize_logged(
        &self,
        snap: &At,
        input: &RequestInput,
        api: &'static str,
        issuer: Option<&str>,
    ) -> Result<Decided, RequestError> {
        let decided = if input.entities.is_some() || input.additional_entities.is_some() {
            self.decide_with_request_facts(snap, input)
                .await
                .inspect_err(|e| self.count_error(e))?
        } else {
            self.decide(snap, input, None)?
        };
        self.log(&decided, api, issuer).await;
        Ok(decided)
    }

    /// Count the decision and hand its record to the decision log.
    async fn log(&self, decided: &Decided, api: &'static str, issuer: Option<&str>) {
        let allowed = decided.entry.outcome.allowed();
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                decision: if allowed { "allow" } else { "deny" },
                api,
            })
            .inc();
        if !self.log.wants(decided.entry.outcome.decision) {
            return;
        }
        let record = DecisionRecord {
            decision_id: decided.decision_id,
            timestamp: SystemTime::now(),
            entry: decided.entry.clone(),
            generation: decided.generation,
            latency_us: decided.latency.as_micros() as u64,
            api,
            cached: decided.cached,
            issuer: issuer.map(Arc::from),
        };
        match self.log.record(record).await {
            Recorded::Queued => {}
            Recorded::Dropped => {
                self.metrics.decision_log_dropped.inc();
            }
            Recorded::Closed => {
                tracing::error!("decision log writer stopped; decision not logged")
            }
        }
    }

    fn decide(
        &self,
        snap: &At,
        input: &RequestInput,
        memo: Option<&mut BatchMemo>,
    ) -> Result<Decided, RequestError> {
        let started = Instant::now();
        let plain = input.entities.is_none() && input.additional_entities.is_none();
        // The key holds the context's JSON text: the engine reuses it
        // rather than serializing the context a second time.
        let key = (plain && (self.cache.is_some() || memo.is_some())).then(|| request_key(input));
        if let (Some(memo), Some((request, _))) = (&memo, &key)
            && let Some(entry) = memo.entries.get(request)
        {
            return Ok(self.decided(snap, started, entry.clone(), true));
        }
        let remember = memo.zip(key.as_ref().map(|(request, _)| request.clone()));
        let (key, context_text) = match key {
            Some((request, at)) if self.cache.is_some() => {
                let key = CacheKey::Wire {
                    generation: snap.generation,
                    revision: snap.revision(),
                    request,
                };
                (Some(key), at.map(|at| (None, at)))
            }
            Some((request, at)) => (None, at.map(|at| (Some(request), at))),
            None => (None, None),
        };
        let decided = self.decide_cached(snap, started, key, |key| {
            let text = match (key, &context_text) {
                (Some(CacheKey::Wire { request, .. }), Some((_, at))) => Some(&request[*at..]),
                (_, Some((Some(request), at))) => Some(&request[*at..]),
                _ => None,
            };
            engine::prepare_with_context_text(snap, input, text)
        })?;
        if let Some((memo, request)) = remember {
            memo.entries.insert(request, decided.entry.clone());
        }
        Ok(decided)
    }

    fn decide_uids(
        &self,
        snap: &At,
        principal: EntityUid,
        action: EntityUid,
        resource: EntityUid,
        context: Option<serde_json::Value>,
    ) -> Result<Decided, RequestError> {
        let started = Instant::now();
        let key = self.cache.is_some().then(|| CacheKey::Resolved {
            generation: snap.generation,
            revision: snap.revision(),
            uids: Box::new([principal.clone(), action.clone(), resource.clone()]),
            context: context.as_ref().map(|c| c.to_string().into_boxed_str()),
        });
        self.decide_cached(snap, started, key, |_| {
            let context = context.unwrap_or_else(|| serde_json::json!({}));
            engine::build_query(snap, principal, action, resource, context)
        })
    }

    fn count_error(&self, e: &RequestError) {
        self.metrics
            .request_errors
            .get_or_create(&ErrorLabels { code: e.code })
            .inc();
    }

    /// A request with entities of its own: checked by the request-facts
    /// policy, decided on the world they make with the facts, never cached.
    /// The work grows with the entities, so it runs on a blocking thread,
    /// bounded (a full queue refuses with `overloaded`), never on the async
    /// workers that answer health checks.
    async fn decide_with_request_facts(
        &self,
        snap: &At,
        input: &RequestInput,
    ) -> Result<Decided, RequestError> {
        let started = Instant::now();
        let queued = self.heavy.queue.clone().try_acquire_owned().map_err(|_| {
            self.metrics.shed.inc();
            RequestError::new(
                "overloaded",
                "request",
                "too many decisions with request facts are waiting: retry later",
            )
        })?;
        let running = self
            .heavy
            .run
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RequestError::new("overloaded", "request", "shutting down"))?;
        let (at, input, facts) = (snap.clone(), input.clone(), self.request_facts.clone());
        let entry = tokio::task::spawn_blocking(move || {
            // Held until the work is done, even when the request is gone.
            let _permits = (queued, running);
            decide_request_facts(&facts, &at, &input)
        })
        .await
        .map_err(|e| RequestError::new("internal", "request", e.to_string()))??;
        let latency = started.elapsed();
        self.metrics.decision_seconds.observe(latency.as_secs_f64());
        Ok(Decided {
            decision_id: Uuid::now_v7(),
            generation: snap.generation,
            cached: false,
            latency,
            entry: Arc::new(entry),
        })
    }

    /// The cache, the engine on a miss, and the latency histogram.
    fn decide_cached(
        &self,
        snap: &At,
        started: Instant,
        key: Option<CacheKey>,
        prepare: impl FnOnce(Option<&CacheKey>) -> Result<Query, RequestError>,
    ) -> Result<Decided, RequestError> {
        let cached = key.as_ref().and_then(|k| self.cache.as_ref()?.get(k));
        let (entry, hit) = match cached {
            Some(entry) => {
                self.metrics.cache_hits.inc();
                (entry, true)
            }
            None => {
                if key.is_some() {
                    self.metrics.cache_misses.inc();
                }
                let query = prepare(key.as_ref()).inspect_err(|e| self.count_error(e))?;
                let outcome = match &snap.facts {
                    Some(f) => {
                        crate::facts::slice::decide(snap, &f.plan, &f.model, &f.view, &query)
                    }
                    None => engine::decide(snap, &query),
                };
                let entry = Arc::new(Entry {
                    outcome,
                    principal: query.principal.to_string(),
                    action: query.action.to_string(),
                    resource: query.resource.to_string(),
                    request_facts: Vec::new(),
                });
                if let (Some(cache), Some(key)) = (&self.cache, key) {
                    cache.insert(key, entry.clone());
                }
                (entry, false)
            }
        };
        Ok(self.decided(snap, started, entry, hit))
    }

    /// A decision made (or found) since `started`, timed.
    fn decided(&self, snap: &At, started: Instant, entry: Arc<Entry>, cached: bool) -> Decided {
        let latency = started.elapsed();
        self.metrics.decision_seconds.observe(latency.as_secs_f64());
        Decided {
            decision_id: Uuid::now_v7(),
            generation: snap.generation,
            cached,
            latency,
            entry,
        }
    }
}

/// Decide `input`, which brings entities of its own, against `snap`.
fn decide_request_facts(
    facts: &RequestFacts,
    snap: &At,
    input: &RequestInput,
) -> Result<Entry, RequestError> {
    let bare = RequestInput {
        principal: input.principal.clone(),
        action: input.action.clone(),
        resource: input.resource.clone(),
        context: input.context.clone(),
        entities: None,
        additional_entities: None,
        token: None,
    };
    let query = engine::prepare(snap, &bare)?;
    let world = facts.world(snap, input)?;
    let outcome = crate::facts::slice::decide(snap, &world.plan, &world.model, &world.view, &query);
    Ok(Entry {
        outcome,
        principal: query.principal.to_string(),
        action: query.action.to_string(),
        resource: query.resource.to_string(),
        request_facts: world.uids,
    })
}

/// The decision-relevant parts of a request as one string, each part
/// length-prefixed so that different requests never share a key; with the
/// offset of the context's JSON text in it, when there is a context.
fn request_key(input: &RequestInput) -> (String, Option<usize>) {
    use std::fmt::Write;
    let mut key = String::with_capacity(128);
    for part in [&input.principal, &input.action, &input.resource] {
        match part {
            None => key.push('-'),
            Some(EntityRef::Text(t)) => {
                let _ = write!(key, "t{}:{t}", t.len());
            }
            Some(EntityRef::Object { type_name, id }) => {
                let _ = write!(key, "o{}:{type_name}{}:{id}", type_name.len(), id.len());
            }
        }
    }
    let mut context_at = None;
    if let Some(context) = &input.context {
        key.push('c');
        context_at = Some(key.len());
        let _ = write!(key, "{context}");
    }
    (key, context_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: serde_json::Value) -> RequestInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn request_keys_tell_requests_apart() {
        let keys = [
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w\""}),
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w2\""}),
            json!({"principal": {"type": "User", "id": "a"}, "action": "see_flows", "resource": "Workspace::\"w\""}),
            json!({"principal": {"type": "User", "id": "a\""}, "action": "see_flows", "resource": "Workspace::\"w\""}),
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w\"", "context": {}}),
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w\"", "context": {"ip": "10.0.0.1"}}),
            json!({"action": "see_flows", "resource": "Workspace::\"w\""}),
            json!({"principal": "t3:abc", "action": "see_flows"}),
        ]
        .map(|v| request_key(&input(v)).0);
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{keys:#?}");
        let again = request_key(&input(
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w\""}),
        ))
        .0;
        assert_eq!(again, keys[0]);
    }

    #[test]
    fn the_key_holds_the_context_text_the_engine_reuses() {
        let with = input(
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w\"", "context": {"ip": "10.0.0.1", "n": [1, 2]}}),
        );
        let (key, at) = request_key(&with);
        let context = with.context.as_ref().unwrap().to_string();
        assert_eq!(&key[at.unwrap()..], context);
        let without = input(
            json!({"principal": "User::\"a\"", "action": "see_flows", "resource": "Workspace::\"w\""}),
        );
        assert_eq!(request_key(&without).1, None);
    }
}

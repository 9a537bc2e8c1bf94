//! Metrics: the counters, gauges and histograms the server exports at
//! `/metrics` in Prometheus' text format.
//!
//! One [`Metrics`] per server, with its own registry (no global state), so
//! that several servers in one process (tests) count separately. Gauges that
//! describe the served snapshot, and the decision log's queue, are read at
//! scrape time.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::decision_log::QueueProbe;
use crate::reload::Live;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The API that asked: `cedar`, `authzen`, `forward_auth`.
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub code: &'static str,
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub decision_seconds: Histogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub in_flight: Gauge,
    /// Open HTTP connections.
    pub connections: Gauge,
    /// Requests and connections refused to shed load (503).
    pub shed: Counter,
    pub request_errors: Family<ErrorLabels, Counter>,
    /// Decision records dropped because the log's queue was full.
    pub decision_log_dropped: Counter,
    decision_log_queue: Gauge,
    decision_log_probe: OnceLock<QueueProbe>,
    generation: Gauge,
    entities: Gauge,
    policies: Gauge,
    reloads: Gauge,
    reload_failures: Gauge,
    stale: Gauge,
    facts: OnceLock<FactsGauges>,
}

/// Where store-backed facts stand against their store, as plain numbers.
#[derive(Debug, Clone, Default)]
pub struct FactsFigures {
    pub revision: u64,
    pub store_revision: u64,
    pub lag_revisions: u64,
    /// Since the facts were last confirmed current (none: never).
    pub lag_seconds: Option<f64>,
    pub reachable: bool,
    pub ready: bool,
    pub stale: bool,
    pub diverged: bool,
    pub rebootstraps: u64,
}

/// The gauges of [`FactsFigures`], registered on first use (store mode).
struct FactsGauges {
    registry: Registry,
    revision: Gauge,
    store_revision: Gauge,
    lag_revisions: Gauge,
    lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    reachable: Gauge,
    ready: Gauge,
    stale: Gauge,
    diverged: Gauge,
    rebootstraps: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orgwarden");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions made, by outcome and API",
            decisions.clone(),
        );
        // 1 µs .. ~1 s, by factors of 2.
        let decision_seconds = Histogram::new((0..21).map(|i| 1e-6 * f64::powi(2.0, i)));
        registry.register(
            "decision_duration_seconds",
            "Time to decide one request (parsing, cache and evaluation)",
            decision_seconds.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Decisions answered from the decision cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Cacheable decisions not found in the cache",
            cache_misses.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served",
            in_flight.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "http_connections",
            "Open HTTP connections",
            connections.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "http_shed",
            "Requests answered 503 and connections closed at once to shed load",
            shed.clone(),
        );
        let request_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "request_errors",
            "Requests rejected as invalid, by error code",
            request_errors.clone(),
        );
        let decision_log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision records dropped because the decision log's queue was full",
            decision_log_dropped.clone(),
        );
        let decision_log_queue = Gauge::default();
        registry.register(
            "decision_log_queue",
            "Decision records waiting for the decision log's writer",
            decision_log_queue.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "snapshot_generation",
            "Generation of the served snapshot",
            generation.clone(),
        );
        let entities = Gauge::default();
        registry.register(
            "snapshot_entities",
            "Entities in the served snapshot",
            entities.clone(),
        );
        let policies = Gauge::default();
        registry.register(
            "snapshot_policies",
            "Policies in the served snapshot",
            policies.clone(),
        );
        let reloads = Gauge::default();
        registry.register("reloads", "Successful reloads since start", reloads.clone());
        let reload_failures = Gauge::default();
        registry.register(
            "reload_failures",
            "Failed reloads since start",
            reload_failures.clone(),
        );
        let stale = Gauge::default();
        registry.register(
            "snapshot_stale",
            "1 when the last reload failed and an older snapshot is served",
            stale.clone(),
        );
        Metrics {
            registry,
            decisions,
            decision_seconds,
            cache_hits,
            cache_misses,
            in_flight,
            connections,
            shed,
            request_errors,
            decision_log_dropped,
            decision_log_queue,
            decision_log_probe: OnceLock::new(),
            generation,
            entities,
            policies,
            reloads,
            reload_failures,
            stale,
            facts: OnceLock::new(),
        }
    }

    /// Register the fact gauges (once) and set them to `f`.
    pub fn set_facts(&self, f: &FactsFigures) {
        let g = self.facts.get_or_init(|| {
            let mut gauges = FactsGauges {
                registry: Registry::default(),
                revision: Gauge::default(),
                store_revision: Gauge::default(),
                lag_revisions: Gauge::default(),
                lag_seconds: Gauge::default(),
                reachable: Gauge::default(),
                ready: Gauge::default(),
                stale: Gauge::default(),
                diverged: Gauge::default(),
                rebootstraps: Gauge::default(),
            };
            let mut r = Registry::with_prefix("orgwarden_facts");
            r.register("revision", "Fact revision decisions are made at", gauges.revision.clone());
            r.register(
                "store_revision",
                "The fact store's revision, as last seen",
                gauges.store_revision.clone(),
            );
            r.register(
                "lag_revisions",
                "Revisions the served facts are behind the store, as last seen",
                gauges.lag_revisions.clone(),
            );
            r.register(
                "lag_seconds",
                "Seconds since the served facts were last confirmed to be the store's latest (+Inf: never)",
                gauges.lag_seconds.clone(),
            );
            r.register(
                "store_reachable",
                "1 when the last read or write of the fact store succeeded",
                gauges.reachable.clone(),
            );
            r.register(
                "ready",
                "1 once the facts were loaded from the store",
                gauges.ready.clone(),
            );
            r.register(
                "stale",
                "1 when decisions may be made on old facts (store unreachable, changes refused, or not confirmed current lately)",
                gauges.stale.clone(),
            );
            r.register(
                "diverged",
                "1 when the store's latest changes do not validate under this sidecar's schema (the last good facts serve)",
                gauges.diverged.clone(),
            );
            r.register(
                "rebootstraps",
                "Times the facts were re-loaded from a snapshot (behind the pruned change log)",
                gauges.rebootstraps.clone(),
            );
            gauges.registry = r;
            gauges
        });
        g.revision.set(f.revision as i64);
        g.store_revision.set(f.store_revision as i64);
        g.lag_revisions.set(f.lag_revisions as i64);
        g.lag_seconds.set(f.lag_seconds.unwrap_or(f64::INFINITY));
        g.reachable.set(i64::from(f.reachable));
        g.ready.set(i64::from(f.ready));
        g.stale.set(i64::from(f.stale));
        g.diverged.set(i64::from(f.diverged));
        g.rebootstraps.set(f.rebootstraps as i64);
    }

    /// Report the queue of this decision log (the first one given).
    pub fn watch_decision_log(&self, probe: QueueProbe) {
        let _ = self.decision_log_probe.set(probe);
    }

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self, live: &Live) -> String {
        if let Some(probe) = self.decision_log_probe.get() {
            self.decision_log_queue.set(probe.queued() as i64);
        }
        let snap = live.snapshot();
        self.generation.set(snap.generation as i64);
        self.entities.set(snap.entity_count() as i64);
        self.policies.set(snap.policy_count() as i64);
        let (ok, failed) = live.counts();
        self.reloads.set(ok as i64);
        self.reload_failures.set(failed as i64);
        self.stale.set(i64::from(live.last_error().is_some()));
        let mut out = String::new();
        // Writing to a String cannot fail.
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let _ = encode_registry(&mut out, &self.registry);
        if let Some(g) = self.facts.get() {
            let _ = encode_registry(&mut out, &g.registry);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// The identity sources in the exposition format: per issuer, whether its
/// keys verify tokens now, how many keys, fetches and failed fetches; and
/// bearer tokens by outcome (`verified`, or why they were refused).
pub fn identity_text(
    issuers: &[crate::identity::jwks::CacheStatus],
    outcomes: &[(&'static str, u64)],
) -> String {
    use std::fmt::Write;
    let label = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    type Figure = fn(&crate::identity::jwks::CacheStatus) -> u64;
    let families: [(&str, &str, &str, Figure); 4] = [
        (
            "orgwarden_identity_keys_ready",
            "gauge",
            "Whether an issuer's keys can verify tokens now (0: its tokens are refused).",
            |s| u64::from(s.ready),
        ),
        (
            "orgwarden_identity_keys",
            "gauge",
            "Keys of an issuer trusted now.",
            |s| s.keys as u64,
        ),
        (
            "orgwarden_identity_jwks_fetches",
            "counter",
            "JWKS fetches of an issuer.",
            |s| s.fetches,
        ),
        (
            "orgwarden_identity_jwks_fetch_failures",
            "counter",
            "JWKS fetches of an issuer that failed.",
            |s| s.fetch_failures,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let suffix = if kind == "counter" { "_total" } else { "" };
        for s in issuers {
            let _ = writeln!(
                out,
                "{name}{suffix}{{issuer=\"{}\"}} {}",
                label(&s.issuer),
                value(s)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP orgwarden_identity_tokens Bearer JWTs by outcome.\n# TYPE orgwarden_identity_tokens counter"
    );
    for (result, n) in outcomes {
        let _ = writeln!(
            out,
            "orgwarden_identity_tokens_total{{result=\"{result}\"}} {n}"
        );
    }
    out
}

//! Reload: the live snapshot, and the only code that replaces it.
//!
//! [`Live`] holds the snapshot being served behind an [`ArcSwap`]: a request
//! takes an `Arc` to it once and decides against that, so a swap never
//! changes a decision in flight. [`Live::reload`] builds a whole new snapshot
//! off the request path and swaps it in only when it is valid; a failed
//! reload keeps the last good snapshot serving and records the error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::load::{self, Paths};
use crate::snapshot::Snapshot;

/// The outcome of the last reload attempt that failed, while it is current.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadError {
    /// When the failed attempt ran.
    #[serde(with = "crate::reload::rfc3339")]
    pub at: SystemTime,
    /// `file:line:col: message` of the first error.
    pub summary: String,
    /// Every diagnostic of the failed attempt.
    pub diagnostics: Vec<Diagnostic>,
}

/// The served snapshot and the state of reloading.
pub struct Live {
    paths: Paths,
    current: ArcSwap<Snapshot>,
    last_error: ArcSwap<Option<ReloadError>>,
    reloads: AtomicU64,
    failures: AtomicU64,
    started_at: SystemTime,
}

impl Live {
    /// Load `paths` for the first time; fails when they are invalid.
    pub fn load(paths: Paths) -> Result<Self, Diagnostics> {
        let snapshot = load::load(&paths)?;
        Ok(Self::from_snapshot(paths, snapshot))
    }

    /// Serve an already built snapshot (tests, embedding).
    pub fn from_snapshot(paths: Paths, snapshot: Snapshot) -> Self {
        Live {
            paths,
            current: ArcSwap::from_pointee(snapshot),
            last_error: ArcSwap::from_pointee(None),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            started_at: SystemTime::now(),
        }
    }

    /// The snapshot to decide a request against.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The last failed reload, if no good one came after it.
    pub fn last_error(&self) -> Option<ReloadError> {
        self.last_error.load().as_ref().clone()
    }

    /// Successful and failed reloads since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Build a new snapshot from the files and swap it in; on failure keep
    /// serving the current one and record why.
    pub fn reload(&self) -> Result<Arc<Snapshot>, Diagnostics> {
        match load::load(&self.paths) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.current.store(snapshot.clone());
                self.last_error.store(Arc::new(None));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    generation = snapshot.generation,
                    policies = snapshot.policy_count(),
                    entities = snapshot.entity_count(),
                    millis = snapshot.load_duration.as_millis() as u64,
                    "reloaded"
                );
                Ok(snapshot)
            }
            Err(diags) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let summary = diags.first_summary();
                tracing::error!(error = %summary, "reload failed; still serving generation {}", self.current.load().generation);
                for d in diags.errors() {
                    tracing::error!("{}", d.summary());
                }
                self.last_error.store(Arc::new(Some(ReloadError {
                    at: SystemTime::now(),
                    summary,
                    diagnostics: diags.0.clone(),
                })));
                Err(diags)
            }
        }
    }
}

/// RFC 3339 timestamps for `SystemTime` fields.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn format(t: SystemTime) -> String {
        let t: time::OffsetDateTime = t.into();
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }
}

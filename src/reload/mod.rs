//! Reload: the live snapshot, and the only code that replaces it.
//!
//! [`Live`] holds the snapshot being served behind an [`ArcSwap`]: a request
//! takes an `Arc` to it once and decides against that, so a swap never
//! changes a decision in flight. [`Live::reload`] builds a whole new snapshot
//! off the request path and swaps it in only when it is valid; a failed
//! reload keeps the last good snapshot serving and records the error.
//! Reloads are serialized (never two loads at once); a reload whose files
//! have the same SHA-256 digests as the served snapshot's swaps nothing, one
//! that changes only policies (or routes) reuses the served snapshot's
//! parsed entities, and one that changes some entity files parses only those
//! and applies them to the served snapshot's entities
//! ([`load::Inputs::build_after`]).
//!
//! [`Live::watch`] reloads when the files change: the watcher is the
//! `watch` submodule, above the live snapshot it reloads.
//!
//! Whoever serves more than the files installs an [`Admit`] check
//! ([`Live::set_admit`]): a candidate snapshot is swapped in only when the
//! check admits it, and what the check returns is held until the swap is
//! done (so that nothing it relied on can change in between). Live facts
//! use it to re-validate the stored facts against a reloaded schema.

pub mod last_good;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::diag::{Diagnostic, Diagnostics};
use crate::load::{self, Paths};
use crate::snapshot::{Snapshot, SourceFile};

pub use watch::Watch;

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

/// What an [`Admit`] check holds until its candidate is swapped in.
pub trait Hold {}
impl<T> Hold for T {}

/// A check every candidate snapshot must pass before it serves, beyond the
/// files being valid (installed with [`Live::set_admit`]).
pub trait Admit: Send + Sync {
    /// Check `candidate`, which is to replace `current`. Admitted: a hold
    /// that [`Live::reload`] keeps until the candidate is swapped in.
    /// Refused: why, as diagnostics; the reload fails like one whose files
    /// are invalid, and `current` keeps serving. Called with reloads
    /// serialized, off the async request path (it may block).
    fn admit<'a>(
        &'a self,
        current: &Snapshot,
        candidate: &Snapshot,
    ) -> Result<Box<dyn Hold + 'a>, Diagnostics>;
}

/// The served snapshot and the state of reloading.
pub struct Live {
    paths: Paths,
    current: ArcSwap<Snapshot>,
    last_error: ArcSwap<Option<ReloadError>>,
    reloads: AtomicU64,
    failures: AtomicU64,
    started_at: SystemTime,
    /// Held for the whole of a reload: loads never overlap, and swaps happen
    /// in the order the loads ran.
    serial: Mutex<()>,
    /// How the files are watched, while they are.
    watching: ArcSwap<Option<WatchConfig>>,
    /// The check candidates must pass (weak: its owner keeps it alive).
    admit: Mutex<Option<Weak<dyn Admit>>>,
    /// Where the inputs of every good snapshot are kept ([`last_good`]).
    last_good: Option<PathBuf>,
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
            serial: Mutex::new(()),
            watching: ArcSwap::from_pointee(None),
            admit: Mutex::new(None),
            last_good: None,
        }
    }

    /// Load `paths` for the first time, keeping the inputs of every good
    /// snapshot in `dir` ([`last_good`]). When the files are invalid and
    /// `dir` holds a saved set, serve that set instead, stale, with the
    /// files' errors recorded as a failed reload's are; without a saved set
    /// (or when it does not load either), fail with the files' errors.
    pub fn load_with_last_good(paths: Paths, dir: PathBuf) -> Result<Self, Diagnostics> {
        match load::load(&paths) {
            Ok(snapshot) => {
                let live = Self::from_snapshot(paths, snapshot).keeping_last_good(dir);
                live.save_last_good(&live.snapshot());
                Ok(live)
            }
            Err(diags) => {
                let Some(saved) = last_good::saved(&dir) else {
                    return Err(diags);
                };
                let snapshot = match load::load(&saved) {
                    Ok(s) => s,
                    Err(more) => {
                        tracing::error!(
                            error = %more.first_summary(),
                            "the last good set in {} does not load either",
                            dir.display()
                        );
                        return Err(diags);
                    }
                };
                let summary = diags.first_summary();
                tracing::error!(
                    error = %summary,
                    "the files are invalid: serving the last good set from {} (stale)",
                    dir.display()
                );
                let live = Self::from_snapshot(paths, snapshot).keeping_last_good(dir);
                live.last_error.store(Arc::new(Some(ReloadError {
                    at: SystemTime::now(),
                    summary,
                    diagnostics: diags.0.clone(),
                })));
                live.failures.fetch_add(1, Ordering::Release);
                Ok(live)
            }
        }
    }

    fn keeping_last_good(mut self, dir: PathBuf) -> Self {
        self.last_good = Some(dir);
        self
    }

    /// Keep the inputs of `snap`, a good snapshot, when asked to.
    fn save_last_good(&self, snap: &Snapshot) {
        let Some(dir) = &self.last_good else { return };
        match last_good::save(dir, &self.paths, snap) {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                "the files changed since generation {} loaded: its set is not kept",
                snap.generation
            ),
            Err(e) => tracing::error!("cannot keep the last good files in {}: {e}", dir.display()),
        }
    }

    /// Check every later candidate snapshot with `admit` before it is
    /// swapped in. Held weakly: the check ends when its owner drops it.
    pub fn set_admit(&self, admit: Weak<dyn Admit>) {
        *self.admit.lock().unwrap_or_else(PoisonError::into_inner) = Some(admit);
    }

    fn admit_check(&self) -> Option<Arc<dyn Admit>> {
        self.admit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(Weak::upgrade)
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
            self.reloads.load(Ordering::Acquire),
            self.failures.load(Ordering::Acquire),
        )
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The watcher's configuration while the files are watched.
    pub fn watching(&self) -> Option<WatchConfig> {
        **self.watching.load()
    }

    /// Read the files and, when they differ from the served snapshot's,
    /// build a new snapshot and swap it in; on failure keep serving the
    /// current one and record why. Files identical to the served ones (same
    /// paths, same SHA-256) swap nothing and clear a recorded error. Blocks:
    /// call it off the async request path. Never runs two loads at once.
    pub fn reload(&self) -> Result<Arc<Snapshot>, Diagnostics> {
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let current = self.current.load_full();
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let inputs = load::Inputs::read(&self.paths)?;
            let files = inputs.source_files();
            if same_files(&files, &current.files) {
                return Ok(None);
            }
            inputs.build_after(files, started, &current).map(Some)
        }))
        .unwrap_or_else(|panic| Err(panicked(panic.as_ref())));
        match attempt {
            Ok(None) => {
                if self.last_error.swap(Arc::new(None)).is_some() {
                    tracing::info!(
                        generation = current.generation,
                        "files are back to the served generation: no longer stale"
                    );
                } else {
                    tracing::debug!(
                        generation = current.generation,
                        "files unchanged: nothing to reload"
                    );
                }
                Ok(current)
            }
            Ok(Some(snapshot)) => {
                let admit = self.admit_check();
                let admitted = match &admit {
                    None => Ok(None),
                    Some(check) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        check.admit(&current, &snapshot).map(Some)
                    }))
                    .unwrap_or_else(|panic| Err(panicked(panic.as_ref()))),
                };
                let hold = match admitted {
                    Ok(hold) => hold,
                    Err(diags) => return Err(self.failed(diags, started, &current)),
                };
                let snapshot = Arc::new(snapshot);
                self.current.store(snapshot.clone());
                drop(hold);
                self.last_error.store(Arc::new(None));
                self.save_last_good(&snapshot);
                // Counted last: who sees the count sees the state.
                self.reloads.fetch_add(1, Ordering::Release);
                tracing::info!(
                    generation = snapshot.generation,
                    previous = current.generation,
                    files = snapshot.files.len(),
                    policies = snapshot.policy_count(),
                    entities = snapshot.entity_total,
                    entity_files_parsed = snapshot.entity_files_parsed,
                    millis = snapshot.load_duration.as_millis() as u64,
                    "reloaded"
                );
                Ok(snapshot)
            }
            Err(diags) => Err(self.failed(diags, started, &current)),
        }
    }

    /// Record a failed reload attempt (the current snapshot keeps serving).
    fn failed(&self, diags: Diagnostics, started: Instant, current: &Snapshot) -> Diagnostics {
        let summary = diags.first_summary();
        tracing::error!(
            error = %summary,
            millis = started.elapsed().as_millis() as u64,
            "reload failed; still serving generation {} (stale)",
            current.generation
        );
        for d in diags.errors() {
            tracing::error!("{}", d.summary());
        }
        self.last_error.store(Arc::new(Some(ReloadError {
            at: SystemTime::now(),
            summary,
            diagnostics: diags.0.clone(),
        })));
        self.failures.fetch_add(1, Ordering::Release);
        diags
    }
}

fn same_files(a: &[SourceFile], b: &[SourceFile]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.path == y.path && x.kind == y.kind && x.sha256 == y.sha256)
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> Diagnostics {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let mut diags = Diagnostics::default();
    diags.push(Diagnostic::plain(
        None,
        None,
        format!("internal error while loading: {what}"),
    ));
    diags
}

/// How the file watcher behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// Quiet time after the last change before reloading, so that a burst
    /// of changes (an editor's save, a ConfigMap update, a checkout) makes
    /// one reload. A burst that never goes quiet reloads after ten times
    /// this (at least a second) all the same.
    pub debounce: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            debounce: Duration::from_millis(100),
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use super::*;

    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    /// A live snapshot of a copy of the shipped model.
    fn live() -> (tempfile::TempDir, Live) {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for sub in ["policies", "schema", "entities"] {
            copy(&root.join(sub), &dir.path().join(sub));
        }
        let paths = Paths {
            policies: dir.path().join("policies"),
            schema: dir.path().join("schema"),
            entities: dir.path().join("entities"),
            routes: None,
            identity: None,
        };
        (dir, Live::load(paths).unwrap())
    }

    fn touch_policies(live: &Live, n: usize) {
        let file = live.paths().policies.join("extra.cedar");
        std::fs::write(
            file,
            format!("@id(\"extra-{n}\")\nforbid (principal, action, resource) when {{ false }};\n"),
        )
        .unwrap();
    }

    /// Refuses every candidate while `refuse` is set; otherwise admits it
    /// and, when the hold drops, records whether the candidate was served.
    struct Check {
        live: std::sync::Weak<Live>,
        refuse: AtomicBool,
        served_at_drop: Mutex<Vec<bool>>,
    }

    struct Recorder<'a> {
        check: &'a Check,
        generation: u64,
    }

    impl Drop for Recorder<'_> {
        fn drop(&mut self) {
            let live = self.check.live.upgrade().unwrap();
            let served = live.snapshot().generation == self.generation;
            self.check.served_at_drop.lock().unwrap().push(served);
        }
    }

    impl Admit for Check {
        fn admit<'a>(
            &'a self,
            _current: &Snapshot,
            candidate: &Snapshot,
        ) -> Result<Box<dyn Hold + 'a>, Diagnostics> {
            if self.refuse.load(Ordering::Relaxed) {
                let mut d = Diagnostics::default();
                d.push(Diagnostic::plain(None, None, "refused by the check"));
                return Err(d);
            }
            Ok(Box::new(Recorder {
                check: self,
                generation: candidate.generation,
            }))
        }
    }

    #[test]
    fn a_refused_candidate_keeps_the_last_good_one_and_a_hold_lasts_until_the_swap() {
        let (_dir, live) = live();
        let live = Arc::new(live);
        let check = Arc::new(Check {
            live: Arc::downgrade(&live),
            refuse: AtomicBool::new(true),
            served_at_drop: Mutex::new(Vec::new()),
        });
        let weak: Weak<dyn Admit> = Arc::downgrade(&check) as _;
        live.set_admit(weak);
        let before = live.snapshot().generation;
        touch_policies(&live, 1);
        let refused = live.reload().unwrap_err();
        assert!(refused.first_summary().ends_with("refused by the check"));
        assert_eq!(live.snapshot().generation, before);
        assert_eq!(live.counts(), (0, 1));
        let summary = live.last_error().unwrap().summary;
        assert!(summary.ends_with("refused by the check"), "{summary}");
        check.refuse.store(false, Ordering::Relaxed);
        let served = live.reload().unwrap();
        assert!(served.generation > before);
        assert_eq!(live.counts(), (1, 1));
        assert!(live.last_error().is_none());
        assert_eq!(*check.served_at_drop.lock().unwrap(), vec![true]);
        // Once its owner drops the check, candidates are no longer checked.
        check.refuse.store(true, Ordering::Relaxed);
        drop(check);
        touch_policies(&live, 2);
        assert!(live.reload().is_ok());
    }
}

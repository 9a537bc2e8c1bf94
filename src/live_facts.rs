//! The facts a server decides on, and what revision they are at.
//!
//! Two modes. Without a store, facts come from the entity files of the
//! served snapshot, and their revision is the snapshot's generation: it
//! increases whenever a reload changes the files (a policy-only reload
//! raises it too, which only makes it conservative). With a store
//! ([`LiveFacts`]), facts live in a [`FactView`] published by the
//! group-commit [`Writer`]: each durable batch swaps in the next view and
//! bumps a `watch` channel of the published revision, and decisions slice
//! the view ([`crate::facts::slice::decide`]) instead of reading the
//! snapshot's entities.
//!
//! One task owns the view ([`crate::facts::writer`]): it commits this
//! process's writes and follows the store's change log for the writes of
//! other sidecars sharing it (PostgreSQL: `NOTIFY` wakes it, a poll tick
//! backs that up), so a fleet of sidecars on one store converges. A sidecar
//! that cannot reach the store at start-up serves no decisions (it is not
//! ready) and keeps trying in the background; one that loses the store
//! keeps deciding on its last revision and reports itself stale.
//!
//! [`At`] is what one HTTP request decides against: a snapshot and, in store
//! mode, one view (so a batch is decided at one revision, the revision its
//! answer reports).
//!
//! A reloaded schema must hold for the stored facts: [`LiveFacts`] installs
//! an [`Admit`] check on the live snapshot that re-validates the published
//! view against a candidate whose schema changed, exactly as a load of the
//! same facts would, and refuses the reload when they no longer conform.
//! Writes and the check meet at the write gate: the writer validates and
//! stages each batch under the gate's lock, with the model of the served
//! schema; the check validates the published view once while writes go
//! on, then closes the gate, waits until no staged group is waiting for its
//! commit, validates the published view again if a write was published
//! meanwhile (it now holds every acknowledged write, and nothing else can
//! be pending), installs the new model and keeps the gate closed until the
//! snapshot is swapped. So no
//! write validated against the old schema can land after the check, and
//! none is validated against a schema that is not served. Writes wait
//! (they are not refused) while a schema check runs.
//!
//! Search reads the published view and a [`LiveIndex`] of the same
//! revision ([`LiveFacts::search_at`]). Publishing a group records which
//! entities each revision changed; the next search brings the index to
//! the published revision from those (the cost of the changes), and builds
//! it whole only once, in the background after start-up, or when the
//! record has a gap (views published by a path that records nothing, or
//! too many revisions since the last search).

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;

use crate::diag::{Diagnostic, Diagnostics};
use crate::facts::store::{Commit, Delta, Store, StoreError, StoredEntity};
use crate::facts::writer::{Apply, StatusReport, StoreStatus, WriteError, Writer, WriterOptions};
use crate::facts::{Batch, FactView, Model, Rejection, SlicePlan};
use crate::gateway::keys::Principals;
use crate::reload::{Admit, Hold, Live};
use crate::search::live::LiveIndex;
use crate::snapshot::{FileKind, Snapshot};

/// The facts of one request in store mode: the view and what deciding on
/// it needs of the policies and schema of the request's snapshot.
#[derive(Clone)]
pub struct FactsAt {
    pub view: Arc<FactView>,
    pub model: Arc<Model>,
    pub plan: Arc<SlicePlan>,
}

/// What one HTTP request decides against.
#[derive(Clone)]
pub struct At {
    pub snap: Arc<Snapshot>,
    /// None: the snapshot's own entities (file mode).
    pub facts: Option<FactsAt>,
}

impl At {
    /// Files only.
    pub fn files(snap: Arc<Snapshot>) -> At {
        At { snap, facts: None }
    }

    /// The fact revision decisions made against this are at.
    pub fn revision(&self) -> u64 {
        match &self.facts {
            Some(f) => f.view.revision(),
            None => self.snap.generation,
        }
    }
}

/// The caller's facts for a gateway: the live view with a store, the
/// snapshot's entities without.
impl Principals for At {
    fn key_holder(&self, key: &str) -> Option<cedar_policy::EntityUid> {
        match &self.facts {
            Some(f) => f.view.key_holder(key),
            None => self.snap.key_holder(key),
        }
    }

    fn holds(&self, uid: &cedar_policy::EntityUid) -> bool {
        match &self.facts {
            Some(f) => f.view.get(uid).is_some(),
            None => self.snap.holds(uid),
        }
    }
}

impl Deref for At {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.snap
    }
}

/// The model and slice plan of one snapshot generation.
struct Derived {
    generation: u64,
    model: Arc<Model>,
    plan: Arc<SlicePlan>,
}

/// Where writes and a schema check meet (see the module doc).
struct Gate {
    /// The model writes are validated against: the served schema's.
    model: Arc<Model>,
    /// A schema check is running: writes wait.
    closed: bool,
    /// The writer staged a group that is neither published nor rolled back.
    staged: bool,
    /// Raised when a schema check replaces the published view (with the
    /// same facts, checked anew): the writer starts again from it.
    epoch: u64,
}

/// What the server and the writer task share.
struct Shared {
    live: Arc<Live>,
    view: ArcSwap<FactView>,
    revision: watch::Sender<u64>,
    derived: ArcSwap<Derived>,
    gate: Mutex<Gate>,
    gate_turn: Condvar,
    /// The entities each recent published revision changed, ascending.
    changes: Mutex<VecDeque<(u64, Arc<[cedar_policy::EntityUid]>)>>,
    /// The search index, at the revision a search last needed.
    search: Mutex<Option<Arc<LiveIndex>>>,
}

/// Revisions whose changes are remembered for the search index.
const REMEMBERED_REVISIONS: usize = 65_536;

impl Shared {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remember what the revisions of a published group changed.
    fn remember(&self, changed: Vec<(u64, Arc<[cedar_policy::EntityUid]>)>) {
        let mut changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        changes.extend(changed);
        while changes.len() > REMEMBERED_REVISIONS {
            changes.pop_front();
        }
    }

    /// Every entity changed by the revisions after `from` up to `to`, when
    /// each of them is remembered.
    fn changed_between(&self, from: u64, to: u64) -> Option<Vec<cedar_policy::EntityUid>> {
        let changes = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let start = changes.partition_point(|(r, _)| *r <= from);
        let mut out = Vec::new();
        let mut expected = from + 1;
        for (r, uids) in changes.range(start..) {
            if *r > to {
                break;
            }
            if *r != expected {
                return None;
            }
            out.extend(uids.iter().cloned());
            expected += 1;
        }
        (expected == to + 1).then_some(out)
    }

    /// Mark the staged group done (published or rolled back).
    fn unstage(&self) {
        self.gate().staged = false;
        self.gate_turn.notify_all();
    }

    /// The model and plan of `snap`, rebuilt when its generation is new
    /// (policies or schema reloaded); the last good ones when the schema
    /// cannot give a model.
    fn derived(&self, snap: &Snapshot) -> (Arc<Model>, Arc<SlicePlan>) {
        let current = self.derived.load();
        if current.generation == snap.generation {
            return (current.model.clone(), current.plan.clone());
        }
        match Model::new(&snap.schema) {
            Ok(model) => {
                let next = Arc::new(Derived {
                    generation: snap.generation,
                    model: Arc::new(model),
                    plan: Arc::new(SlicePlan::new(&snap.policies)),
                });
                self.derived.store(next.clone());
                (next.model.clone(), next.plan.clone())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot derive the fact model of the reloaded schema; keeping the last one");
                (current.model.clone(), current.plan.clone())
            }
        }
    }
}

/// One write: the batch, who sent it, and its operations as sent (kept in
/// the change log).
pub struct WriteRequest {
    pub batch: Batch,
    pub actor: String,
    pub ops: Value,
}

/// The writer task's side: the working view that accepted batches stage
/// into.
struct Applier {
    shared: Arc<Shared>,
    working: FactView,
    /// The gate's epoch `working` derives from.
    epoch: u64,
    /// The entities each staged revision of the open group changes.
    staged: Vec<(u64, Arc<[cedar_policy::EntityUid]>)>,
    /// Groups sealed while an earlier one commits, oldest first: the view
    /// at the end of each and what its revisions change.
    sealed: VecDeque<Sealed>,
}

/// A staged group whose commit started.
struct Sealed {
    view: FactView,
    changes: Vec<(u64, Arc<[cedar_policy::EntityUid]>)>,
}

impl Apply for Applier {
    type Request = WriteRequest;
    type Rejection = Rejection;

    fn revision(&self) -> u64 {
        self.shared.view.load().revision()
    }

    fn apply(&mut self, request: &WriteRequest, revision: u64) -> Result<Commit, Rejection> {
        let shared = self.shared.clone();
        // Validated and staged under the gate: a schema check either sees
        // this batch staged (and waits for its commit) or runs entirely
        // before it (and this batch meets the model it installed). A group
        // that already staged a batch goes on staging while a check waits
        // for it: the check waits for the group's commit and validates the
        // view it publishes.
        let gate = shared
            .gate_turn
            .wait_while(shared.gate(), |g| g.closed && !g.staged)
            .unwrap_or_else(PoisonError::into_inner);
        let mut gate = gate;
        if gate.epoch != self.epoch {
            // Nothing was staged when the check replaced the view.
            self.working = shared.view.load().as_ref().clone();
            self.epoch = gate.epoch;
        }
        let (next, applied) = self.working.apply(&gate.model, &request.batch)?;
        gate.staged = true;
        drop(gate);
        debug_assert_eq!(applied.revision, revision);
        self.working = next;
        // Tag-only writes are in `tags`, not `upserted`: the search index
        // reads tags too.
        let touched: Arc<[cedar_policy::EntityUid]> = applied
            .upserted
            .iter()
            .map(|(uid, _)| uid.clone())
            .chain(applied.tags.iter().map(|(uid, _, _)| uid.clone()))
            .chain(applied.deleted.iter().cloned())
            .collect();
        self.staged.push((applied.revision, touched));
        Ok(Commit {
            actor: request.actor.clone(),
            ops: request.ops.clone(),
            upserts: applied
                .upserted
                .into_iter()
                .map(|(uid, json)| (uid.to_string(), crate::facts::transfer::canonical(json)))
                .collect(),
            deletes: applied.deleted.iter().map(|u| u.to_string()).collect(),
            tags: applied
                .tags
                .into_iter()
                .map(|(uid, key, value)| (uid.to_string(), key.to_string(), value))
                .collect(),
        })
    }

    fn seal(&mut self) -> bool {
        // While a schema check waits, no group is staged beside the one
        // committing: the check gets its turn once that one is published.
        if self.shared.gate().closed {
            return false;
        }
        self.sealed.push_back(Sealed {
            view: self.working.clone(),
            changes: std::mem::take(&mut self.staged),
        });
        true
    }

    fn publish(&mut self, revisions: &[u64]) {
        let top = revisions.last().copied().unwrap_or(0);
        let (view, changes) = match self.sealed.pop_front() {
            Some(group) => (group.view, group.changes),
            None => (self.working.clone(), std::mem::take(&mut self.staged)),
        };
        debug_assert_eq!(view.revision(), top);
        // Remembered before the view is visible: whoever sees the view
        // finds what changed.
        self.shared.remember(changes);
        self.shared.view.store(Arc::new(view));
        self.shared.revision.send_replace(top);
        // A group staged on top of this one keeps the gate's flag.
        if self.sealed.is_empty() && self.working.revision() == top {
            self.shared.unstage();
        }
    }

    fn rollback(&mut self) {
        self.staged.clear();
        self.sealed.clear();
        self.working = self.shared.view.load().as_ref().clone();
        self.shared.unstage();
    }

    fn catch_up(&mut self, delta: Delta) -> Result<(), String> {
        let shared = self.shared.clone();
        // Under the gate, like a write: rows validated with the served
        // model, never while a schema check has the gate closed.
        let gate = shared
            .gate_turn
            .wait_while(shared.gate(), |g| g.closed)
            .unwrap_or_else(PoisonError::into_inner);
        let current = shared.view.load_full();
        // What the revisions changed, for the search index: every row to the
        // last of them (the ones between are never published here).
        let touched: Arc<[cedar_policy::EntityUid]> = delta
            .rows
            .iter()
            .map(|e| e.uid.as_str())
            .chain(delta.deleted.iter().map(String::as_str))
            .filter_map(|u| u.parse().ok())
            .collect();
        let rows: Vec<(Value, u64)> = delta
            .rows
            .into_iter()
            .map(|e| (e.json, e.revision))
            .collect();
        let (next, _) = current
            .advance(&gate.model, &rows, &delta.deleted, delta.head)
            .map_err(|r| format!("revisions {}..={}: {r}", delta.from + 1, delta.head))?;
        let mut changed: Vec<(u64, Arc<[cedar_policy::EntityUid]>)> = (delta.from + 1..delta.head)
            .map(|r| (r, Arc::from(Vec::new())))
            .collect();
        changed.push((delta.head, touched));
        shared.remember(changed);
        self.epoch = gate.epoch;
        self.install(next);
        drop(gate);
        Ok(())
    }

    fn rebootstrap(&mut self, head: u64, entities: Vec<StoredEntity>) -> Result<(), String> {
        let shared = self.shared.clone();
        let gate = shared
            .gate_turn
            .wait_while(shared.gate(), |g| g.closed)
            .unwrap_or_else(PoisonError::into_inner);
        let model = gate.model.clone();
        let build = move || load_view(&model, entities, head);
        // A large snapshot takes seconds to check: off the async workers
        // when the runtime has others (decisions keep the old view).
        let view = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(build)
        } else {
            build()
        };
        self.epoch = gate.epoch;
        self.install(view.map_err(|e| e.to_string())?);
        drop(gate);
        // Nothing records what a snapshot changed: build the search index
        // anew, off the request path.
        warm_search(shared);
        Ok(())
    }
}

impl Applier {
    /// Make `view` the published and working view.
    fn install(&mut self, view: FactView) {
        let revision = view.revision();
        self.working = view.clone();
        self.shared.view.store(Arc::new(view));
        self.shared.revision.send_replace(revision);
    }
}

/// Build the search index of the published view off the request path,
/// unless one at its revision is there already.
fn warm_search(shared: Arc<Shared>) {
    tokio::task::spawn_blocking(move || {
        let mut slot = shared.search.lock().unwrap_or_else(PoisonError::into_inner);
        let view = shared.view.load();
        if slot
            .as_ref()
            .is_some_and(|i| i.revision() == view.revision())
        {
            return;
        }
        let started = std::time::Instant::now();
        let index = LiveIndex::build(&view);
        tracing::debug!(
            revision = index.revision(),
            millis = started.elapsed().as_millis() as u64,
            "search index of the live facts built"
        );
        *slot = Some(Arc::new(index));
    });
}

/// The schema check a store-backed server installs on the live snapshot.
struct SchemaCheck {
    shared: Arc<Shared>,
    store: String,
}

/// How long a schema check waits for a staged write group to commit.
const STAGED_PATIENCE: Duration = Duration::from_secs(30);

/// Reopens the write gate when dropped (after the snapshot swap).
struct Reopen<'a>(&'a Shared);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.gate().closed = false;
        self.0.gate_turn.notify_all();
    }
}

/// The schema files of a snapshot, by path and digest.
fn schema_files(snap: &Snapshot) -> Vec<(&std::path::Path, &str)> {
    snap.files
        .iter()
        .filter(|f| f.kind == FileKind::Schema)
        .map(|f| (f.path.as_path(), f.sha256.as_str()))
        .collect()
}

impl Admit for SchemaCheck {
    fn admit<'a>(
        &'a self,
        current: &Snapshot,
        candidate: &Snapshot,
    ) -> Result<Box<dyn Hold + 'a>, Diagnostics> {
        if schema_files(current) == schema_files(candidate) {
            return Ok(Box::new(()));
        }
        let shared = &*self.shared;
        let model = Model::new(&candidate.schema).map_err(|e| {
            let mut diags = Diagnostics::default();
            diags.push(Diagnostic::plain(
                Some(std::path::Path::new(&self.store)),
                None,
                format!("the reloaded schema gives no fact model for the stored facts: {e}"),
            ));
            diags
        })?;
        // First while writes go on (the whole world is checked, which can
        // take a while); then, with the gate closed, again only if a write
        // was published meanwhile.
        let started = std::time::Instant::now();
        let first = shared.view.load_full();
        let early = first.revalidated(&model);
        let mut gate = shared.gate();
        gate.closed = true;
        let reopen = Reopen(shared);
        let (gate, waited) = shared
            .gate_turn
            .wait_timeout_while(gate, STAGED_PATIENCE, |g| g.staged)
            .unwrap_or_else(PoisonError::into_inner);
        drop(gate);
        if waited.timed_out() {
            let mut diags = Diagnostics::default();
            diags.push(Diagnostic::plain(
                Some(std::path::Path::new(&self.store)),
                None,
                format!(
                    "a fact write did not commit within {} s: the stored facts cannot be checked against the reloaded schema now; reload again",
                    STAGED_PATIENCE.as_secs()
                ),
            ));
            return Err(diags);
        }
        // The gate is closed and nothing is staged: the published view holds
        // every acknowledged write, and no other can come until it reopens.
        let view = shared.view.load_full();
        let checked = if Arc::ptr_eq(&view, &first) {
            early
        } else {
            view.revalidated(&model)
        }
        .map_err(|errors| self.refused(&view, errors))?;
        tracing::info!(
            revision = checked.revision(),
            entities = checked.len(),
            millis = started.elapsed().as_millis() as u64,
            "the stored facts conform to the reloaded schema"
        );
        let model = Arc::new(model);
        let mut gate = shared.gate();
        shared.view.store(Arc::new(checked));
        gate.model = model.clone();
        gate.epoch += 1;
        shared.derived.store(Arc::new(Derived {
            generation: candidate.generation,
            model,
            plan: Arc::new(SlicePlan::new(&candidate.policies)),
        }));
        drop(gate);
        Ok(Box::new(reopen))
    }
}

impl SchemaCheck {
    /// The diagnostics of facts that do not conform: each names the entity
    /// (and the rule, for a domain check).
    fn refused(&self, view: &FactView, errors: Vec<Rejection>) -> Diagnostics {
        // `items[i]` is the i-th entity of `to_json`, which sorts by uid.
        let mut uids: Vec<String> = view.uids().map(|u| u.to_string()).collect();
        uids.sort();
        let total = errors.len();
        let mut diags = Diagnostics::default();
        for r in errors.iter().take(20) {
            let entity = r
                .field
                .strip_prefix("items[")
                .and_then(|i| i.strip_suffix(']'))
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| uids.get(i).cloned())
                .unwrap_or_else(|| r.field.clone());
            diags.push(Diagnostic::plain(
                Some(std::path::Path::new(&self.store)),
                None,
                format!(
                    "the stored facts at revision {} do not conform to the reloaded schema: {entity}: {}",
                    view.revision(),
                    r.message
                ),
            ));
        }
        if total > 20 {
            diags.push(Diagnostic::plain(
                Some(std::path::Path::new(&self.store)),
                None,
                format!("... and {} more errors in the stored facts", total - 20),
            ));
        }
        diags
    }
}

/// [`load_view`] from the entities' JSON texts (`(uid, json, revision)`):
/// parsed on the view's build threads, never all held as JSON values.
fn load_texts(
    model: &Model,
    stored: Vec<(String, String, u64)>,
    head: u64,
) -> Result<FactView, StartError> {
    let revs: Vec<(cedar_policy::EntityUid, u64)> = stored
        .iter()
        .filter_map(|(uid, _, r)| Some((uid.parse().ok()?, *r)))
        .collect();
    let items = stored.into_iter().map(|(_, json, _)| json).collect();
    let view = FactView::from_texts(model, items)
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().take(20).map(|r| format!("  {r}")).collect();
            StartError::Invalid(lines.join("\n"))
        })?
        .at_revision(head);
    Ok(view.with_revisions(revs))
}

/// The view of a store's entities at `head`, checked as a load is.
fn load_view(model: &Model, stored: Vec<StoredEntity>, head: u64) -> Result<FactView, StartError> {
    let revs: Vec<(cedar_policy::EntityUid, u64)> = stored
        .iter()
        .filter_map(|e| Some((e.uid.parse().ok()?, e.revision)))
        .collect();
    let items = stored.into_iter().map(|e| e.json).collect();
    let view = FactView::from_json(model, items)
        .map_err(|errors| {
            let lines: Vec<String> = errors.iter().take(20).map(|r| format!("  {r}")).collect();
            StartError::Invalid(lines.join("\n"))
        })?
        .at_revision(head);
    Ok(view.with_revisions(revs))
}

/// How the live facts follow and prune their store.
#[derive(Debug, Clone, Copy)]
pub struct FollowOptions {
    /// Read the store for other sidecars' writes this often.
    pub poll: Duration,
    /// Keep this many revisions of change log (0: keep all).
    pub retain_changes: u64,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            poll: Duration::from_millis(DEFAULT_POLL_MS),
            retain_changes: DEFAULT_RETAIN_CHANGES,
        }
    }
}

/// The default poll interval (`--facts-poll-ms`).
pub const DEFAULT_POLL_MS: u64 = 1000;

/// The default change-log retention (`--facts-retain-changes`).
pub const DEFAULT_RETAIN_CHANGES: u64 = 1_000_000;

/// Where the facts stand against their store: [`LiveFacts::health`].
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The published revision.
    pub revision: u64,
    /// The store's revision as last seen, and the rest of what the task saw.
    pub store: StatusReport,
    /// Revisions the published facts are behind the store's as last seen.
    pub lag_revisions: u64,
    /// Decisions are made on facts that may be old: not loaded, the store
    /// unreachable, its changes refused, or not confirmed current within
    /// the stale threshold.
    pub stale: bool,
    /// How long the view may go unconfirmed before it is stale.
    pub stale_after: Duration,
}

/// Why the live facts could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the schema gives no fact model: {0}")]
    Model(String),
    #[error("the stored facts do not load:\n{0}")]
    Invalid(String),
}

/// Facts in a store, live.
pub struct LiveFacts {
    store: Store,
    shared: Arc<Shared>,
    writer: Writer<Applier>,
    status: Arc<StoreStatus>,
    options: FollowOptions,
    url: String,
    /// Installed on the live snapshot (weakly): lives as long as this.
    _schema_check: Arc<SchemaCheck>,
}

impl LiveFacts {
    /// Open the store at `url`, load its facts checked against the
    /// snapshot's schema and the domain's rules, and start the task that
    /// writes and follows it. Refused when the store is missing,
    /// unmigrated or newer than this build, or its facts do not load; a
    /// store that cannot be reached is not an error: the facts start
    /// unloaded ([`LiveFacts::ready`] false) and the task keeps trying.
    /// Must run on a tokio runtime.
    pub async fn start(
        url: &str,
        live: Arc<Live>,
        options: FollowOptions,
    ) -> Result<LiveFacts, StartError> {
        let store = Store::lazy(url).await?;
        let snap = live.snapshot();
        let model = Arc::new(Model::new(&snap.schema).map_err(StartError::Model)?);
        let first = async {
            store.check_schema().await?;
            store.snapshot_texts().await
        }
        .await;
        let (view, status) = match first {
            Ok((head, stored)) => (
                load_texts(&model, stored, head)?,
                StoreStatus::new(true, head),
            ),
            Err(e) if e.is_unreachable() => {
                tracing::warn!(
                    store = %crate::facts::store::redact(url),
                    error = %e,
                    "cannot reach the fact store: not ready until it answers (retrying)"
                );
                (FactView::default(), StoreStatus::new(false, 0))
            }
            Err(e) => return Err(e.into()),
        };
        let head = view.revision();
        let (revision, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            live,
            view: ArcSwap::from_pointee(view.clone()),
            revision,
            derived: ArcSwap::from_pointee(Derived {
                generation: snap.generation,
                model: model.clone(),
                plan: Arc::new(SlicePlan::new(&snap.policies)),
            }),
            gate: Mutex::new(Gate {
                model,
                closed: false,
                staged: false,
                epoch: 0,
            }),
            gate_turn: Condvar::new(),
            changes: Mutex::new(VecDeque::new()),
            search: Mutex::new(None),
        });
        let applier = Applier {
            shared: shared.clone(),
            working: view,
            epoch: 0,
            staged: Vec::new(),
            sealed: VecDeque::new(),
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let listening = store.spawn_listener(wake.clone()).is_some();
        let status = Arc::new(status);
        let (writer, _task) = Writer::spawn_with(
            store.clone(),
            applier,
            WriterOptions {
                poll: Some(options.poll),
                wake: listening.then_some(wake),
                retain_changes: options.retain_changes,
                ..WriterOptions::default()
            },
            status.clone(),
        );
        // Build the search index off the request path, so that the first
        // search only brings it up to date.
        warm_search(shared.clone());
        let url = crate::facts::store::redact(url);
        let schema_check = Arc::new(SchemaCheck {
            shared: shared.clone(),
            store: url.clone(),
        });
        let weak: std::sync::Weak<dyn Admit> = Arc::downgrade(&schema_check) as _;
        shared.live.set_admit(weak);
        Ok(LiveFacts {
            store,
            shared,
            writer,
            status,
            options,
            url,
            _schema_check: schema_check,
        })
    }

    /// Whether the facts were loaded from the store (until then decisions
    /// and writes are refused).
    pub fn ready(&self) -> bool {
        self.status.bootstrapped()
    }

    /// The published revision against what the store last said.
    pub fn health(&self) -> Health {
        let store = self.status.report();
        let revision = self.revision();
        let stale_after = (self.options.poll * 3).max(Duration::from_secs(1));
        let stale = !store.bootstrapped
            || !store.reachable
            || store.diverged.is_some()
            || store.since_confirmed.is_none_or(|d| d > stale_after);
        Health {
            revision,
            lag_revisions: store.store_revision.saturating_sub(revision),
            store,
            stale,
            stale_after,
        }
    }

    /// The store, redacted for logs.
    pub fn describe(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The published revision.
    pub fn revision(&self) -> u64 {
        *self.shared.revision.borrow()
    }

    /// Number of entities in the published view.
    pub fn len(&self) -> usize {
        self.shared.view.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The published facts, with the model and plan of `snap`.
    pub fn at(&self, snap: Arc<Snapshot>) -> At {
        let view = self.shared.view.load_full();
        let (model, plan) = self.shared.derived(&snap);
        At {
            snap,
            facts: Some(FactsAt { view, model, plan }),
        }
    }

    /// The published facts with the model and plan of `snap`, and the
    /// search index of the same revision (brought there from the changes
    /// since the last search). Blocks: call it off the async request path.
    pub fn search_at(&self, snap: Arc<Snapshot>) -> (At, Arc<LiveIndex>) {
        let shared = &self.shared;
        let mut slot = shared.search.lock().unwrap_or_else(PoisonError::into_inner);
        let at = self.at(snap);
        let view = &at.facts.as_ref().expect("store mode").view;
        let index = match slot.as_ref() {
            Some(index) if index.revision() == view.revision() => index.clone(),
            Some(index) if index.revision() < view.revision() => {
                match shared.changed_between(index.revision(), view.revision()) {
                    Some(changed) => Arc::new(index.advance(view, changed.iter())),
                    None => Arc::new(LiveIndex::build(view)),
                }
            }
            _ => Arc::new(LiveIndex::build(view)),
        };
        *slot = Some(index.clone());
        (at, index)
    }

    /// Wait until the published revision is at least `min`, at most
    /// `patience`: whether it got there.
    pub async fn wait_for(&self, min: u64, patience: Duration) -> bool {
        let mut rx = self.shared.revision.subscribe();
        if *rx.borrow() >= min {
            return true;
        }
        tokio::time::timeout(patience, rx.wait_for(|r| *r >= min))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Queue a write; its revision once durable and published.
    pub async fn write(&self, request: WriteRequest) -> Result<u64, WriteError<Rejection>> {
        self.writer.write(request).await
    }
}

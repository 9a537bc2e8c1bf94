//! The fact task: one task per process owns the facts' published state,
//! both its write path (group commit) and following the store (writes of
//! other processes sharing it).
//!
//! Writers send requests through a bounded channel ([`Writer::write`]).
//! The task takes the first queued request and whatever else is queued
//! behind it (up to a group size) and opens a write on the store
//! ([`Store::write_tx`]), which takes the store's write lock and reads the
//! head. When another process committed since the published state, the
//! task first reads what it wrote ([`crate::facts::store::Delta`]) in that
//! same transaction and brings the published state to the head
//! ([`Apply::catch_up`]); so every request is validated against the latest
//! world. It then passes each request through the caller's
//! [`Apply::apply`] in order, so that every request is validated against
//! the world the accepted ones before it produce, commits all the accepted
//! ones in one transaction (one fsync for the group), calls
//! [`Apply::publish`] with their revisions and only then answers each
//! request with its revision or its rejection.
//!
//! Groups are pipelined (`write_burst`): while one group's commit runs
//! (its `fsync` above all), the requests queued behind it are validated
//! and staged on top of it, and that next group takes the write lock as
//! soon as the first is published. It is committed as staged when the
//! store is still where the first group left it; otherwise (another
//! process wrote, or the first group failed) its staged state is dropped
//! and its requests are validated again on the published state. A request
//! is answered once its own group is durable, groups are published in
//! commit order, and none is published on top of a group that failed.
//!
//! The caller's state has two sides: the published state, current for
//! readers, and the working state that `apply` stages into. `publish`
//! makes the working state current; when the commit fails, `rollback`
//! drops it, nothing of the group is acknowledged, and the requests
//! accepted in it are answered with the store's error.
//!
//! Between writes the task follows the store: on a wake-up (PostgreSQL's
//! `NOTIFY`, [`Store::spawn_listener`]) and on every poll tick it reads the
//! delta after the published revision ([`Store::delta_since`]) and applies
//! it. A reader behind the pruned change log re-bootstraps from a snapshot
//! ([`Apply::rebootstrap`]); so does a process that could not reach the
//! store at start-up, until it can. What it last saw of the store is kept
//! in a [`StoreStatus`] for status and metrics. While the store is known
//! to be unreachable, writes are refused at once (not queued behind
//! connection timeouts); the next successful poll lets them through again. Now and then the task also
//! prunes the change log to the configured retention.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::store::{Commit, Delta, Store, StoreError, StoredEntity, WriteTx};

/// The caller's validate-and-apply step.
pub trait Apply: Send + 'static {
    type Request: Send + 'static;
    type Rejection: Send + 'static;

    /// The revision of the published state: the base of the next group.
    fn revision(&self) -> u64;

    /// Validate `request` against the working state (the published state
    /// and what this group accepted before it). Accepted: stage its effect
    /// in the working state and return what to commit as `revision`.
    /// Rejected: the working state is left as it was.
    fn apply(&mut self, request: &Self::Request, revision: u64) -> Result<Commit, Self::Rejection>;

    /// The group staged so far is complete and its commit starts: later
    /// [`Apply::apply`] calls stage the next group on top of it, while it
    /// commits. False (the default): the caller keeps one group at a time,
    /// and the writer stages the next group only after this one is
    /// published or rolled back.
    fn seal(&mut self) -> bool {
        false
    }

    /// The oldest staged group is durable at `revisions` (consecutive,
    /// ascending): make the state at its end (the working state, when no
    /// group was sealed after it) the published one.
    fn publish(&mut self, revisions: &[u64]);

    /// A group was not committed: drop every staged group (the later ones
    /// were validated on top of it) and make the published state the
    /// working one again. (What other processes wrote meanwhile reaches the
    /// published state through [`Apply::catch_up`], under the next group's
    /// write lock or the next follow.)
    fn rollback(&mut self);

    /// Another process committed: bring the published state (and the
    /// working state, which equals it between groups) to `delta.head`.
    /// Err (why): the caller cannot take the store's facts (its schema
    /// refuses them); its state is left as it was.
    fn catch_up(&mut self, delta: Delta) -> Result<(), String>;

    /// Replace the published state with the store's entities at `head` (a
    /// first load, or a reader behind the pruned change log). Err (why):
    /// the state is left as it was.
    fn rebootstrap(&mut self, head: u64, entities: Vec<StoredEntity>) -> Result<(), String>;
}

/// What the fact task last saw of its store, for status and metrics.
#[derive(Debug, Default)]
pub struct StoreStatus {
    bootstrapped: AtomicBool,
    head: AtomicU64,
    reachable: AtomicBool,
    rebootstraps: AtomicU64,
    confirmed_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    diverged: Mutex<Option<String>>,
}

/// A copy of [`StoreStatus`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// The facts were loaded from the store (false: still trying).
    pub bootstrapped: bool,
    /// The store's revision, as last seen.
    pub store_revision: u64,
    /// The last read of the store succeeded.
    pub reachable: bool,
    /// Since the published state was last confirmed to be the store's
    /// head (none: never).
    pub since_confirmed: Option<Duration>,
    /// Re-bootstraps from a snapshot since start (not the first load).
    pub rebootstraps: u64,
    /// The last error reading or writing the store, while it lasts.
    pub last_error: Option<String>,
    /// Why the store's facts could not be applied, while that lasts.
    pub diverged: Option<String>,
}

impl StoreStatus {
    pub fn new(bootstrapped: bool, head: u64) -> StoreStatus {
        let status = StoreStatus::default();
        status.bootstrapped.store(bootstrapped, Ordering::SeqCst);
        status.head.store(head, Ordering::SeqCst);
        status.reachable.store(bootstrapped, Ordering::SeqCst);
        if bootstrapped {
            *lock(&status.confirmed_at) = Some(Instant::now());
        }
        status
    }

    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped.load(Ordering::SeqCst)
    }

    pub fn report(&self) -> StatusReport {
        StatusReport {
            bootstrapped: self.bootstrapped(),
            store_revision: self.head.load(Ordering::SeqCst),
            reachable: self.reachable.load(Ordering::SeqCst),
            since_confirmed: lock(&self.confirmed_at).map(|t| t.elapsed()),
            rebootstraps: self.rebootstraps.load(Ordering::SeqCst),
            last_error: lock(&self.last_error).clone(),
            diverged: lock(&self.diverged).clone(),
        }
    }

    /// The store answered at `head`.
    fn seen(&self, head: u64) {
        self.head.fetch_max(head, Ordering::SeqCst);
        if !self.reachable.swap(true, Ordering::SeqCst) && self.bootstrapped() {
            tracing::info!(revision = head, "the fact store is reachable again");
        }
        *lock(&self.last_error) = None;
    }

    /// The published state is the store's head.
    fn confirmed(&self) {
        *lock(&self.confirmed_at) = Some(Instant::now());
        *lock(&self.diverged) = None;
    }

    fn failed(&self, e: &StoreError) {
        let message = e.to_string();
        let was = self.reachable.swap(!e.is_unreachable(), Ordering::SeqCst);
        let mut last = lock(&self.last_error);
        if was || last.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "fact store: deciding on the last revision until it answers");
        }
        *last = Some(message);
    }

    fn diverged(&self, why: &str) {
        let mut d = lock(&self.diverged);
        if d.as_deref() != Some(why) {
            tracing::error!(
                error = why,
                "the fact store's changes do not validate under this sidecar's schema: keeping the last good facts"
            );
        }
        *d = Some(why.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a write was not acknowledged.
#[derive(Debug)]
pub enum WriteError<R> {
    /// The caller's step rejected the request: nothing was written for it.
    Rejected(R),
    /// The group's commit failed: nothing of the group was written.
    Store(Arc<StoreError>),
    /// The store holds changes this process cannot apply (its schema
    /// refuses them): nothing was written.
    Diverged(String),
    /// The writer task is gone.
    Closed,
}

impl<R: std::fmt::Display> std::fmt::Display for WriteError<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Rejected(r) => write!(f, "rejected: {r}"),
            WriteError::Store(e) => write!(f, "not written: {e}"),
            WriteError::Diverged(why) => write!(
                f,
                "not written: this process cannot apply the store's latest facts: {why}"
            ),
            WriteError::Closed => write!(f, "not written: the writer has stopped"),
        }
    }
}

type Reply<A> = Result<u64, WriteError<<A as Apply>::Rejection>>;

struct Job<A: Apply> {
    request: A::Request,
    reply: oneshot::Sender<Reply<A>>,
}

/// A handle to the writer task. Cheap to clone; the task ends when every
/// handle is dropped and the queue is drained.
pub struct Writer<A: Apply> {
    queue: mpsc::Sender<Job<A>>,
}

impl<A: Apply> Clone for Writer<A> {
    fn clone(&self) -> Self {
        Writer {
            queue: self.queue.clone(),
        }
    }
}

/// How the writer queues and groups.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Requests waiting beyond the one being committed; senders wait when
    /// it is full.
    pub queue: usize,
    /// At most this many requests per commit.
    pub max_group: usize,
    /// Read the store for other processes' writes this often (none: only
    /// when woken, and under the write lock).
    pub poll: Option<Duration>,
    /// Read the store when this is notified (PostgreSQL's `NOTIFY`).
    pub wake: Option<Arc<Notify>>,
    /// Keep this many revisions of change log; prune older ones (0: keep
    /// everything).
    pub retain_changes: u64,
    /// At most one prune this often.
    pub prune_every: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            queue: 4096,
            max_group: 1024,
            poll: None,
            wake: None,
            retain_changes: 0,
            prune_every: Duration::from_secs(10),
        }
    }
}

impl<A: Apply> Writer<A> {
    /// Start the writer task on the current tokio runtime. The handle
    /// returns the caller's state when the task ends.
    pub fn spawn(store: Store, apply: A, options: WriterOptions) -> (Writer<A>, JoinHandle<A>) {
        let status = Arc::new(StoreStatus::new(true, apply.revision()));
        Self::spawn_with(store, apply, options, status)
    }

    /// [`Writer::spawn`] reporting into `status`. When `status` is not yet
    /// bootstrapped, the task loads the store on every poll tick until it
    /// can, answering writes with [`StoreError::NotReady`] meanwhile.
    pub fn spawn_with(
        store: Store,
        apply: A,
        options: WriterOptions,
        status: Arc<StoreStatus>,
    ) -> (Writer<A>, JoinHandle<A>) {
        let (queue, rx) = mpsc::channel(options.queue.max(1));
        let task = tokio::spawn(run(store, apply, rx, options, status));
        (Writer { queue }, task)
    }

    /// Queue `request` and wait for its answer: its revision once durable
    /// and published, or why not.
    pub async fn write(&self, request: A::Request) -> Reply<A> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.unwrap_or(Err(WriteError::Closed))
    }
}

/// How long a read of a store known to be away may take before the task
/// goes back to answering writes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What woke the task.
enum Event<J> {
    Job(J),
    Follow,
    Closed,
}

async fn run<A: Apply>(
    store: Store,
    mut apply: A,
    mut rx: mpsc::Receiver<Job<A>>,
    options: WriterOptions,
    status: Arc<StoreStatus>,
) -> A {
    let max_group = options.max_group.max(1);
    let mut jobs: Vec<Job<A>> = Vec::with_capacity(max_group);
    let mut tick = options.poll.map(|p| {
        let mut t = tokio::time::interval(p.max(Duration::from_millis(1)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let wake = options.wake.clone();
    let mut last_prune = Instant::now();
    loop {
        let event = tokio::select! {
            // Writes first: a follow never delays a queued write twice.
            biased;
            job = rx.recv() => match job {
                Some(job) => Event::Job(job),
                None => Event::Closed,
            },
            _ = async {
                match &wake {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            } => Event::Follow,
            _ = async {
                match &mut tick {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => Event::Follow,
        };
        match event {
            Event::Closed => break,
            Event::Job(first) => {
                jobs.push(first);
                while jobs.len() < max_group {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                if status.bootstrapped()
                    && tick.is_some()
                    && !status.reachable.load(Ordering::SeqCst)
                {
                    // Known away: answer now rather than queue every group
                    // behind a connection timeout; the poll tick probes it.
                    let e = Arc::new(StoreError::Unreachable(
                        lock(&status.last_error).clone().unwrap_or_default(),
                    ));
                    refuse_all(&mut jobs, || WriteError::Store(e.clone()));
                } else if status.bootstrapped() {
                    let pending = jobs.drain(..).collect();
                    let probing = tick.is_some();
                    let burst = write_burst(
                        &store, &mut apply, &mut rx, pending, max_group, &status, probing,
                    );
                    if !burst.await {
                        break;
                    }
                } else {
                    let e = Arc::new(StoreError::NotReady(
                        lock(&status.last_error)
                            .clone()
                            .unwrap_or_else(|| "still connecting".into()),
                    ));
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(WriteError::Store(e.clone())));
                    }
                }
            }
            Event::Follow => {
                if status.bootstrapped() {
                    if status.reachable.load(Ordering::SeqCst) {
                        follow(&store, &mut apply, &status).await;
                    } else {
                        // A probe of a store that is away: bounded, so that
                        // writes queued meanwhile are refused promptly.
                        let probe = follow(&store, &mut apply, &status);
                        if tokio::time::timeout(PROBE_TIMEOUT, probe).await.is_err() {
                            status.failed(&StoreError::Unreachable(format!(
                                "no answer within {} ms",
                                PROBE_TIMEOUT.as_millis()
                            )));
                        }
                    }
                    if let Some(t) = &mut tick {
                        t.reset();
                    }
                    if options.retain_changes > 0
                        && last_prune.elapsed() >= options.prune_every
                        && status.report().reachable
                    {
                        last_prune = Instant::now();
                        prune(&store, apply.revision(), options.retain_changes).await;
                    }
                } else {
                    bootstrap(&store, &mut apply, &status).await;
                }
            }
        }
    }
    apply
}

/// Drop the change rows older than the last `retain` revisions.
async fn prune(store: &Store, head: u64, retain: u64) {
    let Some(through) = head.checked_sub(retain).filter(|t| *t > 0) else {
        return;
    };
    match store.prune_changes(through).await {
        Ok(0) => {}
        Ok(gone) => tracing::info!(through, rows = gone, "pruned the fact change log"),
        Err(e) => tracing::warn!(error = %e, "cannot prune the fact change log"),
    }
}

/// Load the store's snapshot into `apply`: whether it worked.
async fn bootstrap<A: Apply>(store: &Store, apply: &mut A, status: &StoreStatus) -> bool {
    let loaded = async {
        store.check_schema().await?;
        store.snapshot().await
    }
    .await;
    let (head, entities) = match loaded {
        Ok(s) => s,
        Err(e) => {
            status.failed(&e);
            return false;
        }
    };
    status.seen(head);
    let first = !status.bootstrapped();
    match apply.rebootstrap(head, entities) {
        Ok(()) => {
            status.confirmed();
            if first {
                status.bootstrapped.store(true, Ordering::SeqCst);
                tracing::info!(revision = head, "facts loaded from the store");
            } else {
                status.rebootstraps.fetch_add(1, Ordering::SeqCst);
                tracing::info!(
                    revision = head,
                    "facts re-loaded from a snapshot of the store"
                );
            }
            true
        }
        Err(why) => {
            status.diverged(&why);
            false
        }
    }
}

/// Bring `apply` to the store's head.
async fn follow<A: Apply>(store: &Store, apply: &mut A, status: &StoreStatus) {
    let local = apply.revision();
    match store.delta_since(local).await {
        Ok(delta) => {
            status.seen(delta.head);
            if delta.head > local {
                match apply.catch_up(delta) {
                    Ok(()) => status.confirmed(),
                    Err(why) => status.diverged(&why),
                }
            } else if delta.head == local {
                status.confirmed();
            } else {
                status.failed(&StoreError::Corrupt(format!(
                    "the store is at revision {}, behind this process's {local} (restored from an older backup?)",
                    delta.head
                )));
            }
        }
        Err(StoreError::Pruned { since, .. }) => {
            tracing::warn!(
                revision = since,
                "behind the fact store's pruned change log: re-loading a snapshot"
            );
            bootstrap(store, apply, status).await;
        }
        Err(e) => status.failed(&e),
    }
}

/// Answer every job with `error`.
fn refuse_all<A: Apply>(jobs: &mut Vec<Job<A>>, error: impl Fn() -> WriteError<A::Rejection>) {
    for job in jobs.drain(..) {
        let _ = job.reply.send(Err(error()));
    }
}

/// The future of a group's commit.
type CommitFuture = Pin<Box<dyn Future<Output = Result<Vec<u64>, StoreError>> + Send>>;

/// A group whose commit is running.
struct InFlight<A: Apply> {
    jobs: Vec<Job<A>>,
    /// Per job: the index of its commit, or its rejection.
    verdicts: Vec<Result<usize, A::Rejection>>,
    /// The revision its last commit will have.
    top: u64,
    /// The caller staged its end ([`Apply::seal`]): the next group may be
    /// staged beside it.
    sealed: bool,
    commit: CommitFuture,
}

/// A group validated and staged on top of the one in flight, waiting for
/// it to be published.
struct Staged<A: Apply> {
    /// The revision it was staged on (the last of the group in flight).
    base: u64,
    jobs: Vec<Job<A>>,
    verdicts: Vec<Result<usize, A::Rejection>>,
    commits: Vec<Commit>,
}

impl<A: Apply> Staged<A> {
    fn new(base: u64) -> Self {
        Staged {
            base,
            jobs: Vec::new(),
            verdicts: Vec::new(),
            commits: Vec::new(),
        }
    }

    /// Validate and stage one more job.
    fn push(&mut self, apply: &mut A, job: Job<A>) {
        let revision = self.base + self.commits.len() as u64 + 1;
        self.verdicts
            .push(match apply.apply(&job.request, revision) {
                Ok(commit) => {
                    self.commits.push(commit);
                    Ok(self.commits.len() - 1)
                }
                Err(rejection) => Err(rejection),
            });
        self.jobs.push(job);
    }
}

/// Commit `pending` and whatever queues behind it, group after group,
/// until the queue is empty and nothing is in flight. Returns false when
/// the queue closed.
///
/// While a group's commit runs (its `fsync` above all), the next group is
/// validated and staged on top of it, when the caller can keep two
/// ([`Apply::seal`]). Once the first is published, the second takes the
/// write lock: when the store is still at the revision the first left it
/// at, its commit starts at once; otherwise (another process wrote) it is
/// dropped and validated again after the catch-up. When the first group's
/// commit fails, the second is dropped with it and validated again on the
/// published state. So a write is acknowledged only once its own group is
/// durable and published, groups are published in commit order, and every
/// write is validated against exactly the world it is committed on.
async fn write_burst<A: Apply>(
    store: &Store,
    apply: &mut A,
    rx: &mut mpsc::Receiver<Job<A>>,
    mut pending: VecDeque<Job<A>>,
    max_group: usize,
    status: &StoreStatus,
    refuse_when_away: bool,
) -> bool {
    let mut inflight: Option<InFlight<A>> = None;
    let mut staged: Option<Staged<A>> = None;
    let mut open = true;
    loop {
        let Some(fl) = inflight.as_mut() else {
            if let Some(s) = staged.take() {
                match start_staged(store, apply, s, status).await {
                    Ok(next) => inflight = next,
                    Err(jobs) => {
                        for job in jobs.into_iter().rev() {
                            pending.push_front(job);
                        }
                    }
                }
                continue;
            }
            while open && pending.len() < max_group {
                match rx.try_recv() {
                    Ok(job) => pending.push_back(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            if pending.is_empty() {
                return open;
            }
            if refuse_when_away && !status.reachable.load(Ordering::SeqCst) {
                // Known away (a commit just failed so): answer now, and
                // leave the rest to the main loop, which refuses at once
                // until the poll tick finds the store again, rather than
                // queue every group behind a connection timeout.
                let e = Arc::new(StoreError::Unreachable(
                    lock(&status.last_error).clone().unwrap_or_default(),
                ));
                let mut jobs: Vec<Job<A>> = pending.drain(..).collect();
                refuse_all(&mut jobs, || WriteError::Store(e.clone()));
                return open;
            }
            let n = pending.len().min(max_group);
            let jobs: Vec<Job<A>> = pending.drain(..n).collect();
            inflight = begin_group(store, apply, jobs, status).await;
            continue;
        };
        if fl.sealed && !pending.is_empty() {
            // Left from a group dropped earlier: staged before anything new.
            let s = staged.get_or_insert_with(|| Staged::new(fl.top));
            if s.jobs.len() < max_group {
                let job = pending.pop_front().expect("pending");
                s.push(apply, job);
                continue;
            }
        }
        let room = fl.sealed
            && pending.is_empty()
            && staged.as_ref().is_none_or(|s| s.jobs.len() < max_group);
        let top = fl.top;
        let step = tokio::select! {
            biased;
            outcome = &mut fl.commit => Step::Done(outcome),
            job = rx.recv(), if open && room => Step::Job(job),
        };
        match step {
            Step::Done(outcome) => {
                let fl = inflight.take().expect("in flight");
                if !finish_group(apply, fl, outcome, status)
                    && let Some(s) = staged.take()
                {
                    // Validated on top of a group that is void: again, on
                    // the published state.
                    for job in s.jobs.into_iter().rev() {
                        pending.push_front(job);
                    }
                }
            }
            Step::Job(Some(job)) => staged
                .get_or_insert_with(|| Staged::new(top))
                .push(apply, job),
            Step::Job(None) => open = false,
        }
    }
}

/// What a group in flight waited for.
enum Step<J> {
    Done(Result<Vec<u64>, StoreError>),
    Job(Option<J>),
}

/// Take the write lock for a group staged on top of the one just
/// published and start its commit (none: nothing to commit, every job
/// answered). Err(jobs): the store moved since it was staged; the staged
/// state was dropped, and the jobs are to be validated again.
async fn start_staged<A: Apply>(
    store: &Store,
    apply: &mut A,
    s: Staged<A>,
    status: &StoreStatus,
) -> Result<Option<InFlight<A>>, Vec<Job<A>>> {
    let tx = match store.write_tx().await {
        Ok(tx) => tx,
        Err(e) => {
            status.failed(&e);
            apply.rollback();
            let e = Arc::new(e);
            let mut jobs = s.jobs;
            refuse_all(&mut jobs, || WriteError::Store(e.clone()));
            return Ok(None);
        }
    };
    status.seen(tx.head());
    if tx.head() != s.base || apply.revision() != s.base {
        apply.rollback();
        return Err(s.jobs);
    }
    Ok(start_commit(apply, tx, s.jobs, s.verdicts, s.commits))
}

/// Start committing a validated group under the write lock `tx` (none:
/// nothing was accepted, every job is answered now).
fn start_commit<A: Apply>(
    apply: &mut A,
    tx: WriteTx,
    jobs: Vec<Job<A>>,
    verdicts: Vec<Result<usize, A::Rejection>>,
    commits: Vec<Commit>,
) -> Option<InFlight<A>> {
    if commits.is_empty() {
        drop(tx);
        for (job, verdict) in jobs.into_iter().zip(verdicts) {
            let answer = match verdict {
                Ok(_) => unreachable!("no commit was accepted"),
                Err(r) => Err(WriteError::Rejected(r)),
            };
            let _ = job.reply.send(answer);
        }
        return None;
    }
    let top = tx.head() + commits.len() as u64;
    let sealed = apply.seal();
    Some(InFlight {
        jobs,
        verdicts,
        top,
        sealed,
        commit: Box::pin(async move { tx.commit(&commits).await }),
    })
}

/// Publish and answer a group whose commit ended: whether it committed.
/// On failure every staged state is dropped ([`Apply::rollback`]).
fn finish_group<A: Apply>(
    apply: &mut A,
    fl: InFlight<A>,
    outcome: Result<Vec<u64>, StoreError>,
    status: &StoreStatus,
) -> bool {
    match outcome {
        Ok(revisions) => {
            if let Some(top) = revisions.last() {
                apply.publish(&revisions);
                status.seen(*top);
            }
            status.confirmed();
            for (job, verdict) in fl.jobs.into_iter().zip(fl.verdicts) {
                let answer = match verdict {
                    Ok(i) => Ok(revisions[i]),
                    Err(r) => Err(WriteError::Rejected(r)),
                };
                let _ = job.reply.send(answer);
            }
            true
        }
        Err(e) => {
            status.failed(&e);
            apply.rollback();
            let e = Arc::new(e);
            // A rejection decided before the group's first accepted request
            // was decided on the published state and stands; the later ones
            // saw staged changes that are now void.
            let mut staged = false;
            for (job, verdict) in fl.jobs.into_iter().zip(fl.verdicts) {
                let answer = match verdict {
                    Err(r) if !staged => Err(WriteError::Rejected(r)),
                    Ok(_) => {
                        staged = true;
                        Err(WriteError::Store(e.clone()))
                    }
                    Err(_) => Err(WriteError::Store(e.clone())),
                };
                let _ = job.reply.send(answer);
            }
            false
        }
    }
}

/// Take the write lock, catch up with other writers under it, validate
/// `jobs` in order and start their commit (none: every job was answered).
async fn begin_group<A: Apply>(
    store: &Store,
    apply: &mut A,
    mut jobs: Vec<Job<A>>,
    status: &StoreStatus,
) -> Option<InFlight<A>> {
    // Take the write lock; catch up with other writers under it. A reader
    // behind the pruned log re-bootstraps and tries again once.
    let mut attempts = 0;
    let tx = loop {
        attempts += 1;
        let mut tx = match store.write_tx().await {
            Ok(tx) => tx,
            Err(e) => {
                status.failed(&e);
                let e = Arc::new(e);
                refuse_all(&mut jobs, || WriteError::Store(e.clone()));
                return None;
            }
        };
        let head = tx.head();
        status.seen(head);
        let local = apply.revision();
        if head < local {
            let e = Arc::new(StoreError::Corrupt(format!(
                "the store is at revision {head}, behind this process's {local} (restored from an older backup?)"
            )));
            status.failed(&e);
            refuse_all(&mut jobs, || WriteError::Store(e.clone()));
            return None;
        }
        if head == local {
            break tx;
        }
        match tx.delta_since(local).await {
            Ok(delta) => match apply.catch_up(delta) {
                Ok(()) => break tx,
                Err(why) => {
                    status.diverged(&why);
                    refuse_all(&mut jobs, || WriteError::Diverged(why.clone()));
                    return None;
                }
            },
            Err(StoreError::Pruned { .. }) if attempts < 2 => {
                drop(tx);
                if !bootstrap(store, apply, status).await {
                    let why = status
                        .report()
                        .diverged
                        .or(status.report().last_error)
                        .unwrap_or_default();
                    refuse_all(&mut jobs, || WriteError::Diverged(why.clone()));
                    return None;
                }
            }
            Err(e) => {
                status.failed(&e);
                let e = Arc::new(e);
                refuse_all(&mut jobs, || WriteError::Store(e.clone()));
                return None;
            }
        }
    };
    let base = tx.head();
    debug_assert_eq!(base, apply.revision());
    let mut group = Staged::new(base);
    for job in jobs {
        group.push(apply, job);
    }
    start_commit(apply, tx, group.jobs, group.verdicts, group.commits)
}

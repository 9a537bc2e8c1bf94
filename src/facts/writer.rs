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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::store::{Commit, Delta, Store, StoreError, StoredEntity};

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

    /// The group is durable at `revisions` (consecutive, ascending): make
    /// the working state the published one.
    fn publish(&mut self, revisions: &[u64]);

    /// The group was not committed: make the working state the published
    /// one again. (What other processes wrote meanwhile reaches the
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
                    commit_group(&store, &mut apply, &mut jobs, &status).await;
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

/// Validate, commit, publish and answer one group (`jobs` is left empty).
async fn commit_group<A: Apply>(
    store: &Store,
    apply: &mut A,
    jobs: &mut Vec<Job<A>>,
    status: &StoreStatus,
) {
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
                return refuse_all(jobs, || WriteError::Store(e.clone()));
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
            return refuse_all(jobs, || WriteError::Store(e.clone()));
        }
        if head == local {
            break tx;
        }
        match tx.delta_since(local).await {
            Ok(delta) => match apply.catch_up(delta) {
                Ok(()) => break tx,
                Err(why) => {
                    status.diverged(&why);
                    return refuse_all(jobs, || WriteError::Diverged(why.clone()));
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
                    return refuse_all(jobs, || WriteError::Diverged(why.clone()));
                }
            }
            Err(e) => {
                status.failed(&e);
                let e = Arc::new(e);
                return refuse_all(jobs, || WriteError::Store(e.clone()));
            }
        }
    };
    let base = tx.head();
    debug_assert_eq!(base, apply.revision());
    let mut commits = Vec::with_capacity(jobs.len());
    // Per job: the index of its commit, or its rejection.
    let mut verdicts: Vec<Result<usize, A::Rejection>> = Vec::with_capacity(jobs.len());
    for job in jobs.iter() {
        let revision = base + commits.len() as u64 + 1;
        verdicts.push(match apply.apply(&job.request, revision) {
            Ok(commit) => {
                commits.push(commit);
                Ok(commits.len() - 1)
            }
            Err(rejection) => Err(rejection),
        });
    }
    let outcome = tx.commit(&commits).await;
    match outcome {
        Ok(revisions) => {
            if let Some(top) = revisions.last() {
                apply.publish(&revisions);
                status.seen(*top);
            }
            status.confirmed();
            for (job, verdict) in jobs.drain(..).zip(verdicts) {
                let answer = match verdict {
                    Ok(i) => Ok(revisions[i]),
                    Err(r) => Err(WriteError::Rejected(r)),
                };
                let _ = job.reply.send(answer);
            }
        }
        Err(e) => {
            status.failed(&e);
            apply.rollback();
            let e = Arc::new(e);
            // A rejection decided before the group's first accepted request
            // was decided on the published state and stands; the later ones
            // saw staged changes that are now void.
            let mut staged = false;
            for (job, verdict) in jobs.drain(..).zip(verdicts) {
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
        }
    }
}

//! The group-commit writer: one task owns the write path of a store.
//!
//! Writers send requests through a bounded channel ([`Writer::write`]).
//! The task takes the first queued request and whatever else is queued
//! behind it (up to a group size), passes each through the caller's
//! [`Apply::apply`] in order, so that every request is validated against
//! the world the accepted ones before it produce, commits all the accepted
//! ones in one [`Store::commit_group`] transaction (one fsync for the
//! group), calls [`Apply::publish`] with their revisions and only then
//! answers each request with its revision or its rejection.
//!
//! The caller's state has two sides: the published state, current for
//! readers, and the working state that `apply` stages into. `publish`
//! makes the working state current; when the commit fails, `rollback`
//! drops it, nothing of the group is acknowledged, and the requests
//! accepted in it are answered with the store's error.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::store::{Commit, Store, StoreError};

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
    /// one again. When the store moved under the caller
    /// ([`StoreError::Conflict`]: another process wrote), the caller must
    /// also bring its published state to the store's head (by following
    /// the change log) before a later group can commit.
    fn rollback(&mut self);
}

/// Why a write was not acknowledged.
#[derive(Debug)]
pub enum WriteError<R> {
    /// The caller's step rejected the request: nothing was written for it.
    Rejected(R),
    /// The group's commit failed: nothing of the group was written.
    Store(Arc<StoreError>),
    /// The writer task is gone.
    Closed,
}

impl<R: std::fmt::Display> std::fmt::Display for WriteError<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Rejected(r) => write!(f, "rejected: {r}"),
            WriteError::Store(e) => write!(f, "not written: {e}"),
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
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Requests waiting beyond the one being committed; senders wait when
    /// it is full.
    pub queue: usize,
    /// At most this many requests per commit.
    pub max_group: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            queue: 4096,
            max_group: 1024,
        }
    }
}

impl<A: Apply> Writer<A> {
    /// Start the writer task on the current tokio runtime. The handle
    /// returns the caller's state when the task ends.
    pub fn spawn(store: Store, apply: A, options: WriterOptions) -> (Writer<A>, JoinHandle<A>) {
        let (queue, rx) = mpsc::channel(options.queue.max(1));
        let task = tokio::spawn(run(store, apply, rx, options.max_group.max(1)));
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

async fn run<A: Apply>(
    store: Store,
    mut apply: A,
    mut rx: mpsc::Receiver<Job<A>>,
    max_group: usize,
) -> A {
    let mut jobs: Vec<Job<A>> = Vec::with_capacity(max_group);
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < max_group {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit_group(&store, &mut apply, &mut jobs).await;
    }
    apply
}

/// Validate, commit, publish and answer one group (`jobs` is left empty).
async fn commit_group<A: Apply>(store: &Store, apply: &mut A, jobs: &mut Vec<Job<A>>) {
    let base = apply.revision();
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
    let outcome = if commits.is_empty() {
        Ok(Vec::new())
    } else {
        store.commit_group(base, &commits).await
    };
    match outcome {
        Ok(revisions) => {
            if !revisions.is_empty() {
                apply.publish(&revisions);
            }
            for (job, verdict) in jobs.drain(..).zip(verdicts) {
                let answer = match verdict {
                    Ok(i) => Ok(revisions[i]),
                    Err(r) => Err(WriteError::Rejected(r)),
                };
                let _ = job.reply.send(answer);
            }
        }
        Err(e) => {
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

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
//! [`At`] is what one HTTP request decides against: a snapshot and, in store
//! mode, one view (so a batch is decided at one revision, the revision its
//! answer reports).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;

use crate::facts::store::{Commit, Store, StoreError};
use crate::facts::writer::{Apply, WriteError, Writer, WriterOptions};
use crate::facts::{Batch, FactView, Model, Rejection, SlicePlan};
use crate::reload::Live;
use crate::snapshot::Snapshot;

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

/// What the server and the writer task share.
struct Shared {
    live: Arc<Live>,
    view: ArcSwap<FactView>,
    revision: watch::Sender<u64>,
    derived: ArcSwap<Derived>,
}

impl Shared {
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
}

impl Apply for Applier {
    type Request = WriteRequest;
    type Rejection = Rejection;

    fn revision(&self) -> u64 {
        self.shared.view.load().revision()
    }

    fn apply(&mut self, request: &WriteRequest, revision: u64) -> Result<Commit, Rejection> {
        let snap = self.shared.live.snapshot();
        let (model, _) = self.shared.derived(&snap);
        let (next, applied) = self.working.apply(&model, &request.batch)?;
        debug_assert_eq!(applied.revision, revision);
        self.working = next;
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

    fn publish(&mut self, revisions: &[u64]) {
        let top = revisions.last().copied().unwrap_or(0);
        debug_assert_eq!(self.working.revision(), top);
        self.shared.view.store(Arc::new(self.working.clone()));
        self.shared.revision.send_replace(top);
    }

    fn rollback(&mut self) {
        self.working = self.shared.view.load().as_ref().clone();
    }
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
    url: String,
}

impl LiveFacts {
    /// Open the store at `url` (refused when missing, unmigrated or newer
    /// than this build), load its facts checked against the snapshot's
    /// schema and the domain's rules, and start the writer. Must run on a
    /// tokio runtime.
    pub async fn start(url: &str, live: Arc<Live>) -> Result<LiveFacts, StartError> {
        let store = Store::connect(url).await?;
        let snap = live.snapshot();
        let model = Model::new(&snap.schema).map_err(StartError::Model)?;
        let (head, stored) = store.snapshot_texts().await?;
        let items = stored.into_iter().map(|(_, json)| json).collect();
        let view = FactView::from_texts(&model, items)
            .map_err(|errors| {
                let lines: Vec<String> = errors.iter().take(20).map(|r| format!("  {r}")).collect();
                StartError::Invalid(lines.join("\n"))
            })?
            .at_revision(head);
        let (revision, _) = watch::channel(head);
        let shared = Arc::new(Shared {
            live,
            view: ArcSwap::from_pointee(view.clone()),
            revision,
            derived: ArcSwap::from_pointee(Derived {
                generation: snap.generation,
                model: Arc::new(model),
                plan: Arc::new(SlicePlan::new(&snap.policies)),
            }),
        });
        let applier = Applier {
            shared: shared.clone(),
            working: view,
        };
        let (writer, _task) = Writer::spawn(store.clone(), applier, WriterOptions::default());
        Ok(LiveFacts {
            store,
            shared,
            writer,
            url: crate::facts::store::redact(url),
        })
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

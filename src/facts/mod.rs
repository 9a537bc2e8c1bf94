//! Live facts: entities kept in an in-memory, revisioned view that batches
//! of operations change (instead of reloading files), backed by a durable
//! store.
//!
//! * [`ops`]: the write batch wire format (`{"operations": [...],
//!   "if_revision": N}`), parsed with the field of every error.
//! * [`view`]: [`view::FactView`], an immutable view of the facts at one
//!   revision. Deriving the next revision costs the change: the maps are
//!   persistent (structurally shared), ancestors are kept transitively
//!   closed and recomputed only for the entities below a changed one.
//! * [`parse`]: entity JSON to Cedar entities against the schema, with a
//!   fast path for tags that name entities.
//! * [`check`]: the domain's load-time checks ([`crate::domain`]) evaluated
//!   on the entities a batch affects, using the view's indexes.
//! * [`slice`]: deciding a request against a view: a small request-scoped
//!   `Entities` (each entity with its closed ancestors, tags projected to the
//!   keys the policies can read) decided by Cedar's authorizer, exactly as
//!   [`crate::engine::decide`] decides on a full load of the same facts.
//! * [`store`]: the database (SQLite embedded, PostgreSQL for a fleet):
//!   tables, migrations, revisions and the change log.
//! * [`writer`]: the group-commit task that validates queued writes in
//!   order and commits them together.
//! * [`transfer`]: moving facts between entity files and a store.
//! * [`uidset`]: the compact persistent set the view's indexes hold per
//!   key.

pub mod check;
pub mod ops;
pub mod parse;
pub mod slice;
pub mod store;
pub mod transfer;
pub mod uidset;
pub mod view;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cedar_policy::Schema;
use cedar_policy_core::ast;

use crate::names::Names;

pub use ops::{Batch, Limits, Op};
pub use slice::SlicePlan;
pub use view::{Applied, FactView, Rejection};

/// What the facts need from a schema, derived once per schema: the schema,
/// its names (to resolve the uids of operations), its action entities (with
/// their closed ancestors), and whether the domain's checks apply.
#[derive(Debug, Clone)]
pub struct Model {
    pub schema: Schema,
    pub names: Names,
    pub actions: HashMap<ast::EntityUID, Arc<ast::Entity>>,
    /// [`crate::domain::applies`] to the schema.
    pub domain: bool,
    /// Tag values found to conform as tags of an entity type (a memo of
    /// [`parse::tag_conforms`]: the answer depends only on the schema).
    pub(crate) tag_values: Arc<Mutex<HashSet<(ast::EntityType, ast::EntityUID)>>>,
}

impl Model {
    pub fn new(schema: &Schema) -> Result<Model, String> {
        let actions = schema
            .action_entities()
            .map_err(|e| crate::diag::one_line(&e))?;
        let actions = actions
            .iter()
            .map(|e| {
                let inner: &ast::Entity = e.as_ref();
                (inner.uid().clone(), Arc::new(inner.clone()))
            })
            .collect();
        Ok(Model {
            schema: schema.clone(),
            names: Names::new(schema),
            actions,
            domain: crate::domain::applies(schema),
            tag_values: Arc::default(),
        })
    }
}

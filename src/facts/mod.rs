//! Live facts: entities kept in a durable, revisioned store and changed
//! through validated batches.
//!
//! [`store`] owns the database (SQLite embedded, PostgreSQL for a fleet):
//! tables, migrations, revisions and the change log. [`writer`] owns the
//! group-commit task that validates queued writes in order and commits them
//! together. [`transfer`] moves facts between entity files and a store.

pub mod store;
pub mod transfer;
pub mod writer;

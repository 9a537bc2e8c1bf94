//! The durable fact store: entities, the revision counter and the change log
//! in a database (SQLite for one sidecar, PostgreSQL for a fleet), through
//! one code path over sqlx's `Any` driver.
//!
//! - **Revisions.** One meta row holds the store's revision. A commit
//!   updates it first (`... WHERE revision = base`) inside its transaction,
//!   so writers serialize on that row, a writer that read an older revision
//!   gets [`StoreError::Conflict`] and changes nothing, and revisions are
//!   gap-free and visible in commit order.
//! - **Rows.** `entities(uid, json, revision)` holds each entity's Cedar
//!   JSON under its canonical uid (`Prefect::User::"alice"`) and the
//!   revision that last wrote it whole; `entity_tags(uid, key, value,
//!   revision)` holds tags written one at a time since (a membership's role:
//!   the most common write, one small row instead of a principal's whole
//!   JSON with its hundreds of tags), each overriding the entity row's tag
//!   of that key (`value` NULL: removed). Writing an entity whole or
//!   deleting it drops its tag rows. Readers ([`Store::snapshot`],
//!   [`Store::entity`]) see whole entities: the entity row with its tag
//!   rows applied, at the newer of their revisions. `changes(revision, at,
//!   actor, ops, upserted, deleted)` is the change log, one row per
//!   revision, with the batch as accepted and the uids it wrote and
//!   deleted.
//! - **Durability.** SQLite runs in WAL mode with `synchronous=FULL`: a
//!   commit that returned is on disk (its WAL frames `fsync`ed), so an
//!   acknowledged write survives a `kill -9` of the process and a power
//!   loss alike. `synchronous=NORMAL` would survive the first but could lose
//!   the last commits to the second; FULL is kept, and the group commit
//!   pays one `fsync` per group, taken off the writer's path by pipelining
//!   ([`crate::facts::writer`]). PostgreSQL commits are durable by its own
//!   default.
//! - **Schema.** Versioned migrations ([`MIGRATIONS`]) recorded in
//!   `facts_schema`; a store with a newer version than this build knows is
//!   refused, and [`Store::connect`] refuses an unmigrated one.
//! - **Retention.** [`Store::prune_changes`] drops old change rows; a reader
//!   behind the pruned range gets [`StoreError::Pruned`] and must
//!   re-bootstrap from [`Store::snapshot`].
//! - **A fleet.** Any number of processes may write: [`Store::write_tx`]
//!   takes the write lock (PostgreSQL: the meta row `FOR UPDATE`; SQLite: a
//!   first write), reads the head and, when the writer's copy is behind,
//!   the [`Delta`] that brings it to the head, so that the writer validates
//!   its batches against the latest world before it commits them. Readers
//!   follow with [`Store::delta_since`]. On PostgreSQL every commit also
//!   sends `NOTIFY orgwarden_facts` (payload: the new revision), a wake-up
//!   for followers ([`NOTIFY_CHANNEL`]); the log, read by revision, is the
//!   mechanism.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

/// Every migration, in order: migration `i` takes the schema from version
/// `i` to `i + 1`. Each statement is valid on SQLite and PostgreSQL.
pub const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE facts_meta (
        id INTEGER PRIMARY KEY,
        revision BIGINT NOT NULL,
        pruned_through BIGINT NOT NULL
    )",
        "INSERT INTO facts_meta (id, revision, pruned_through) VALUES (1, 0, 0)",
        "CREATE TABLE entities (
        uid TEXT PRIMARY KEY,
        json TEXT NOT NULL,
        revision BIGINT NOT NULL
    )",
        "CREATE TABLE changes (
        revision BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        ops TEXT NOT NULL,
        upserted TEXT NOT NULL,
        deleted TEXT NOT NULL
    )",
    ],
    &["CREATE TABLE entity_tags (
        uid TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT,
        revision BIGINT NOT NULL,
        PRIMARY KEY (uid, key)
    )"],
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = MIGRATIONS.len() as u64;

/// The PostgreSQL channel every commit notifies (payload: the revision).
pub const NOTIFY_CHANNEL: &str = "orgwarden_facts";

/// How long a PostgreSQL operation waits for a connection before it fails
/// (the server is down or unreachable): short, so that a write answers
/// promptly instead of hanging while the store is away.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Rows per multi-row statement (3 parameters each: well under SQLite's and
/// PostgreSQL's parameter limits).
const ROWS_PER_STATEMENT: usize = 500;

/// Why a store operation failed. Every failed write changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported fact store `{0}`: expected `sqlite:PATH` or `postgres://USER@HOST/DB` (also `postgresql://`)"
    )]
    Url(String),
    #[error("no fact store at `{0}` (`orgwarden facts migrate STORE` creates one)")]
    Missing(String),
    #[error(
        "the fact store moved: the write expected revision {expected}, the store is at {actual}"
    )]
    Conflict { expected: u64, actual: u64 },
    #[error(
        "the fact store's schema is version {found}, newer than this orgwarden knows ({known}): upgrade orgwarden"
    )]
    NewerSchema { found: u64, known: u64 },
    #[error(
        "the fact store's schema is version {found}, this orgwarden needs {known}: run `orgwarden facts migrate STORE`"
    )]
    NotMigrated { found: u64, known: u64 },
    #[error(
        "the change log no longer holds the changes after revision {since} (pruned through {pruned_through}): re-bootstrap from a snapshot"
    )]
    Pruned { since: u64, pruned_through: u64 },
    #[error("the fact store has not been reached since start-up: {0}")]
    NotReady(String),
    #[error("the fact store cannot be reached (retrying in the background): {0}")]
    Unreachable(String),
    #[error("invalid commit: {0}")]
    Invalid(String),
    #[error("corrupt fact store: {0}")]
    Corrupt(String),
    #[error("fact store: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the error says the store could not be reached (down,
    /// restarting, network), as opposed to a store that answered and
    /// refused (schema version, corrupt rows, a conflict).
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::NotReady(_) | StoreError::Unreachable(_) => true,
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(d) => {
                    // admin_shutdown, crash_shutdown, cannot_connect_now,
                    // connection exceptions (class 08).
                    d.code().is_some_and(|c| {
                        matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")
                    })
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// What brings a copy of the facts at revision `from` to `head`: the
/// current rows of every entity the revisions in between wrote, and the
/// uids they deleted that no longer exist. Read in one consistent
/// transaction.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    pub from: u64,
    pub head: u64,
    /// The entities written after `from`, as they are at `head`.
    pub rows: Vec<StoredEntity>,
    /// The uids deleted after `from` and absent at `head`.
    pub deleted: Vec<String>,
}

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An entity as stored: canonical uid, Cedar JSON, the revision that last
/// wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEntity {
    pub uid: String,
    pub json: serde_json::Value,
    pub revision: u64,
}

/// One accepted batch, to be committed as one revision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Commit {
    /// Who wrote it (a token's name, `import`, ...).
    pub actor: String,
    /// The batch as accepted (kept in the change log).
    pub ops: serde_json::Value,
    /// Entities written whole: `(canonical uid, Cedar JSON)`.
    pub upserts: Vec<(String, serde_json::Value)>,
    /// Entities removed, by canonical uid.
    pub deletes: Vec<String>,
    /// Tags written one at a time, of entities not written whole or
    /// removed by this commit: `(canonical uid, key, value)`, `None`
    /// removing the tag.
    pub tags: Vec<(String, String, Option<serde_json::Value>)>,
}

/// One row of the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    /// Commit time, RFC 3339 (UTC).
    pub at: String,
    pub actor: String,
    pub ops: serde_json::Value,
    /// The uids the revision wrote.
    pub upserted: Vec<String>,
    /// The uids the revision deleted.
    pub deleted: Vec<String>,
}

/// A connection pool to one fact store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("url", &redact(&self.url))
            .finish()
    }
}

/// The backend a URL names, or none.
pub fn backend_of(url: &str) -> Option<Backend> {
    if url.starts_with("sqlite:") {
        Some(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Backend::Postgres)
    } else {
        None
    }
}

/// `url` with any password replaced by `***` (for messages and logs).
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

fn rev(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative revision {n}")))
}

fn sql_rev(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("revision {n} out of range")))
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

impl Store {
    /// Open the store at `url`, creating it (SQLite: the file) and its
    /// tables when missing and upgrading an older schema.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Self::pool(url, true).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect to the store at `url` (SQLite: creating the file when
    /// missing) without reading or changing its tables: for
    /// [`Store::migrate`].
    pub async fn attach(url: &str) -> Result<Store, StoreError> {
        Self::pool(url, true).await
    }

    /// Open the store at `url` as it is: refused when its schema is not
    /// exactly this build's (unmigrated, older or newer).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let store = Self::pool(url, false).await?;
        store.check_schema().await?;
        Ok(store)
    }

    async fn pool(url: &str, create: bool) -> Result<Store, StoreError> {
        Self::pool_with(url, create, false).await
    }

    /// A store whose PostgreSQL connections are made when first needed (a
    /// server that starts while the database is away); SQLite opens now.
    /// The schema is not checked: see [`Store::check_schema`].
    pub async fn lazy(url: &str) -> Result<Store, StoreError> {
        Self::pool_with(url, false, true).await
    }

    /// Refused unless the store's schema is exactly this build's.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let found = self.schema_version().await?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                known: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::NotMigrated {
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    async fn pool_with(url: &str, create: bool, lazy: bool) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url).ok_or_else(|| StoreError::Url(redact(url)))?;
        let mut connect_url = url.to_string();
        let options = AnyPoolOptions::new().acquire_timeout(match backend {
            Backend::Sqlite => Duration::from_secs(30),
            Backend::Postgres => PG_ACQUIRE_TIMEOUT,
        });
        let options = match backend {
            Backend::Sqlite => {
                let (path, query) = match url["sqlite:".len()..].split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (&url["sqlite:".len()..], None),
                };
                let path = path.trim_start_matches("//");
                if path.is_empty() || path == ":memory:" {
                    return Err(StoreError::Url(format!(
                        "{url} (a fact store is a file: `sqlite:PATH`)"
                    )));
                }
                if !create && !std::path::Path::new(path).exists() {
                    return Err(StoreError::Missing(url.to_string()));
                }
                if !query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode="))) {
                    connect_url.push(if query.is_some() { '&' } else { '?' });
                    connect_url.push_str(if create { "mode=rwc" } else { "mode=rw" });
                }
                options.max_connections(4).after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
            }
            Backend::Postgres => options.max_connections(8),
        };
        let pool = if lazy && backend == Backend::Postgres {
            options.connect_lazy(&connect_url)?
        } else {
            options.connect(&connect_url).await?
        };
        if backend == Backend::Sqlite {
            // Kept in the file: a no-op once set.
            let mode: String = sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_one(&pool)
                .await?
                .try_get(0)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Corrupt(format!(
                    "cannot put the SQLite store in WAL mode (it is in `{mode}` mode)"
                )));
            }
        }
        Ok(Store {
            pool,
            backend,
            url: url.to_string(),
        })
    }

    /// On PostgreSQL, a task that `LISTEN`s on [`NOTIFY_CHANNEL`] and
    /// signals `wake` on every notification, and once after each
    /// (re)connection (notifications sent while it was away are lost: the
    /// woken reader catches up by revision). Reconnects until the runtime
    /// stops. None on SQLite (no notifications).
    pub fn spawn_listener(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self.backend != Backend::Postgres {
            return None;
        }
        let url = self.url.clone();
        Some(tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if listener.listen(NOTIFY_CHANNEL).await.is_ok() {
                            wake.notify_one();
                            loop {
                                match listener.try_recv().await {
                                    Ok(Some(_)) => wake.notify_one(),
                                    // The connection was lost; the next
                                    // call reconnects.
                                    Ok(None) => wake.notify_one(),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "fact store listener: cannot connect"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The store's URL, password redacted.
    pub fn describe(&self) -> String {
        redact(&self.url)
    }

    /// Close the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn schema_version_in(tx: &mut Transaction<'static, Any>) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT version FROM facts_schema WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await?;
        match row {
            Some(r) => rev(r.try_get::<i64, _>(0)?),
            None => Ok(0),
        }
    }

    /// The schema version of the store (0: never migrated).
    pub async fn schema_version(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists = self.table_exists(&mut tx, "facts_schema").await?;
        let v = if exists {
            Self::schema_version_in(&mut tx).await?
        } else {
            0
        };
        tx.commit().await?;
        Ok(v)
    }

    async fn table_exists(
        &self,
        tx: &mut Transaction<'static, Any>,
        name: &str,
    ) -> Result<bool, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
            Backend::Postgres => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        Ok(sqlx::query(sql)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .is_some())
    }

    /// Create or upgrade the tables to [`SCHEMA_VERSION`], in one
    /// transaction. Returns the version found and the version now. A newer
    /// schema is refused and left alone.
    pub async fn migrate(&self) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool.begin().await?;
        match self.backend {
            // Concurrent migrators (a fleet starting) take turns.
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock(7413502001)")
                    .execute(&mut *tx)
                    .await?;
            }
            // A write first, so that the transaction holds SQLite's write
            // lock before it reads the version.
            Backend::Sqlite => {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS facts_schema (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
                )
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO facts_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS facts_schema (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let found = Self::schema_version_in(&mut tx).await?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for migration in &MIGRATIONS[found as usize..] {
            for statement in *migration {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
        }
        let version = sql_rev(SCHEMA_VERSION)?;
        sqlx::query(
            "INSERT INTO facts_schema (id, version) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        )
        .bind(version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((found, SCHEMA_VERSION))
    }

    async fn meta_in(tx: &mut Transaction<'static, Any>) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query("SELECT revision, pruned_through FROM facts_meta WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("the meta row is missing".into()))?;
        Ok((
            rev(row.try_get::<i64, _>(0)?)?,
            rev(row.try_get::<i64, _>(1)?)?,
        ))
    }

    /// A transaction that reads one consistent state of the store.
    async fn read_tx(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// The store's revision (0: nothing committed yet).
    pub async fn head(&self) -> Result<u64, StoreError> {
        let mut tx = self.read_tx().await?;
        let (head, _) = Self::meta_in(&mut tx).await?;
        tx.commit().await?;
        Ok(head)
    }

    /// Every entity and the revision they make up, read in one
    /// consistent transaction, sorted by uid.
    pub async fn snapshot(&self) -> Result<(u64, Vec<StoredEntity>), StoreError> {
        let (head, texts) = self.snapshot_texts().await?;
        let out = texts
            .into_iter()
            .map(|(uid, json, revision)| {
                Ok(StoredEntity {
                    json: parse_json(&format!("entity {uid}"), &json)?,
                    revision,
                    uid,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((head, out))
    }

    /// Every entity with its JSON as text, sorted by uid, read in one
    /// consistent transaction with the revision they make up:
    /// `(uid, json, revision)` (for a reader that parses them itself,
    /// without holding every entity as a JSON value).
    pub async fn snapshot_texts(&self) -> Result<(u64, Vec<(String, String, u64)>), StoreError> {
        let mut tx = self.read_tx().await?;
        let (head, _) = Self::meta_in(&mut tx).await?;
        let rows = sqlx::query("SELECT uid, json, revision FROM entities")
            .fetch_all(&mut *tx)
            .await?;
        let mut tags = tag_rows(&mut tx, None).await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let uid: String = r.try_get(0)?;
                let mut json: String = r.try_get(1)?;
                let mut revision = rev(r.try_get::<i64, _>(2)?)?;
                if let Some(rows) = tags.remove(&uid) {
                    let mut value = parse_json(&format!("entity {uid}"), &json)?;
                    revision = revision.max(overlay(&mut value, rows));
                    json = value.to_string();
                }
                Ok((uid, json, revision))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        drop(rows);
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok((head, out))
    }

    /// Whether the store holds any entity.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT uid FROM entities LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_none())
    }

    /// One entity by canonical uid.
    pub async fn entity(&self, uid: &str) -> Result<Option<StoredEntity>, StoreError> {
        let mut tx = self.read_tx().await?;
        let row = sqlx::query("SELECT uid, json, revision FROM entities WHERE uid = $1")
            .bind(uid)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let mut tags = tag_rows(&mut tx, Some(uid)).await?;
        tx.commit().await?;
        let mut e = stored_entity(&row)?;
        if let Some(rows) = tags.remove(uid) {
            e.revision = e.revision.max(overlay(&mut e.json, rows));
        }
        Ok(Some(e))
    }

    /// Commit `commits` in one transaction, as revisions `base + 1`,
    /// `base + 2`, ... Fails with [`StoreError::Conflict`], changing
    /// nothing, when the store is not at `base`. Returns the revisions.
    pub async fn commit_group(
        &self,
        base: u64,
        commits: &[Commit],
    ) -> Result<Vec<u64>, StoreError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.write_tx().await?;
        if tx.head() != base {
            let actual = tx.head();
            tx.rollback().await?;
            return Err(StoreError::Conflict {
                expected: base,
                actual,
            });
        }
        tx.commit(commits).await
    }

    /// Begin a write: take the store's write lock (writers queue here) and
    /// read the head. Dropping the transaction rolls it back.
    pub async fn write_tx(&self) -> Result<WriteTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (head, pruned_through) = match self.backend {
            Backend::Postgres => {
                let row = sqlx::query(
                    "SELECT revision, pruned_through FROM facts_meta WHERE id = 1 FOR UPDATE",
                )
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::Corrupt("the meta row is missing".into()))?;
                (
                    rev(row.try_get::<i64, _>(0)?)?,
                    rev(row.try_get::<i64, _>(1)?)?,
                )
            }
            Backend::Sqlite => {
                // A write first: the transaction holds the database's write
                // lock before it reads (one statement, one round trip to the
                // connection's thread).
                let row = sqlx::query(
                    "UPDATE facts_meta SET revision = revision WHERE id = 1 \
                     RETURNING revision, pruned_through",
                )
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::Corrupt("the meta row is missing".into()))?;
                (
                    rev(row.try_get::<i64, _>(0)?)?,
                    rev(row.try_get::<i64, _>(1)?)?,
                )
            }
        };
        Ok(WriteTx {
            tx,
            backend: self.backend,
            head,
            pruned_through,
        })
    }

    /// What brings a copy at revision `since` to the store's head, read in
    /// one consistent (PostgreSQL: REPEATABLE READ) transaction.
    /// [`StoreError::Pruned`] when the change log no longer reaches back to
    /// `since`.
    pub async fn delta_since(&self, since: u64) -> Result<Delta, StoreError> {
        let mut tx = self.read_tx().await?;
        let (head, pruned_through) = Self::meta_in(&mut tx).await?;
        let delta = delta_in(&mut tx, since, head, pruned_through).await?;
        tx.commit().await?;
        Ok(delta)
    }

    /// The change log after revision `since`, oldest first, at most
    /// `limit` rows. [`StoreError::Pruned`] when changes after `since` are
    /// no longer kept.
    pub async fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let mut tx = self.read_tx().await?;
        let (_, pruned_through) = Self::meta_in(&mut tx).await?;
        if since < pruned_through {
            tx.rollback().await?;
            return Err(StoreError::Pruned {
                since,
                pruned_through,
            });
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT revision, at, actor, ops, upserted, deleted FROM changes \
             WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(sql_rev(since)?)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(change).collect()
    }

    /// The oldest revision still in the change log, if any.
    pub async fn oldest_change(&self) -> Result<Option<u64>, StoreError> {
        sqlx::query("SELECT revision FROM changes ORDER BY revision LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|r| rev(r.try_get::<i64, _>(0)?))
            .transpose()
    }

    /// The highest revision whose change row was pruned (0: none).
    pub async fn pruned_through(&self) -> Result<u64, StoreError> {
        let mut tx = self.read_tx().await?;
        let (_, pruned) = Self::meta_in(&mut tx).await?;
        tx.commit().await?;
        Ok(pruned)
    }

    /// Drop the change rows up to and including `through` (at most the
    /// head). Readers behind it must re-bootstrap. Returns how many rows
    /// went.
    pub async fn prune_changes(&self, through: u64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Take the write lock first (as a commit does), then read.
        sqlx::query("UPDATE facts_meta SET pruned_through = pruned_through WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let (head, pruned) = Self::meta_in(&mut tx).await?;
        let through = through.min(head);
        if through <= pruned {
            tx.rollback().await?;
            return Ok(0);
        }
        let gone = sqlx::query("DELETE FROM changes WHERE revision <= $1")
            .bind(sql_rev(through)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE facts_meta SET pruned_through = $1 WHERE id = 1")
            .bind(sql_rev(through)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone)
    }
}

/// A write in progress: the store's write lock is held, and nothing else
/// can commit until this commits or is dropped (rolled back).
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    backend: Backend,
    head: u64,
    pruned_through: u64,
}

impl WriteTx {
    /// The store's revision, as of taking the lock: the base of this write.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// What brings a copy at revision `since` to [`WriteTx::head`].
    pub async fn delta_since(&mut self, since: u64) -> Result<Delta, StoreError> {
        delta_in(&mut self.tx, since, self.head, self.pruned_through).await
    }

    /// Commit `commits` as revisions `head + 1`, `head + 2`, ... (on
    /// PostgreSQL notifying [`NOTIFY_CHANNEL`] with the last one). Returns
    /// the revisions; on error nothing was written.
    pub async fn commit(mut self, commits: &[Commit]) -> Result<Vec<u64>, StoreError> {
        if commits.is_empty() {
            self.tx.rollback().await?;
            return Ok(Vec::new());
        }
        for (i, c) in commits.iter().enumerate() {
            check_commit(c).map_err(|e| StoreError::Invalid(format!("commit {i}: {e}")))?;
        }
        let base = self.head;
        let top = base
            .checked_add(commits.len() as u64)
            .ok_or_else(|| StoreError::Invalid("revision overflow".into()))?;
        let rows = GroupRows::new(base, commits, &now_rfc3339())?;
        let moved =
            sqlx::query("UPDATE facts_meta SET revision = $1 WHERE id = 1 AND revision = $2")
                .bind(sql_rev(top)?)
                .bind(sql_rev(base)?)
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
        if moved != 1 {
            let (actual, _) = Store::meta_in(&mut self.tx).await?;
            self.tx.rollback().await?;
            return Err(StoreError::Conflict {
                expected: base,
                actual,
            });
        }
        write_rows(&mut self.tx, &rows).await?;
        if self.backend == Backend::Postgres {
            // The payload is a number this process formats: nothing to quote.
            sqlx::query(&format!("NOTIFY {NOTIFY_CHANNEL}, '{top}'"))
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok((base + 1..=top).collect())
    }

    /// Give up the write (also what dropping it does).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// The delta from `since` to `head` within `tx`.
async fn delta_in(
    tx: &mut Transaction<'static, Any>,
    since: u64,
    head: u64,
    pruned_through: u64,
) -> Result<Delta, StoreError> {
    let mut delta = Delta {
        from: since,
        head,
        ..Delta::default()
    };
    if since >= head {
        return Ok(delta);
    }
    if since < pruned_through {
        return Err(StoreError::Pruned {
            since,
            pruned_through,
        });
    }
    let rows =
        sqlx::query("SELECT upserted, deleted FROM changes WHERE revision > $1 AND revision <= $2")
            .bind(sql_rev(since)?)
            .bind(sql_rev(head)?)
            .fetch_all(&mut **tx)
            .await?;
    let mut touched: HashSet<String> = HashSet::new();
    for row in &rows {
        for i in 0..2 {
            let text: String = row.try_get(i)?;
            let uids: Vec<String> = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("change row: {e}")))?;
            touched.extend(uids);
        }
    }
    let mut touched: Vec<String> = touched.into_iter().collect();
    touched.sort();
    for chunk in touched.chunks(ROWS_PER_STATEMENT) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT uid, json, revision FROM entities WHERE uid IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for uid in chunk {
            q = q.bind(uid.as_str());
        }
        let found = q.fetch_all(&mut **tx).await?;
        let mut tags = tag_rows_of(tx, chunk).await?;
        for row in &found {
            let mut e = stored_entity(row)?;
            if let Some(rows) = tags.remove(&e.uid) {
                e.revision = e.revision.max(overlay(&mut e.json, rows));
            }
            delta.rows.push(e);
        }
    }
    let present: HashSet<&str> = delta.rows.iter().map(|e| e.uid.as_str()).collect();
    delta.deleted = touched
        .iter()
        .filter(|u| !present.contains(u.as_str()))
        .cloned()
        .collect();
    delta.rows.sort_by(|a, b| a.uid.cmp(&b.uid));
    Ok(delta)
}

/// One tag row: key, value (`None`: removed), revision.
type TagRow = (String, Option<serde_json::Value>, u64);

/// The tag rows of every entity (or of `uid`), by uid.
async fn tag_rows(
    tx: &mut Transaction<'static, Any>,
    uid: Option<&str>,
) -> Result<HashMap<String, Vec<TagRow>>, StoreError> {
    let rows = match uid {
        Some(uid) => {
            sqlx::query("SELECT uid, key, value, revision FROM entity_tags WHERE uid = $1")
                .bind(uid)
                .fetch_all(&mut **tx)
                .await?
        }
        None => {
            sqlx::query("SELECT uid, key, value, revision FROM entity_tags")
                .fetch_all(&mut **tx)
                .await?
        }
    };
    let mut out: HashMap<String, Vec<TagRow>> = HashMap::new();
    for r in &rows {
        let (uid, row) = tag_row(r)?;
        out.entry(uid).or_default().push(row);
    }
    Ok(out)
}

/// The tag rows of the entities `uids` (at most [`ROWS_PER_STATEMENT`]),
/// by uid.
async fn tag_rows_of(
    tx: &mut Transaction<'static, Any>,
    uids: &[String],
) -> Result<HashMap<String, Vec<TagRow>>, StoreError> {
    let mut out: HashMap<String, Vec<TagRow>> = HashMap::new();
    if uids.is_empty() {
        return Ok(out);
    }
    let marks: Vec<String> = (1..=uids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT uid, key, value, revision FROM entity_tags WHERE uid IN ({})",
        marks.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for uid in uids {
        q = q.bind(uid.as_str());
    }
    for r in &q.fetch_all(&mut **tx).await? {
        let (uid, row) = tag_row(r)?;
        out.entry(uid).or_default().push(row);
    }
    Ok(out)
}

/// One row of `entity_tags`: its uid and the tag.
fn tag_row(r: &AnyRow) -> Result<(String, TagRow), StoreError> {
    let uid: String = r.try_get(0)?;
    let key: String = r.try_get(1)?;
    let value: Option<String> = r.try_get(2)?;
    let value = value
        .map(|v| parse_json(&format!("tag {key:?} of {uid}"), &v))
        .transpose()?;
    let revision = rev(r.try_get::<i64, _>(3)?)?;
    Ok((uid, (key, value, revision)))
}

/// Apply tag rows to an entity's JSON; the newest of their revisions.
fn overlay(json: &mut serde_json::Value, rows: Vec<TagRow>) -> u64 {
    let mut newest = 0;
    let Some(entity) = json.as_object_mut() else {
        return newest;
    };
    let tags = entity
        .entry("tags")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if !tags.is_object() {
        *tags = serde_json::Value::Object(serde_json::Map::new());
    }
    let tags = tags.as_object_mut().expect("an object");
    for (key, value, revision) in rows {
        newest = newest.max(revision);
        match value {
            Some(v) => {
                tags.insert(key, v);
            }
            None => {
                tags.shift_remove(&key);
            }
        }
    }
    newest
}

fn stored_entity(row: &AnyRow) -> Result<StoredEntity, StoreError> {
    let uid: String = row.try_get(0)?;
    let json: String = row.try_get(1)?;
    Ok(StoredEntity {
        json: parse_json(&format!("entity {uid}"), &json)?,
        revision: rev(row.try_get::<i64, _>(2)?)?,
        uid,
    })
}

fn change(row: &AnyRow) -> Result<Change, StoreError> {
    let revision = rev(row.try_get::<i64, _>(0)?)?;
    let what = format!("change {revision}");
    let uids = |i: usize| -> Result<Vec<String>, StoreError> {
        let text: String = row.try_get(i)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
    };
    Ok(Change {
        revision,
        at: row.try_get(1)?,
        actor: row.try_get(2)?,
        ops: parse_json(&what, &row.try_get::<String, _>(3)?)?,
        upserted: uids(4)?,
        deleted: uids(5)?,
    })
}

/// A commit names each uid at most once, and no uid is empty.
fn check_commit(c: &Commit) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(c.upserts.len() + c.deletes.len());
    for uid in c.upserts.iter().map(|(u, _)| u).chain(&c.deletes) {
        if uid.is_empty() {
            return Err("an empty uid".into());
        }
        if !seen.insert(uid.as_str()) {
            return Err(format!("{uid} is written twice"));
        }
    }
    let mut keys = HashSet::with_capacity(c.tags.len());
    for (uid, key, _) in &c.tags {
        if uid.is_empty() {
            return Err("an empty uid".into());
        }
        if seen.contains(uid.as_str()) {
            return Err(format!("{uid} is written whole and by tag in one commit"));
        }
        if !keys.insert((uid.as_str(), key.as_str())) {
            return Err(format!("tag {key:?} of {uid} is written twice"));
        }
    }
    Ok(())
}

/// The rows a group writes, serialized: per uid the group's last write
/// (an upsert with its revision, or a delete), and one change row per
/// commit. Written with a few multi-row statements whatever the group's
/// size.
struct GroupRows<'a> {
    deletes: Vec<&'a str>,
    /// `(uid, json, revision)`.
    upserts: Vec<(&'a str, String, i64)>,
    /// Uids written whole or deleted: their older tag rows go.
    whole: Vec<&'a str>,
    /// `(uid, key, value, revision)`, written after the whole entities.
    tags: Vec<(&'a str, &'a str, Option<String>, i64)>,
    /// `(revision, actor, ops, upserted, deleted)`.
    changes: Vec<(i64, &'a str, String, String, String)>,
    at: String,
}

impl<'a> GroupRows<'a> {
    fn new(base: u64, commits: &'a [Commit], at: &str) -> Result<Self, StoreError> {
        let mut last: HashMap<&'a str, (usize, Option<&'a serde_json::Value>)> = HashMap::new();
        // Per uid, per key: the last tag write, and its commit.
        type Tags<'a> = HashMap<&'a str, (usize, Option<&'a serde_json::Value>)>;
        let mut tag_writes: HashMap<&'a str, Tags<'a>> = HashMap::new();
        let mut changes = Vec::with_capacity(commits.len());
        let uid_list = |uids: Vec<&str>| serde_json::Value::from(uids).to_string();
        for (i, c) in commits.iter().enumerate() {
            for (uid, json) in &c.upserts {
                last.insert(uid, (i, Some(json)));
                tag_writes.remove(uid.as_str());
            }
            for uid in &c.deletes {
                last.insert(uid, (i, None));
                tag_writes.remove(uid.as_str());
            }
            let mut written: Vec<&str> = c.upserts.iter().map(|(u, _)| u.as_str()).collect();
            for (uid, key, value) in &c.tags {
                tag_writes
                    .entry(uid)
                    .or_default()
                    .insert(key, (i, value.as_ref()));
                if !written.contains(&uid.as_str()) {
                    written.push(uid);
                }
            }
            changes.push((
                sql_rev(base + i as u64 + 1)?,
                c.actor.as_str(),
                c.ops.to_string(),
                uid_list(written),
                uid_list(c.deletes.iter().map(String::as_str).collect()),
            ));
        }
        let whole: Vec<&str> = last.keys().copied().collect();
        let mut tags = Vec::new();
        for (uid, keys) in tag_writes {
            for (key, (i, value)) in keys {
                tags.push((uid, key, value.map(|v| v.to_string()), changes[i].0));
            }
        }
        let mut deletes = Vec::new();
        let mut upserts = Vec::new();
        for (uid, (i, json)) in last {
            match json {
                Some(json) => upserts.push((uid, json.to_string(), changes[i].0)),
                None => deletes.push(uid),
            }
        }
        Ok(GroupRows {
            deletes,
            upserts,
            whole,
            tags,
            changes,
            at: at.to_string(),
        })
    }
}

/// `($1, $2, ...), ($k+1, ...)`: `rows` groups of `width` placeholders.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn write_rows(
    tx: &mut Transaction<'static, Any>,
    rows: &GroupRows<'_>,
) -> Result<(), StoreError> {
    for chunk in rows.deletes.chunks(ROWS_PER_STATEMENT) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("DELETE FROM entities WHERE uid IN ({})", marks.join(", "));
        let mut q = sqlx::query(&sql);
        for uid in chunk {
            q = q.bind(*uid);
        }
        q.execute(&mut **tx).await?;
    }
    for chunk in rows.upserts.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO entities (uid, json, revision) VALUES {} \
             ON CONFLICT (uid) DO UPDATE SET json = excluded.json, revision = excluded.revision",
            placeholders(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (uid, json, revision) in chunk {
            q = q.bind(*uid).bind(json.as_str()).bind(*revision);
        }
        q.execute(&mut **tx).await?;
    }
    for chunk in rows.whole.chunks(ROWS_PER_STATEMENT) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "DELETE FROM entity_tags WHERE uid IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for uid in chunk {
            q = q.bind(*uid);
        }
        q.execute(&mut **tx).await?;
    }
    for chunk in rows.tags.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO entity_tags (uid, key, value, revision) VALUES {} \
             ON CONFLICT (uid, key) DO UPDATE SET value = excluded.value, revision = excluded.revision",
            placeholders(chunk.len(), 4)
        );
        let mut q = sqlx::query(&sql);
        for (uid, key, value, revision) in chunk {
            q = q
                .bind(*uid)
                .bind(*key)
                .bind(value.as_deref())
                .bind(*revision);
        }
        q.execute(&mut **tx).await?;
    }
    for chunk in rows.changes.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO changes (revision, at, actor, ops, upserted, deleted) VALUES {}",
            placeholders(chunk.len(), 6)
        );
        let mut q = sqlx::query(&sql);
        for (revision, actor, ops, upserted, deleted) in chunk {
            q = q
                .bind(*revision)
                .bind(rows.at.as_str())
                .bind(*actor)
                .bind(ops.as_str())
                .bind(upserted.as_str())
                .bind(deleted.as_str());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/facts"),
            "postgres://app:***@db:5432/facts"
        );
        assert_eq!(redact("postgres://app@db/facts"), "postgres://app@db/facts");
        assert_eq!(redact("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
    }

    #[test]
    fn commits_name_each_uid_once() {
        let c = Commit {
            upserts: vec![("a".into(), serde_json::json!({}))],
            deletes: vec!["a".into()],
            ..Commit::default()
        };
        assert!(check_commit(&c).is_err());
        let c = Commit {
            upserts: vec![("a".into(), serde_json::json!({}))],
            deletes: vec!["b".into()],
            ..Commit::default()
        };
        assert!(check_commit(&c).is_ok());
    }
}

//! The controller's store: SQLite (a file, the default) or PostgreSQL (by URL), behind one
//! `sqlx::Any` pool and one set of queries. Schema changes are versioned migrations, one
//! directory per backend (`vcluster/migrations/{sqlite,postgres}`), applied at start.
//!
//! Every change that spans more than one row runs in one [`WriteTx`]. Write transactions
//! are serialised: each one starts by bumping the store's `revision` counter, which takes
//! that row's lock on PostgreSQL, and SQLite's are `BEGIN IMMEDIATE` behind an in-process
//! queue. So a decision made from what a transaction read (placement, reservation
//! admission) cannot be invalidated by a concurrent one: there is no double booking.
//! The revision also orders the desired state handed to host agents (see `model::HostDesired`).
//!
//! The queries live in one file per table (`users`, `sites`, `hosts`, `clusters`, `nodes`,
//! `reservations`, `tasks`, `events`, `samples`, `counters`, and `profiles` for the
//! configuration database's tables); each takes a connection, so the
//! caller decides which transaction it belongs to.
//!
//! This module never decides policy (placement, admission, authorisation): it reads and
//! writes rows.

mod clusters;
mod counters;
mod events;
mod hosts;
mod installs;
mod nodes;
mod profiles;
mod reservations;
mod samples;
mod sites;
mod tasks;
mod users;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Transaction};
use thiserror::Error;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::model;

pub use clusters::*;
pub use counters::*;
pub use events::*;
pub use hosts::*;
pub use installs::*;
pub use nodes::*;
pub use profiles::*;
pub use reservations::*;
pub use samples::*;
pub use sites::*;
pub use tasks::*;
pub use users::*;

/// Every query takes the connection of the caller's transaction.
type Conn = AnyConnection;
type R<T> = Result<T, StoreError>;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store URL {0:?}: use sqlite:PATH or postgres://...")]
    BadUrl(String),
    #[error("bad row: {0}")]
    BadRow(String),
    #[error("starting a transaction: {0}")]
    Begin(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer: queue writers here rather than in SQLite's busy handler.
    sqlite_writer: Arc<Mutex<()>>,
}

/// A serialised write transaction. Dropping it without [`WriteTx::commit`] rolls back.
pub struct WriteTx {
    tx: Transaction<'static, sqlx::Any>,
    /// The store revision this transaction will have committed.
    pub revision: i64,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// A read transaction over one consistent snapshot.
pub struct ReadTx {
    tx: Transaction<'static, sqlx::Any>,
}

impl ReadTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the store at `url`:
    /// `sqlite:/var/lib/vcluster/controller.db` or `postgres://user@host/db`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options: AnyConnectOptions = url.parse()?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    // A connection that comes back inside a transaction would hold
                    // SQLite's write lock for good (every other writer then fails with
                    // "database is locked"): it is closed instead, which rolls it back.
                    // The ping first lets a rollback queued by a dropped transaction run.
                    .after_release(|conn, _| {
                        Box::pin(async move {
                            conn.ping().await?;
                            Ok(!conn.is_in_transaction())
                        })
                    })
                    .before_acquire(|conn, _| {
                        Box::pin(async move { Ok(!conn.is_in_transaction()) })
                    })
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA busy_timeout = 30000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?
            }
        };
        if backend == Backend::Sqlite {
            // WAL lets readers go on while the single writer writes; it is a property of
            // the file, so setting it once is enough.
            let mut conn = pool.acquire().await?;
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_optional(&mut *conn)
                .await?;
        }
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
            sqlite_writer: Arc::new(Mutex::new(())),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a serialised write transaction and bumps the store revision.
    pub async fn write(&self) -> Result<WriteTx, StoreError> {
        let (mut tx, guard) = match self.backend {
            Backend::Sqlite => {
                let guard = self.sqlite_writer.clone().lock_owned().await;
                (
                    begin_with(&self.pool, "BEGIN IMMEDIATE").await?,
                    Some(guard),
                )
            }
            Backend::Postgres => (self.pool.begin().await?, None),
        };
        let revision: i64 = sqlx::query_scalar(
            "UPDATE counters SET value = value + 1 WHERE name = 'revision' RETURNING value",
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(WriteTx {
            tx,
            revision,
            _writer: guard,
        })
    }

    /// Starts a read-only transaction that sees one snapshot.
    pub async fn read(&self) -> Result<ReadTx, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                begin_with(
                    &self.pool,
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                )
                .await?
            }
        };
        Ok(ReadTx { tx })
    }

    /// A connection for a single statement (its own implicit transaction).
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }
}

/// `pool.begin_with(statement)` in a task of its own: in sqlx 0.8 a `begin_with` whose
/// caller is dropped after the database ran the statement but before the `Transaction`
/// exists leaves the connection inside that transaction (sqlx issue #3932, fixed in
/// 0.9). A handler whose client went away (134 installers' reports on a loaded machine)
/// did exactly that, and the leaked `BEGIN IMMEDIATE` locked every other writer out.
async fn begin_with(
    pool: &AnyPool,
    statement: &'static str,
) -> Result<Transaction<'static, sqlx::Any>, StoreError> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|e| StoreError::Begin(e.to_string()))?
        .map_err(StoreError::from)
}

/// The closed sets the store keeps as text (`model`'s `closed_set!` enums) decode from
/// their column, and a text that names no member is a decoding error naming the column
/// and the value: never some default member.
macro_rules! text_column {
    ($($t:ty),+ $(,)?) => {$(
        impl sqlx::Type<sqlx::Any> for $t {
            fn type_info() -> sqlx::any::AnyTypeInfo {
                <String as sqlx::Type<sqlx::Any>>::type_info()
            }
            fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Any>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Any> for $t {
            fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, sqlx::Any>>::decode(value)?;
                Ok(text.parse::<$t>()?)
            }
        }
    )+};
}

text_column!(
    model::InstallState,
    model::Role,
    model::ClusterState,
    model::OverlayState,
    model::NodeState,
    model::NodeTarget,
    model::ReservationState,
    model::TaskState,
    model::TaskKind,
    model::Recovery,
    model::Firmware,
);

/// Milliseconds since the Unix epoch, the store's time unit.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn ms_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// True when a database error is a unique-constraint violation (on either backend).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

//! SQLite backend: a single file in the data directory, WAL mode. Writers serialise with `BEGIN IMMEDIATE`.

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection as _, Sqlite, SqliteConnection, Transaction};
use sqlx_core::transaction::TransactionManager as _;
use std::str::FromStr;
use std::time::Duration;

/// Whether a connection coming back to its pool may be handed out again: only outside a transaction.
/// A COMMIT that fails (SQLITE_FULL on a full disk) can leave SQLite's transaction rolled back while
/// sqlx still counts it open, so the rollback on drop fails too and every later `BEGIN` on that
/// connection would fail for good ("non-zero transaction depth"). Such a connection is rolled back
/// once more and, if that does not clear it, closed; the pool opens a fresh one when needed.
async fn out_of_transaction(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    type Manager = <Sqlite as sqlx::Database>::TransactionManager;
    if Manager::get_transaction_depth(conn) == 0 {
        return Ok(true);
    }
    let _ = Manager::rollback(conn).await;
    Ok(Manager::get_transaction_depth(conn) == 0)
}

/// Create the data directory (and missing parents) readable by its owner only. Modes are set after
/// creation, whatever the umask; a directory that already exists is left as it is.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Create the database file, owner read/write only, when it is not there yet.
fn create_private_file(file: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(file) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// The database, its -wal and its -shm readable by the owner only: they hold statements, results
/// and approvals. A store made by an older version (0644) is tightened on its next open.
fn restrict_store_files(file: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let name = file.as_os_str().to_string_lossy();
        for path in [
            name.to_string(),
            format!("{name}-wal"),
            format!("{name}-shm"),
        ] {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path, error = %e, "could not make the store file readable by its owner only");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
}

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for session recording, committing without fsync (see `begin_record`).
    records: SqlitePool,
    /// Seals audit records when set.
    audit_key: Option<std::sync::Arc<crate::audit::AuditKey>>,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";
    // BEGIN IMMEDIATE already holds the database write lock: a plain select is enough.
    const BULK_INSERT: super::backend::BulkInsert = super::backend::BulkInsert::Sqlite;
    const LOCK_REQUEST: &'static str = "SELECT status, updated_ms FROM requests WHERE id = $1";
    // BEGIN IMMEDIATE already serialises every writer.
    const LOCK_STATEMENT: &'static str = "SELECT $1";
    /// Due outbox heads of the sinks bound from `$3` on (the list is appended), oldest first, `$2` at most.
    const LEASE_SELECT: &'static str = "SELECT id, sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, last_error, created_ms FROM outbox o WHERE status = 'pending' AND next_attempt_ms <= $1 AND lease_until_ms <= $1 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.sink = o.sink AND p.request_id = o.request_id AND p.status = 'pending' AND p.id < o.id) AND o.sink IN";
    const LEASE_TAIL: &'static str = "ORDER BY id LIMIT $2";

    /// Open (creating the file and its directory if needed) and migrate.
    pub async fn open(url: &str) -> Result<Self, super::StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let file = opts.get_filename().to_path_buf();
        let in_memory = file.as_os_str().is_empty() || file.as_os_str() == ":memory:";
        if let Some(parent) = file.parent() {
            if !parent.as_os_str().is_empty() && !in_memory {
                create_private_dir(parent).map_err(|e| {
                    super::StoreError::Config(format!(
                        "cannot create the data directory {}: {e} (set [store] url to a writable path)",
                        parent.display()
                    ))
                })?;
            }
        }
        if !in_memory {
            // Created owner-only before SQLite opens it: SQLite gives its -wal and -shm files the
            // database file's mode, so they are private too.
            create_private_file(&file).map_err(|e| {
                super::StoreError::Config(format!(
                    "cannot create the store file {}: {e} (set [store] url to a writable path)",
                    file.display()
                ))
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .after_release(|conn, _| Box::pin(out_of_transaction(conn)))
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        if !in_memory {
            restrict_store_files(&file);
        }
        let records = SqlitePoolOptions::new()
            .max_connections(1)
            .after_release(|conn, _| Box::pin(out_of_transaction(conn)))
            .connect_with(opts.synchronous(SqliteSynchronous::Normal))
            .await?;
        Ok(Self {
            pool,
            records,
            audit_key: None,
        })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// SQLite has one writer at a time whatever the lock, and its FULL commit is durable on return.
    async fn begin_audited<'c>(
        &self,
        conn: &'c mut SqliteConnection,
    ) -> Result<Transaction<'c, Sqlite>, sqlx::Error> {
        conn.begin_with("BEGIN IMMEDIATE").await
    }

    /// One process owns a SQLite store: its own clock is the clock.
    async fn check_clock(&self) {}

    async fn await_durable(&self, _conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Session recordings at statement rate: in WAL mode a `NORMAL` commit survives a process crash
    /// and is made durable by the next checkpoint or full-sync commit, so only an OS crash can lose
    /// the last moments of recording, never a request, vote or audit record (those commit with FULL).
    async fn begin_record(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.records.begin_with("BEGIN IMMEDIATE").await
    }

    async fn lock_audit(_conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        Ok(())
    }

    // One process owns an SQLite file: local waiters are woken directly, there is nobody else to tell.
    async fn announce(_conn: &mut SqliteConnection, _id: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }

    fn feed(&self) -> Option<super::ChangeFeed> {
        None
    }

    /// The pool, for tests and maintenance commands.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

super::backend::sql_store!(SqliteStore, Sqlite, SqliteConnection);

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_directory_and_store_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testing::TempDir::new();
        let data = dir.path().join("data");
        let url = format!("sqlite://{}/countersign.db", data.display());
        let store = SqliteStore::open(&url).await.unwrap();
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&data), 0o700);
        for name in ["countersign.db", "countersign.db-wal", "countersign.db-shm"] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
        drop(store);
        // A store made world-readable (by an older version) is tightened when opened.
        let db = data.join("countersign.db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = SqliteStore::open(&url).await.unwrap();
        assert_eq!(mode(&db), 0o600);
    }

    #[tokio::test]
    async fn a_connection_returned_inside_a_transaction_is_cleared_before_reuse() {
        type Manager = <Sqlite as sqlx::Database>::TransactionManager;
        let dir = crate::testing::TempDir::new();
        let url = format!("sqlite://{}/state.db", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        {
            // The state a failed COMMIT leaves: sqlx counts a transaction that no guard will end.
            let mut conn = store.records.acquire().await.unwrap();
            Manager::begin(&mut conn, None).await.unwrap();
            assert_eq!(Manager::get_transaction_depth(&conn), 1);
        }
        // The records pool has one connection: it must begin again.
        let tx = store
            .begin_record()
            .await
            .expect("the pool's connection is usable again");
        tx.commit().await.unwrap();
    }
}

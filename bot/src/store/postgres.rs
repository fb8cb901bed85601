//! PostgreSQL backend for production and several replicas. Requests are locked with `FOR UPDATE`; appends to
//! the audit chain serialise on a transaction-scoped advisory lock; outbox leases use `SKIP LOCKED`; status
//! changes are announced with `NOTIFY` (see [`super::notify`]).
//!
//! Group commit for the audit chain: a transaction-scoped lock is released only after the commit's WAL flush,
//! so with a synchronous commit every audited change would wait for the previous one's fsync (about 160
//! changes a second on a 6 ms disk, whatever the load). Audited transactions therefore commit without waiting
//! for the flush, which releases the lock as soon as the commit record is in the WAL, and then wait for a
//! flush that covers it ([`PgStore::await_durable`]). Concurrent waits share PostgreSQL's WAL flushes, and the
//! caller still learns of its change only once it is durable. A database crash in between loses the newest
//! changes together with their audit records (the WAL is replayed in order, so the chain stays an intact
//! prefix); nobody was told they happened, except readers that saw a denial or expiry a few milliseconds
//! early, which fails closed. Anything that acts on a change (claiming an approval) makes its own audited
//! change durable first, and its flush covers every earlier commit.

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, Postgres, Transaction};

/// Writes a WAL record and commits synchronously, so it returns once every earlier commit is flushed.
const DURABLE: &str = "SELECT pg_logical_emit_message(true, 'countersign', 'durable')";

/// Advisory lock key guarding the audit chain's tail ("cs-audit").
const AUDIT_LOCK_KEY: i64 = 0x6373_2d61_7564_6974;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    /// Audited changes use group commit (see the module docs); false when the database role may not call
    /// `pg_logical_emit_message`, and every audited change then commits synchronously under the lock.
    group_commit: bool,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";
    const BULK_INSERT: super::backend::BulkInsert = super::backend::BulkInsert::Postgres;
    const LOCK_REQUEST: &'static str =
        "SELECT status, updated_ms FROM requests WHERE id = $1 FOR UPDATE";
    /// Due outbox heads of the sinks bound from `$3` on (the list is appended), oldest first, `$2` at most.
    const LEASE_SELECT: &'static str = "SELECT id, sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, last_error, created_ms FROM outbox o WHERE status = 'pending' AND next_attempt_ms <= $1 AND lease_until_ms <= $1 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.sink = o.sink AND p.request_id = o.request_id AND p.status = 'pending' AND p.id < o.id) AND o.sink IN";
    const LEASE_TAIL: &'static str = "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED";

    /// Connect and migrate.
    pub async fn open(url: &str) -> Result<Self, super::StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let group_commit = match sqlx::query(DURABLE).execute(&pool).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "audited changes commit one fsync at a time: the store's role cannot call pg_logical_emit_message; GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) to it for group commit"
                );
                false
            }
        };
        Ok(Self {
            pool,
            url: url.to_string(),
            group_commit,
        })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// A write that appends to the audit chain, on `conn`: commits without waiting for the WAL flush, so the
    /// chain's lock is not held through an fsync. Follow a successful commit with [`PgStore::await_durable`].
    async fn begin_audited<'c>(
        &self,
        conn: &'c mut PgConnection,
    ) -> Result<Transaction<'c, Postgres>, sqlx::Error> {
        if self.group_commit {
            conn.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await
        } else {
            conn.begin().await
        }
    }

    /// Returns once every transaction committed before the call is on disk: a transactional WAL message
    /// commits synchronously, and flushing its commit record flushes all WAL before it. Concurrent callers
    /// share flushes (PostgreSQL's own group commit), unlike commits serialised by the audit lock. Runs on
    /// the connection that committed, so an audited change checks out one pool connection, not two.
    async fn await_durable(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.group_commit {
            sqlx::query(DURABLE).execute(conn).await?;
        }
        Ok(())
    }

    /// Session recordings at statement rate commit without waiting for the WAL flush: a database
    /// crash can lose the last moments of recording, never a request, vote or audit record.
    async fn begin_record(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn lock_audit(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK_KEY)
            .execute(conn)
            .await?;
        Ok(())
    }

    // Delivered to every listener when the surrounding transaction commits, never if it rolls back.
    async fn announce(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::notify::REQUESTS_CHANNEL)
            .bind(id)
            .execute(conn)
            .await?;
        Ok(())
    }

    fn feed(&self) -> Option<super::ChangeFeed> {
        Some(super::ChangeFeed::postgres(&self.url))
    }

    /// The pool, for tests, LISTEN/NOTIFY and maintenance commands.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

super::backend::sql_store!(PgStore, Postgres, PgConnection);

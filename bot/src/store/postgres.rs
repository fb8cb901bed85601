//! PostgreSQL backend for production and several replicas. Requests are locked with `FOR UPDATE`; appends to
//! the audit chain serialise on a transaction-scoped advisory lock; outbox leases use `SKIP LOCKED`; status
//! changes are announced with `NOTIFY` (see [`super::notify`]).

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

/// Advisory lock key guarding the audit chain's tail ("cs-audit").
const AUDIT_LOCK_KEY: i64 = 0x6373_2d61_7564_6974;

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";
    const LOCK_REQUEST: &'static str = "SELECT status FROM requests WHERE id = $1 FOR UPDATE";
    const LEASE_SELECT: &'static str = "SELECT id, sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, last_error, created_ms FROM outbox o WHERE status = 'pending' AND next_attempt_ms <= $1 AND lease_until_ms <= $1 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.sink = o.sink AND p.request_id = o.request_id AND p.status = 'pending' AND p.id < o.id) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED";

    /// Connect and migrate.
    pub async fn open(url: &str) -> Result<Self, super::StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            url: url.to_string(),
        })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
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

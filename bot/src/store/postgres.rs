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

/// How often the offset between this machine's clock and the database server's is measured again.
const CLOCK_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Measures the database server's clock against this machine's ([`crate::clock`]), so replicas on
/// machines whose clocks disagree still agree on heartbeats, expiry and leases. A failed read keeps the
/// last offset.
async fn measure_clock(pool: &PgPool) -> Option<i64> {
    let sent = crate::clock::local_ms();
    let db: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .fetch_one(pool)
            .await;
    let received = crate::clock::local_ms();
    match db {
        Ok(db_ms) => {
            let offset = crate::clock::observe(db_ms, sent, received);
            if offset.unsigned_abs() > crate::clock::WARN_SKEW.as_millis() as u64 {
                tracing::warn!(
                    offset_ms = offset,
                    "this machine's clock differs from the store's database server by more than a second; Countersign uses the database's time, but fix the clock (NTP)"
                );
            }
            Some(offset)
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read the store's clock; keeping the last offset");
            None
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    url: String,
    /// Audited changes use group commit (see the module docs); false when the database role may not call
    /// `pg_logical_emit_message`, and every audited change then commits synchronously under the lock.
    group_commit: bool,
    /// When the clock offset was last measured (local milliseconds), see [`PgStore::check_clock`].
    clock_checked_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Seals audit records when set.
    audit_key: Option<std::sync::Arc<crate::audit::AuditKey>>,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";
    const BULK_INSERT: super::backend::BulkInsert = super::backend::BulkInsert::Postgres;
    const LOCK_REQUEST: &'static str =
        "SELECT status, updated_ms FROM requests WHERE id = $1 FOR UPDATE";
    /// Serialises creating requests for one (requester, connection, statement) across replicas, so
    /// concurrent sends of one statement make one request (held to the transaction's end).
    const LOCK_STATEMENT: &'static str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
    /// Due outbox heads of the sinks bound from `$3` on (the list is appended), oldest first, `$2` at most.
    const LEASE_SELECT: &'static str = "SELECT id, sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, last_error, created_ms FROM outbox o WHERE status = 'pending' AND next_attempt_ms <= $1 AND lease_until_ms <= $1 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.sink = o.sink AND p.request_id = o.request_id AND p.status = 'pending' AND p.id < o.id) AND o.sink IN";
    const LEASE_TAIL: &'static str = "ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED";

    /// Connect and migrate.
    pub async fn open(url: &str) -> Result<Self, super::StoreError> {
        let options: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e| {
            super::StoreError::Config(format!(
                "[store] url is not a PostgreSQL URL ({e}); write it as postgres://user:password@host:5432/database"
            ))
        })?;
        // One connection first: the pool would retry a refused connection for its whole acquire
        // timeout and then report only that it timed out.
        let target = format!(
            "{}:{} (database {:?})",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        PgConnection::connect_with(&options)
            .await
            .map_err(|e| {
                super::StoreError::Config(format!(
                    "cannot reach the PostgreSQL store at {target}: {e}; check [store] url (or url_env) and that the server is up and accepts this role"
                ))
            })?
            .close()
            .await
            .ok();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
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
        measure_clock(&pool).await;
        Ok(Self {
            pool,
            url: url.to_string(),
            group_commit,
            clock_checked_ms: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
                crate::clock::local_ms(),
            )),
            audit_key: None,
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
    /// Measures the clock offset again when the last measurement is older than [`CLOCK_CHECK`]: called
    /// by the expiry sweep every replica runs, so no task of its own outlives the store.
    async fn check_clock(&self) {
        use std::sync::atomic::Ordering;
        let now = crate::clock::local_ms();
        let last = self.clock_checked_ms.load(Ordering::Relaxed);
        if now - last >= CLOCK_CHECK.as_millis() as i64
            && self
                .clock_checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            measure_clock(&self.pool).await;
        }
    }

    /// Measures the clock offset now (for tests and diagnostics).
    pub async fn measure_clock(&self) -> Option<i64> {
        measure_clock(&self.pool).await
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_database_clock_is_read_and_matches_this_machine_on_one_host() {
        let url = crate::testing::fresh_pg_database().await.unwrap();
        let store = PgStore::open(&url).await.unwrap();
        let offset = store
            .measure_clock()
            .await
            .expect("the database answers its clock");
        // Same machine, same clock: the measurement itself is what is checked.
        assert!(offset.abs() < 1_000, "offset {offset} ms on one host");
    }

    #[tokio::test]
    async fn an_unreachable_store_is_named_at_once() {
        // Port 1 on loopback: nothing listens, the connection is refused.
        let started = std::time::Instant::now();
        let Err(e) = PgStore::open("postgres://postgres@127.0.0.1:1/countersign").await else {
            panic!("opened a store on port 1");
        };
        let e = e.to_string();
        assert!(
            e.contains("127.0.0.1:1") && e.contains("check [store] url"),
            "{e}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "not after the pool's timeout"
        );
    }
}

//! Session recording in both store backends: what is written reads back unchanged, and records written by
//! the schema before the compact statements table survive its migration.

use crate::identity::RequesterChain;
use crate::ids::{RequestId, SessionId, StatementHash};
use crate::sessions::{SessionRecord, SessionTally, StatementRecord, GATEWAY_STOPPED};
use crate::store::Store;
use crate::testing::{fresh_pg, fresh_pg_database, fresh_sqlite, human, workload, TempDir};
use std::sync::Arc;
use time::OffsetDateTime;

async fn stores() -> Vec<(Arc<dyn Store>, Option<TempDir>)> {
    let (s, d) = fresh_sqlite().await;
    vec![(s, Some(d)), (fresh_pg().await, None)]
}

fn session(id: SessionId) -> SessionRecord {
    SessionRecord {
        id,
        connection: "prod".into(),
        requester: RequesterChain(vec![workload("deploy-agent"), human("alice@example.com")]),
        client_addr: Some("127.0.0.1:50000".into()),
        application: Some("psql".into()),
        protocol: "wire".into(),
        // Whole milliseconds: the store keeps milliseconds.
        started_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        ended_at: None,
        end_reason: None,
    }
}

fn statement(session_id: SessionId, i: u64) -> StatementRecord {
    let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i}");
    let held = i % 7 == 3;
    StatementRecord {
        session_id,
        statement_hash: StatementHash::of_text(&sql),
        sql: sql.into(),
        decision: if held { "review" } else { "allow" }.into(),
        request_id: held.then(RequestId::new),
        outcome: if i % 5 == 4 { "error" } else { "ok" }.into(),
        command_tag: (i % 5 != 4).then(|| "SELECT 1".into()),
        rows: (i % 5 != 4).then_some(1),
        error: (i % 5 == 4).then(|| format!("relation {i} does not exist")),
        masked_fields: i % 3,
        duration_us: 100 + i,
        at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::milliseconds(i as i64),
    }
}

/// Batches of every size the insert is split into (whole chunks, then powers of two), from two interleaved
/// sessions, read back per session in order and field for field.
#[tokio::test]
async fn recorded_statements_read_back_unchanged_per_session() {
    for (store, _dir) in stores().await {
        let (a, b) = (SessionId::new(), SessionId::new());
        store.session_started(&session(a)).await.unwrap();
        store.session_started(&session(b)).await.unwrap();
        let mut want_a = Vec::new();
        let mut want_b = Vec::new();
        let mut n = 0;
        for size in [1usize, 2, 3, 64, 255, 256, 700] {
            let batch: Vec<StatementRecord> = (0..size)
                .map(|_| {
                    n += 1;
                    statement(if n % 3 == 0 { b } else { a }, n)
                })
                .collect();
            store.statements_recorded(&batch).await.unwrap();
            for st in batch {
                if st.session_id == a {
                    want_a.push(st)
                } else {
                    want_b.push(st)
                }
            }
        }
        store.session_ended(a, 1_700_000_100_000).await.unwrap();
        let (s, got) = store.get_session(a).await.unwrap().unwrap();
        assert_eq!(s.id, a);
        assert_eq!(
            s.ended_at,
            Some(OffsetDateTime::from_unix_timestamp(1_700_000_100).unwrap())
        );
        assert_eq!(got.len(), want_a.len(), "{}", store.backend());
        assert!(got == want_a, "{}: session a differs", store.backend());
        let (_, got) = store.get_session(b).await.unwrap().unwrap();
        assert!(got == want_b, "{}: session b differs", store.backend());
        let listed = store.list_sessions(10).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(store.get_session(SessionId::new()).await.unwrap().is_none());
    }
}

/// The store's tally (computed in SQL, statements never read back) equals the tally of the statements
/// themselves, on both backends: each request once in first-met order, groups with their sums.
#[tokio::test]
async fn the_session_tally_matches_its_statements_without_reading_them() {
    for (store, _dir) in stores().await {
        let id = SessionId::new();
        store.session_started(&session(id)).await.unwrap();
        let mut statements: Vec<StatementRecord> = (0..300).map(|i| statement(id, i)).collect();
        // A re-run names its request again; a blocked statement has its own group.
        let again = StatementRecord {
            at: statements[10].at + time::Duration::seconds(1),
            ..statements[3].clone()
        };
        statements.push(again);
        statements.push(StatementRecord {
            decision: "block".into(),
            outcome: "blocked".into(),
            request_id: None,
            rows: None,
            ..statement(id, 1000)
        });
        store.statements_recorded(&statements).await.unwrap();
        let (s, tally) = store.session_tally(id).await.unwrap().unwrap();
        assert_eq!(s.id, id);
        let mut want = SessionTally::of_records(&statements);
        let by_key = |g: &crate::sessions::TallyGroup| (g.decision.clone(), g.outcome.clone());
        want.groups.sort_by_key(by_key);
        assert_eq!(tally, want, "{}", store.backend());
        assert_eq!(tally.requests.len(), 43, "{}", store.backend());
        let summary = crate::sessions::SessionSummary::from_tally(&s, &tally);
        assert_eq!(
            summary,
            crate::sessions::SessionSummary::from_records(&s, &statements)
        );
        assert_eq!((summary.blocked, summary.held), (1, 44));
        assert!(store
            .session_tally(SessionId::new())
            .await
            .unwrap()
            .is_none());
    }
}

const OLD_STATEMENT_INSERT: &str = "INSERT INTO statements (session_id, sql, statement_hash, decision, request_id, outcome, command_tag, rows, error, masked_fields, duration_us, at_ms) VALUES ($1, $2, $3, 'review', $4, 'ok', 'DELETE 2', 2, NULL, 1, 250, 1700000000000)";

/// Statement records written before the compact schema (text session ids and hex hashes) read back the
/// same after the upgrade migrates them.
#[tokio::test]
async fn statements_recorded_before_the_compact_schema_survive_the_upgrade() {
    let id = SessionId::new();
    let request = RequestId::new();
    let hash = StatementHash::of_text("DELETE FROM t WHERE a = 1");
    let check = |store: Arc<dyn Store>| async move {
        let (s, statements) = store.get_session(id).await.unwrap().unwrap();
        assert_eq!(s.connection, "prod");
        assert_eq!(statements.len(), 1, "{}", store.backend());
        let st = &statements[0];
        assert_eq!(st.session_id, id);
        assert_eq!(&*st.sql, "DELETE FROM t WHERE a = 1");
        assert_eq!(st.statement_hash, hash);
        assert_eq!(st.request_id, Some(request));
        assert_eq!(
            (st.decision.as_str(), st.outcome.as_str()),
            ("review", "ok")
        );
        assert_eq!(
            (st.command_tag.as_deref(), st.rows, st.masked_fields),
            (Some("DELETE 2"), Some(2), 1)
        );
        // New records land next to the migrated one.
        store
            .statements_recorded(&[statement(id, 1)])
            .await
            .unwrap();
        assert_eq!(store.get_session(id).await.unwrap().unwrap().1.len(), 2);
    };

    // SQLite: migrations up to 0003, then the old-format rows, then the store's own migrations.
    let dir = TempDir::new();
    let url = format!("sqlite://{}/state.db", dir.path().display());
    {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
        use std::str::FromStr;
        let pool = SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        let old = migrations_before(sqlx::migrate!("../migrations/sqlite"), 4);
        old.run(&pool).await.unwrap();
        old_rows(&pool, id, request, &hash).await;
        pool.close().await;
    }
    check(crate::store::open(&url).await.unwrap()).await;

    // PostgreSQL: migrations up to 0002, likewise.
    let url = fresh_pg_database().await.unwrap();
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let old = migrations_before(sqlx::migrate!("../migrations/postgres"), 3);
        old.run(&pool).await.unwrap();
        old_rows(&pool, id, request, &hash).await;
        pool.close().await;
    }
    check(crate::store::open(&url).await.unwrap()).await;
}

/// The migrations of `all` older than `version`: the schema an earlier release left behind.
fn migrations_before(mut all: sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
    all.migrations = all
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect();
    all
}

async fn old_rows<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    id: SessionId,
    request: RequestId,
    hash: &StatementHash,
) where
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query::<DB>("INSERT INTO sessions (id, connection, requester_json, client_addr, application, protocol, started_ms, ended_ms) VALUES ($1, 'prod', $2, NULL, NULL, 'wire', 1700000000000, NULL)")
        .bind(id.to_string())
        .bind(serde_json::to_string(&session(id).requester).unwrap())
        .execute(pool)
        .await
        .unwrap();
    sqlx::query::<DB>(OLD_STATEMENT_INSERT)
        .bind(id.to_string())
        .bind("DELETE FROM t WHERE a = 1".to_string())
        .bind(hash.to_string())
        .bind(request.to_string())
        .execute(pool)
        .await
        .unwrap();
}

/// A gateway killed with -9 leaves its sessions open: a sweep closes the ones nobody marked alive since
/// the cut-off, at their last statement's end (or their last heartbeat, or start), with the reason; a
/// session marked alive after the cut-off, and one that ended itself, are left alone; a later real end
/// replaces the guess.
#[tokio::test]
async fn sessions_nobody_keeps_alive_are_closed_at_their_last_known_moment() {
    for (store, _dir) in stores().await {
        let start_ms = 1_700_000_000_000i64;
        let (with_statement, silent, kept, ended) = (
            SessionId::new(),
            SessionId::new(),
            SessionId::new(),
            SessionId::new(),
        );
        for id in [with_statement, silent, kept, ended] {
            store.session_started(&session(id)).await.unwrap();
        }
        // Its last statement arrived 2 s after the start and ran 2.1 ms.
        store
            .statements_recorded(&[
                statement(with_statement, 1),
                statement(with_statement, 2000),
            ])
            .await
            .unwrap();
        store.session_ended(ended, start_ms + 5).await.unwrap();
        let cut_off = start_ms + 60_000;
        store.touch_sessions(&[kept], cut_off + 1).await.unwrap();

        let mut closed = store
            .close_quiet_sessions(cut_off, GATEWAY_STOPPED, 100)
            .await
            .unwrap();
        closed.sort();
        let mut want = vec![with_statement, silent];
        want.sort();
        assert_eq!(closed, want, "{}", store.backend());

        let end_of = |id| {
            let store = store.clone();
            async move {
                let (s, _) = store.get_session(id).await.unwrap().unwrap();
                (
                    s.ended_at.map(crate::store::backend::time_to_ms),
                    s.end_reason,
                )
            }
        };
        assert_eq!(
            end_of(with_statement).await,
            (Some(start_ms + 2002), Some(GATEWAY_STOPPED.to_string())),
            "{}",
            store.backend()
        );
        assert_eq!(
            end_of(silent).await,
            (Some(start_ms), Some(GATEWAY_STOPPED.to_string()))
        );
        assert_eq!(end_of(kept).await, (None, None));
        assert_eq!(end_of(ended).await, (Some(start_ms + 5), None));
        // Nothing more to close, and the real end (arriving late) replaces the guess.
        assert!(store
            .close_quiet_sessions(cut_off, GATEWAY_STOPPED, 100)
            .await
            .unwrap()
            .is_empty());
        store.session_ended(silent, start_ms + 9).await.unwrap();
        assert_eq!(end_of(silent).await, (Some(start_ms + 9), None));
    }
}

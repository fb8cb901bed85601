//! Session and statement records, written in batches by one task so recording never slows the data path.
//!
//! Statements are gathered for up to [`GATHER`] before one transaction writes them: the cost of a commit
//! (the pages it rewrites, and for SQLite the WAL frames of every index page it touched) is shared by
//! hundreds of statements instead of a recorder tick's worth. A session's start and end are written at
//! once, after the statements before them; statements and an end the store refuses are kept (statements up to
//! [`MAX_UNRECORDED`]) and retried with backoff. Every
//! [`countersign_bot::sessions::SESSION_HEARTBEAT`] the writer marks this process's open sessions alive
//! and closes sessions nobody marked for [`countersign_bot::sessions::SESSION_QUIET_AFTER`] (with SQLite,
//! at start, every session an earlier run left open): a gateway killed with -9 leaves none open for good.

use countersign_bot::sessions::{SessionRecord, StatementRecord};
use countersign_bot::{SessionId, Store};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One thing to record.
pub(crate) enum RecordOp {
    Started(SessionRecord),
    Statement(StatementRecord),
    /// A recorder tick's statements, in order.
    Statements(Vec<StatementRecord>),
    Ended(SessionId, i64, tokio::sync::oneshot::Sender<()>),
}

/// Handle to the writer task.
pub(crate) struct StatementWriter {
    tx: mpsc::Sender<RecordOp>,
}

const BATCH: usize = 512;
/// How long statements wait for company before they are written (also the most a crash of the process
/// can lose, besides what is still in the recorder's channel).
const GATHER: Duration = Duration::from_millis(100);
/// Written at once when this many are waiting.
const FLUSH_AT: usize = 4096;
/// Statement records kept in memory while the store refuses them; beyond, the oldest are dropped (logged).
const MAX_UNRECORDED: usize = 200_000;
/// The longest wait between writes of statement records the store refused.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Session ends the store refused, kept in memory for retries; past this many the oldest is given up to
/// the liveness sweep (which closes it with its end time unknown once nobody marks it alive).
const MAX_UNRECORDED_ENDS: usize = 100_000;

/// Timings of session liveness and of retrying session ends; [`Liveness::default`] in production.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    /// How often this process marks its open sessions alive and closes quiet ones.
    pub heartbeat: Duration,
    /// How long a session may go unmarked before it is closed as left by a stopped gateway.
    pub quiet_after: Duration,
    /// First wait before retrying session ends the store refused (doubling up to `heartbeat`).
    pub retry_first: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            heartbeat: countersign_bot::sessions::SESSION_HEARTBEAT,
            quiet_after: countersign_bot::sessions::SESSION_QUIET_AFTER,
            retry_first: Duration::from_millis(500),
        }
    }
}

fn now_ms() -> i64 {
    countersign_bot::clock::now_ms()
}

/// The writer task's state besides its statement batch.
struct Sessions {
    store: Arc<dyn Store>,
    liveness: Liveness,
    /// Sessions this process has open: marked alive every heartbeat, so other replicas leave them open.
    open: HashSet<SessionId>,
    /// Session starts the store refused, oldest first, retried until they land (ahead of the ends: a
    /// session's end updates its row, which the start creates).
    unrecorded_starts: VecDeque<SessionRecord>,
    /// Session ends the store refused, oldest first, retried until they land (a store outage must not
    /// leave the session open forever).
    unrecorded_ends: VecDeque<(SessionId, i64)>,
    retry_delay: Duration,
    retry_at: Option<Instant>,
    heartbeat_at: Instant,
    /// With a store of its own (SQLite), every session open before this process started is stale: the
    /// first sweep closes them all at once instead of waiting for them to go quiet.
    stale_before_ms: Option<i64>,
}

impl Sessions {
    fn new(store: Arc<dyn Store>, liveness: Liveness) -> Self {
        let stale_before_ms = (store.backend() == "sqlite").then(now_ms);
        Self {
            store,
            liveness,
            open: HashSet::new(),
            unrecorded_starts: VecDeque::new(),
            unrecorded_ends: VecDeque::new(),
            retry_delay: liveness.retry_first,
            retry_at: None,
            // Sweep at once: sessions a killed gateway left open are closed at start.
            heartbeat_at: Instant::now(),
            stale_before_ms,
        }
    }

    async fn start(&mut self, session: SessionRecord) {
        self.open.insert(session.id);
        if !self.unrecorded_starts.is_empty() {
            // In order behind the starts already waiting.
            self.push_unrecorded_start(session);
            return;
        }
        if let Err(e) = self.store.session_started(&session).await {
            tracing::warn!(session_id = %session.id, error = %e, "could not record session start; keeping it in memory and retrying until the store is back");
            self.push_unrecorded_start(session);
        }
    }

    fn push_unrecorded_start(&mut self, session: SessionRecord) {
        if self.unrecorded_starts.len() >= MAX_UNRECORDED_ENDS {
            if let Some(lost) = self.unrecorded_starts.pop_front() {
                tracing::error!(session_id = %lost.id, "too many session starts waiting for the store; this one will not be listed");
            }
        }
        self.unrecorded_starts.push_back(session);
        self.retry_at
            .get_or_insert_with(|| Instant::now() + self.retry_delay);
    }

    async fn end(&mut self, id: SessionId, at: i64) {
        self.open.remove(&id);
        if !self.unrecorded_starts.is_empty() {
            // Its start may be among those waiting: the end lands after them.
            self.unrecorded_ends.push_back((id, at));
            self.retry_at
                .get_or_insert_with(|| Instant::now() + self.retry_delay);
            return;
        }
        if let Err(e) = self.store.session_ended(id, at).await {
            tracing::warn!(session_id = %id, error = %e, "could not record session end; keeping it in memory and retrying until the store is back");
            if self.unrecorded_ends.len() >= MAX_UNRECORDED_ENDS {
                if let Some((lost, _)) = self.unrecorded_ends.pop_front() {
                    tracing::error!(session_id = %lost, "too many session ends waiting for the store; this one will be closed with its end time unknown");
                }
            }
            self.unrecorded_ends.push_back((id, at));
            self.retry_at
                .get_or_insert_with(|| Instant::now() + self.retry_delay);
        }
    }

    async fn retry_ends(&mut self) {
        while let Some(session) = self.unrecorded_starts.front() {
            match self.store.session_started(session).await {
                Ok(()) => {
                    self.unrecorded_starts.pop_front();
                }
                Err(e) => {
                    tracing::warn!(waiting = self.unrecorded_starts.len(), error = %e, "still cannot record session starts; retrying");
                    break;
                }
            }
        }
        while let Some(&(id, at)) = self
            .unrecorded_ends
            .front()
            .filter(|_| self.unrecorded_starts.is_empty())
        {
            match self.store.session_ended(id, at).await {
                Ok(()) => {
                    self.unrecorded_ends.pop_front();
                }
                Err(e) => {
                    tracing::warn!(waiting = self.unrecorded_ends.len(), error = %e, "still cannot record session ends; retrying");
                    break;
                }
            }
        }
        if self.unrecorded_ends.is_empty() && self.unrecorded_starts.is_empty() {
            self.retry_delay = self.liveness.retry_first;
            self.retry_at = None;
        } else {
            self.retry_delay = (self.retry_delay * 2).min(self.liveness.heartbeat);
            self.retry_at = Some(Instant::now() + self.retry_delay);
        }
    }

    /// Marks this process's open sessions alive and closes sessions no gateway keeps alive any more.
    async fn heartbeat(&mut self) {
        self.heartbeat_at = Instant::now() + self.liveness.heartbeat;
        let now = now_ms();
        if !self.open.is_empty() {
            let ids: Vec<SessionId> = self.open.iter().copied().collect();
            if let Err(e) = self.store.touch_sessions(&ids, now).await {
                tracing::warn!(error = %e, "could not mark open sessions alive; retrying next heartbeat");
            }
        }
        let quiet_since = match self.stale_before_ms.take() {
            Some(started) => started,
            None => now - self.liveness.quiet_after.as_millis() as i64,
        };
        match self
            .store
            .close_quiet_sessions(quiet_since, countersign_bot::sessions::GATEWAY_STOPPED, 500)
            .await
        {
            Ok(closed) if !closed.is_empty() => tracing::warn!(
                count = closed.len(),
                "closed sessions a stopped gateway left open (end time unknown; see `countersign sessions`)"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not close sessions left by a stopped gateway; retrying next heartbeat")
            }
        }
    }

    fn next_wake(&self, due: Option<Instant>) -> Instant {
        [due, self.retry_at, Some(self.heartbeat_at)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.heartbeat_at)
    }
}

impl StatementWriter {
    pub(crate) fn spawn(store: Arc<dyn Store>) -> Self {
        Self::spawn_with(store, Liveness::default())
    }

    pub(crate) fn spawn_with(store: Arc<dyn Store>, liveness: Liveness) -> Self {
        let (tx, mut rx) = mpsc::channel::<RecordOp>(64 * 1024);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            let mut statements = Unrecorded::default();
            let mut due: Option<Instant> = None;
            let mut sessions = Sessions::new(store.clone(), liveness);
            loop {
                let wake = sessions.next_wake(due);
                // `recv_many` is cancel safe: a timeout loses nothing.
                let got = tokio::time::timeout_at(wake, rx.recv_many(&mut buf, BATCH))
                    .await
                    .ok();
                if got == Some(0) {
                    statements.retry_at = None;
                    flush(&store, &mut statements).await;
                    sessions.retry_ends().await;
                    return;
                }
                for op in buf.drain(..) {
                    match op {
                        RecordOp::Started(s) => {
                            flush(&store, &mut statements).await;
                            sessions.start(s).await;
                        }
                        RecordOp::Statement(st) => statements.records.push(st),
                        RecordOp::Statements(mut batch) => statements.records.append(&mut batch),
                        RecordOp::Ended(id, at, done) => {
                            flush(&store, &mut statements).await;
                            sessions.end(id, at).await;
                            let _ = done.send(());
                        }
                    }
                }
                let now = Instant::now();
                if statements.records.len() >= FLUSH_AT || due.is_some_and(|d| d <= now) {
                    flush(&store, &mut statements).await;
                }
                if statements.records.is_empty() {
                    due = None;
                } else {
                    // The next write: when gathering ends, but not before a refused write's backoff.
                    let gathered = due.filter(|d| *d > now).unwrap_or(now + GATHER);
                    due = Some(statements.retry_at.map_or(gathered, |r| r.max(gathered)));
                }
                if sessions.retry_at.is_some_and(|at| at <= now) {
                    sessions.retry_ends().await;
                }
                if sessions.heartbeat_at <= now {
                    sessions.heartbeat().await;
                }
            }
        });
        Self { tx }
    }

    pub(crate) async fn send(&self, op: RecordOp) {
        if self.tx.send(op).await.is_err() {
            tracing::warn!("session recorder stopped; a record was lost");
        }
    }
}

/// Statement records not yet written, and when to try again after the store refused them.
#[derive(Default)]
struct Unrecorded {
    records: Vec<StatementRecord>,
    retry_at: Option<Instant>,
    delay: Duration,
}

/// Writes the gathered statement records in one batch. A refusal keeps them for a later try (after a
/// doubling backoff) rather than losing them: the store may be restarting or failing over.
async fn flush(store: &Arc<dyn Store>, statements: &mut Unrecorded) {
    if statements.records.is_empty() || statements.retry_at.is_some_and(|r| r > Instant::now()) {
        return;
    }
    match store.statements_recorded(&statements.records).await {
        Ok(()) => {
            statements.records.clear();
            statements.retry_at = None;
            statements.delay = Duration::ZERO;
        }
        Err(e) => {
            statements.delay = (statements.delay * 2).clamp(GATHER, MAX_RETRY_DELAY);
            statements.retry_at = Some(Instant::now() + statements.delay);
            tracing::warn!(error = %e, count = statements.records.len(), retry_in = ?statements.delay, "could not record statements; keeping them and retrying");
            if statements.records.len() > MAX_UNRECORDED {
                let lost = statements.records.len() - MAX_UNRECORDED;
                statements.records.drain(..lost);
                tracing::error!(
                    lost,
                    "statement records dropped: the store refused them for too long"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_bot::sessions::{SessionRecord, GATEWAY_STOPPED};
    use countersign_bot::store::postgres::PgStore;
    use countersign_bot::testing::{fresh_pg_database, fresh_sqlite, human, workload};
    use countersign_bot::RequesterChain;
    use time::OffsetDateTime;

    fn fast() -> Liveness {
        Liveness {
            heartbeat: Duration::from_millis(50),
            quiet_after: Duration::from_millis(600),
            retry_first: Duration::from_millis(20),
        }
    }

    fn session(id: SessionId, started_at: OffsetDateTime) -> SessionRecord {
        SessionRecord {
            id,
            connection: "prod".into(),
            requester: RequesterChain(vec![workload("agent"), human("alice@example.com")]),
            client_addr: None,
            application: Some("psql".into()),
            protocol: "wire".into(),
            started_at,
            ended_at: None,
            end_reason: None,
        }
    }

    /// Whole milliseconds, as the store keeps them.
    fn now_whole_ms() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(now_ms() as i128 * 1_000_000).unwrap()
    }

    async fn ended(store: &Arc<dyn Store>, id: SessionId) -> (Option<i64>, Option<String>) {
        let (s, _) = store.get_session(id).await.unwrap().expect("session");
        (
            s.ended_at
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
            s.end_reason,
        )
    }

    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check().await {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn end(writer: &StatementWriter, id: SessionId, at: i64) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        writer.send(RecordOp::Ended(id, at, done_tx)).await;
        done_rx.await.unwrap();
    }

    /// A fresh PostgreSQL store (and its pool, for tests to make it refuse writes), a writer on it, and
    /// one session whose start is recorded.
    async fn pg_writer_with_a_session() -> (sqlx::PgPool, Arc<dyn Store>, StatementWriter, SessionId)
    {
        let url = fresh_pg_database()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        let pg = PgStore::open(&url).await.unwrap();
        let pool = pg.pool().clone();
        let store: Arc<dyn Store> = Arc::new(pg);
        let writer = StatementWriter::spawn_with(store.clone(), fast());
        let id = SessionId::new();
        writer
            .send(RecordOp::Started(session(id, now_whole_ms())))
            .await;
        eventually("the start is recorded", || async {
            store.get_session(id).await.unwrap().is_some()
        })
        .await;
        (pool, store, writer, id)
    }

    /// Statements recorded while the store refuses writes are kept and written once it accepts them
    /// again, in order, none lost (before, a batch was dropped after three tries in 700 ms).
    #[tokio::test]
    async fn statements_the_store_refused_are_recorded_when_the_store_is_back() {
        let (pool, store, writer, id) = pg_writer_with_a_session().await;
        sqlx::raw_sql(
            "CREATE FUNCTION refuse_statements() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'store unavailable (test)'; END $$;
             CREATE TRIGGER refuse_statements BEFORE INSERT ON statements FOR EACH ROW EXECUTE FUNCTION refuse_statements();",
        )
        .execute(&pool)
        .await
        .unwrap();
        let record = |i: i64| StatementRecord {
            session_id: id,
            sql: format!("SELECT {i}").into(),
            statement_hash: countersign_bot::StatementHash::of_text(&format!("SELECT {i}")),
            decision: "allow".into(),
            request_id: None,
            outcome: "ok".into(),
            command_tag: Some("SELECT 1".into()),
            rows: Some(1),
            error: None,
            masked_fields: 0,
            duration_us: 10,
            at: now_whole_ms() + time::Duration::milliseconds(i),
        };
        for i in 0..5 {
            writer.send(RecordOp::Statement(record(i))).await;
        }
        // Well past the old three tries: the outage lasts longer than that.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for i in 5..8 {
            writer.send(RecordOp::Statement(record(i))).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let recorded = |store: Arc<dyn Store>| async move {
            store
                .get_session(id)
                .await
                .unwrap()
                .map(|(_, st)| st.iter().map(|s| s.sql.to_string()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert!(
            recorded(store.clone()).await.is_empty(),
            "the outage refused them"
        );

        sqlx::raw_sql("DROP TRIGGER refuse_statements ON statements")
            .execute(&pool)
            .await
            .unwrap();
        eventually("the statements are written once the store is back", || {
            let store = store.clone();
            async move { recorded(store).await.len() == 8 }
        })
        .await;
        let expected: Vec<String> = (0..8).map(|i| format!("SELECT {i}")).collect();
        assert_eq!(recorded(store.clone()).await, expected);
    }

    /// A session that ends while the store refuses the write is not dropped: its end lands, with its
    /// real time, once the store accepts writes again.
    #[tokio::test]
    async fn a_session_end_the_store_refused_is_recorded_when_the_store_is_back() {
        let (pool, store, writer, id) = pg_writer_with_a_session().await;
        // The store refuses every session end, as during an outage.
        sqlx::raw_sql(
            "CREATE FUNCTION refuse_end() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'store unavailable (test)'; END $$;
             CREATE TRIGGER refuse_end BEFORE UPDATE ON sessions FOR EACH ROW WHEN (NEW.ended_ms IS NOT NULL) EXECUTE FUNCTION refuse_end();",
        )
        .execute(&pool)
        .await
        .unwrap();
        let at = now_ms();
        end(&writer, id, at).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            ended(&store, id).await,
            (None, None),
            "the outage refused it"
        );

        sqlx::raw_sql("DROP TRIGGER refuse_end ON sessions")
            .execute(&pool)
            .await
            .unwrap();
        eventually("the end is retried once the store is back", || async {
            ended(&store, id).await == (Some(at), None)
        })
        .await;
    }

    #[tokio::test]
    async fn a_session_start_the_store_refused_is_recorded_when_the_store_is_back_then_its_end() {
        let (pool, store, writer, _) = pg_writer_with_a_session().await;
        sqlx::raw_sql(
            "CREATE FUNCTION refuse_start() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'store unavailable (test)'; END $$;
             CREATE TRIGGER refuse_start BEFORE INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION refuse_start();",
        )
        .execute(&pool)
        .await
        .unwrap();
        let id = SessionId::new();
        writer
            .send(RecordOp::Started(session(id, now_whole_ms())))
            .await;
        let at = now_ms();
        end(&writer, id, at).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            store.get_session(id).await.unwrap().is_none(),
            "the outage refused it"
        );
        sqlx::raw_sql("DROP TRIGGER refuse_start ON sessions")
            .execute(&pool)
            .await
            .unwrap();
        eventually(
            "the start, then the end, land once the store is back",
            || async {
                store.get_session(id).await.unwrap().is_some()
                    && ended(&store, id).await == (Some(at), None)
            },
        )
        .await;
    }

    /// SQLite: the store is this process's alone, so at start every session an earlier run left open is
    /// closed, at its last known moment and with the reason; sessions of this run stay open.
    #[tokio::test]
    async fn sqlite_sessions_an_earlier_run_left_open_are_closed_at_start() {
        let (store, _dir) = fresh_sqlite().await;
        let left = SessionId::new();
        let left_start = now_whole_ms() - time::Duration::seconds(5);
        store
            .session_started(&session(left, left_start))
            .await
            .unwrap();

        let writer = StatementWriter::spawn_with(store.clone(), fast());
        let mine = SessionId::new();
        writer
            .send(RecordOp::Started(session(mine, now_whole_ms())))
            .await;
        let left_start_ms = (left_start.unix_timestamp_nanos() / 1_000_000) as i64;
        eventually("the stale session is closed at start", || async {
            ended(&store, left).await == (Some(left_start_ms), Some(GATEWAY_STOPPED.into()))
        })
        .await;
        // Several heartbeats later this run's session is still open.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(ended(&store, mine).await, (None, None));
    }

    /// PostgreSQL (shared by replicas): a session nobody marks alive for `quiet_after` is closed; one a
    /// live writer keeps alive is not, however long it lasts.
    #[tokio::test]
    async fn postgres_sessions_of_a_stopped_replica_are_closed_once_quiet() {
        let url = fresh_pg_database()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432");
        let store: Arc<dyn Store> = Arc::new(PgStore::open(&url).await.unwrap());
        // A replica killed with -9 right after recording this session's start.
        let orphan = SessionId::new();
        let orphan_start = now_whole_ms();
        store
            .session_started(&session(orphan, orphan_start))
            .await
            .unwrap();

        let writer = StatementWriter::spawn_with(store.clone(), fast());
        let mine = SessionId::new();
        writer
            .send(RecordOp::Started(session(mine, now_whole_ms())))
            .await;
        // Not at once: another replica's sessions are only stale once quiet.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(ended(&store, orphan).await, (None, None));
        let orphan_start_ms = (orphan_start.unix_timestamp_nanos() / 1_000_000) as i64;
        eventually("the quiet session is closed", || async {
            ended(&store, orphan).await == (Some(orphan_start_ms), Some(GATEWAY_STOPPED.into()))
        })
        .await;
        // Well past `quiet_after`, the live writer's session is still open.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(ended(&store, mine).await, (None, None));
        let at = now_ms();
        end(&writer, mine, at).await;
        assert_eq!(ended(&store, mine).await, (Some(at), None));
    }
}

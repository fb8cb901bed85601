//! The SQL shared by both backends. The statements are identical (`$n` placeholders work in SQLite too); the
//! backends differ only in how a writing transaction serialises (SQLite `BEGIN IMMEDIATE`, PostgreSQL row
//! locks and an advisory lock for the audit chain) and in lease locking. A macro instantiates the one
//! implementation for each concrete pool type, so the logic exists once.

use crate::audit::{AuditEntry, AuditRecord};
use crate::identity::CanonicalId;
use crate::ids::{RequestId, SessionId, StatementHash};
use crate::request::{ApprovalRequest, Decision, ExecutionSummary, ReminderSettings, Vote};
use crate::sessions::{SessionRecord, StatementRecord};
use crate::store::{OutboxItem, OutboxStatus, StoreError};
use time::OffsetDateTime;

pub(crate) fn now_ms() -> i64 {
    crate::clock::now_ms()
}

pub(crate) fn ms_to_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn time_to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Rows in the largest statement-record insert (12 parameters a row, far below SQLite's and PostgreSQL's
/// limits on bind parameters).
const STATEMENT_CHUNK_MAX: usize = 256;

/// Splits `len` statement records into insert sizes: whole chunks of the largest size, then the rest in powers
/// of two, so every insert is one of a few fixed statements that each connection prepares once.
pub(crate) fn statement_chunks(mut len: usize) -> impl Iterator<Item = usize> {
    let max = STATEMENT_CHUNK_MAX;
    std::iter::from_fn(move || {
        if len == 0 {
            return None;
        }
        let n = if len >= max {
            max
        } else {
            1 << (usize::BITS - 1 - len.leading_zeros())
        };
        len -= n;
        Some(n)
    })
}

/// How a backend spells the bulk insert of statement records.
#[derive(Clone, Copy)]
pub(crate) enum BulkInsert {
    /// `INSERT OR FAIL` with `?` placeholders. Inside a transaction SQLite gives a statement that may abort
    /// halfway a statement journal (a copy of every page it changes that the transaction had already
    /// changed); `OR FAIL` keeps the rows written before a failure instead, so needs none, and a failure
    /// rolls back the whole transaction anyway. Numbered `$n` parameters would be looked up by name with a
    /// linear scan per bound value, which makes binding a large insert quadratic.
    Sqlite,
    /// `INSERT` with `$n` placeholders.
    Postgres,
}

/// The insert of `rows` statement records (`rows` a power of two, at most the largest chunk).
pub(crate) fn insert_statements_sql(rows: usize, dialect: BulkInsert) -> &'static str {
    static SQL: [std::sync::OnceLock<Vec<String>>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let all = SQL[dialect as usize].get_or_init(|| {
        (0..=STATEMENT_CHUNK_MAX.trailing_zeros())
            .map(|k| {
                let mut sql = String::from(match dialect {
                    BulkInsert::Sqlite => "INSERT OR FAIL INTO",
                    BulkInsert::Postgres => "INSERT INTO",
                });
                sql.push_str(" statements (session_id, sql, statement_hash, decision, request_id, outcome, command_tag, rows, error, masked_fields, duration_us, at_ms) VALUES ");
                let mut p = 0;
                for r in 0..1usize << k {
                    if r > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('(');
                    for c in 0..12 {
                        if c > 0 {
                            sql.push_str(", ");
                        }
                        p += 1;
                        match dialect {
                            BulkInsert::Sqlite => sql.push('?'),
                            BulkInsert::Postgres => {
                                sql.push('$');
                                sql.push_str(&p.to_string());
                            }
                        }
                    }
                    sql.push(')');
                }
                sql
            })
            .collect()
    });
    &all[rows.trailing_zeros() as usize]
}

pub(crate) fn parse_uuid<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad {what} {s:?}")))
}

/// Columns of `requests`, decoded.
pub(crate) struct RequestRow {
    pub id: String,
    pub connection: String,
    pub statement: String,
    pub statement_hash: String,
    pub requester_json: String,
    pub rule: String,
    pub reasons_json: String,
    pub approver_groups_json: String,
    pub quorum: i64,
    pub status: String,
    pub origin: String,
    pub session_id: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub updated_ms: i64,
    pub execution_json: Option<String>,
    pub remind_after_secs: Option<i64>,
    pub escalate_after_secs: Option<i64>,
    pub escalate_to_json: Option<String>,
}

impl RequestRow {
    pub fn into_request(self) -> Result<ApprovalRequest, StoreError> {
        Ok(ApprovalRequest {
            id: parse_uuid(&self.id, "request id")?,
            connection: self.connection,
            statement: self.statement,
            statement_hash: self.statement_hash.parse().map_err(|_| {
                StoreError::Corrupt(format!("bad statement hash {:?}", self.statement_hash))
            })?,
            requester: serde_json::from_str(&self.requester_json)?,
            rule: self.rule,
            reasons: serde_json::from_str(&self.reasons_json)?,
            approver_groups: serde_json::from_str(&self.approver_groups_json)?,
            quorum: self.quorum.clamp(0, u32::MAX as i64) as u32,
            status: self
                .status
                .parse()
                .map_err(|e: crate::request::UnknownStatus| StoreError::Corrupt(e.to_string()))?,
            origin: self.origin,
            session_id: match self.session_id {
                Some(s) => Some(parse_uuid::<SessionId>(&s, "session id")?),
                None => None,
            },
            created_at: ms_to_time(self.created_ms),
            expires_at: ms_to_time(self.expires_ms),
            updated_at: ms_to_time(self.updated_ms),
            execution: match self.execution_json {
                Some(j) => Some(serde_json::from_str::<ExecutionSummary>(&j)?),
                None => None,
            },
            reminders: ReminderSettings {
                remind_after_secs: self.remind_after_secs.map(|s| s.max(0) as u64),
                escalate_after_secs: self.escalate_after_secs.map(|s| s.max(0) as u64),
                escalate_to: match self.escalate_to_json {
                    Some(j) => serde_json::from_str(&j)?,
                    None => Vec::new(),
                },
            },
        })
    }
}

pub(crate) struct VoteRow {
    pub request_id: String,
    pub voter: String,
    pub voter_name: String,
    pub decision: String,
    pub reason: Option<String>,
    pub channel: String,
    pub at_ms: i64,
}

impl VoteRow {
    pub fn into_vote(self) -> Result<Vote, StoreError> {
        Ok(Vote {
            request_id: parse_uuid::<RequestId>(&self.request_id, "request id")?,
            voter: CanonicalId(self.voter),
            voter_name: self.voter_name,
            decision: self
                .decision
                .parse::<Decision>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            reason: self.reason,
            channel: self.channel,
            at: ms_to_time(self.at_ms),
        })
    }
}

pub(crate) struct AuditRow {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub request_id: Option<String>,
    pub decision: Option<String>,
    pub channel: String,
    pub statement_hash: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    pub seal: Option<String>,
}

impl AuditRow {
    pub fn into_record(self) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            at_ms: self.at_ms,
            entry: AuditEntry {
                actor: self.actor,
                action: self.action,
                request_id: self.request_id,
                decision: self.decision,
                channel: self.channel,
                statement_hash: self.statement_hash,
                // A detail that no longer parses is kept as a string so verification reports the mismatch.
                detail: serde_json::from_str(&self.detail)
                    .unwrap_or(serde_json::Value::String(self.detail)),
            },
            prev_hash: self.prev_hash,
            hash: self.hash,
            seal: self.seal,
        }
    }
}

pub(crate) struct OutboxRow {
    pub id: i64,
    pub sink: String,
    pub request_id: Option<String>,
    pub event_kind: String,
    pub payload: String,
    pub idempotency_key: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub created_ms: i64,
}

impl OutboxRow {
    pub fn into_item(self) -> Result<OutboxItem, StoreError> {
        Ok(OutboxItem {
            id: self.id,
            sink: self.sink,
            request_id: self.request_id,
            event_kind: self.event_kind,
            payload: self.payload,
            idempotency_key: self.idempotency_key,
            status: OutboxStatus::parse(&self.status)
                .ok_or_else(|| StoreError::Corrupt(format!("outbox status {:?}", self.status)))?,
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            last_error: self.last_error,
            created_ms: self.created_ms,
        })
    }
}

pub(crate) struct SessionRow {
    pub id: String,
    pub connection: String,
    pub requester_json: String,
    pub client_addr: Option<String>,
    pub application: Option<String>,
    pub protocol: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
}

impl SessionRow {
    pub fn into_record(self) -> Result<SessionRecord, StoreError> {
        Ok(SessionRecord {
            id: parse_uuid(&self.id, "session id")?,
            connection: self.connection,
            requester: serde_json::from_str(&self.requester_json)?,
            client_addr: self.client_addr,
            application: self.application,
            protocol: self.protocol,
            started_at: ms_to_time(self.started_ms),
            ended_at: self.ended_ms.map(ms_to_time),
            end_reason: self.end_reason,
        })
    }
}

pub(crate) struct StatementRow {
    pub session_id: uuid::Uuid,
    pub sql: String,
    pub statement_hash: Vec<u8>,
    pub decision: String,
    pub request_id: Option<String>,
    pub outcome: String,
    pub command_tag: Option<String>,
    pub rows: Option<i64>,
    pub error: Option<String>,
    pub masked_fields: i64,
    pub duration_us: i64,
    pub at_ms: i64,
}

impl StatementRow {
    pub fn into_record(self) -> Result<StatementRecord, StoreError> {
        Ok(StatementRecord {
            session_id: SessionId(self.session_id),
            sql: self.sql.into(),
            statement_hash: StatementHash::from_bytes(&self.statement_hash).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "bad statement hash {:?}",
                    String::from_utf8_lossy(&self.statement_hash)
                ))
            })?,
            decision: self.decision,
            request_id: match self.request_id {
                Some(s) => Some(parse_uuid(&s, "request id")?),
                None => None,
            },
            outcome: self.outcome,
            command_tag: self.command_tag,
            rows: self.rows.map(|r| r.max(0) as u64),
            error: self.error,
            masked_fields: self.masked_fields.max(0) as u64,
            duration_us: self.duration_us.max(0) as u64,
            at: ms_to_time(self.at_ms),
        })
    }
}

/// Generates `impl Store` for a backend type with a `pool` field, given its sqlx database and connection
/// types. The backend type provides `begin_write()`, `self.begin_audited(conn)` (a write that appends to the audit
/// chain) with `self.await_durable(conn)` (called after its commit: returns once the commit is on disk), `LOCK_REQUEST`
/// (select one request by id, locking it), `lock_audit(conn)` (serialise appends to the chain), `LEASE_SELECT` + `LEASE_TAIL`,
/// `announce(conn, id)` (tell other replicas a request's status changed, on commit) and `feed()` (the
/// matching [`crate::store::ChangeFeed`]). Audited transactions append their records last, so the chain's lock
/// covers only the append and the commit.
/// Which requests a re-send of a statement reuses (`$1` requester key, `$2` connection, `$3` statement
/// hash, `$4` now): the look-up and the check under the creation lock must agree.
macro_rules! reusable_request {
    () => {
        "requester_key = $1 AND connection = $2 AND statement_hash = $3 AND status IN ('pending', 'approved') AND expires_ms > $4"
    };
}

macro_rules! sql_store {
    ($ty:ty, $db:ty, $conn:ty) => {
        use $crate::store::backend::{
            now_ms, time_to_ms, AuditRow, OutboxRow, RequestRow, SessionRow, StatementRow, VoteRow,
        };
        use $crate::store::{NotifyKind, OutboxItem, OutboxStatus, Store, StoreError, Transition, VoteOutcome};
        use $crate::audit::{AuditEntry, AuditHead, AuditKey, AuditRecord, GENESIS_HASH};
        use $crate::events::WorkflowEvent;
        use $crate::ids::{RequestId, SessionId, StatementHash};
        use $crate::request::{ApprovalRequest, Decision, RequestStatus, RequestView, Vote};
        use $crate::sessions::{SessionRecord, StatementRecord};
        use sqlx::Row as _;

        fn request_row(row: &<$db as sqlx::Database>::Row) -> Result<RequestRow, StoreError> {
            Ok(RequestRow {
                id: row.try_get("id")?,
                connection: row.try_get("connection")?,
                statement: row.try_get("statement")?,
                statement_hash: row.try_get("statement_hash")?,
                requester_json: row.try_get("requester_json")?,
                rule: row.try_get("rule")?,
                reasons_json: row.try_get("reasons_json")?,
                approver_groups_json: row.try_get("approver_groups_json")?,
                quorum: row.try_get("quorum")?,
                status: row.try_get("status")?,
                origin: row.try_get("origin")?,
                session_id: row.try_get("session_id")?,
                created_ms: row.try_get("created_ms")?,
                expires_ms: row.try_get("expires_ms")?,
                updated_ms: row.try_get("updated_ms")?,
                execution_json: row.try_get("execution_json")?,
                remind_after_secs: row.try_get("remind_after_secs")?,
                escalate_after_secs: row.try_get("escalate_after_secs")?,
                escalate_to_json: row.try_get("escalate_to_json")?,
            })
        }

        fn outbox_row(row: &<$db as sqlx::Database>::Row) -> Result<OutboxItem, StoreError> {
            OutboxRow {
                id: row.try_get("id")?,
                sink: row.try_get("sink")?,
                request_id: row.try_get("request_id")?,
                event_kind: row.try_get("event_kind")?,
                payload: row.try_get("payload")?,
                idempotency_key: row.try_get("idempotency_key")?,
                status: row.try_get("status")?,
                attempts: row.try_get("attempts")?,
                next_attempt_ms: row.try_get("next_attempt_ms")?,
                last_error: row.try_get("last_error")?,
                created_ms: row.try_get("created_ms")?,
            }
            .into_item()
        }

        /// The `id` column of a `requests` row.
        fn request_id_row(row: &<$db as sqlx::Database>::Row) -> Result<RequestId, StoreError> {
            let id: String = row.try_get("id")?;
            $crate::store::backend::parse_uuid(&id, "request id")
        }

        fn session_row(row: &<$db as sqlx::Database>::Row) -> Result<SessionRecord, StoreError> {
            SessionRow {
                id: row.try_get("id")?,
                connection: row.try_get("connection")?,
                requester_json: row.try_get("requester_json")?,
                client_addr: row.try_get("client_addr")?,
                application: row.try_get("application")?,
                protocol: row.try_get("protocol")?,
                started_ms: row.try_get("started_ms")?,
                ended_ms: row.try_get("ended_ms")?,
                end_reason: row.try_get("end_reason")?,
            }
            .into_record()
        }

        impl $ty {
            /// The session row of `id`, if recorded.
            async fn session_record(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
                let row = sqlx::query("SELECT id, connection, requester_json, client_addr, application, protocol, started_ms, ended_ms, end_reason FROM sessions WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(session_row).transpose()
            }

            async fn load_view(conn: &mut $conn, id: &str) -> Result<Option<RequestView>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, connection, statement, statement_hash, requester_json, rule, reasons_json, approver_groups_json, quorum, status, origin, session_id, created_ms, expires_ms, updated_ms, execution_json, remind_after_secs, escalate_after_secs, escalate_to_json FROM requests WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let request = request_row(&row)?.into_request()?;
                let rows = sqlx::query(
                    "SELECT request_id, voter, voter_name, decision, reason, channel, at_ms FROM votes WHERE request_id = $1 ORDER BY at_ms, voter",
                )
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                let mut votes = Vec::with_capacity(rows.len());
                for r in rows {
                    votes.push(
                        VoteRow {
                            request_id: r.try_get("request_id")?,
                            voter: r.try_get("voter")?,
                            voter_name: r.try_get("voter_name")?,
                            decision: r.try_get("decision")?,
                            reason: r.try_get("reason")?,
                            channel: r.try_get("channel")?,
                            at_ms: r.try_get("at_ms")?,
                        }
                        .into_vote()?,
                    );
                }
                Ok(Some(RequestView { request, votes }))
            }

            /// Append entries to the audit chain, in order. The chain's lock is held from here until the
            /// transaction ends, so call this last, just before committing.
            async fn append_audits_in(conn: &mut $conn, entries: &[AuditEntry], key: Option<&AuditKey>) -> Result<Vec<AuditRecord>, StoreError> {
                Self::lock_audit(&mut *conn).await?;
                // From the head, not the last row: after records were cut from the end, the next one
                // links to what was cut, and the gap stays for `audit verify` to report.
                let last = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
                    .fetch_optional(&mut *conn)
                    .await?;
                let (mut prev_seq, mut prev_hash): (i64, String) = match last {
                    Some(r) => (r.try_get("seq")?, r.try_get("hash")?),
                    None => (0, GENESIS_HASH.to_string()),
                };
                // Rows past the head were inserted by hand (the gateway moves the head with every
                // append): numbered after them, the chain still links to the head, so `audit verify`
                // reports them instead of every later append failing on their numbers.
                let highest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit")
                    .fetch_one(&mut *conn)
                    .await?;
                prev_seq = prev_seq.max(highest);
                let mut records = Vec::with_capacity(entries.len());
                for entry in entries {
                    let seq = prev_seq + 1;
                    let at_ms = now_ms();
                    let hash = AuditRecord::compute_hash(seq, at_ms, entry, &prev_hash);
                    let seal = key.map(|k| k.seal_record(&hash));
                    sqlx::query(
                        "INSERT INTO audit (seq, at_ms, actor, action, request_id, decision, channel, statement_hash, detail, prev_hash, hash, seal) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    )
                    .bind(seq)
                    .bind(at_ms)
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.request_id)
                    .bind(&entry.decision)
                    .bind(&entry.channel)
                    .bind(&entry.statement_hash)
                    .bind(serde_json::to_string(&entry.detail)?)
                    .bind(&prev_hash)
                    .bind(&hash)
                    .bind(&seal)
                    .execute(&mut *conn)
                    .await?;
                    let record = AuditRecord { seq, at_ms, entry: entry.clone(), prev_hash, hash, seal };
                    prev_seq = seq;
                    prev_hash = record.hash.clone();
                    records.push(record);
                }
                if !records.is_empty() {
                    sqlx::query("INSERT INTO audit_head (id, seq, hash, seal) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, seal = excluded.seal")
                        .bind(prev_seq)
                        .bind(&prev_hash)
                        .bind(key.map(|k| k.seal_head(prev_seq, &prev_hash)))
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(records)
            }

            async fn enqueue_in(
                conn: &mut $conn,
                event: &WorkflowEvent,
                key: &str,
                sinks: &[String],
            ) -> Result<(), StoreError> {
                if sinks.is_empty() {
                    return Ok(());
                }
                let payload = serde_json::to_string(event)?;
                let request_id = event.request_id().map(|r| r.to_string());
                let now = now_ms();
                for sink in sinks {
                    sqlx::query(
                        "INSERT INTO outbox (sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, lease_until_ms, created_ms) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, 0, $6) ON CONFLICT (idempotency_key) DO NOTHING",
                    )
                    .bind(sink)
                    .bind(&request_id)
                    .bind(event.kind())
                    .bind(&payload)
                    .bind(format!("{sink}:{key}"))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }
        }

        impl $ty {
            /// Seal the audit records this store writes from now on with `key`.
            pub fn with_audit_key(mut self, key: Option<AuditKey>) -> Self {
                self.audit_key = key.map(std::sync::Arc::new);
                self
            }
        }

        #[async_trait::async_trait]
        impl Store for $ty {
            fn backend(&self) -> &'static str {
                Self::BACKEND
            }

            fn change_feed(&self) -> Option<$crate::store::ChangeFeed> {
                self.feed()
            }

            async fn create_request(&self, req: &ApprovalRequest, sinks: &[String]) -> Result<RequestView, StoreError> {
                let mut conn = self.pool.acquire().await?;
                let mut tx = self.begin_audited(&mut *conn).await?;
                let id = req.id.to_string();
                let key = req.requester.key();
                let hash = req.statement_hash.to_string();
                sqlx::query(Self::LOCK_STATEMENT)
                    .bind(format!("{key}\n{}\n{hash}", req.connection))
                    .execute(&mut *tx)
                    .await?;
                let held: Option<String> = sqlx::query_scalar(
                    concat!("SELECT id FROM requests WHERE ", $crate::store::backend::reusable_request!(), " LIMIT 1"),
                )
                .bind(&key)
                .bind(&req.connection)
                .bind(&hash)
                .bind(now_ms())
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(held) = held {
                    return Err(StoreError::AlreadyHeld(held));
                }
                sqlx::query(
                    "INSERT INTO requests (id, connection, statement, statement_hash, requester_key, requester_json, rule, reasons_json, approver_groups_json, quorum, status, origin, session_id, created_ms, expires_ms, updated_ms, execution_json, remind_after_secs, escalate_after_secs, escalate_to_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, $17, $18, $19)",
                )
                .bind(&id)
                .bind(&req.connection)
                .bind(&req.statement)
                .bind(req.statement_hash.to_string())
                .bind(req.requester.key())
                .bind(serde_json::to_string(&req.requester)?)
                .bind(&req.rule)
                .bind(serde_json::to_string(&req.reasons)?)
                .bind(serde_json::to_string(&req.approver_groups)?)
                .bind(req.quorum as i64)
                .bind(req.status.as_str())
                .bind(&req.origin)
                .bind(req.session_id.map(|s| s.to_string()))
                .bind(time_to_ms(req.created_at))
                .bind(time_to_ms(req.expires_at))
                .bind(time_to_ms(req.updated_at))
                .bind(req.reminders.remind_after_secs.map(|s| s.min(i64::MAX as u64) as i64))
                .bind(req.reminders.escalate_after_secs.map(|s| s.min(i64::MAX as u64) as i64))
                .bind(if req.reminders.escalate_to.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&req.reminders.escalate_to)?)
                })
                .execute(&mut *tx)
                .await?;
                let audit = AuditEntry::new(req.requester.key(), "request.created", req.origin.clone())
                    .request(&id)
                    .decision("review")
                    .statement(req.statement_hash)
                    .detail(serde_json::json!({
                        "connection": req.connection,
                        "rule": req.rule,
                        "reasons": req.reasons,
                        "approver_groups": req.approver_groups,
                        "quorum": req.quorum,
                        "expires_at": req.expires_at.unix_timestamp(),
                    }));
                let view = Self::load_view(&mut *tx, &id).await?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
                Self::enqueue_in(&mut *tx, &WorkflowEvent::Created { request: view.clone() }, &format!("{id}:created"), sinks).await?;
                Self::append_audits_in(&mut *tx, &[audit], self.audit_key.as_deref()).await?;
                tx.commit().await?;
                self.await_durable(&mut *conn).await?;
                Ok(view)
            }

            async fn get_request(&self, id: RequestId) -> Result<Option<RequestView>, StoreError> {
                let mut conn = self.pool.acquire().await?;
                Self::load_view(&mut *conn, &id.to_string()).await
            }

            async fn list_requests(&self, status: Option<RequestStatus>, limit: u32) -> Result<Vec<ApprovalRequest>, StoreError> {
                let rows = match status {
                    Some(s) => sqlx::query(
                        "SELECT id, connection, statement, statement_hash, requester_json, rule, reasons_json, approver_groups_json, quorum, status, origin, session_id, created_ms, expires_ms, updated_ms, execution_json, remind_after_secs, escalate_after_secs, escalate_to_json FROM requests WHERE status = $1 ORDER BY created_ms DESC, id DESC LIMIT $2",
                    )
                    .bind(s.as_str())
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?,
                    None => sqlx::query(
                        "SELECT id, connection, statement, statement_hash, requester_json, rule, reasons_json, approver_groups_json, quorum, status, origin, session_id, created_ms, expires_ms, updated_ms, execution_json, remind_after_secs, escalate_after_secs, escalate_to_json FROM requests ORDER BY created_ms DESC, id DESC LIMIT $1",
                    )
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?,
                };
                rows.iter().map(|r| request_row(r)?.into_request()).collect()
            }

            async fn find_reusable(
                &self,
                requester_key: &str,
                connection: &str,
                hash: &StatementHash,
            ) -> Result<Option<ApprovalRequest>, StoreError> {
                let row = sqlx::query(concat!(
                    "SELECT id, connection, statement, statement_hash, requester_json, rule, reasons_json, approver_groups_json, quorum, status, origin, session_id, created_ms, expires_ms, updated_ms, execution_json, remind_after_secs, escalate_after_secs, escalate_to_json FROM requests WHERE ",
                    $crate::store::backend::reusable_request!(),
                    " ORDER BY created_ms DESC LIMIT 1"
                ))
                .bind(requester_key)
                .bind(connection)
                .bind(hash.to_string())
                .bind(now_ms())
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(r) => Ok(Some(request_row(&r)?.into_request()?)),
                    None => Ok(None),
                }
            }

            async fn cast_vote(&self, vote: &Vote, now_ms: i64, sinks: &[String]) -> Result<VoteOutcome, StoreError> {
                let id = vote.request_id.to_string();
                let mut conn = self.pool.acquire().await?;
                let mut tx = self.begin_audited(&mut *conn).await?;
                let locked = sqlx::query(Self::LOCK_REQUEST).bind(&id).fetch_optional(&mut *tx).await?;
                if locked.is_none() {
                    return Err(StoreError::NotFound(id));
                }
                let view = Self::load_view(&mut *tx, &id).await?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
                let refuse = |code: &'static str, reason: String, view: RequestView| {
                    Ok(VoteOutcome::Refused { code, reason, view })
                };
                if view.request.status != RequestStatus::Pending {
                    let reason = format!("request is already {}: votes are closed", view.request.status);
                    return refuse("resolved", reason, view);
                }
                if time_to_ms(view.request.expires_at) <= now_ms {
                    return refuse("expired", "request has expired: ask the requester to re-submit".into(), view);
                }
                if view.votes.iter().any(|v| v.voter == vote.voter) {
                    let reason = "you have already voted on this request (each person counts once, across every channel)".into();
                    return refuse("already_voted", reason, view);
                }
                let inserted = sqlx::query(
                    "INSERT INTO votes (request_id, voter, voter_name, decision, reason, channel, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (request_id, voter) DO NOTHING",
                )
                .bind(&id)
                .bind(&vote.voter.0)
                .bind(&vote.voter_name)
                .bind(vote.decision.as_str())
                .bind(&vote.reason)
                .bind(&vote.channel)
                .bind(time_to_ms(vote.at))
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    let reason = "you have already voted on this request".into();
                    return refuse("already_voted", reason, view);
                }
                let mut audit = vec![AuditEntry::new(vote.voter.0.clone(), "vote.recorded", vote.channel.clone())
                    .request(&id)
                    .decision(vote.decision.as_str())
                    .statement(view.request.statement_hash)
                    .detail(serde_json::json!({ "reason": vote.reason, "voter_name": vote.voter_name }))];
                let approvals = view.approvals() + usize::from(vote.decision == Decision::Approve);
                let new_status = match vote.decision {
                    Decision::Deny => Some(RequestStatus::Denied),
                    Decision::Approve if approvals as u32 >= view.request.quorum => Some(RequestStatus::Approved),
                    Decision::Approve => None,
                };
                if let Some(status) = new_status {
                    sqlx::query("UPDATE requests SET status = $1, updated_ms = $2 WHERE id = $3 AND status = 'pending'")
                        .bind(status.as_str())
                        .bind(now_ms)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    audit.push(
                        AuditEntry::new("system", "request.resolved", vote.channel.clone())
                            .request(&id)
                            .decision(status.as_str())
                            .statement(view.request.statement_hash)
                            .detail(serde_json::json!({ "approvals": approvals, "quorum": view.request.quorum })),
                    );
                    Self::announce(&mut *tx, &id).await?;
                }
                let view = Self::load_view(&mut *tx, &id).await?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
                let voter_key = &vote.voter.0;
                Self::enqueue_in(
                    &mut *tx,
                    &WorkflowEvent::VoteRecorded { request: view.clone(), vote: vote.clone() },
                    &format!("{id}:vote:{voter_key}"),
                    sinks,
                )
                .await?;
                if new_status.is_some() {
                    Self::enqueue_in(&mut *tx, &WorkflowEvent::Resolved { request: view.clone() }, &format!("{id}:resolved"), sinks).await?;
                }
                Self::append_audits_in(&mut *tx, &audit, self.audit_key.as_deref()).await?;
                tx.commit().await?;
                self.await_durable(&mut *conn).await?;
                Ok(VoteOutcome::Recorded { view, resolved: new_status.is_some() })
            }

            async fn transition(&self, id: RequestId, t: Transition, sinks: &[String]) -> Result<Option<RequestView>, StoreError> {
                let id = id.to_string();
                let mut conn = self.pool.acquire().await?;
                let mut tx = self.begin_audited(&mut *conn).await?;
                let locked = sqlx::query(Self::LOCK_REQUEST).bind(&id).fetch_optional(&mut *tx).await?;
                let Some(locked) = locked else { return Err(StoreError::NotFound(id)) };
                let current: String = locked.try_get("status")?;
                if !t.from.iter().any(|s| s.as_str() == current) {
                    return Ok(None);
                }
                if let Some(quiet_since) = t.quiet_since_ms {
                    let updated: i64 = locked.try_get("updated_ms")?;
                    if updated > quiet_since {
                        return Ok(None);
                    }
                }
                let execution = match &t.execution {
                    Some(e) => Some(serde_json::to_string(e)?),
                    None => None,
                };
                sqlx::query(
                    "UPDATE requests SET status = $1, updated_ms = $2, execution_json = COALESCE($3, execution_json) WHERE id = $4 AND status = $5",
                )
                .bind(t.to.as_str())
                .bind(now_ms())
                .bind(execution)
                .bind(&id)
                .bind(&current)
                .execute(&mut *tx)
                .await?;
                Self::announce(&mut *tx, &id).await?;
                let view = Self::load_view(&mut *tx, &id).await?.ok_or_else(|| StoreError::NotFound(id.clone()))?;
                match t.notify {
                    Some(NotifyKind::Resolved) => {
                        Self::enqueue_in(&mut *tx, &WorkflowEvent::Resolved { request: view.clone() }, &format!("{id}:resolved"), sinks).await?
                    }
                    Some(NotifyKind::Executed) => {
                        Self::enqueue_in(&mut *tx, &WorkflowEvent::Executed { request: view.clone() }, &format!("{id}:executed"), sinks).await?
                    }
                    None => {}
                }
                Self::append_audits_in(&mut *tx, std::slice::from_ref(&t.audit), self.audit_key.as_deref()).await?;
                tx.commit().await?;
                self.await_durable(&mut *conn).await?;
                Ok(Some(view))
            }

            async fn due_for_expiry(&self, now_ms: i64, limit: u32) -> Result<Vec<RequestId>, StoreError> {
                self.check_clock().await;
                let rows = sqlx::query("SELECT id FROM requests WHERE status IN ('pending', 'approved') AND expires_ms <= $1 ORDER BY expires_ms LIMIT $2")
                    .bind(now_ms)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(request_id_row).collect()
            }

            async fn touch_executing(&self, ids: &[RequestId], now_ms: i64) -> Result<(), StoreError> {
                for id in ids {
                    sqlx::query("UPDATE requests SET updated_ms = $1 WHERE id = $2 AND status = 'executing' AND updated_ms < $1")
                        .bind(now_ms)
                        .bind(id.to_string())
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }

            async fn quiet_executions(&self, quiet_since_ms: i64, limit: u32) -> Result<Vec<RequestId>, StoreError> {
                let rows = sqlx::query("SELECT id FROM requests WHERE status = 'executing' AND updated_ms <= $1 ORDER BY updated_ms LIMIT $2")
                    .bind(quiet_since_ms)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(request_id_row).collect()
            }

            async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
                let mut conn = self.pool.acquire().await?;
                let mut tx = self.begin_audited(&mut *conn).await?;
                let rec = Self::append_audits_in(&mut *tx, std::slice::from_ref(&entry), self.audit_key.as_deref()).await?.remove(0);
                tx.commit().await?;
                self.await_durable(&mut *conn).await?;
                Ok(rec)
            }

            async fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
                let row = sqlx::query("SELECT seq, hash, seal FROM audit_head WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(r) => Some(AuditHead {
                        seq: r.try_get("seq")?,
                        hash: r.try_get("hash")?,
                        seal: r.try_get("seal")?,
                    }),
                    None => None,
                })
            }

            async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, at_ms, actor, action, request_id, decision, channel, statement_hash, detail, prev_hash, hash, seal FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AuditRow {
                            seq: r.try_get("seq")?,
                            at_ms: r.try_get("at_ms")?,
                            actor: r.try_get("actor")?,
                            action: r.try_get("action")?,
                            request_id: r.try_get("request_id")?,
                            decision: r.try_get("decision")?,
                            channel: r.try_get("channel")?,
                            statement_hash: r.try_get("statement_hash")?,
                            detail: r.try_get("detail")?,
                            prev_hash: r.try_get("prev_hash")?,
                            hash: r.try_get("hash")?,
                            seal: r.try_get("seal")?,
                        }
                        .into_record())
                    })
                    .collect()
            }

            async fn enqueue(&self, event: &WorkflowEvent, key: &str, sinks: &[String]) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                Self::enqueue_in(&mut *tx, event, key, sinks).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn release_outbox_leases(&self) -> Result<u64, StoreError> {
                let done = sqlx::query("UPDATE outbox SET lease_until_ms = 0 WHERE status = 'pending' AND lease_until_ms > 0")
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn lease_outbox(&self, sinks: &[String], now_ms: i64, lease_ms: i64, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
                if sinks.is_empty() {
                    return Ok(vec![]);
                }
                // The sinks are filtered in SQL: filtering after the LIMIT let one backed-up sink's rows fill
                // the batch and starve a worker loop serving only other sinks.
                let placeholders: Vec<String> = (0..sinks.len()).map(|i| format!("${}", i + 3)).collect();
                let sql = format!("{} ({}) {}", Self::LEASE_SELECT, placeholders.join(", "), Self::LEASE_TAIL);
                let mut tx = self.begin_write().await?;
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms).bind(limit as i64);
                for sink in sinks {
                    query = query.bind(sink);
                }
                let rows = query.fetch_all(&mut *tx).await?;
                let mut items = Vec::new();
                for r in &rows {
                    let item = outbox_row(r)?;
                    if !sinks.iter().any(|s| *s == item.sink) || items.len() >= limit as usize {
                        continue;
                    }
                    sqlx::query("UPDATE outbox SET lease_until_ms = $1, attempts = attempts + 1 WHERE id = $2")
                        .bind(now_ms + lease_ms)
                        .bind(item.id)
                        .execute(&mut *tx)
                        .await?;
                    items.push(OutboxItem { attempts: item.attempts + 1, ..item });
                }
                tx.commit().await?;
                Ok(items)
            }

            async fn renew_outbox_lease(&self, id: i64, attempts: i64, until_ms: i64) -> Result<bool, StoreError> {
                // Every lease counts an attempt: the count tells this worker's lease from a later one.
                let done = sqlx::query("UPDATE outbox SET lease_until_ms = $1 WHERE id = $2 AND attempts = $3 AND status = 'pending'")
                    .bind(until_ms)
                    .bind(id)
                    .bind(attempts)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn outbox_delivered(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
                sqlx::query("UPDATE outbox SET status = 'delivered', delivered_ms = $1, last_error = NULL WHERE id = $2")
                    .bind(now_ms)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn outbox_failed(&self, id: i64, error: &str, next_attempt_ms: Option<i64>) -> Result<(), StoreError> {
                match next_attempt_ms {
                    Some(next) => sqlx::query("UPDATE outbox SET last_error = $1, next_attempt_ms = $2, lease_until_ms = 0 WHERE id = $3")
                        .bind(error)
                        .bind(next)
                        .bind(id)
                        .execute(&self.pool)
                        .await?,
                    None => sqlx::query("UPDATE outbox SET last_error = $1, status = 'dead', lease_until_ms = 0 WHERE id = $2")
                        .bind(error)
                        .bind(id)
                        .execute(&self.pool)
                        .await?,
                };
                Ok(())
            }

            async fn outbox_deferred(&self, id: i64, error: &str, next_attempt_ms: i64) -> Result<(), StoreError> {
                // The lease counted an attempt; a deferral refunds it (never below zero).
                sqlx::query("UPDATE outbox SET last_error = $1, next_attempt_ms = $2, lease_until_ms = 0, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE id = $3 AND status = 'pending'")
                    .bind(error)
                    .bind(next_attempt_ms)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn outbox_list(&self, status: Option<OutboxStatus>, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
                let rows = match status {
                    Some(s) => sqlx::query("SELECT id, sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, last_error, created_ms FROM outbox WHERE status = $1 ORDER BY id DESC LIMIT $2")
                        .bind(s.as_str())
                        .bind(limit as i64)
                        .fetch_all(&self.pool)
                        .await?,
                    None => sqlx::query("SELECT id, sink, request_id, event_kind, payload, idempotency_key, status, attempts, next_attempt_ms, last_error, created_ms FROM outbox ORDER BY id DESC LIMIT $1")
                        .bind(limit as i64)
                        .fetch_all(&self.pool)
                        .await?,
                };
                rows.iter().map(outbox_row).collect()
            }

            async fn outbox_backlog(&self) -> Result<Vec<$crate::store::SinkBacklog>, StoreError> {
                let rows = sqlx::query("SELECT sink, SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending, SUM(CASE WHEN status = 'pending' AND last_error IS NOT NULL THEN 1 ELSE 0 END) AS failing, SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) AS dead FROM outbox WHERE status IN ('pending', 'dead') GROUP BY sink ORDER BY sink")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::store::SinkBacklog {
                            sink: r.try_get("sink")?,
                            pending: r.try_get::<Option<i64>, _>("pending")?.unwrap_or(0),
                            failing: r.try_get::<Option<i64>, _>("failing")?.unwrap_or(0),
                            dead: r.try_get::<Option<i64>, _>("dead")?.unwrap_or(0),
                        })
                    })
                    .collect()
            }

            async fn outbox_retry(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
                let r = sqlx::query("UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_ms = $1, lease_until_ms = 0 WHERE id = $2 AND status = 'dead'")
                    .bind(now_ms)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn put_ref(&self, request: RequestId, sink: &str, key: &str, value: &str) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO message_refs (request_id, sink, ref_key, value) VALUES ($1, $2, $3, $4) ON CONFLICT (request_id, sink, ref_key) DO UPDATE SET value = excluded.value")
                    .bind(request.to_string())
                    .bind(sink)
                    .bind(key)
                    .bind(value)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn get_ref(&self, request: RequestId, sink: &str, key: &str) -> Result<Option<String>, StoreError> {
                let row = sqlx::query("SELECT value FROM message_refs WHERE request_id = $1 AND sink = $2 AND ref_key = $3")
                    .bind(request.to_string())
                    .bind(sink)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(match row {
                    Some(r) => Some(r.try_get("value")?),
                    None => None,
                })
            }

            async fn find_ref(&self, sink: &str, key: &str, value: &str) -> Result<Option<RequestId>, StoreError> {
                let row = sqlx::query("SELECT request_id FROM message_refs WHERE sink = $1 AND ref_key = $2 AND value = $3 LIMIT 1")
                    .bind(sink)
                    .bind(key)
                    .bind(value)
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(r) => {
                        let s: String = r.try_get("request_id")?;
                        Ok(Some(s.parse().map_err(|_| StoreError::Corrupt(format!("bad request id {s:?}")))?))
                    }
                    None => Ok(None),
                }
            }

            async fn consume_nonce(&self, nonce: &str, now_ms: i64) -> Result<bool, StoreError> {
                let r = sqlx::query("INSERT INTO used_nonces (nonce, used_ms) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING")
                    .bind(nonce)
                    .bind(now_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected() == 1)
            }

            async fn prune_nonces(&self, prefix: &str, used_before_ms: i64) -> Result<u64, StoreError> {
                // A plain prefix compare: no LIKE patterns to escape, no collation order to rely on.
                let r = sqlx::query("DELETE FROM used_nonces WHERE substr(nonce, 1, length($1)) = $1 AND used_ms < $2")
                    .bind(prefix)
                    .bind(used_before_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(r.rows_affected())
            }

            async fn release_nonce(&self, nonce: &str) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM used_nonces WHERE nonce = $1")
                    .bind(nonce)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn session_started(&self, s: &SessionRecord) -> Result<(), StoreError> {
                // Open sessions are alive from their start: a replica's sweep measures quiet from here.
                sqlx::query("INSERT INTO sessions (id, connection, requester_json, client_addr, application, protocol, started_ms, ended_ms, alive_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $7) ON CONFLICT (id) DO NOTHING")
                    .bind(s.id.to_string())
                    .bind(&s.connection)
                    .bind(serde_json::to_string(&s.requester)?)
                    .bind(&s.client_addr)
                    .bind(&s.application)
                    .bind(&s.protocol)
                    .bind(time_to_ms(s.started_at))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn session_ended(&self, id: SessionId, ended_ms: i64) -> Result<(), StoreError> {
                // The session's own end wins over a sweep's guess (a replica may have closed it while this
                // gateway could not reach the store).
                sqlx::query("UPDATE sessions SET ended_ms = $1, end_reason = NULL WHERE id = $2")
                    .bind(ended_ms)
                    .bind(id.to_string())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn touch_sessions(&self, ids: &[SessionId], now_ms: i64) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                for id in ids {
                    sqlx::query("UPDATE sessions SET alive_ms = $1 WHERE id = $2 AND ended_ms IS NULL")
                        .bind(now_ms)
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn close_quiet_sessions(&self, quiet_since_ms: i64, reason: &str, limit: u32) -> Result<Vec<SessionId>, StoreError> {
                let rows = sqlx::query("SELECT id, started_ms, alive_ms FROM sessions WHERE ended_ms IS NULL AND COALESCE(alive_ms, started_ms) < $1 ORDER BY started_ms LIMIT $2")
                    .bind(quiet_since_ms)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                let mut closed = Vec::new();
                for r in &rows {
                    let id: SessionId = $crate::store::backend::parse_uuid(&r.try_get::<String, _>("id")?, "session id")?;
                    let started: i64 = r.try_get("started_ms")?;
                    let alive: Option<i64> = r.try_get("alive_ms")?;
                    // The last moment the session is known to have been open: its last statement's end, its
                    // last heartbeat, or its start.
                    let last_statement: Option<i64> = sqlx::query_scalar("SELECT MAX(at_ms + duration_us / 1000) FROM statements WHERE session_id = $1")
                        .bind(id.0)
                        .fetch_one(&self.pool)
                        .await?;
                    let end = started.max(alive.unwrap_or(started)).max(last_statement.unwrap_or(started));
                    // Compare-and-set: a session its gateway marked alive (or ended) meanwhile is left alone.
                    let done = sqlx::query("UPDATE sessions SET ended_ms = $1, end_reason = $2 WHERE id = $3 AND ended_ms IS NULL AND COALESCE(alive_ms, started_ms) < $4")
                        .bind(end)
                        .bind(reason)
                        .bind(id.to_string())
                        .bind(quiet_since_ms)
                        .execute(&self.pool)
                        .await?;
                    if done.rows_affected() == 1 {
                        closed.push(id);
                    }
                }
                Ok(closed)
            }

            async fn statements_recorded(&self, batch: &[StatementRecord]) -> Result<(), StoreError> {
                // Multi-row inserts: at pgbench rates one round trip per row to the database (and, for
                // SQLite, to its worker thread) would cost more than the proxying itself.
                let mut tx = self.begin_record().await?;
                let mut rest = batch;
                for n in $crate::store::backend::statement_chunks(batch.len()) {
                    let (chunk, tail) = rest.split_at(n);
                    rest = tail;
                    let mut q = sqlx::query($crate::store::backend::insert_statements_sql(n, Self::BULK_INSERT));
                    for st in chunk {
                        q = q
                            .bind(st.session_id.0)
                            .bind(st.sql.clone())
                            .bind(&st.statement_hash.as_bytes()[..])
                            .bind(st.decision.as_str())
                            .bind(st.request_id.map(|r| r.to_string()))
                            .bind(st.outcome.as_str())
                            .bind(st.command_tag.as_deref())
                            .bind(st.rows.map(|r| r.min(i64::MAX as u64) as i64))
                            .bind(st.error.as_deref())
                            .bind(st.masked_fields.min(i64::MAX as u64) as i64)
                            .bind(st.duration_us.min(i64::MAX as u64) as i64)
                            .bind(time_to_ms(st.at));
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn list_sessions(&self, limit: u32) -> Result<Vec<SessionRecord>, StoreError> {
                let rows = sqlx::query("SELECT id, connection, requester_json, client_addr, application, protocol, started_ms, ended_ms, end_reason FROM sessions ORDER BY started_ms DESC, id DESC LIMIT $1")
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(session_row).collect()
            }

            async fn session_tally(&self, id: SessionId) -> Result<Option<(SessionRecord, $crate::sessions::SessionTally)>, StoreError> {
                let Some(session) = self.session_record(id).await? else { return Ok(None) };
                // Aggregated in the database: a session's statements are never read back here.
                let groups = sqlx::query("SELECT decision, outcome, COUNT(*) AS n, CAST(COALESCE(SUM(rows), 0) AS BIGINT) AS rows_sum, CAST(COALESCE(SUM(masked_fields), 0) AS BIGINT) AS masked FROM statements WHERE session_id = $1 GROUP BY decision, outcome ORDER BY decision, outcome")
                    .bind(id.0)
                    .fetch_all(&self.pool)
                    .await?;
                let requests = sqlx::query("SELECT request_id FROM statements WHERE session_id = $1 AND request_id IS NOT NULL GROUP BY request_id ORDER BY MIN(id)")
                    .bind(id.0)
                    .fetch_all(&self.pool)
                    .await?;
                let count = |v: i64| v.max(0) as u64;
                let mut tally = $crate::sessions::SessionTally::default();
                for g in &groups {
                    tally.groups.push($crate::sessions::TallyGroup {
                        decision: g.try_get("decision")?,
                        outcome: g.try_get("outcome")?,
                        statements: count(g.try_get("n")?),
                        rows: count(g.try_get("rows_sum")?),
                        masked_fields: count(g.try_get("masked")?),
                    });
                }
                for r in &requests {
                    let id: String = r.try_get("request_id")?;
                    tally.requests.push($crate::store::backend::parse_uuid(&id, "request id")?);
                }
                Ok(Some((session, tally)))
            }

            async fn get_session(&self, id: SessionId) -> Result<Option<(SessionRecord, Vec<StatementRecord>)>, StoreError> {
                let Some(session) = self.session_record(id).await? else { return Ok(None) };
                let rows = sqlx::query("SELECT session_id, sql, statement_hash, decision, request_id, outcome, command_tag, rows, error, masked_fields, duration_us, at_ms FROM statements WHERE session_id = $1 ORDER BY id")
                    .bind(id.0)
                    .fetch_all(&self.pool)
                    .await?;
                let mut statements = Vec::with_capacity(rows.len());
                for r in rows {
                    statements.push(
                        StatementRow {
                            session_id: r.try_get("session_id")?,
                            sql: r.try_get("sql")?,
                            statement_hash: r.try_get("statement_hash")?,
                            decision: r.try_get("decision")?,
                            request_id: r.try_get("request_id")?,
                            outcome: r.try_get("outcome")?,
                            command_tag: r.try_get("command_tag")?,
                            rows: r.try_get("rows")?,
                            error: r.try_get("error")?,
                            masked_fields: r.try_get("masked_fields")?,
                            duration_us: r.try_get("duration_us")?,
                            at_ms: r.try_get("at_ms")?,
                        }
                        .into_record()?,
                    );
                }
                Ok(Some((session, statements)))
            }
        }
    };
}

pub(crate) use reusable_request;
pub(crate) use sql_store;

//! HTTP API callers have no connection to hang a session on: statements from one requester chain to one
//! connection form a session that ends after a quiet period, so HTTP work gets the same records and
//! threaded summaries as wire sessions.

use super::recording::RecordOp;
use super::Engine;
use countersign_bot::sessions::{SessionRecord, StatementRecord};
use countersign_bot::{RequestId, RequesterChain, SessionId, StatementHash};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An HTTP session ends after this long without statements.
pub const HTTP_SESSION_IDLE: Duration = Duration::from_secs(300);

/// Open HTTP sessions by (requester chain, connection).
#[derive(Default)]
pub(crate) struct HttpSessions {
    open: Mutex<HashMap<(String, String), (SessionId, Instant)>>,
}

/// One statement handled by the HTTP API, for the session record.
pub struct HttpStatement<'a> {
    /// Connection name.
    pub connection: &'a str,
    /// Who sent it.
    pub requester: &'a RequesterChain,
    /// Its text.
    pub sql: &'a str,
    /// Its hash.
    pub hash: &'a StatementHash,
    /// `allow`, `review` or `block`.
    pub decision: &'a str,
    /// Request, when held or approved.
    pub request_id: Option<RequestId>,
    /// `ok`, `error`, `blocked`, `held`, `denied`…
    pub outcome: &'a str,
    /// Command tag of what ran.
    pub command_tag: Option<String>,
    /// Rows from the tag.
    pub rows: Option<u64>,
    /// Error text.
    pub error: Option<String>,
    /// Masked fields in the result.
    pub masked_fields: u64,
    /// Time spent.
    pub duration: Duration,
}

impl Engine {
    /// Record one HTTP statement, opening the caller's HTTP session when needed.
    pub async fn record_http(&self, st: HttpStatement<'_>) {
        let key = (st.requester.key(), st.connection.to_string());
        let (id, fresh) = {
            let mut open = self
                .http_sessions
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match open.get_mut(&key) {
                Some((id, last)) => {
                    *last = Instant::now();
                    (*id, false)
                }
                None => {
                    let id = SessionId::new();
                    open.insert(key, (id, Instant::now()));
                    (id, true)
                }
            }
        };
        if fresh {
            let rec = SessionRecord {
                id,
                connection: st.connection.to_string(),
                requester: st.requester.clone(),
                client_addr: None,
                application: Some("http-api".into()),
                protocol: "http".into(),
                started_at: countersign_bot::clock::now(),
                ended_at: None,
                end_reason: None,
            };
            self.recorder.send(RecordOp::Started(rec)).await;
        }
        let rec = StatementRecord {
            session_id: id,
            sql: countersign_bot::sessions::recorded_sql(st.sql.into()),
            statement_hash: *st.hash,
            decision: st.decision.to_string(),
            request_id: st.request_id,
            outcome: st.outcome.to_string(),
            command_tag: st.command_tag,
            rows: st.rows,
            error: st.error,
            masked_fields: st.masked_fields,
            duration_us: st.duration.as_micros() as u64,
            at: countersign_bot::clock::now() - st.duration,
        };
        self.recorder.send(RecordOp::Statement(rec)).await;
    }

    /// End HTTP sessions idle for longer than `idle` (and queue their summaries). Returns how many ended.
    pub async fn end_idle_http_sessions(&self, idle: Duration) -> usize {
        let ended: Vec<SessionId> = {
            let mut open = self
                .http_sessions
                .open
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let stale: Vec<(String, String)> = open
                .iter()
                .filter(|(_, (_, last))| now.duration_since(*last) >= idle)
                .map(|(k, _)| k.clone())
                .collect();
            stale
                .into_iter()
                .filter_map(|k| open.remove(&k).map(|(id, _)| id))
                .collect()
        };
        for id in &ended {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let now = countersign_bot::clock::now();
            self.recorder
                .send(RecordOp::Ended(
                    *id,
                    (now.unix_timestamp_nanos() / 1_000_000) as i64,
                    tx,
                ))
                .await;
            let _ = rx.await;
            self.session_summary(*id).await;
        }
        ended.len()
    }
}

//! Session recording: each client session and each statement it sent.

use crate::identity::RequesterChain;
use crate::ids::{RequestId, SessionId, StatementHash};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;

/// A client session (wire connection or HTTP caller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id.
    pub id: SessionId,
    /// Connection name.
    pub connection: String,
    /// Who.
    pub requester: RequesterChain,
    /// Client socket address.
    pub client_addr: Option<String>,
    /// Client application name.
    pub application: Option<String>,
    /// `wire` or `http`.
    pub protocol: String,
    /// Started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Ended, when it has.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub ended_at: Option<OffsetDateTime>,
    /// Why the end was recorded by someone other than the session's own gateway (its gateway stopped, so
    /// `ended_at` is only the last time it was known to be open); `None` for a session that ended itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

/// The end reason of a session closed because its gateway stopped without recording the end.
pub const GATEWAY_STOPPED: &str =
    "gateway stopped, end time unknown: the end shown is the last time the session was known to be open";

/// How long a session may go without its gateway marking it open before another process closes it.
/// Gateways mark theirs every [`SESSION_HEARTBEAT`].
pub const SESSION_QUIET_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// How often a gateway marks its open sessions as still open.
pub const SESSION_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// One statement of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementRecord {
    /// Session.
    pub session_id: SessionId,
    /// Statement text (masked values never appear here: statements are what the client sent); shared
    /// with the proxy's copy, so recording does not copy it.
    pub sql: Arc<str>,
    /// Hash.
    pub statement_hash: StatementHash,
    /// `allow`, `block`, `review`.
    pub decision: String,
    /// Request, when held.
    pub request_id: Option<RequestId>,
    /// Final outcome: `ok`, `error`, `blocked`, `held`, `denied`, `timed_out`, `cancelled`.
    pub outcome: String,
    /// Command tag.
    pub command_tag: Option<String>,
    /// Rows affected/returned.
    pub rows: Option<u64>,
    /// Error message.
    pub error: Option<String>,
    /// Fields masked in results.
    pub masked_fields: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// When it arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Counts for a threaded session summary.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Session id.
    pub session_id: Option<SessionId>,
    /// Connection.
    pub connection: String,
    /// Requester chain, displayed.
    pub requester: String,
    /// Duration in seconds.
    pub duration_secs: u64,
    /// Statements that ran.
    pub run: u64,
    /// Blocked.
    pub blocked: u64,
    /// Held for approval.
    pub held: u64,
    /// Held and then approved.
    pub approved: u64,
    /// Rows affected by statements that ran.
    pub rows_affected: u64,
    /// Fields masked.
    pub masked_fields: u64,
}

/// What a summary needs of a session's statements, which the store computes without reading them back
/// (a session may have sent millions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTally {
    /// The requests its statements named, in the order the session met them, each once.
    pub requests: Vec<RequestId>,
    /// Statements by decision and outcome.
    pub groups: Vec<TallyGroup>,
}

/// Statements of one decision and outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TallyGroup {
    /// `allow`, `review` or `block`.
    pub decision: String,
    /// `ok`, `error`, `blocked` or `not_run`.
    pub outcome: String,
    /// How many.
    pub statements: u64,
    /// Their rows affected, summed.
    pub rows: u64,
    /// Their masked fields, summed.
    pub masked_fields: u64,
}

impl SessionTally {
    /// The tally of `statements`, as the store computes it.
    pub fn of_records(statements: &[StatementRecord]) -> Self {
        let mut t = SessionTally::default();
        for st in statements {
            if let Some(id) = st.request_id.filter(|id| !t.requests.contains(id)) {
                t.requests.push(id);
            }
            let group = match t
                .groups
                .iter_mut()
                .find(|g| g.decision == st.decision && g.outcome == st.outcome)
            {
                Some(g) => g,
                None => {
                    t.groups.push(TallyGroup {
                        decision: st.decision.clone(),
                        outcome: st.outcome.clone(),
                        ..Default::default()
                    });
                    t.groups.last_mut().expect("just pushed")
                }
            };
            group.statements += 1;
            group.rows += st.rows.unwrap_or(0);
            group.masked_fields += st.masked_fields;
        }
        t
    }
}

impl SessionSummary {
    /// Summarise a session from its statements.
    pub fn from_records(session: &SessionRecord, statements: &[StatementRecord]) -> Self {
        Self::from_tally(session, &SessionTally::of_records(statements))
    }

    /// Summarise a session from the tally of its statements.
    pub fn from_tally(session: &SessionRecord, tally: &SessionTally) -> Self {
        let end = session.ended_at.unwrap_or_else(OffsetDateTime::now_utc);
        let mut s = SessionSummary {
            session_id: Some(session.id),
            connection: session.connection.clone(),
            requester: session.requester.display(),
            duration_secs: (end - session.started_at).whole_seconds().max(0) as u64,
            ..Default::default()
        };
        for g in &tally.groups {
            match g.decision.as_str() {
                "block" => s.blocked += g.statements,
                "review" => {
                    s.held += g.statements;
                    if g.outcome == "ok" || g.outcome == "error" {
                        s.approved += g.statements;
                    }
                }
                _ => {}
            }
            if g.outcome == "ok" {
                s.run += g.statements;
                s.rows_affected += g.rows;
            }
            s.masked_fields += g.masked_fields;
        }
        s
    }
}

/// The most of a statement's text a session record keeps; the statement hash still identifies all of it.
pub const MAX_RECORDED_SQL: usize = 64 * 1024;

/// `sql` as a session record keeps it: whole up to [`MAX_RECORDED_SQL`] bytes, else cut there with a note
/// giving the full length. An agent sending statements padded to megabytes must not be able to fill the
/// store's disk, or the memory of whoever reads the session back, at the rate it can send.
pub fn recorded_sql(sql: Arc<str>) -> Arc<str> {
    if sql.len() <= MAX_RECORDED_SQL {
        return sql;
    }
    let mut cut = MAX_RECORDED_SQL;
    while !sql.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n/* Countersign: recorded text cut at {cut} of {} bytes; the statement hash covers all of it */",
        &sql[..cut],
        sql.len()
    )
    .into()
}

#[cfg(test)]
mod recorded_sql_tests {
    use super::*;

    #[test]
    fn long_statements_are_cut_on_a_character_boundary_with_a_note() {
        let short: Arc<str> = "SELECT 1".into();
        assert!(Arc::ptr_eq(&recorded_sql(short.clone()), &short));
        let long: Arc<str> = format!("SELECT '{}'", "é".repeat(MAX_RECORDED_SQL)).into();
        let kept = recorded_sql(long.clone());
        assert!(kept.len() < MAX_RECORDED_SQL + 200, "{}", kept.len());
        assert!(kept.starts_with("SELECT 'éé"));
        assert!(
            kept.ends_with(&format!(
                "of {} bytes; the statement hash covers all of it */",
                long.len()
            )),
            "{}",
            &kept[kept.len() - 120..]
        );
    }
}

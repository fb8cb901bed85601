//! Asks PostgreSQL's own parser whether it rejects a statement the policy could not parse.
//!
//! The policy holds what sqlparser cannot read (fail closed). A plain syntax error is such a statement,
//! and holding it makes a reviewer look at something that can never run, while the client (a driver's
//! test suite, a person's typo) waits instead of getting PostgreSQL's `42601`. PostgreSQL parses a
//! whole query string before it runs any of it, and a Parse message's text likewise, so a text its raw
//! parser rejects runs nothing: forwarding it is safe, and the answer is PostgreSQL's own.
//!
//! The question goes to a session of the probe's own that sits in a failed transaction: there a Parse
//! message is raw-parsed and then refused with `25P02` before any parse analysis, so the answer depends
//! on the text alone (not on the catalog, search_path or temporary tables another session may have). A
//! raw-parser error is `42601` with a cursor position; "cannot insert multiple commands into a
//! prepared statement" (text that did parse) has none. Anything else, a timeout, or a session that left
//! its failed transaction, is "not known to be rejected" and the statement is held as before.

use super::codec::{error_fields, read_frame};
use super::gate::UpstreamTarget;
use super::upstream::{connect, Upstream};
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The longest a probe (a login included) may take before the statement is held instead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Answers of a probe are a handful of small frames; anything larger is not one.
const MAX_ANSWER_FRAME: usize = 64 * 1024;

/// A connection's parser probe: one upstream session, used by one question at a time.
pub struct SyntaxProbe {
    target: UpstreamTarget,
    session: tokio::sync::Mutex<Option<Upstream>>,
}

impl SyntaxProbe {
    /// A probe logging in to `target` as the gateway does (on first use).
    pub fn new(target: UpstreamTarget) -> Self {
        Self {
            target,
            session: tokio::sync::Mutex::new(None),
        }
    }

    /// True only when PostgreSQL's raw parser rejects `sql` (read with `standard_conforming_strings`
    /// on and UTF-8 text, as the policy reads it). False when it parses, or when that could not be
    /// learned in time.
    pub async fn rejects(&self, sql: &str) -> bool {
        let mut session = self.session.lock().await;
        let asked = tokio::time::timeout(PROBE_TIMEOUT, ask(&self.target, &mut session, sql)).await;
        match asked {
            Ok(Ok(rejected)) => rejected,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not ask PostgreSQL whether it can parse a statement; holding it for review");
                *session = None;
                false
            }
            Err(_) => {
                tracing::warn!(
                    "PostgreSQL did not answer a syntax check within {PROBE_TIMEOUT:?}; holding the statement for review"
                );
                // A half-read answer would be misread as the next one's.
                *session = None;
                false
            }
        }
    }
}

/// Why a probe got no answer.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("connecting: {0}")]
    Connect(#[from] super::upstream::UpstreamError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the probe session is not in a failed transaction (status {0:?})")]
    NotFailed(char),
    #[error("the statement cannot be sent in a Parse message: {0}")]
    Unsendable(std::io::Error),
}

async fn ask(
    target: &UpstreamTarget,
    session: &mut Option<Upstream>,
    sql: &str,
) -> Result<bool, ProbeError> {
    if session.is_none() {
        *session = Some(open_failed_session(target).await?);
    }
    let Some(up) = session.as_mut() else {
        unreachable!("the session was opened above")
    };
    let mut out = BytesMut::new();
    frontend::parse("", sql, std::iter::empty(), &mut out).map_err(ProbeError::Unsendable)?;
    frontend::sync(&mut out);
    let mut rejected = false;
    // Besides the error: ParseComplete (an empty or transaction-ending statement parsed), notices,
    // settings.
    exchange(up, &out, |tag, body| {
        if tag == b'E' {
            let mut code: &[u8] = b"";
            let mut positioned = false;
            for (field, value) in error_fields(body) {
                match field {
                    b'C' => code = value,
                    b'P' => positioned = true,
                    _ => {}
                }
            }
            rejected = code == b"42601" && positioned;
        }
    })
    .await?;
    Ok(rejected)
}

/// Sends `out` and reads the answer up to ReadyForQuery, showing each other frame to `frame`; the
/// session must still be in its failed transaction afterwards.
async fn exchange(
    up: &mut Upstream,
    out: &[u8],
    mut frame: impl FnMut(u8, &[u8]),
) -> Result<(), ProbeError> {
    up.stream.write_all(out).await?;
    up.stream.flush().await?;
    loop {
        let (tag, body) = read_frame(&mut up.stream, &mut up.leftover, MAX_ANSWER_FRAME).await?;
        if tag != b'Z' {
            frame(tag, &body);
            continue;
        }
        return match body.first().copied().unwrap_or(b'?') {
            b'E' => Ok(()),
            status => Err(ProbeError::NotFailed(status as char)),
        };
    }
}

/// Logs in and leaves the session in a failed transaction, where Parse stops after raw parsing.
async fn open_failed_session(target: &UpstreamTarget) -> Result<Upstream, ProbeError> {
    let params = [
        (
            "application_name".into(),
            "countersign (syntax checks)".into(),
        ),
        ("client_encoding".into(), "UTF8".into()),
        ("standard_conforming_strings".into(), "on".into()),
    ];
    let mut up = connect(target, &params).await?;
    let mut out = BytesMut::new();
    frontend::query("BEGIN; SELECT 1/0", &mut out).map_err(ProbeError::Unsendable)?;
    exchange(&mut up, &out, |_, _| {}).await?;
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> SyntaxProbe {
        SyntaxProbe::new(super::super::testing::local_postgres("test"))
    }

    #[tokio::test]
    async fn postgres_rejections_are_told_apart_from_what_it_parses() {
        let p = probe();
        // (text, PostgreSQL's raw parser rejects it)
        let cases = [
            ("SELEC 1", true),
            ("SELECT 1 FROM", true),
            ("SELECT 'unterminated", true),
            ("CREATE TABLE (", true),
            ("SELECT 1; SELEC 2", true),
            ("DELETE FROM t WHERE", true),
            // Parses: a single statement (refused 25P02 in the failed transaction), several
            // statements (refused as a prepared statement), and transaction-ending or empty text.
            ("SELECT 1", false),
            ("DELETE FROM no_such_table", false),
            ("INSERT INTO t VALUES (1, 2, 3, 4, 5)", false),
            ("SELECT 1; DELETE FROM t", false),
            ("ROLLBACK", false),
            ("COMMIT", false),
            ("", false),
            ("-- only a comment", false),
            ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SEARCH DEPTH FIRST BY n SET o SELECT * FROM r", false),
            // A NUL cannot be sent in a Parse message: not known to be rejected.
            ("SELECT '\0'", false),
        ];
        for (sql, rejected) in cases {
            assert_eq!(p.rejects(sql).await, rejected, "{sql:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_is_no_rejection() {
        let mut target = super::super::testing::local_postgres("test");
        // A port nothing listens on (bound then released).
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        target.port = free.local_addr().unwrap().port();
        drop(free);
        let p = SyntaxProbe::new(target);
        assert!(!p.rejects("SELEC 1").await);
    }
}

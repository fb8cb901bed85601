//! Session and statement records, written in batches by one task so recording never slows the data path.
//!
//! Statements are gathered for up to [`GATHER`] before one transaction writes them: the cost of a commit
//! (the pages it rewrites, and for SQLite the WAL frames of every index page it touched) is shared by
//! hundreds of statements instead of a recorder tick's worth. A session's start and end are written at
//! once, after the statements before them.

use countersign_bot::sessions::{SessionRecord, StatementRecord};
use countersign_bot::{SessionId, Store};
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

impl StatementWriter {
    pub(crate) fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<RecordOp>(64 * 1024);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            let mut statements = Vec::new();
            let mut due: Option<Instant> = None;
            loop {
                let got = match due {
                    None => rx.recv_many(&mut buf, BATCH).await,
                    Some(at) => {
                        match tokio::time::timeout_at(at, rx.recv_many(&mut buf, BATCH)).await {
                            Ok(n) => n,
                            Err(_) => {
                                flush(&store, &mut statements).await;
                                due = None;
                                continue;
                            }
                        }
                    }
                };
                if got == 0 {
                    flush(&store, &mut statements).await;
                    return;
                }
                for op in buf.drain(..) {
                    match op {
                        RecordOp::Started(s) => {
                            flush(&store, &mut statements).await;
                            if let Err(e) = store.session_started(&s).await {
                                tracing::warn!(session_id = %s.id, error = %e, "could not record session start");
                            }
                        }
                        RecordOp::Statement(st) => statements.push(st),
                        RecordOp::Statements(mut batch) => statements.append(&mut batch),
                        RecordOp::Ended(id, at, done) => {
                            flush(&store, &mut statements).await;
                            if let Err(e) = store.session_ended(id, at).await {
                                tracing::warn!(session_id = %id, error = %e, "could not record session end");
                            }
                            let _ = done.send(());
                        }
                    }
                }
                if statements.len() >= FLUSH_AT {
                    flush(&store, &mut statements).await;
                }
                if statements.is_empty() {
                    due = None;
                } else if due.is_none() {
                    due = Some(Instant::now() + GATHER);
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

async fn flush(store: &Arc<dyn Store>, statements: &mut Vec<StatementRecord>) {
    if statements.is_empty() {
        return;
    }
    let batch = std::mem::take(statements);
    for attempt in 0..3u32 {
        match store.statements_recorded(&batch).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, count = batch.len(), "could not record statements; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    tracing::error!(count = batch.len(), "statement records lost after retries");
}

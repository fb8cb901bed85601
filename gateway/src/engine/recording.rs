//! Session and statement records, written in batches by one task so recording never slows the data path.

use countersign_bot::sessions::{SessionRecord, StatementRecord};
use countersign_bot::{SessionId, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One thing to record.
pub(crate) enum RecordOp {
    Started(SessionRecord),
    Statement(StatementRecord),
    Ended(SessionId, i64, tokio::sync::oneshot::Sender<()>),
}

/// Handle to the writer task.
pub(crate) struct StatementWriter {
    tx: mpsc::Sender<RecordOp>,
}

const BATCH: usize = 512;

impl StatementWriter {
    pub(crate) fn spawn(store: Arc<dyn Store>) -> Self {
        let (tx, mut rx) = mpsc::channel::<RecordOp>(64 * 1024);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut buf, BATCH).await > 0 {
                let mut statements = Vec::new();
                for op in buf.drain(..) {
                    match op {
                        RecordOp::Started(s) => {
                            flush(&store, &mut statements).await;
                            if let Err(e) = store.session_started(&s).await {
                                tracing::warn!(session_id = %s.id, error = %e, "could not record session start");
                            }
                        }
                        RecordOp::Statement(st) => statements.push(st),
                        RecordOp::Ended(id, at, done) => {
                            flush(&store, &mut statements).await;
                            if let Err(e) = store.session_ended(id, at).await {
                                tracing::warn!(session_id = %id, error = %e, "could not record session end");
                            }
                            let _ = done.send(());
                        }
                    }
                }
                flush(&store, &mut statements).await;
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

//! Session recording off the hot path: sessions push events into a bounded channel that one task
//! drains on a short tick, so the relay never awaits the store and never wakes another task per statement.
//! Each tick hands its statements to the gate as one batch, so the engine's writer wakes once per tick too.

use super::extended::{statement_hash, Binding};
use super::gate::{ExecutionOutcome, SessionInfo, StatementRecord, WireGate};
use crate::policy::Action;
use countersign_bot::{RequestId, SessionId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const CAPACITY: usize = 16 * 1024;
const TICK: Duration = Duration::from_millis(20);

/// A finished statement as the relay saw it; hashing happens in the recorder task.
#[derive(Debug)]
pub struct FinishedStatement {
    /// Statement text.
    pub sql: Arc<str>,
    /// Bindings of the batch (parameters and declared types are hashed from them).
    pub binds: Vec<Binding>,
    /// Policy decision.
    pub decision: Action,
    /// Approval request, when held.
    pub request_id: Option<RequestId>,
    /// Set when this run was an approved execution to report to the engine.
    pub executed: Option<RequestId>,
    /// Receipt to ReadyForQuery.
    pub duration: Duration,
    /// Wall-clock time of receipt, taken when the statement finished (not when the record is handed
    /// on, which a slow store may delay).
    pub received_at: time::OffsetDateTime,
    /// Since forwarding (for approved executions).
    pub run_time: Duration,
    /// Last CommandComplete tag.
    pub command_tag: Option<String>,
    /// Error sent to the client.
    pub error: Option<String>,
    /// Result fields the masker replaced.
    pub masked_fields: u64,
}

enum Event {
    Started(Arc<SessionInfo>),
    Statement(SessionId, FinishedStatement),
    Ended(Arc<SessionInfo>),
}

/// Handle used by sessions to record; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    /// Times a session found the recorder's queue full (and waited).
    behind: Arc<AtomicU64>,
    /// Events sent and not yet handed to the engine.
    pending: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts the draining task on the current runtime.
    pub fn spawn(gate: Arc<dyn WireGate>) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let pending = Arc::new(AtomicU64::new(0));
        tokio::spawn(drain(gate, rx, pending.clone()));
        Self {
            tx,
            behind: Arc::new(AtomicU64::new(0)),
            pending,
        }
    }

    /// Waits until every event sent so far has reached the engine (statement records, results of
    /// approved executions), or `limit` has passed; true when all have. For a shutdown: the recorder
    /// runs on the wire runtime, which stops after this.
    pub async fn settled(&self, limit: Duration) -> bool {
        crate::poll::until(limit, TICK, || self.pending.load(Ordering::Acquire) == 0).await
    }

    /// Records the start of a session.
    pub async fn started(&self, session: &Arc<SessionInfo>) {
        self.must_send(Event::Started(session.clone())).await;
    }

    /// Records a finished statement. When the recorder is behind, the session waits for it (and stops
    /// reading from its client and upstream meanwhile) rather than lose the record: an agent flooding its
    /// own session must not be able to push its blocked attempts out of the record.
    pub async fn statement(&self, session: &Arc<SessionInfo>, stmt: FinishedStatement) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Event::Statement(session.id, stmt)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.note_behind();
                self.must_send(event).await;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("session recorder stopped; records are lost")
            }
        }
    }

    /// [`Recorder::statement`] where the caller can't wait (a session being torn down): when the
    /// recorder is behind, a task delivers the record.
    pub fn statement_at_end(&self, session: &Arc<SessionInfo>, stmt: FinishedStatement) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::TrySendError::Full(event)) =
            self.tx.try_send(Event::Statement(session.id, stmt))
        {
            self.note_behind();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(event).await;
            });
        }
    }

    fn note_behind(&self) {
        let n = self.behind.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                times = n,
                "session recorder is behind; sessions wait for it so no statement goes unrecorded"
            );
        }
    }

    /// Records the end of a session.
    pub async fn ended(&self, session: &Arc<SessionInfo>) {
        self.must_send(Event::Ended(session.clone())).await;
    }

    async fn must_send(&self, event: Event) {
        if !matches!(event, Event::Statement(..)) {
            // (`statement` counted its own before trying to send.)
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
        if self.tx.send(event).await.is_err() {
            tracing::error!("session recorder stopped; records are lost");
        }
    }
}

async fn drain(gate: Arc<dyn WireGate>, mut rx: mpsc::Receiver<Event>, pending: Arc<AtomicU64>) {
    let mut batch = Vec::new();
    loop {
        // Polling on a tick (instead of `recv().await`) keeps senders from waking this task per event.
        tokio::time::sleep(TICK).await;
        let mut handled = 0;
        loop {
            match rx.try_recv() {
                Ok(Event::Statement(id, f)) => batch.push(finished(&*gate, id, f).await),
                // Session boundaries keep their order with the statements around them.
                Ok(Event::Started(s)) => {
                    hand_over(&*gate, &mut batch).await;
                    gate.session_started(&s).await;
                }
                Ok(Event::Ended(s)) => {
                    hand_over(&*gate, &mut batch).await;
                    gate.session_ended(&s).await;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    hand_over(&*gate, &mut batch).await;
                    return;
                }
            }
            handled += 1;
        }
        hand_over(&*gate, &mut batch).await;
        pending.fetch_sub(handled, Ordering::AcqRel);
    }
}

async fn hand_over(gate: &dyn WireGate, batch: &mut Vec<StatementRecord>) {
    if !batch.is_empty() {
        gate.statements_finished(std::mem::take(batch)).await;
    }
}

/// Reports an approved execution to the engine and turns the statement into its record.
async fn finished(
    gate: &dyn WireGate,
    session_id: SessionId,
    f: FinishedStatement,
) -> StatementRecord {
    let rows = f.command_tag.as_deref().and_then(super::codec::rows_of_tag);
    if let Some(id) = f.executed {
        let outcome = ExecutionOutcome {
            command_tag: f.command_tag.clone(),
            rows,
            error: f.error.clone(),
            duration: f.run_time,
        };
        gate.executed(id, outcome).await;
    }
    StatementRecord {
        session_id,
        hash: statement_hash(&f.sql, &f.binds),
        sql: f.sql,
        decision: f.decision,
        request_id: f.request_id,
        duration: f.duration,
        received_at: f.received_at,
        command_tag: f.command_tag,
        rows,
        error: f.error,
        masked_fields: f.masked_fields,
    }
}

//! Persistence: one trait, a SQLite implementation (default, zero set-up) and a PostgreSQL one (production,
//! several replicas). Both run the same test suite.

pub(crate) mod backend;
pub mod error;
pub mod notify;
pub mod outbox;
pub mod postgres;
pub mod sqlite;

pub use error::StoreError;
pub use notify::{Change, ChangeFeed};
pub use outbox::{OutboxItem, OutboxStatus, SinkBacklog};

use crate::audit::{AuditEntry, AuditRecord};
use crate::events::WorkflowEvent;
use crate::ids::{RequestId, SessionId, StatementHash};
use crate::request::{ApprovalRequest, ExecutionSummary, RequestStatus, RequestView, Vote};
use crate::sessions::{SessionRecord, StatementRecord};
use std::sync::Arc;

/// Result of trying to record a vote inside the store's transaction.
#[derive(Debug, Clone)]
pub enum VoteOutcome {
    /// Counted. `resolved` is true when this vote approved (quorum) or denied the request.
    Recorded {
        /// The request after the vote.
        view: RequestView,
        /// This vote changed the status.
        resolved: bool,
    },
    /// Not counted; the caller audits the refusal.
    Refused {
        /// Stable code: `resolved`, `expired`, `already_voted`.
        code: &'static str,
        /// Human-readable reason.
        reason: String,
        /// The request as it stands.
        view: RequestView,
    },
}

/// A status change to apply atomically with its audit record and notifications.
#[derive(Debug, Clone)]
pub struct Transition {
    /// Allowed current statuses (compare-and-set).
    pub from: &'static [RequestStatus],
    /// New status.
    pub to: RequestStatus,
    /// Audit record written in the same transaction.
    pub audit: AuditEntry,
    /// Execution summary to store (for executed / failed).
    pub execution: Option<ExecutionSummary>,
    /// Event kind to enqueue for notifiers, if any.
    pub notify: Option<NotifyKind>,
    /// Apply only when the request was last changed at or before this time (ms since the epoch): an
    /// execution whose gateway kept it fresh is not taken over as interrupted.
    pub quiet_since_ms: Option<i64>,
}

/// Which event a transition emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    /// [`WorkflowEvent::Resolved`].
    Resolved,
    /// [`WorkflowEvent::Executed`].
    Executed,
}

/// The state store. Every state change is one transaction that also appends the audit record and the
/// outbox rows for each sink.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Status changes made by any replica, when the backend can announce them (PostgreSQL LISTEN/NOTIFY).
    fn change_feed(&self) -> Option<ChangeFeed>;

    /// Insert a new pending request (audited, notified).
    async fn create_request(
        &self,
        req: &ApprovalRequest,
        sinks: &[String],
    ) -> Result<RequestView, StoreError>;
    /// A request and its votes.
    async fn get_request(&self, id: RequestId) -> Result<Option<RequestView>, StoreError>;
    /// Requests, newest first, optionally by status.
    async fn list_requests(
        &self,
        status: Option<RequestStatus>,
        limit: u32,
    ) -> Result<Vec<ApprovalRequest>, StoreError>;
    /// The newest pending or approved request for exactly this requester, connection and statement.
    async fn find_reusable(
        &self,
        requester_key: &str,
        connection: &str,
        hash: &StatementHash,
    ) -> Result<Option<ApprovalRequest>, StoreError>;
    /// Record a vote: lock the request, check it is pending and unexpired and that this voter has not voted,
    /// insert, and resolve on deny or quorum.
    async fn cast_vote(
        &self,
        vote: &Vote,
        now_ms: i64,
        sinks: &[String],
    ) -> Result<VoteOutcome, StoreError>;
    /// Compare-and-set a status. Returns the new view, or `None` when the current status was not in `from`.
    async fn transition(
        &self,
        id: RequestId,
        t: Transition,
        sinks: &[String],
    ) -> Result<Option<RequestView>, StoreError>;
    /// Pending or approved (not yet run) requests whose expiry has passed.
    async fn due_for_expiry(&self, now_ms: i64, limit: u32) -> Result<Vec<RequestId>, StoreError>;
    /// Marks executions this process is running as alive (their `updated_ms` becomes `now_ms`).
    async fn touch_executing(&self, ids: &[RequestId], now_ms: i64) -> Result<(), StoreError>;
    /// Executing requests last changed at or before `quiet_since_ms`: their gateway stopped keeping
    /// them fresh.
    async fn quiet_executions(
        &self,
        quiet_since_ms: i64,
        limit: u32,
    ) -> Result<Vec<RequestId>, StoreError>;

    /// Append a standalone audit record (refusals, authentication failures, forged signatures).
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError>;
    /// Audit records with `seq > after`, in order.
    async fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// The chain's head as every append left it (sequence number and hash of the last record), or
    /// `None` before the first record.
    async fn audit_head(&self) -> Result<Option<crate::audit::AuditHead>, StoreError>;

    /// Enqueue an event for each sink, outside a state change (e.g. refusals, session summaries, reminders).
    async fn enqueue(
        &self,
        event: &WorkflowEvent,
        key: &str,
        sinks: &[String],
    ) -> Result<(), StoreError>;
    /// Gives back every outbox lease still running, for a process that owns its store (SQLite) starting
    /// again: its killed predecessor's leases would hold those items, and every later item of their
    /// requests, until they lapse. Returns how many were given back.
    async fn release_outbox_leases(&self) -> Result<u64, StoreError>;
    /// Lease due outbox items (oldest first, in order per sink and request) for `lease_ms`.
    async fn lease_outbox(
        &self,
        sinks: &[String],
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Extends the lease of an item this worker leased (`attempts` as its lease left them) to
    /// `until_ms`, just before delivering it; false when another worker leased it since (the lease
    /// lapsed while earlier items of the batch were delivered), which then delivers it instead.
    async fn renew_outbox_lease(
        &self,
        id: i64,
        attempts: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Mark delivered.
    async fn outbox_delivered(&self, id: i64, now_ms: i64) -> Result<(), StoreError>;
    /// Record a failure; `next_attempt_ms = None` dead-letters it.
    async fn outbox_failed(
        &self,
        id: i64,
        error: &str,
        next_attempt_ms: Option<i64>,
    ) -> Result<(), StoreError>;
    /// Give a leased item back for another try at `next_attempt_ms` without counting the attempt the lease
    /// took: the sink asked us to wait (rate limited), so the item was not refused, only held back.
    async fn outbox_deferred(
        &self,
        id: i64,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<(), StoreError>;
    /// Outbox items, newest first, optionally by status.
    async fn outbox_list(
        &self,
        status: Option<OutboxStatus>,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StoreError>;
    /// Undelivered rows per sink (pending, failing, dead).
    async fn outbox_backlog(&self) -> Result<Vec<SinkBacklog>, StoreError>;
    /// Put a dead-lettered item back in the queue. Returns false when there is no such dead item.
    async fn outbox_retry(&self, id: i64, now_ms: i64) -> Result<bool, StoreError>;

    /// Remember a channel's handle for a request (Slack channel + ts, mail Message-ID, Jira issue key).
    async fn put_ref(
        &self,
        request: RequestId,
        sink: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StoreError>;
    /// Look a handle up.
    async fn get_ref(
        &self,
        request: RequestId,
        sink: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Find the request a handle belongs to.
    async fn find_ref(
        &self,
        sink: &str,
        key: &str,
        value: &str,
    ) -> Result<Option<RequestId>, StoreError>;
    /// Mark a single-use nonce used. Returns false when it was already used.
    async fn consume_nonce(&self, nonce: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Make a consumed nonce usable again: what it was consumed for failed before taking effect (a
    /// vote the store could not record), so the same link or delivery may be tried again.
    async fn release_nonce(&self, nonce: &str) -> Result<(), StoreError>;
    /// Forget nonces starting with `prefix` used before `used_before_ms`: ones whose signed message is
    /// refused as stale anyway (a Slack signature's timestamp window). Returns how many.
    async fn prune_nonces(&self, prefix: &str, used_before_ms: i64) -> Result<u64, StoreError>;

    /// Record a session start.
    async fn session_started(&self, s: &SessionRecord) -> Result<(), StoreError>;
    /// Record a session end.
    async fn session_ended(&self, id: SessionId, ended_ms: i64) -> Result<(), StoreError>;
    /// Marks sessions this process has open as alive (their `alive_ms` becomes `now_ms`).
    async fn touch_sessions(&self, ids: &[SessionId], now_ms: i64) -> Result<(), StoreError>;
    /// Ends open sessions nobody has marked alive since before `quiet_since_ms` (their gateway stopped), at
    /// the last moment they were known to be open, with `reason`. Returns the sessions it closed.
    async fn close_quiet_sessions(
        &self,
        quiet_since_ms: i64,
        reason: &str,
        limit: u32,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Record statements of sessions, in one transaction.
    async fn statements_recorded(&self, batch: &[StatementRecord]) -> Result<(), StoreError>;
    /// Sessions, newest first.
    async fn list_sessions(&self, limit: u32) -> Result<Vec<SessionRecord>, StoreError>;
    /// One session with the tally of its statements (what a summary needs), without reading them.
    async fn session_tally(
        &self,
        id: SessionId,
    ) -> Result<Option<(SessionRecord, crate::sessions::SessionTally)>, StoreError>;
    /// One session with its statements.
    async fn get_session(
        &self,
        id: SessionId,
    ) -> Result<Option<(SessionRecord, Vec<StatementRecord>)>, StoreError>;
}

/// Open the store a URL names: `sqlite://path` (created if missing) or `postgres://…`. Runs migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, None).await
}

/// [`open`], sealing the audit records the store writes with `audit_key` when given.
pub async fn open_with(
    url: &str,
    audit_key: Option<crate::audit::AuditKey>,
) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::open(url)
                .await?
                .with_audit_key(audit_key),
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PgStore::open(url)
                .await?
                .with_audit_key(audit_key),
        ))
    } else {
        Err(StoreError::Config(format!(
            "store URL {url:?} has an unknown scheme: use sqlite://PATH or postgres://USER@HOST/DB"
        )))
    }
}

//! The approval workflow: create or reuse requests, enforce separation of duties on every vote, resolve on
//! quorum or veto, hand out the single execution of an approved statement, expire, and wake waiters.

use crate::audit::AuditEntry;
use crate::directory::ApproverDirectory;
use crate::events::WorkflowEvent;
use crate::identity::{Identity, RequesterChain};
use crate::ids::RequestId;
use crate::request::{
    ApprovalRequest, Decision, ExecutionSummary, NewRequest, RequestStatus, RequestView, Vote,
};
use crate::store::{Change, NotifyKind, Store, StoreError, Transition, VoteOutcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Workflow failures that are not domain refusals.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such request.
    #[error("no request {0}: check the id, or list requests with GET /v1/requests")]
    NotFound(RequestId),
    /// A human in the requester chain has no e-mail, so separation of duties could not be enforced.
    #[error("this statement needs approval, but {0} (a human in the requester chain) has no verified e-mail address: reviewers are told apart by e-mail, so this person could approve their own request; use an identity with one (an IdP token with a verified email claim, or a static identity with email set)")]
    RequesterWithoutEmail(String),
}

/// What submitting a statement for review produced.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// A new pending request.
    Created(RequestView),
    /// The same requester already has this exact statement pending.
    AlreadyPending(RequestView),
    /// The same requester's identical statement was approved and is now claimed: run it once.
    ApprovedAndClaimed(RequestView),
}

/// Outcome of a vote attempt.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // Returned once per vote; boxing would only add noise at every call site.
pub enum VoteResult {
    /// Counted; `resolved` when it approved (quorum) or denied the request.
    Recorded {
        /// The request after the vote.
        view: RequestView,
        /// The vote changed the status.
        resolved: bool,
    },
    /// Refused (audited).
    Refused(Refusal),
}

/// Why a vote was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code: `workload_cannot_vote`, `voter_without_email`, `requester_without_email`,
    /// `requester_cannot_approve`,
    /// `not_an_approver`, `resolved`, `expired`, `already_voted`, `statement_not_shown_whole`.
    pub code: &'static str,
    /// What happened and what to do.
    pub reason: String,
}

/// While a change feed is live, waiters re-check the store this many times less often (250 ms → 5 s).
const LIVE_FEED_POLL_FACTOR: u32 = 20;

/// The safety re-check interval of a waiter while the change feed is live: `poll` × 20, spread ±25% by the
/// request id. Thousands of statements held in one burst would otherwise re-check the store in one burst
/// every 5 s, and releases in that moment wait behind them for the store's connections.
fn live_feed_recheck(poll: Duration, id: RequestId) -> Duration {
    // The low bits of a v7 id are random.
    let spread = (id.0.as_u128() % 1024) as u32;
    poll * LIVE_FEED_POLL_FACTOR * (768 + spread / 2) / 1024
}

/// `timeout` from now, or a century from now when the clock cannot hold that (adding an oversized
/// duration to an `Instant` panics).
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Wakes tasks waiting on a request when its status changes in this process.
#[derive(Default)]
struct ResolutionHub {
    waiters: Mutex<HashMap<RequestId, Arc<Notify>>>,
}

impl ResolutionHub {
    fn handle(&self, id: RequestId) -> Arc<Notify> {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(id).or_default().clone()
    }

    fn wake(&self, id: RequestId) {
        let n = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for n in all {
            n.notify_waiters();
        }
    }

    fn waiting(&self) -> usize {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn release(&self, id: RequestId, handle: Arc<Notify>) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours. Nobody else waits, so drop the entry.
        if Arc::strong_count(&handle) <= 2 {
            w.remove(&id);
        }
    }
}

/// Told about workflow outcomes in this process (metrics); must not block.
pub trait WorkflowObserver: Send + Sync + 'static {
    /// A vote in this process resolved the request (approved or denied).
    fn resolved(&self, view: &RequestView);
    /// A vote was refused with this stable code, arriving through `channel`.
    fn vote_refused(&self, code: &str, channel: &str);
}

/// The approval workflow over a store.
pub struct Workflow {
    store: Arc<dyn Store>,
    directory: ApproverDirectory,
    sinks: Vec<String>,
    hub: ResolutionHub,
    poll: Duration,
    shutting_down: AtomicBool,
    /// A change feed is connected: waiters are woken by it and re-check the store only rarely.
    feed_live: AtomicBool,
    observer: Option<Arc<dyn WorkflowObserver>>,
    /// The store belongs to this process alone (SQLite): executions left by an earlier run are over.
    single_process: bool,
    /// Executions this process claimed and has not reported yet, with a result the store refused.
    running: Mutex<HashMap<RequestId, Option<ExecutionSummary>>>,
}

/// How long an execution may go without its gateway marking it alive before another replica declares
/// it interrupted. Gateways mark theirs every [`EXECUTION_HEARTBEAT`].
pub const EXECUTION_QUIET_AFTER: Duration = Duration::from_secs(120);

/// How often a gateway marks the executions it is running as alive (and retries unreported results).
pub const EXECUTION_HEARTBEAT: Duration = Duration::from_secs(15);

/// The longest a request may stay pending (a year): an expiry further out is past what a timestamp
/// can hold (a TTL of `100000000d` panicked every submit). Longer TTLs are refused in configuration
/// and clamped here.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The error an interrupted execution is recorded with.
pub const INTERRUPTED: &str = "interrupted: the gateway running this statement stopped before it reported a result, so whether it ran is unknown; check the database before requesting it again";

impl Workflow {
    /// A workflow that notifies `sinks` (opaque channel names) through the store's outbox.
    pub fn new(store: Arc<dyn Store>, directory: ApproverDirectory, sinks: Vec<String>) -> Self {
        // An SQLite store belongs to one process: every change happens here and wakes waiters directly, so
        // waiters only need the slow safety re-check, as with a live PostgreSQL change feed.
        let single_process = store.backend() == "sqlite";
        Self {
            store,
            directory,
            sinks,
            hub: ResolutionHub::default(),
            poll: Duration::from_millis(250),
            shutting_down: AtomicBool::new(false),
            feed_live: AtomicBool::new(single_process),
            observer: None,
            single_process,
            running: Mutex::default(),
        }
    }

    /// How often waiters re-check the store (covers changes made by other replicas).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Report resolutions and refusals to `observer` (e.g. metrics).
    pub fn with_observer(mut self, observer: Arc<dyn WorkflowObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The approver directory.
    pub fn directory(&self) -> &ApproverDirectory {
        &self.directory
    }

    /// The sinks events are queued for.
    pub fn sinks(&self) -> &[String] {
        &self.sinks
    }

    /// Submit a statement that needs review: reuse the requester's pending or approved request for exactly
    /// this statement, or create a new one.
    pub async fn submit(&self, new: NewRequest) -> Result<Submitted, WorkflowError> {
        if let Some(who) = new.requester.human_without_email() {
            return Err(WorkflowError::RequesterWithoutEmail(who.display_name()));
        }
        // A concurrent send of the same statement may create its request between the look-up and the
        // insert; the store then refuses a second one, and the look-up runs again to find it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Some(found) = self.reuse(&new).await? {
                return Ok(found);
            }
            match self.create(&new).await {
                Err(WorkflowError::Store(StoreError::AlreadyHeld(_))) if attempts < 5 => continue,
                other => return other,
            }
        }
    }

    /// The pending request for the same statement (requester, connection, hash), or the claimed execution
    /// of an approved one.
    async fn reuse(&self, new: &NewRequest) -> Result<Option<Submitted>, WorkflowError> {
        let key = new.requester.key();
        let Some(existing) = self
            .store
            .find_reusable(&key, &new.connection, &new.statement_hash)
            .await?
        else {
            return Ok(None);
        };
        match existing.status {
            RequestStatus::Approved => Ok(self
                .claim(existing.id, &new.requester)
                .await?
                .map(Submitted::ApprovedAndClaimed)),
            RequestStatus::Pending => Ok(Some(Submitted::AlreadyPending(
                self.get(existing.id).await?,
            ))),
            _ => Ok(None),
        }
    }

    async fn create(&self, new: &NewRequest) -> Result<Submitted, WorkflowError> {
        let new = new.clone();
        let now = crate::clock::now();
        let ttl = Duration::from_secs(new.ttl_secs.clamp(1, MAX_TTL.as_secs()));
        let req = ApprovalRequest {
            id: RequestId::new(),
            connection: new.connection,
            statement: new.statement,
            statement_hash: new.statement_hash,
            requester: new.requester,
            rule: new.rule,
            reasons: new.reasons,
            approver_groups: new.approver_groups,
            quorum: new.quorum.max(1),
            status: RequestStatus::Pending,
            origin: new.origin,
            session_id: new.session_id,
            created_at: now,
            expires_at: now + ttl,
            updated_at: now,
            execution: None,
            reminders: new.reminders,
        };
        let view = self.store.create_request(&req, &self.sinks).await?;
        tracing::info!(request_id = %req.id, connection = %req.connection, "statement held for approval");
        Ok(Submitted::Created(view))
    }

    /// A request with its votes.
    pub async fn get(&self, id: RequestId) -> Result<RequestView, WorkflowError> {
        self.store
            .get_request(id)
            .await?
            .ok_or(WorkflowError::NotFound(id))
    }

    /// Cast a vote as `voter` through `channel`, enforcing separation of duties. Refusals are audited and
    /// announced to notifiers.
    pub async fn vote(
        &self,
        id: RequestId,
        voter: &Identity,
        decision: Decision,
        reason: Option<String>,
        channel: &str,
    ) -> Result<VoteResult, WorkflowError> {
        self.vote_as_shown(id, voter, decision, reason, channel, &|_| true)
            .await
    }

    /// [`Workflow::vote`] by `voter` presenting a delegation `chain` (RFC 8693 `act`: the caller first,
    /// whoever it acts for after): refused as `requester_cannot_approve` when anyone in the chain is in
    /// the request's requester chain, so acting for the requester casts no vote on their request.
    pub async fn vote_with_chain(
        &self,
        id: RequestId,
        voter: &Identity,
        chain: &RequesterChain,
        decision: Decision,
        reason: Option<String>,
        channel: &str,
    ) -> Result<VoteResult, WorkflowError> {
        let view = self.get(id).await?;
        // The voter's own standing first (a workload is refused as one), then whom the token acts for.
        let refusal = self.check_voter(&view, voter, decision).or_else(|| {
            chain
                .0
                .iter()
                .any(|who| view.request.requester.contains(who))
                .then(|| Refusal {
                    code: "requester_cannot_approve",
                    reason: "a token acting for someone in this request's requester chain cannot vote on it: separation of duties forbids voting on one's own request, also by delegation; vote with a token of your own".into(),
                })
        });
        if let Some(refusal) = refusal {
            self.record_refusal(&view, voter, channel, &refusal).await?;
            return Ok(VoteResult::Refused(refusal));
        }
        self.vote(id, voter, decision, reason, channel).await
    }

    /// [`Workflow::vote`] from a channel that may show only part of a statement: `shows_whole` says
    /// whether the channel showed this statement in full. An approval of a statement its channel cut
    /// short is refused (`statement_not_shown_whole`): approvers approve exactly what runs, so they must
    /// have been able to read all of it. Denials always count.
    pub async fn vote_as_shown(
        &self,
        id: RequestId,
        voter: &Identity,
        decision: Decision,
        reason: Option<String>,
        channel: &str,
        shows_whole: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<VoteResult, WorkflowError> {
        let view = self.get(id).await?;
        let unseen = (decision == Decision::Approve && !shows_whole(&view.request.statement))
            .then(|| Refusal {
                code: "statement_not_shown_whole",
                reason: format!(
                    "{channel} could show only part of this {}-character statement, and an approval must follow reading all of it: approve it from the e-mail approval page or the API, which show it in full",
                    view.request.statement.chars().count()
                ),
            });
        if let Some(refusal) = unseen.or_else(|| self.check_voter(&view, voter, decision)) {
            self.record_refusal(&view, voter, channel, &refusal).await?;
            return Ok(VoteResult::Refused(refusal));
        }
        let vote = Vote {
            request_id: id,
            voter: voter.canonical(),
            voter_name: voter.display_name(),
            decision,
            reason: reason.map(|r| r.chars().take(2000).collect()),
            channel: channel.to_string(),
            at: crate::clock::now(),
        };
        let now_ms = (vote.at.unix_timestamp_nanos() / 1_000_000) as i64;
        match self.store.cast_vote(&vote, now_ms, &self.sinks).await {
            Ok(VoteOutcome::Recorded { view, resolved }) => {
                tracing::info!(request_id = %id, voter = %vote.voter, decision = decision.as_str(), channel, resolved, "vote recorded");
                if resolved {
                    self.hub.wake(id);
                    if let Some(o) = &self.observer {
                        o.resolved(&view);
                    }
                }
                Ok(VoteResult::Recorded { view, resolved })
            }
            Ok(VoteOutcome::Refused { code, reason, view }) => {
                let refusal = Refusal { code, reason };
                self.record_refusal(&view, voter, channel, &refusal).await?;
                Ok(VoteResult::Refused(refusal))
            }
            Err(StoreError::NotFound(_)) => Err(WorkflowError::NotFound(id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Separation-of-duties checks that need no lock: workloads, the requester chain, group membership.
    fn check_voter(
        &self,
        view: &RequestView,
        voter: &Identity,
        _decision: Decision,
    ) -> Option<Refusal> {
        if !voter.is_human() {
            return Some(Refusal {
                code: "workload_cannot_vote",
                reason: format!(
                    "{} is a workload identity: only humans may approve or deny",
                    voter.display_name()
                ),
            });
        }
        // A person counts once across channels by e-mail address; one known only by issuer and subject
        // could vote again under their address through another channel, or be the requester unnoticed.
        if !voter.has_email() {
            return Some(Refusal {
                code: "voter_without_email",
                reason: format!(
                    "{} has no verified e-mail address, so Countersign cannot count this person once across channels: vote with an identity that has one (an IdP token with a verified email claim, or a static identity with email set)",
                    voter.display_name()
                ),
            });
        }
        // (Requests are not created for such a chain; one stored before that rule gets no votes.)
        if let Some(who) = view.request.requester.human_without_email() {
            return Some(Refusal {
                code: "requester_without_email",
                reason: format!(
                    "{} in this request's requester chain has no verified e-mail address, so Countersign cannot tell whether you are that person: nobody can vote on this request; cancel it and re-send the statement with an identity that has one",
                    who.display_name()
                ),
            });
        }
        if view.request.requester.contains(voter) {
            return Some(Refusal {
                code: "requester_cannot_approve",
                reason: "you are in this request's requester chain: separation of duties forbids voting on your own request; ask another approver".into(),
            });
        }
        if !self
            .directory
            .is_member_of_any(&view.request.approver_groups, voter)
        {
            return Some(Refusal {
                code: "not_an_approver",
                reason: format!(
                    "you are not a member of the approver group(s) {}: ask an administrator to add you, or ask a member to review",
                    view.request.approver_groups.join(", ")
                ),
            });
        }
        None
    }

    /// Refuses `voter`'s vote on `id` for a reason only the channel can tell (audited and announced
    /// like any refusal, so the channel can say so where the vote was cast).
    pub async fn refuse_vote(
        &self,
        id: RequestId,
        voter: &Identity,
        channel: &str,
        code: &'static str,
        reason: String,
    ) -> Result<VoteResult, WorkflowError> {
        let view = self.get(id).await?;
        let refusal = Refusal { code, reason };
        self.record_refusal(&view, voter, channel, &refusal).await?;
        Ok(VoteResult::Refused(refusal))
    }

    async fn record_refusal(
        &self,
        view: &RequestView,
        voter: &Identity,
        channel: &str,
        refusal: &Refusal,
    ) -> Result<(), WorkflowError> {
        tracing::warn!(request_id = %view.request.id, voter = %voter.canonical(), code = refusal.code, channel, "vote refused");
        if let Some(o) = &self.observer {
            o.vote_refused(refusal.code, channel);
        }
        self.store
            .append_audit(
                AuditEntry::new(voter.canonical().0, "vote.refused", channel)
                    .request(view.request.id)
                    .decision("refused")
                    .statement(view.request.statement_hash)
                    .detail(serde_json::json!({ "code": refusal.code, "reason": refusal.reason })),
            )
            .await?;
        let event = WorkflowEvent::VoteRefused {
            request: view.clone(),
            voter_name: voter.display_name(),
            channel: channel.to_string(),
            code: refusal.code.to_string(),
            reason: refusal.reason.clone(),
        };
        let key = format!("{}:refused:{}", view.request.id, uuid::Uuid::now_v7());
        self.store.enqueue(&event, &key, &self.sinks).await?;
        Ok(())
    }

    /// Claim an approved request for its single execution (approved → executing) on behalf of `by` (the
    /// requester key of whoever runs it, audited). `None` when it is not approved (already claimed, or
    /// never approved).
    pub async fn claim(
        &self,
        id: RequestId,
        by: &RequesterChain,
    ) -> Result<Option<RequestView>, WorkflowError> {
        let t = Transition {
            from: &[RequestStatus::Approved],
            to: RequestStatus::Executing,
            audit: AuditEntry::new(by.key(), "request.execution_started", "system").request(id),
            execution: None,
            notify: None,
            quiet_since_ms: None,
        };
        let claimed = self.store.transition(id, t, &self.sinks).await?;
        if claimed.is_some() {
            self.running_map().insert(id, None);
        }
        Ok(claimed)
    }

    /// Gives back a claimed execution that never started (executing → approved): the upstream could not
    /// be reached, so nothing ran and the approval still stands for a re-send.
    pub async fn release_claim(
        &self,
        id: RequestId,
        why: &str,
    ) -> Result<Option<RequestView>, WorkflowError> {
        let t = Transition {
            from: &[RequestStatus::Executing],
            to: RequestStatus::Approved,
            audit: AuditEntry::new("system", "request.execution_not_started", "system")
                .request(id)
                .detail(serde_json::json!({ "reason": why })),
            execution: None,
            notify: None,
            quiet_since_ms: None,
        };
        let v = self.store.transition(id, t, &self.sinks).await?;
        self.running_map().remove(&id);
        self.hub.wake(id);
        Ok(v)
    }

    /// Record the result of the single execution (executing → executed | failed).
    pub async fn finish(
        &self,
        id: RequestId,
        summary: ExecutionSummary,
    ) -> Result<Option<RequestView>, WorkflowError> {
        let to = if summary.error.is_some() {
            RequestStatus::Failed
        } else {
            RequestStatus::Executed
        };
        let t = Transition {
            from: &[RequestStatus::Executing],
            to,
            audit: AuditEntry::new("system", "request.executed", "system")
                .request(id)
                .decision(to.as_str())
                .detail(serde_json::to_value(&summary).unwrap_or_default()),
            execution: Some(summary.clone()),
            notify: Some(NotifyKind::Executed),
            quiet_since_ms: None,
        };
        let v = match self.store.transition(id, t, &self.sinks).await {
            Ok(v) => v,
            Err(e) => {
                // Kept for the next heartbeat to report: the result must not be lost to a store outage.
                self.running_map().insert(id, Some(summary));
                return Err(e.into());
            }
        };
        self.running_map().remove(&id);
        if v.is_none() {
            // Declared interrupted meanwhile (this gateway could not mark it alive): the real outcome
            // still belongs in the audit trail.
            self.store
                .append_audit(
                    AuditEntry::new("system", "request.result_after_interrupt", "system")
                        .request(id)
                        .decision(to.as_str())
                        .detail(serde_json::to_value(&summary).unwrap_or_default()),
                )
                .await?;
        }
        self.hub.wake(id);
        Ok(v)
    }

    /// Executions this process claimed whose results are not yet in the store.
    pub fn executions_in_progress(&self) -> usize {
        self.running_map().len()
    }

    fn running_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<RequestId, Option<ExecutionSummary>>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks this process's executions alive, retries results the store refused, and declares
    /// executions no gateway has marked alive since `quiet_since_ms` interrupted (failed, outcome
    /// unknown). Returns how many were declared interrupted.
    pub async fn keep_executions(&self, quiet_since_ms: i64) -> Result<usize, WorkflowError> {
        let (alive, unreported): (Vec<_>, Vec<_>) = {
            let running = self.running_map();
            let alive = running
                .iter()
                .filter(|(_, r)| r.is_none())
                .map(|(id, _)| *id)
                .collect();
            let unreported = running
                .iter()
                .filter_map(|(id, r)| r.clone().map(|r| (*id, r)))
                .collect();
            (alive, unreported)
        };
        for (id, summary) in unreported {
            self.finish(id, summary).await?;
        }
        if !alive.is_empty() {
            self.store
                .touch_executing(&alive, crate::store::backend::now_ms())
                .await?;
        }
        let mut n = 0;
        for id in self.store.quiet_executions(quiet_since_ms, 500).await? {
            if self.running_map().contains_key(&id) {
                continue;
            }
            let summary = ExecutionSummary {
                command_tag: None,
                rows: None,
                error: Some(INTERRUPTED.to_string()),
                duration_ms: 0,
            };
            let t = Transition {
                from: &[RequestStatus::Executing],
                to: RequestStatus::Failed,
                audit: AuditEntry::new("system", "request.execution_interrupted", "system")
                    .request(id)
                    .decision(RequestStatus::Failed.as_str())
                    .detail(serde_json::to_value(&summary).unwrap_or_default()),
                execution: Some(summary),
                notify: Some(NotifyKind::Executed),
                quiet_since_ms: Some(quiet_since_ms),
            };
            if self.store.transition(id, t, &self.sinks).await?.is_some() {
                tracing::warn!(request_id = %id, "an approved execution was interrupted (its gateway stopped); recorded as failed, outcome unknown");
                self.hub.wake(id);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Cancel a pending request on behalf of its requester (pending → cancelled).
    pub async fn cancel(
        &self,
        id: RequestId,
        by: &RequesterChain,
        channel: &str,
    ) -> Result<Option<RequestView>, WorkflowError> {
        let t = Transition {
            from: &[RequestStatus::Pending],
            to: RequestStatus::Cancelled,
            audit: AuditEntry::new(by.key(), "request.cancelled", channel)
                .request(id)
                .decision("cancelled"),
            execution: None,
            notify: Some(NotifyKind::Resolved),
            quiet_since_ms: None,
        };
        let v = self.store.transition(id, t, &self.sinks).await?;
        self.hub.wake(id);
        Ok(v)
    }

    /// Expire every pending request whose TTL has passed, and every approved one not run by then (its
    /// approval lapses: a re-run after the TTL makes a new request). Returns how many expired.
    pub async fn expire_due(&self) -> Result<usize, WorkflowError> {
        let now_ms = (crate::clock::now().unix_timestamp_nanos() / 1_000_000) as i64;
        let due = self.store.due_for_expiry(now_ms, 500).await?;
        let mut n = 0;
        for id in due {
            let t = Transition {
                from: &[RequestStatus::Pending, RequestStatus::Approved],
                to: RequestStatus::Expired,
                audit: AuditEntry::new("system", "request.expired", "system")
                    .request(id)
                    .decision("expired"),
                execution: None,
                notify: Some(NotifyKind::Resolved),
                quiet_since_ms: None,
            };
            if self.store.transition(id, t, &self.sinks).await?.is_some() {
                tracing::info!(request_id = %id, "request expired");
                self.hub.wake(id);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Run [`Workflow::expire_due`] every `every`, and [`Workflow::keep_executions`] every
    /// [`EXECUTION_HEARTBEAT`] (at most `every`), until the task is dropped. With a store of its own
    /// (SQLite), executions an earlier run of this process left unfinished are declared interrupted at
    /// once; replicas sharing a store wait [`EXECUTION_QUIET_AFTER`] for another gateway's.
    pub fn spawn_expiry(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let wf = Arc::clone(self);
        tokio::spawn(async move {
            let mut expiry = tokio::time::interval(every);
            expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut heartbeat = tokio::time::interval(EXECUTION_HEARTBEAT.min(every));
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = wf.single_process;
            loop {
                tokio::select! {
                    _ = expiry.tick() => {
                        if let Err(e) = wf.expire_due().await {
                            tracing::warn!(error = %e, "expiry sweep failed; retrying next tick");
                        }
                    }
                    _ = heartbeat.tick() => {
                        let now = crate::store::backend::now_ms();
                        let quiet_since = if std::mem::take(&mut first) {
                            now
                        } else {
                            now - EXECUTION_QUIET_AFTER.as_millis() as i64
                        };
                        if let Err(e) = wf.keep_executions(quiet_since).await {
                            tracing::warn!(error = %e, "could not mark running executions alive; retrying next tick");
                        }
                    }
                }
            }
        })
    }

    /// Tell local waiters that `id` may have changed (e.g. after a change seen via another replica).
    pub fn wake(&self, id: RequestId) {
        self.hub.wake(id);
    }

    /// Follow status changes made by other replicas (PostgreSQL LISTEN/NOTIFY) and wake local waiters;
    /// `None` when the store has no change feed (a single SQLite process needs none).
    pub fn spawn_change_listener(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let feed = self.store.change_feed()?;
        let wf = Arc::downgrade(self);
        Some(feed.spawn(move |change| {
            let Some(wf) = wf.upgrade() else { return };
            match change {
                Change::Request(id) => wf.hub.wake(id),
                Change::Gap | Change::Lost => {
                    wf.feed_live.store(change == Change::Gap, Ordering::SeqCst);
                    // Everyone re-checks now, and switches to the matching re-check interval.
                    wf.hub.wake_all();
                }
            }
        }))
    }

    /// Stop holding: every current and future [`Workflow::wait_resolved`] returns the request as it stands
    /// (still pending), so clients can be told it survives the shutdown.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.hub.wake_all();
    }

    /// True once [`Workflow::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// How many requests have local waiters right now.
    pub fn waiting(&self) -> usize {
        self.hub.waiting()
    }

    /// Wait until the request leaves `pending` or `timeout` passes; returns the latest view either way.
    pub async fn wait_resolved(
        &self,
        id: RequestId,
        timeout: Duration,
    ) -> Result<RequestView, WorkflowError> {
        let deadline = deadline_after(timeout);
        let handle = self.hub.handle(id);
        let result = loop {
            let notified = handle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let view = match self.get(id).await {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            let now = tokio::time::Instant::now();
            if view.request.status != RequestStatus::Pending
                || now >= deadline
                || self.is_shutting_down()
            {
                break Ok(view);
            }
            // With a live change feed, thousands of waiters polling every 250 ms would only load the store.
            let every = if self.feed_live.load(Ordering::SeqCst) {
                live_feed_recheck(self.poll, id)
            } else {
                self.poll
            };
            let nap = every.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        };
        self.hub.release(id, handle);
        result
    }
}

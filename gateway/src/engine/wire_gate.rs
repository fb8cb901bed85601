//! The wire proxy's view of the engine.

use super::recording::RecordOp;
use super::{Admission, Engine};
use crate::pg::gate::{
    ExecutionOutcome, GateError, HoldOutcome, HoldTicket, ScramError, ScramVerifier, SessionInfo,
    StatementRecord, UpstreamTarget, WireAuthError, WireGate,
};
use crate::policy::{Action, Verdict, VerdictMemo};
use countersign_bot::audit::AuditEntry;
use countersign_bot::{
    ExecutionSummary, RequestId, RequestStatus, RequesterChain, StatementHash, WorkflowError,
};
use std::sync::Arc;
use std::time::Duration;

#[async_trait::async_trait]
impl WireGate for Engine {
    async fn authenticate(
        &self,
        connection: &str,
        user: &str,
        password: &str,
    ) -> Result<RequesterChain, WireAuthError> {
        // The credential first, as PostgreSQL checks the password before the database: a client that
        // can't log in learns nothing about the connections.
        let chain =
            self.authenticate(password, "wire")
                .await
                .map_err(|_| WireAuthError::BadPassword {
                    user: user.to_string(),
                })?;
        self.connection_allowed(connection, user, &chain).await?;
        Ok(chain)
    }

    fn scram_verifier(&self, user: &str) -> Option<ScramVerifier> {
        self.auth.scram_login(user).map(|l| l.verifier.clone())
    }

    async fn scram_verified(
        &self,
        connection: &str,
        user: &str,
    ) -> Result<RequesterChain, WireAuthError> {
        let chain = self
            .auth
            .scram_login(user)
            .map(|l| l.chain.clone())
            .ok_or_else(|| WireAuthError::BadPassword {
                user: user.to_string(),
            })?;
        self.connection_allowed(connection, user, &chain).await?;
        Ok(chain)
    }

    async fn scram_refused(&self, connection: &str, user: &str, error: &ScramError) {
        let code = match error {
            ScramError::Failed => "scram_failed",
            ScramError::Malformed(_) => "scram_malformed",
            ScramError::ChannelBinding(_) => "scram_channel_binding",
        };
        // Same shape as a refused token (`Engine::authenticate`), plus the claimed user and connection.
        let entry = AuditEntry::new("unknown", "auth.refused", "wire")
            .decision("refused")
            .detail(serde_json::json!({
                "code": code,
                "message": error.to_string(),
                "user": user,
                "connection": connection,
            }));
        if let Err(se) = self.store().append_audit(entry).await {
            tracing::warn!(error = %se, "could not audit a refused SCRAM login");
        }
        tracing::warn!(code, channel = "wire", "authentication refused");
    }

    async fn login_refused(&self, connection: &str, user: &str, code: &'static str, message: &str) {
        let entry = AuditEntry::new("unknown", "auth.refused", "wire")
            .decision("refused")
            .detail(serde_json::json!({
                "code": code,
                "message": message,
                "user": user,
                "connection": connection,
            }));
        if let Err(e) = self.store().append_audit(entry).await {
            tracing::warn!(error = %e, "could not audit a refused wire login");
        }
        tracing::warn!(code, channel = "wire", "authentication refused");
    }

    fn upstream(&self, connection: &str) -> Option<UpstreamTarget> {
        self.upstreams.get(connection).cloned()
    }

    fn masking(&self, connection: &str) -> Option<Arc<crate::masking::Masker>> {
        self.maskers.get(connection).cloned()
    }

    fn table_lookup(&self, connection: &str) -> Option<Arc<dyn crate::masking::TableLookup>> {
        self.table_lookups
            .get(connection)
            .map(|l| l.clone() as Arc<dyn crate::masking::TableLookup>)
    }

    fn classify(
        &self,
        connection: &str,
        requester: &RequesterChain,
        sql: &str,
        memo: &mut VerdictMemo,
    ) -> Arc<Verdict> {
        self.classify_memo(connection, requester, sql, memo)
    }

    async fn hold(
        &self,
        session: &SessionInfo,
        sql: &str,
        hash: &StatementHash,
        verdict: &Verdict,
    ) -> Result<HoldTicket, GateError> {
        let admission = self
            .admit(
                &super::Incoming {
                    connection: &session.connection,
                    requester: &session.requester,
                    sql,
                    hash,
                    origin: "wire",
                    session: Some(session.id),
                },
                verdict,
            )
            .await
            .map_err(|e| match e {
                WorkflowError::RequesterWithoutEmail(_) => GateError::Refused(e.to_string()),
                e => GateError::Unavailable(e.to_string()),
            })?;
        match admission {
            Admission::RunApproved(id) => Ok(HoldTicket::Approved { id }),
            Admission::Held(v) => Ok(HoldTicket::Pending {
                id: v.request.id,
                approvers: self.approvers(&v.request.approver_groups),
                expires_at: v.request.expires_at,
                quorum: v.request.quorum,
            }),
            // The proxy only calls hold for review verdicts; anything else is a bug we fail closed on.
            Admission::Run | Admission::Blocked => Err(GateError::Unavailable(
                "statement is not held for review; it was not run".into(),
            )),
        }
    }

    async fn wait(&self, id: RequestId, timeout: Duration) -> HoldOutcome {
        let _held = self.metrics.hold();
        let view = match self.workflow.wait_resolved(id, timeout).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(request_id = %id, error = %e, "waiting on a held statement failed");
                return HoldOutcome::Unavailable(e.to_string());
            }
        };
        match view.request.status {
            RequestStatus::Pending if self.workflow.is_shutting_down() => HoldOutcome::ShuttingDown,
            RequestStatus::Pending => HoldOutcome::TimedOut,
            RequestStatus::Approved => match self.workflow.claim(id, &view.request.requester).await
            {
                Ok(Some(_)) => HoldOutcome::Approved,
                // Someone else (a re-send on another connection) claimed the single execution.
                Ok(None) => match self.workflow.get(id).await {
                    Ok(now) if now.request.status == RequestStatus::Cancelled => {
                        HoldOutcome::Cancelled
                    }
                    Ok(now) => ran_elsewhere(&now.request),
                    Err(_) => HoldOutcome::RanElsewhere(None),
                },
                Err(e) => {
                    tracing::warn!(request_id = %id, error = %e, "claiming an approved statement failed");
                    HoldOutcome::Unavailable(e.to_string())
                }
            },
            RequestStatus::Denied => {
                let deny = view
                    .votes
                    .iter()
                    .find(|v| v.decision == countersign_bot::Decision::Deny);
                HoldOutcome::Denied {
                    by: deny.map(|v| vec![v.voter_name.clone()]).unwrap_or_default(),
                    reason: deny.and_then(|v| v.reason.clone()),
                }
            }
            RequestStatus::Expired => HoldOutcome::Expired,
            RequestStatus::Cancelled => HoldOutcome::Cancelled,
            RequestStatus::Executing | RequestStatus::Executed | RequestStatus::Failed => {
                ran_elsewhere(&view.request)
            }
        }
    }

    async fn cancel_hold(&self, id: RequestId, session: &SessionInfo) {
        if let Err(e) = self.workflow.cancel(id, &session.requester, "wire").await {
            tracing::warn!(request_id = %id, error = %e, "could not cancel a held request");
        }
    }

    async fn executed(&self, id: RequestId, outcome: ExecutionOutcome) {
        let summary = ExecutionSummary {
            command_tag: outcome.command_tag,
            rows: outcome.rows,
            error: outcome.error,
            duration_ms: outcome.duration.as_millis() as u64,
        };
        self.finish(id, summary).await;
    }

    async fn session_started(&self, session: &SessionInfo) {
        let rec = countersign_bot::sessions::SessionRecord {
            id: session.id,
            connection: session.connection.clone(),
            requester: session.requester.clone(),
            client_addr: Some(session.client_addr.to_string()),
            application: session.application_name.clone(),
            protocol: "wire".into(),
            started_at: session.started_at,
            ended_at: None,
            end_reason: None,
        };
        self.recorder.send(RecordOp::Started(rec)).await;
    }

    fn changes_catalog(&self, command_tag: &str) -> bool {
        super::row_functions::changes_functions([Some(command_tag)])
    }

    async fn syntax_rejected(&self, connection: &str, sql: &str) -> bool {
        self.syntax_rejected_by_postgres(connection, sql).await
    }

    fn note_catalog_change(&self, connection: &str) {
        self.row_functions.note_change(&self.upstreams, connection);
    }

    fn catalog_change_pending(&self, connection: &str) -> bool {
        self.row_functions.change_pending(connection)
    }

    async fn catalog_changed(&self, connection: &str) -> bool {
        let asked = std::time::Instant::now();
        self.row_functions
            .refresh_since(&self.pool, &self.upstreams, connection, asked)
            .await
    }

    async fn statements_finished(&self, batch: Vec<StatementRecord>) {
        use crate::metrics::{FrontDoor, UpstreamFailure};
        let records = batch
            .into_iter()
            .map(|record| {
                self.metrics
                    .statement(FrontDoor::Wire, record.decision.into());
                let outcome = outcome_of(&record);
                if outcome == "error" && record.command_tag.is_none() {
                    self.metrics
                        .upstream_error(FrontDoor::Wire, UpstreamFailure::Statement);
                }
                countersign_bot::sessions::StatementRecord {
                    session_id: record.session_id,
                    sql: countersign_bot::sessions::recorded_sql(record.sql),
                    statement_hash: record.hash,
                    decision: record.decision.as_str().to_string(),
                    request_id: record.request_id,
                    outcome: outcome.to_string(),
                    command_tag: record.command_tag,
                    rows: record.rows,
                    error: record.error,
                    masked_fields: record.masked_fields,
                    duration_us: record.duration.as_micros() as u64,
                    at: record.received_at,
                }
            })
            .collect();
        self.recorder.send(RecordOp::Statements(records)).await;
    }

    async fn session_ended(&self, session: &SessionInfo) {
        let now = countersign_bot::clock::now();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        self.recorder
            .send(RecordOp::Ended(
                session.id,
                (now.unix_timestamp_nanos() / 1_000_000) as i64,
                done_tx,
            ))
            .await;
        let _ = done_rx.await;
        self.session_summary(session.id).await;
    }
}

impl Engine {
    /// Queue a threaded session summary when the session had held statements.
    pub async fn session_summary(&self, id: countersign_bot::SessionId) {
        let Ok(Some((session, tally))) = self.store().session_tally(id).await else {
            return;
        };
        // Each held request once, in the order the session met them (a re-run names its request again).
        if tally.requests.is_empty() {
            return;
        }
        let summary = countersign_bot::sessions::SessionSummary::from_tally(&session, &tally);
        let requests = tally.requests;
        let event = countersign_bot::events::WorkflowEvent::SessionSummary { requests, summary };
        if let Err(e) = self
            .store()
            .enqueue(
                &event,
                &format!("session:{id}:summary"),
                self.workflow.sinks(),
            )
            .await
        {
            tracing::warn!(session_id = %id, error = %e, "could not queue the session summary");
        }
    }
}

impl Engine {
    /// Refuses (and audits) an authenticated wire login to a connection that is not configured: 3D000,
    /// as PostgreSQL answers for a database that does not exist.
    async fn connection_allowed(
        &self,
        connection: &str,
        user: &str,
        chain: &RequesterChain,
    ) -> Result<(), WireAuthError> {
        if self.upstreams.contains_key(connection) {
            return Ok(());
        }
        let configured = self.connection_names();
        let message = format!(
            "no connection named \"{connection}\" is configured; use one of: {}",
            configured.join(", ")
        );
        let entry = AuditEntry::new(chain.key(), "auth.refused", "wire")
            .decision("refused")
            .detail(serde_json::json!({
                "code": "unknown_connection",
                "message": message,
                "user": user,
                "connection": connection,
            }));
        if let Err(e) = self.store().append_audit(entry).await {
            tracing::warn!(error = %e, "could not audit a login to an unknown connection");
        }
        tracing::warn!(
            code = "unknown_connection",
            channel = "wire",
            "authentication refused"
        );
        Err(WireAuthError::UnknownConnection {
            connection: connection.to_string(),
            configured,
        })
    }
}

/// The outcome for a waiter whose approved statement another session ran: its result, when recorded.
fn ran_elsewhere(request: &countersign_bot::ApprovalRequest) -> HoldOutcome {
    let result = request
        .execution
        .as_ref()
        .map(|e| match (&e.error, &e.command_tag) {
            (Some(error), _) => format!("failed: {error}"),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "finished".to_string(),
        });
    HoldOutcome::RanElsewhere(result.or_else(|| {
        (request.status == RequestStatus::Executing).then(|| "still running".to_string())
    }))
}

/// The outcome a finished wire statement is recorded with (`ok`, `error`, `blocked`, `not_run`).
fn outcome_of(record: &crate::pg::StatementRecord) -> &'static str {
    match (record.decision, &record.error) {
        (Action::Block, _) => "blocked",
        // A statement needing review ran only with a request (approved); without one (its creation
        // failed, or the batch was skipped upstream) it never ran, and summaries must not count it
        // as approved.
        (_, Some(_))
            if record.command_tag.is_none()
                && (record.request_id.is_some() || record.decision == Action::Review) =>
        {
            "not_run"
        }
        (_, Some(_)) => "error",
        _ => "ok",
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    #[test]
    fn a_reviewed_statement_without_a_request_did_not_run() {
        let record = |decision, request: bool, tag: Option<&str>, error: Option<&str>| {
            crate::pg::StatementRecord {
                session_id: countersign_bot::SessionId::new(),
                sql: std::sync::Arc::from("DELETE FROM t"),
                hash: countersign_bot::StatementHash::of_text("DELETE FROM t"),
                decision,
                request_id: request.then(countersign_bot::RequestId::new),
                duration: std::time::Duration::ZERO,
                received_at: time::OffsetDateTime::UNIX_EPOCH,
                command_tag: tag.map(str::to_string),
                rows: None,
                error: error.map(str::to_string),
                masked_fields: 0,
            }
        };
        let failed = Some("could not create the approval request");
        assert_eq!(
            outcome_of(&record(Action::Review, false, None, failed)),
            "not_run"
        );
        assert_eq!(
            outcome_of(&record(Action::Review, true, None, failed)),
            "not_run"
        );
        assert_eq!(
            outcome_of(&record(Action::Review, true, Some("DELETE 1"), None)),
            "ok"
        );
        assert_eq!(
            outcome_of(&record(Action::Allow, false, None, Some("syntax"))),
            "error"
        );
        assert_eq!(
            outcome_of(&record(Action::Block, false, None, None)),
            "blocked"
        );
    }
}

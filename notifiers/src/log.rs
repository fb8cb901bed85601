//! The simplest notifier: workflow events as structured log lines.

use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};

/// Writes each event to the log (target `countersign::events`).
#[derive(Debug, Default, Clone)]
pub struct LogNotifier;

#[async_trait::async_trait]
impl Notifier for LogNotifier {
    fn sink(&self) -> &str {
        "log"
    }

    async fn deliver(
        &self,
        delivery_key: &str,
        event: &WorkflowEvent,
    ) -> Result<(), DeliveryError> {
        let request_id = event
            .request_id()
            .map(|r| r.to_string())
            .unwrap_or_default();
        match event {
            WorkflowEvent::Created { request } => {
                tracing::info!(target: "countersign::events", %request_id, delivery_key,
                connection = %request.request.connection, requester = %request.request.requester.display(),
                quorum = request.request.quorum, "request created: {}",
                // One line: names quoted in reasons are the agent's, and could otherwise forge log lines.
                countersign_bot::reveal::reveal_line(&request.request.reasons.join("; ")))
            }
            WorkflowEvent::VoteRecorded { vote, request } => {
                tracing::info!(target: "countersign::events", %request_id, delivery_key,
                voter = %vote.voter_name, decision = vote.decision.as_str(), channel = %vote.channel,
                approvals = request.approvals(), quorum = request.request.quorum, "vote recorded")
            }
            WorkflowEvent::VoteRefused {
                voter_name,
                code,
                channel,
                ..
            } => tracing::warn!(target: "countersign::events", %request_id, delivery_key,
                voter = %voter_name, code = %code, channel = %channel, "vote refused"),
            WorkflowEvent::Resolved { request } | WorkflowEvent::Executed { request } => {
                tracing::info!(target: "countersign::events", %request_id, delivery_key,
                status = %request.request.status, "request {}", event.kind())
            }
            WorkflowEvent::Reminder { .. } => {
                tracing::info!(target: "countersign::events", %request_id, delivery_key, "reminder")
            }
            WorkflowEvent::SessionSummary { summary, .. } => {
                tracing::info!(target: "countersign::events", delivery_key,
                connection = %summary.connection, run = summary.run, blocked = summary.blocked, held = summary.held,
                approved = summary.approved, "session summary")
            }
        }
        Ok(())
    }
}

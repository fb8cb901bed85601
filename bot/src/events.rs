//! Workflow events handed to notifiers, and the trait every channel implements.
//!
//! Events are written to the store's outbox in the same transaction as the state change they describe, one
//! row per configured sink, so an outage or a restart loses nothing.

use crate::request::{RequestView, Vote};
use crate::sessions::SessionSummary;
use serde::{Deserialize, Serialize};

/// Something notifiers may want to tell people about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkflowEvent {
    /// A statement is held for approval.
    Created {
        /// The request as created.
        request: RequestView,
    },
    /// A vote counted.
    VoteRecorded {
        /// The request after the vote.
        request: RequestView,
        /// The vote.
        vote: Vote,
    },
    /// A vote was refused (separation of duties, not a member, already voted, resolved...).
    VoteRefused {
        /// The request.
        request: RequestView,
        /// Display name of who tried (no private data).
        voter_name: String,
        /// Channel it came through.
        channel: String,
        /// Stable refusal code.
        code: String,
        /// Human-readable reason.
        reason: String,
    },
    /// Approved, denied, cancelled or expired.
    Resolved {
        /// The request after resolution.
        request: RequestView,
    },
    /// The approved statement ran (or failed).
    Executed {
        /// The request after execution, with its execution summary.
        request: RequestView,
    },
    /// Still pending: nudge the approvers. With `escalated_to` set, this is an escalation to further groups.
    Reminder {
        /// The request.
        request: RequestView,
        /// Approver groups to escalate to (their members are told too); empty for a plain reminder.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        escalated_to: Vec<String>,
    },
    /// A session that had held statements ended.
    SessionSummary {
        /// Requests the session held (for threading).
        requests: Vec<crate::ids::RequestId>,
        /// The summary.
        summary: SessionSummary,
    },
}

impl WorkflowEvent {
    /// Stable event type name, e.g. `created`, `vote_recorded`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::VoteRecorded { .. } => "vote_recorded",
            Self::VoteRefused { .. } => "vote_refused",
            Self::Resolved { .. } => "resolved",
            Self::Executed { .. } => "executed",
            Self::Reminder { .. } => "reminder",
            Self::SessionSummary { .. } => "session_summary",
        }
    }

    /// The request this event is about (the first one for a session summary).
    pub fn request_id(&self) -> Option<crate::ids::RequestId> {
        match self {
            Self::Created { request }
            | Self::VoteRecorded { request, .. }
            | Self::VoteRefused { request, .. }
            | Self::Resolved { request }
            | Self::Executed { request }
            | Self::Reminder { request, .. } => Some(request.request.id),
            Self::SessionSummary { requests, .. } => requests.first().copied(),
        }
    }
}

/// Why a delivery failed, and whether to try again.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying (outage, 5xx, timeout). `retry_after` honours e.g. HTTP 429 Retry-After.
    #[error("temporary delivery failure: {message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// Server-requested delay.
        retry_after: Option<std::time::Duration>,
    },
    /// Will never succeed (bad configuration, 4xx other than 429); dead-lettered at once.
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

/// A channel that delivers workflow events (Slack, e-mail, Jira, webhooks, logs).
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// The sink name this notifier's outbox rows carry (e.g. `slack`).
    fn sink(&self) -> &str;

    /// Deliver one event. Must be idempotent for the same `delivery_key`: it may be retried after a crash.
    async fn deliver(&self, delivery_key: &str, event: &WorkflowEvent)
        -> Result<(), DeliveryError>;
}

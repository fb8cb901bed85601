//! Approval requests, votes and their states.

use crate::identity::{CanonicalId, RequesterChain};
use crate::ids::{RequestId, StatementHash};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;

/// Lifecycle of a request: `pending → approved | denied | expired | cancelled`, `approved → executing →
/// executed | failed`. Every transition is a compare-and-set in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    /// Waiting for votes.
    Pending,
    /// Quorum reached; may run once.
    Approved,
    /// Vetoed by a deny vote.
    Denied,
    /// TTL passed before quorum.
    Expired,
    /// Withdrawn by the requester (e.g. Ctrl-C during a hold).
    Cancelled,
    /// Claimed for its single execution; running now.
    Executing,
    /// Ran successfully.
    Executed,
    /// Ran and the upstream returned an error.
    Failed,
}

impl RequestStatus {
    /// Stable lower-case name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Executing => "executing",
            Self::Executed => "executed",
            Self::Failed => "failed",
        }
    }

    /// No further votes are possible.
    pub fn is_resolved(self) -> bool {
        self != Self::Pending
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string from the store or a query parameter that names no status.
#[derive(Debug, thiserror::Error)]
#[error("unknown request status {0:?}: use pending, approved, denied, expired, cancelled, executing, executed or failed")]
pub struct UnknownStatus(pub String);

impl FromStr for RequestStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "cancelled" => Self::Cancelled,
            "executing" => Self::Executing,
            "executed" => Self::Executed,
            "failed" => Self::Failed,
            other => return Err(UnknownStatus(other.to_string())),
        })
    }
}

/// Approve or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Counts toward the quorum.
    Approve,
    /// Vetoes the request.
    Deny,
}

impl Decision {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

impl FromStr for Decision {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(Self::Approve),
            "deny" => Ok(Self::Deny),
            other => Err(UnknownStatus(other.to_string())),
        }
    }
}

/// Everything needed to create a request; the workflow fills in id, times and status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRequest {
    /// Connection name the statement targets.
    pub connection: String,
    /// Exact statement text that will run if approved.
    pub statement: String,
    /// Hash of the statement text (and parameters) the approval is bound to.
    pub statement_hash: StatementHash,
    /// Who asks.
    pub requester: RequesterChain,
    /// Policy rule that required review.
    pub rule: String,
    /// Why review is needed.
    pub reasons: Vec<String>,
    /// Groups whose members may vote.
    pub approver_groups: Vec<String>,
    /// Distinct humans needed.
    pub quorum: u32,
    /// Seconds until expiry.
    pub ttl_secs: u64,
    /// Where the request came from (`http`, `wire`).
    pub origin: String,
    /// Session the statement arrived on, when recorded.
    pub session_id: Option<crate::ids::SessionId>,
    /// The rule's own reminder and escalation timings; unset fields use the global plan.
    #[serde(default)]
    pub reminders: ReminderSettings,
}

/// Reminder and escalation timings a policy rule sets for its requests; `None` means "use the global
/// `[reminders]` plan".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderSettings {
    /// Seconds after creation before reminding approvers, and between reminders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_after_secs: Option<u64>,
    /// Seconds after the first reminder before escalating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_after_secs: Option<u64>,
    /// Approver groups to escalate to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalate_to: Vec<String>,
}

impl ReminderSettings {
    /// Nothing set: the global plan applies in full.
    pub fn is_unset(&self) -> bool {
        self.remind_after_secs.is_none()
            && self.escalate_after_secs.is_none()
            && self.escalate_to.is_empty()
    }
}

/// A request as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Request id.
    pub id: RequestId,
    /// Connection name.
    pub connection: String,
    /// Exact statement text.
    pub statement: String,
    /// Bound statement hash.
    pub statement_hash: StatementHash,
    /// Requester chain.
    pub requester: RequesterChain,
    /// Policy rule name.
    pub rule: String,
    /// Reasons for review.
    pub reasons: Vec<String>,
    /// Approver groups.
    pub approver_groups: Vec<String>,
    /// Quorum.
    pub quorum: u32,
    /// Current status.
    pub status: RequestStatus,
    /// Origin (`http`, `wire`).
    pub origin: String,
    /// Session, when known.
    pub session_id: Option<crate::ids::SessionId>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Expires (pending only).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Last status change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Execution result, once run: command tag, rows, error, duration (never result data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionSummary>,
    /// The rule's own reminder and escalation timings, when it set any.
    #[serde(default, skip_serializing_if = "ReminderSettings::is_unset")]
    pub reminders: ReminderSettings,
}

/// What running an approved statement produced. Never contains result rows: approvers never see data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionSummary {
    /// Upstream command tag, e.g. `DELETE 3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<String>,
    /// Rows affected or returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Upstream error message, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// One recorded vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Request voted on.
    pub request_id: RequestId,
    /// Canonical voter (counts once across channels).
    pub voter: CanonicalId,
    /// Display name of the voter.
    pub voter_name: String,
    /// Approve or deny.
    pub decision: Decision,
    /// Optional reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Channel the vote came through (`api`, `slack`, `email`, `jira`).
    pub channel: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A request with its votes, as shown by the API and the request pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestView {
    /// The request.
    #[serde(flatten)]
    pub request: ApprovalRequest,
    /// Votes in order.
    pub votes: Vec<Vote>,
}

impl RequestView {
    /// Distinct humans who approved so far.
    pub fn approvals(&self) -> usize {
        self.votes
            .iter()
            .filter(|v| v.decision == Decision::Approve)
            .count()
    }
}

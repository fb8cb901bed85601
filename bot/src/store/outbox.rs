//! Outbox rows: one per notification per sink, delivered by the outbox worker with retries.

use serde::{Deserialize, Serialize};

/// Delivery state of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Waiting (or retrying).
    Pending,
    /// Done.
    Delivered,
    /// Gave up after the configured attempts; `countersign outbox retry ID` re-queues it.
    Dead,
}

impl OutboxStatus {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// One notification to deliver to one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Row id.
    pub id: i64,
    /// Sink name (`slack`, `email`, ...).
    pub sink: String,
    /// Request, when the event concerns one.
    pub request_id: Option<String>,
    /// Event kind.
    pub event_kind: String,
    /// Event JSON.
    pub payload: String,
    /// Unique per (event, sink): channels use it to deduplicate.
    pub idempotency_key: String,
    /// Status.
    pub status: OutboxStatus,
    /// Attempts so far.
    pub attempts: i64,
    /// Next attempt (Unix ms).
    pub next_attempt_ms: i64,
    /// Last error.
    pub last_error: Option<String>,
    /// Created (Unix ms).
    pub created_ms: i64,
}

/// Undelivered outbox rows of one sink, across every replica (for `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkBacklog {
    /// Sink name.
    pub sink: String,
    /// Waiting or retrying.
    pub pending: i64,
    /// Pending whose last attempt failed.
    pub failing: i64,
    /// Dead-lettered.
    pub dead: i64,
}

//! Durable handles of the Slack messages that belong to a request, kept in the store (`sink = "slack"`).
//!
//! Keys: `channel` / `ts` for the first channel message, `ts:{channel}` for every message (how clicks are
//! checked against the message they came from), `messages` for the list chat.update walks, and
//! `sent:{delivery key}:{target}` so a retried delivery never posts the same reply twice.

use countersign_bot::store::{Store, StoreError};
use countersign_bot::RequestId;
use serde::{Deserialize, Serialize};

/// The sink name in `message_refs`.
pub const SINK: &str = "slack";

/// One posted request message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// Conversation id (channel, or the DM conversation).
    pub channel: String,
    /// Message timestamp.
    pub ts: String,
    /// A direct message to an approver (updated, but not threaded into).
    pub dm: bool,
}

/// Every request message posted so far.
pub async fn messages(store: &dyn Store, id: RequestId) -> Result<Vec<MessageRef>, StoreError> {
    Ok(match store.get_ref(id, SINK, "messages").await? {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!(
                "slack message refs of {id} are not valid JSON: {e}"
            ))
        })?,
        None => Vec::new(),
    })
}

/// Remember a posted request message. Deliveries of one request are serialised by the outbox, so the
/// read-modify-write of the list does not race.
pub async fn add_message(
    store: &dyn Store,
    id: RequestId,
    m: MessageRef,
) -> Result<(), StoreError> {
    let mut all = messages(store, id).await?;
    store
        .put_ref(id, SINK, &format!("ts:{}", m.channel), &m.ts)
        .await?;
    if !m.dm && !all.iter().any(|x| !x.dm) {
        store.put_ref(id, SINK, "channel", &m.channel).await?;
        store.put_ref(id, SINK, "ts", &m.ts).await?;
    }
    if !all.contains(&m) {
        all.push(m);
    }
    let json = serde_json::to_string(&all).unwrap_or_else(|_| "[]".into());
    store.put_ref(id, SINK, "messages", &json).await
}

/// True when `channel` / `ts` is a message Countersign posted for this request (not a copy or a forward).
pub async fn is_request_message(
    store: &dyn Store,
    id: RequestId,
    channel: &str,
    ts: &str,
) -> Result<bool, StoreError> {
    Ok(store
        .get_ref(id, SINK, &format!("ts:{channel}"))
        .await?
        .is_some_and(|stored| stored == ts))
}

/// The message ts a delivery already produced for `target`, if it got that far before.
pub async fn already_sent(
    store: &dyn Store,
    id: RequestId,
    delivery_key: &str,
    target: &str,
) -> Result<Option<String>, StoreError> {
    store
        .get_ref(id, SINK, &format!("sent:{delivery_key}:{target}"))
        .await
}

/// Record that a delivery posted to `target`.
pub async fn mark_sent(
    store: &dyn Store,
    id: RequestId,
    delivery_key: &str,
    target: &str,
    ts: &str,
) -> Result<(), StoreError> {
    store
        .put_ref(id, SINK, &format!("sent:{delivery_key}:{target}"), ts)
        .await
}

//! The parts of Slack's interaction and slash-command payloads Countersign reads. Unknown fields are
//! ignored (Slack adds fields over time); missing ones are `None`, never a panic.

use countersign_bot::{Decision, RequestId};
use serde::Deserialize;
use std::collections::HashMap;

/// An interaction (`payload=` form field, JSON).
#[derive(Debug, Clone, Deserialize)]
pub struct InteractionPayload {
    /// `block_actions`, `view_submission`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Who clicked.
    pub user: Option<PayloadUser>,
    /// For opening a modal in answer to this click.
    pub trigger_id: Option<String>,
    /// Where the clicked message lives.
    pub container: Option<Container>,
    /// The channel (older payload shape).
    pub channel: Option<PayloadChannel>,
    /// The clicked message (older payload shape).
    pub message: Option<PayloadMessage>,
    /// The actions taken.
    #[serde(default)]
    pub actions: Vec<PayloadAction>,
    /// The submitted view, for `view_submission`.
    pub view: Option<PayloadView>,
}

/// A Slack user reference.
#[derive(Debug, Clone, Deserialize)]
pub struct PayloadUser {
    /// User id (`U…`).
    pub id: String,
}

/// The message container of a block action.
#[derive(Debug, Clone, Deserialize)]
pub struct Container {
    /// Channel of the message.
    pub channel_id: Option<String>,
    /// Timestamp of the message.
    pub message_ts: Option<String>,
}

/// A channel reference.
#[derive(Debug, Clone, Deserialize)]
pub struct PayloadChannel {
    /// Channel id.
    pub id: String,
}

/// A message reference.
#[derive(Debug, Clone, Deserialize)]
pub struct PayloadMessage {
    /// Message timestamp.
    pub ts: String,
}

/// One block action.
#[derive(Debug, Clone, Deserialize)]
pub struct PayloadAction {
    /// Which element.
    pub action_id: String,
    /// The button's value.
    pub value: Option<String>,
}

/// A submitted modal.
#[derive(Debug, Clone, Deserialize)]
pub struct PayloadView {
    /// Which modal.
    pub callback_id: Option<String>,
    /// What Countersign put in when opening it.
    pub private_metadata: Option<String>,
    /// Input values by block id and action id.
    pub state: Option<ViewState>,
}

/// Input values of a view.
#[derive(Debug, Clone, Deserialize)]
pub struct ViewState {
    /// block id → action id → value.
    #[serde(default)]
    pub values: HashMap<String, HashMap<String, StateValue>>,
}

/// One input value.
#[derive(Debug, Clone, Deserialize)]
pub struct StateValue {
    /// Text typed, for plain-text inputs.
    pub value: Option<String>,
}

impl InteractionPayload {
    /// The clicked message's channel and ts.
    pub fn message_location(&self) -> Option<(String, String)> {
        let channel = self
            .container
            .as_ref()
            .and_then(|c| c.channel_id.clone())
            .or_else(|| self.channel.as_ref().map(|c| c.id.clone()))?;
        let ts = self
            .container
            .as_ref()
            .and_then(|c| c.message_ts.clone())
            .or_else(|| self.message.as_ref().map(|m| m.ts.clone()))?;
        Some((channel, ts))
    }
}

impl PayloadView {
    /// The text typed into input `block` / `action`.
    pub fn input(&self, block: &str, action: &str) -> Option<String> {
        self.state
            .as_ref()?
            .values
            .get(block)?
            .get(action)?
            .value
            .clone()
    }
}

/// Parse a button value `approve:<id>` / `deny:<id>`.
pub fn parse_vote_value(value: &str) -> Option<(Decision, RequestId)> {
    let (verb, id) = value.split_once(':')?;
    let decision = match verb {
        "approve" => Decision::Approve,
        "deny" => Decision::Deny,
        _ => return None,
    };
    Some((decision, id.parse().ok()?))
}

/// Form fields of a slash command.
#[derive(Debug, Clone, Deserialize)]
pub struct SlashCommand {
    /// The command, e.g. `/countersign`.
    #[serde(default)]
    pub command: String,
    /// What follows the command.
    #[serde(default)]
    pub text: String,
    /// Who typed it.
    pub user_id: String,
    /// Where.
    #[serde(default)]
    pub channel_id: String,
}

/// The `payload` field of an interaction form body.
#[derive(Debug, Deserialize)]
pub struct InteractionForm {
    /// The JSON payload.
    pub payload: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_values_parse_only_with_a_known_verb_and_a_uuid() {
        let id = RequestId::new();
        assert_eq!(
            parse_vote_value(&format!("approve:{id}")),
            Some((Decision::Approve, id))
        );
        assert_eq!(
            parse_vote_value(&format!("deny:{id}")),
            Some((Decision::Deny, id))
        );
        assert_eq!(parse_vote_value(&format!("delete:{id}")), None);
        assert_eq!(parse_vote_value("approve:not-a-uuid"), None);
        assert_eq!(parse_vote_value("approve"), None);
    }

    #[test]
    fn block_actions_payload_yields_container_location() {
        let p: InteractionPayload = serde_json::from_str(
            r#"{"type":"block_actions","user":{"id":"U1","name":"x"},"container":{"type":"message","channel_id":"C1","message_ts":"1.5"},"actions":[{"action_id":"a","value":"v","type":"button"}],"extra":1}"#,
        )
        .unwrap();
        assert_eq!(p.message_location(), Some(("C1".into(), "1.5".into())));
        assert_eq!(p.actions[0].value.as_deref(), Some("v"));
    }
}

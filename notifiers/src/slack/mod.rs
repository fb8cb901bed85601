//! Slack approvals: Block Kit request messages with Approve / Deny, verified interactions, in-place
//! updates, a threaded timeline and session summaries.
//!
//! Outbound, [`SlackNotifier`] turns outbox events into Web API calls; inbound, [`router`] serves
//! `/slack/interactions` and `/slack/commands`, turning each verified click into one workflow vote.
//! Socket Mode is not implemented: Slack must be able to reach the HTTP endpoints.

pub mod api;
pub mod config;
pub mod escape;
pub mod identity;
pub mod inbound;
pub mod message_refs;
pub mod notifier;
pub mod payload;
pub mod render;
pub mod signature;

pub use api::{SlackApi, SlackApiError};
pub use config::{SlackConfig, SlackConfigError, SlackRoutes, SlackSecrets};
pub use inbound::{router, SlackInbound};
pub use notifier::SlackNotifier;

//! Slack approvals: Block Kit request messages with Approve / Deny, verified interactions, in-place
//! updates, a threaded timeline and session summaries.
//!
//! Outbound, [`SlackNotifier`] turns outbox events into Web API calls; inbound, [`router`] serves
//! `/slack/interactions` and `/slack/commands`, turning each verified click into one workflow vote.
//! With an app-level token, [`SocketModeClient`] receives the same interactions over an outbound WebSocket
//! instead, for set-ups Slack cannot reach.

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
pub mod socket_mode;

pub use api::{SlackApi, SlackApiError};
pub use config::{SlackConfig, SlackConfigError, SlackRoutes, SlackSecrets};
pub use inbound::{router, SlackInbound};
pub use notifier::SlackNotifier;
pub use socket_mode::{Backoff, SocketModeClient, SocketModeError};

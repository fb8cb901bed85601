//! Outbound webhooks: each configured endpoint is its own sink (`webhook:<name>`) receiving the workflow
//! event JSON, signed per Standard Webhooks, filtered by event type and connection.

mod config;
mod notifier;
pub mod signing;

pub use config::{WebhookConfigError, WebhookEndpointConfig, WebhooksConfig, EVENT_KINDS};
pub use notifier::{WebhookNotifier, WebhookSetupError};
pub use signing::{SecretError, WebhookSigner};

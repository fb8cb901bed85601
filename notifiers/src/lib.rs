//! Notification channels: each adapter turns workflow events into messages and inbound clicks into votes.
//! Deliveries go through the store's outbox, so an outage or a restart loses nothing.
#![forbid(unsafe_code)]

pub mod duration;
pub mod email;
pub mod http_retry;
pub mod jira;
pub mod log;
pub mod outbox_worker;
pub mod reminders;
pub mod slack;
pub mod web;
pub mod webhooks;

pub use log::LogNotifier;
pub use outbox_worker::{OutboxWorker, RetryPolicy};

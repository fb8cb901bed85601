//! E-mail approvals: per-recipient signed single-use links, confirmation pages that a GET can never
//! decide, and threaded follow-up mails. Delivery goes through the outbox ([`EmailNotifier`]); the
//! inbound side is [`router`] over [`EmailInbound`], with the pages in [`crate::web`].

pub mod compose;
pub mod config;
pub mod inbound;
pub mod notifier;
pub mod token;

pub use config::{EmailConfig, EmailConfigError, EmailSecrets, SmtpTls};
pub use inbound::{router, EmailInbound};
pub use notifier::{EmailNotifier, EMAIL_SINK};
pub use token::{LinkAction, LinkClaims, LinkError, LinkSigner, LINK_AUDIENCE};

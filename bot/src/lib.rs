//! The approval workflow: requests, votes, quorum, separation of duties, expiry, the store and the
//! tamper-evident audit trail. Pure domain and persistence: this crate knows no channel and no wire
//! protocol.
#![forbid(unsafe_code)]

pub mod identity;
pub mod ids;

pub use identity::{CanonicalId, Identity, IdentityKind, RequesterChain};
pub use ids::{RequestId, SessionId, StatementHash};

//! The approval workflow: requests, votes, quorum, separation of duties, expiry, the store and the
//! tamper-evident audit trail. Pure domain and persistence: this crate knows no channel and no wire
//! protocol.
#![forbid(unsafe_code)]

pub mod identity;
pub mod ids;

pub use identity::{CanonicalId, Identity, IdentityKind, RequesterChain};
pub use ids::{BoundParam, RequestId, SessionId, StatementHash};
pub mod audit;
pub mod clock;
pub mod directory;
pub mod duration;
pub mod events;
pub mod request;
pub mod reveal;
#[cfg(test)]
mod session_store_tests;
pub mod sessions;
pub mod store;
pub mod testing;
pub mod workflow;
#[cfg(test)]
mod workflow_tests;

pub use directory::{ApproverDirectory, ApproverGroup};
pub use request::{
    ApprovalRequest, Decision, ExecutionSummary, NewRequest, ReminderSettings, RequestStatus,
    RequestView, Vote,
};
pub use store::Store;
pub use workflow::{Refusal, Submitted, VoteResult, Workflow, WorkflowError, WorkflowObserver};

//! SQL policy: classify statements and apply configured rules. Pure: no I/O.

pub mod cache;
pub mod classify;
pub mod fallback;
pub mod functions;
pub mod rules;
pub mod verdict;

pub use classify::classify;
pub use verdict::{Action, ReviewRequirement, StatementFacts, Verdict};

//! SQL policy: classify statements and apply configured rules. Pure: no I/O.

pub mod verdict;

pub use verdict::{Action, ReviewRequirement, StatementFacts, Verdict};

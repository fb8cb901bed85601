//! Countersign gateway: the data path (Postgres wire proxy, agent HTTP API), identity, policy,
//! masking and session recording, plus the composition root used by the `countersign` binary.
#![forbid(unsafe_code)]

pub mod channels;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
pub mod identity;
pub mod masking;
pub mod metrics;
pub mod pg;
pub mod policy;
pub mod upstream;

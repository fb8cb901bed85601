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
pub mod poll;
pub mod upstream;

/// Stack size of the threads that parse agents' SQL (the wire threads and the runtime's workers). The
/// policy bounds how deep a statement may nest before sqlparser sees it; this much stack (reserved, not
/// committed) keeps a gap in that bound from aborting the process, as 2 MiB could.
pub const THREAD_STACK: usize = 32 * 1024 * 1024;

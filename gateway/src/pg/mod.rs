//! The PostgreSQL wire-protocol gateway: clients (psql, pgbench, drivers) connect here instead of to
//! the database; every statement is classified and forwarded, refused, or held for approval on the
//! live connection.
//!
//! **Architecture invariant:** no client statement reaches the upstream without a verdict from
//! [`WireGate::classify`]; upstream bytes are passed through untouched except the gateway's own refusals.

mod auth;
pub(crate) mod backend;
pub(crate) mod cancel;
pub mod channel_binding;
pub(crate) mod codec;
pub mod config;
pub mod error;
mod extended;
pub mod gate;
mod prepared;
mod recorder;
mod relay;
pub mod scram;
pub mod server;
mod session;
pub(crate) mod spin;
mod startup_options;
pub mod syntax_probe;
#[doc(hidden)]
pub mod testing;
pub(crate) mod upstream;
pub mod upstream_tls;

pub use backend::MAX_MASKED_ROW;
pub use config::{TlsFiles, WireAuth, WireConfig};
pub use error::WireError;
pub use gate::{
    ExecutionOutcome, GateError, HoldOutcome, HoldTicket, SessionInfo, StatementRecord,
    UpstreamTarget, WireAuthError, WireGate,
};
pub use server::{serve, WireServer, WireWorkers};
pub use upstream_tls::{ChannelBindingMode, ClientCert, RootCert, SslMode, UpstreamTls};

//! Errors of the wire listener.

use std::path::PathBuf;

/// Why the listener could not start or a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Binding or accepting failed.
    #[error("wire listener on {addr}: {source}; check that the address is free and allowed")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS file {path}: {reason}; point [wire.tls] at readable PEM files")]
    Tls {
        /// The offending file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A socket error during a session.
    #[error("connection I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol (SQLSTATE 08P01 was sent).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The upstream database refused or broke the session.
    #[error("upstream: {0}")]
    Upstream(String),
}

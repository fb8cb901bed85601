//! Helpers shared by the gateway's integration tests. Each test binary uses a part of them.
#![allow(dead_code)]

pub mod pki;
pub mod private_postgres;
pub mod raw;
pub mod tls_proxy;

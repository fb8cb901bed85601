//! Runs the Postgres wire gateway with the static test gate, for `bench/pgbench.sh`.
//!
//! Usage: `wire_bench LISTEN_ADDR UPSTREAM_DATABASE` — connection name `bench`, password `bench-token`.

use countersign_gateway::pg::testing::StaticGate;
use countersign_gateway::pg::{serve, UpstreamTarget, WireConfig};
use std::sync::Arc;

// One thread, like pgbouncer: on 2 cores shared with pgbench and Postgres, cross-thread wake-ups cost more
// than they give (measured: prepared 0.68x → 0.81x of direct; simple unchanged within noise).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:6543".into())
        .parse()?;
    let database = args.next().unwrap_or_else(|| "countersign_bench".into());
    let upstream = UpstreamTarget {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: None,
        database,
        tls: Default::default(),
    };
    let gate = Arc::new(StaticGate::new("bench", upstream, "bench-token").without_event_log());
    let mut cfg = WireConfig::new(listen);
    cfg.allow_cleartext_without_tls = true;
    serve(cfg, gate, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

//! Relay time of a 1,000-row × 10-column result through the wire gateway, without and with masking rules,
//! against the PostgreSQL at 127.0.0.1:5432 (median of many runs, plain `Instant` timing). Runs through the
//! unmasked and the masked gateway alternate, so drift in the machine's speed during the bench weighs on
//! both sides of each ratio alike.
//! Run: `cargo bench -p countersign-gateway --bench masking`.

use countersign_gateway::masking::{Masker, MaskingConfig};
use countersign_gateway::pg::testing::StaticGate;
use countersign_gateway::pg::{WireConfig, WireServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const ROUNDS: usize = 300;
const TOKEN: &str = "bench-token";

/// Rule sets compared: column rules only, every detector, and column rules with the keyed hash.
const RULE_SETS: &[(&str, &str)] = &[
    ("columns (keep_last)", "[[rules]]\ncolumns = [\"*email*\", \"ssn\"]\nstyle = \"keep_last\""),
    ("all detectors", "[[rules]]\ndetect = [\"email\", \"phone\", \"card\", \"iban\", \"ssn\", \"jwt\", \"api_key\", \"private_key\", \"ipv4\", \"ipv6\"]\nstyle = \"partial\""),
    ("columns (hash)", "[[rules]]\ncolumns = [\"*email*\", \"ssn\"]\nstyle = \"hash\""),
];

/// Starts a gateway the way `countersign serve` runs its wire proxy: on its own OS thread and
/// single-threaded runtime, so the client's decoding and the gateway's relay (and masking) run on
/// different threads, as they do between an agent and the deployed binary.
fn gateway(rules: Option<&'static str>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("gateway runtime");
        rt.block_on(async move {
            let upstream = countersign_gateway::pg::testing::local_postgres("test");
            let mut gate = StaticGate::new("app", upstream, TOKEN).without_event_log();
            if let Some(rules) = rules {
                let cfg: MaskingConfig = toml::from_str(rules).expect("bench rules parse");
                gate = gate.with_masking(
                    Masker::new(&cfg, Some(b"bench-key")).expect("bench rules compile"),
                );
            }
            let mut config = WireConfig::new("127.0.0.1:0".parse().expect("loopback address"));
            config.allow_cleartext_without_tls = true;
            // Several gateways share this process and 2 cores: one still busy-polling after its run would
            // take CPU from the next one measured.
            config.busy_poll_us = 0;
            let server = WireServer::bind(config, Arc::new(gate))
                .await
                .expect("bind");
            tx.send(server.local_addr().expect("local addr"))
                .expect("bench waits for the address");
            server
                .run(std::future::pending())
                .await
                .expect("gateway runs");
        });
    });
    rx.recv().expect("gateway thread started")
}

async fn connect(conn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One run of the bench query; returns its duration.
async fn run_once(
    client: &Client,
    sql: &str,
    stmt: Option<&tokio_postgres::Statement>,
) -> Duration {
    let start = Instant::now();
    let rows = match stmt {
        Some(stmt) => client.query(stmt, &[]).await.expect("query").len(),
        None => client.simple_query(sql).await.expect("simple query").len() - 2,
    };
    let elapsed = start.elapsed();
    assert_eq!(rows, 1000);
    elapsed
}

/// Medians of `ROUNDS` runs through each client, taking turns run by run.
async fn time_alternating(clients: &[&Client], sql: &str, prepared: bool) -> Vec<Duration> {
    let mut stmts = Vec::new();
    for c in clients {
        stmts.push(c.prepare(sql).await.expect("prepare"));
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); clients.len()];
    for _ in 0..ROUNDS {
        for (i, c) in clients.iter().enumerate() {
            samples[i].push(run_once(c, sql, prepared.then_some(&stmts[i])).await);
        }
    }
    samples.into_iter().map(median).collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let direct = connect("host=127.0.0.1 port=5432 dbname=test user=postgres").await;
        let t = format!("mask_bench_{}", std::process::id());
        direct
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {t};
                 CREATE TABLE {t} AS SELECT g AS id,
                   'user' || g || '@example.com' AS email,
                   lpad(g::text, 3, '0') || '-45-6789' AS ssn,
                   'note number ' || g || ' about order ' || (g * 7) AS note,
                   md5(g::text) AS token,
                   'Grüße aus Köln, Straße ' || g AS address,
                   (g * 1000)::text AS amount,
                   now()::text AS created,
                   CASE WHEN g % 10 = 0 THEN '4111 1111 1111 1111' ELSE 'none' END AS card,
                   repeat('x', 40) AS filler
                 FROM generate_series(1, 1000) g"
            ))
            .await
            .expect("create bench table");
        let sql = format!("SELECT * FROM {t}");
        let url = |a: SocketAddr| {
            format!(
                "host=127.0.0.1 port={} dbname=app user=agent password={TOKEN}",
                a.port()
            )
        };
        let plain = connect(&url(gateway(None))).await;
        println!("1,000 rows x 10 columns, median of {ROUNDS} runs");
        let mut masked = Vec::new();
        for (_, rules) in RULE_SETS {
            masked.push(connect(&url(gateway(Some(rules)))).await);
        }
        for (label, prepared) in [("simple (text)", false), ("prepared (binary)", true)] {
            let [d, p] = time_alternating(&[&direct, &plain], &sql, prepared).await[..] else {
                unreachable!("two clients, two medians")
            };
            println!("{label:18} direct {d:>8.2?}  gateway, no rules {p:>8.2?}");
            for ((rules_label, _), masked) in RULE_SETS.iter().zip(&masked) {
                let [p, m] = time_alternating(&[&plain, masked], &sql, prepared).await[..] else {
                    unreachable!("two clients, two medians")
                };
                println!(
                    "{:18}   + masking, {rules_label:20} {m:>8.2?}  masked/unmasked {:.2}x (unmasked {p:.2?})",
                    "",
                    m.as_secs_f64() / p.as_secs_f64()
                );
            }
        }
        direct
            .batch_execute(&format!("DROP TABLE {t}"))
            .await
            .expect("drop bench table");
    });
}

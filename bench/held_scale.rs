//! Scale benchmark (not a timed test): N statements held at once across wire and HTTP clients on one
//! `countersign serve` process, then approved one by one. Prints the gateway's resident memory while all are
//! held and the release latency (vote answered → client answered, which includes running the statement).
//!
//! `cargo run -p countersign-gateway --release --example held_scale -- [N] [WIRE]` (default 5000, 40; wire
//! sessions each hold an upstream connection, so WIRE must stay under PostgreSQL's max_connections).
//! The gateway binary is `$COUNTERSIGN_BIN`, else target/release/countersign, else target/debug/countersign.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const AGENT: &str = "bench-agent-token";
const BOB: &str = "bench-bob-token";
/// Decisions arrive one at a time, as humans make them; a burst of thousands queues on the audit chain lock.
const VOTE_CONCURRENCY: usize = 1;

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn gateway_binary() -> PathBuf {
    if let Ok(p) = std::env::var("COUNTERSIGN_BIN") {
        return p.into();
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let release = target.join("release/countersign");
    if release.exists() {
        release
    } else {
        target.join("debug/countersign")
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(5000);
    let wire_n = args.get(1).copied().unwrap_or(40).min(n);
    let store_url = countersign_bot::testing::fresh_pg_database().await?;
    let table = format!("held_scale_{}", uuid::Uuid::new_v4().simple());
    let upstream = countersign_bot::testing::pg_admin_url();
    let store = sqlx::PgPool::connect(&store_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id int primary key)"
    )))
    .execute(&sqlx::PgPool::connect(&upstream).await?)
    .await?;

    let (http_port, wire_port) = (free_port(), free_port());
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:{http_port}"
max_wait = "10m"
[store]
url = "{store_url}"
[wire]
listen = "127.0.0.1:{wire_port}"
allow_cleartext_without_tls = true
hold_wait = 600
[logging]
level = "warn"
[[identity.static_tokens]]
name = "agent"
sha256 = "{agent}"
kind = "workload"
acts_for = "alice@example.com"
[[identity.static_tokens]]
name = "bob"
sha256 = "{bob}"
kind = "human"
email = "bob@example.com"
[[connections]]
name = "local"
upstream_url = "{upstream}"
[[approver_groups]]
name = "reviewers"
members = ["bob@example.com"]
[policy.defaults]
approver_groups = ["reviewers"]
quorum = 1
ttl = "1h"
"#,
        agent = sha(AGENT),
        bob = sha(BOB)
    );
    let dir = countersign_bot::testing::TempDir::new();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(&cfg, toml)?;
    let bin = gateway_binary();
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            std::env::temp_dir().join("held_scale_gateway.log"),
        )?)
        .spawn()?;
    let pid = child.id();
    let base = format!("http://127.0.0.1:{http_port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    while http.get(format!("{base}/readyz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "gateway {} (pid {pid}): holding {n} statements ({wire_n} wire, {} HTTP)",
        bin.display(),
        n - wire_n
    );

    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        // Agents arrive over a few seconds, not in one SYN flood: thousands of simultaneous connects overflow
        // the kernel's SYN queue and fall back to SYN cookies, which broke some loopback connections minutes
        // later (ETIMEDOUT) in earlier runs of this benchmark.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sql = format!("INSERT INTO {table} VALUES ({i})");
        if i < wire_n {
            let (client, conn) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={wire_port} user=agent password={AGENT} dbname=local"
                ),
                tokio_postgres::NoTls,
            )
            .await?;
            tokio::spawn(conn);
            clients.push(tokio::spawn(async move {
                let ok = client.simple_query(&sql).await.is_ok();
                (i, ok, Instant::now())
            }));
        } else {
            let http = reqwest::Client::new();
            let url = format!("{base}/v1/connections/local/query?wait=600s");
            clients.push(tokio::spawn(async move {
                let r = http
                    .post(url)
                    .bearer_auth(AGENT)
                    .json(&serde_json::json!({ "sql": sql }))
                    .send()
                    .await;
                let ok = matches!(r, Ok(ref r) if r.status().as_u16() == 200);
                if !ok {
                    let why = match r {
                        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => format!("{e:?}"),
                    };
                    eprintln!(
                        "statement {i} not released: {}",
                        why.chars().take(200).collect::<String>()
                    );
                }
                (i, ok, Instant::now())
            }));
        }
    }
    let started = Instant::now();
    loop {
        let held: i64 =
            sqlx::query_scalar("SELECT count(*) FROM requests WHERE status = 'pending'")
                .fetch_one(&store)
                .await?;
        if held as usize >= n {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {held} of {n} held after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_held = rss_kib(pid, "VmRSS:");
    println!(
        "all {n} held after {:?}; gateway RSS {} MiB",
        started.elapsed(),
        rss_held / 1024
    );

    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, statement FROM requests")
        .fetch_all(&store)
        .await?;
    let index_of =
        |sql: &str| -> Option<usize> { sql.rsplit('(').next()?.trim_end_matches(')').parse().ok() };
    let decided: Arc<tokio::sync::Mutex<HashMap<usize, Instant>>> = Default::default();
    let vote_http = reqwest::Client::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(VOTE_CONCURRENCY));
    let mut votes = vec![];
    for (id, sql) in rows {
        let Some(i) = index_of(&sql) else { continue };
        let (http, base, decided, sem) = (
            vote_http.clone(),
            base.clone(),
            decided.clone(),
            sem.clone(),
        );
        votes.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let r = http
                .post(format!("{base}/v1/requests/{id}/votes"))
                .bearer_auth(BOB)
                .json(&serde_json::json!({ "decision": "approve" }))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    decided.lock().await.insert(i, Instant::now());
                }
                Ok(r) => eprintln!("vote on {id} failed: {}", r.status()),
                Err(e) => eprintln!("vote on {id} failed: {e}"),
            }
        }));
    }
    for v in votes {
        v.await?;
    }
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    for c in clients {
        let (i, ok, released) = c.await?;
        match (ok, decided.lock().await.get(&i)) {
            (true, Some(d)) => lat.push(released.saturating_duration_since(*d)),
            _ => failed += 1,
        }
    }
    lat.sort();
    let hwm = rss_kib(pid, "VmHWM:");
    println!(
        "released {} ({failed} failed); release latency p50 {:?} p99 {:?} max {:?}; within 100 ms: {}; RSS while held {} MiB, peak {} MiB",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
        lat.iter().filter(|d| **d <= Duration::from_millis(100)).count(),
        rss_held / 1024,
        hwm / 1024
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

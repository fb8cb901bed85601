//! Issue "Run as a fleet", with real `countersign serve` processes on one PostgreSQL store: a replica killed
//! with SIGKILL mid-delivery hands its outbox items to another, which delivers each exactly once; SIGTERM
//! tells a wire client with a held statement that its request stays pending, and exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const AGENT_TOKEN: &str = "fleet-agent-token";
const SECRET_ENV: &str = "CS_FLEET_TEST_WHSEC";
// "whsec_" + base64 of 24 bytes.
const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// Two distinct free loopback ports: both listeners are held while the second is chosen, so the
/// kernel cannot hand out the same port twice (which left a replica unable to bind its second listener).
fn two_free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    (
        a.local_addr().expect("local addr").port(),
        b.local_addr().expect("local addr").port(),
    )
}

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

fn config(store_url: &str, http: u16, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{http}"
expiry_sweep = "1s"

[store]
url = "{store_url}"

[outbox]
poll = "100ms"
lease = "2s"

[[identity.static_tokens]]
name = "agent"
sha256 = "{agent}"
kind = "workload"
acts_for = "alice@example.com"

[[connections]]
name = "local"
upstream_url = "postgres://postgres@127.0.0.1:5432/postgres"

[[approver_groups]]
name = "reviewers"
members = ["bob@example.com", "carol@example.com"]

[policy.defaults]
approver_groups = ["reviewers"]
quorum = 2
ttl = "1h"

{extra}
"#,
        agent = sha(AGENT_TOKEN)
    )
}

/// The agent logged in to connection `local` through a replica's wire listener on `port`.
async fn agent_on_the_wire(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=agent password={AGENT_TOKEN} dbname=local"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the wire listener");
    tokio::spawn(conn);
    client
}

/// A `countersign serve` child process, killed with SIGKILL on drop if still running.
struct Replica {
    child: Child,
    base: String,
    _dir: countersign_bot::testing::TempDir,
}

impl Replica {
    async fn start(toml: &str, http: u16) -> Replica {
        let dir = countersign_bot::testing::TempDir::new();
        let path = dir.path().join("countersign.toml");
        std::fs::write(&path, toml).expect("write config");
        // The replica's log is kept so that a start-up failure says why.
        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path).expect("create the replica's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_countersign"))
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start countersign serve");
        let mut r = Replica {
            child,
            base: format!("http://127.0.0.1:{http}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(resp) = client.get(format!("{}/readyz", r.base)).send().await {
                if resp.status().is_success() {
                    return r;
                }
            }
            let exited = r.child.try_wait().expect("poll the replica");
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!(
                    "replica on port {http} never became ready (exit: {exited:?}); its log:\n{log}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit (after a SIGTERM), failing the test past `limit`.
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the replica");
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver that either hangs (never answers, never counts) or acknowledges and counts by
/// `webhook-id`.
#[derive(Default)]
struct Receiver {
    ack: AtomicBool,
    hung: AtomicUsize,
    acked: Mutex<HashMap<String, usize>>,
}

async fn spawn_receiver(rx: Arc<Receiver>) -> SocketAddr {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let rx = rx.clone();
            async move {
                if !rx.ack.load(Ordering::SeqCst) {
                    rx.hung.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                *rx.acked.lock().unwrap().entry(id).or_default() += 1;
                StatusCode::OK
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

async fn hold(http: &reqwest::Client, base: &str, sql: &str) -> String {
    let r = http
        .post(format!("{base}/v1/connections/local/query"))
        .bearer_auth(AGENT_TOKEN)
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "statement should be held");
    let body: serde_json::Value = r.json().await.unwrap();
    body["request_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_delivery_hands_items_over_and_each_is_delivered_exactly_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store_url = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let receiver = Arc::new(Receiver::default());
    let hook = spawn_receiver(receiver.clone()).await;
    let webhooks = format!(
        "[[webhooks.endpoints]]\nname = \"audit\"\nurl = \"http://{hook}/hook\"\nsecret_env = \"{SECRET_ENV}\"\ntimeout_secs = 60\nevents = [\"created\"]\n"
    );
    let (port_a, port_b) = two_free_ports();
    let mut a = Replica::start(&config(&store_url, port_a, &webhooks), port_a).await;
    let http = reqwest::Client::new();
    for i in 0..10 {
        hold(&http, &a.base, &format!("DELETE FROM fleet_kill_{i}")).await;
    }

    // A leases the items and hangs delivering the first: it is mid-delivery with the rest reserved.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.hung.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "replica A never attempted a delivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pool = sqlx::PgPool::connect(&store_url).await.unwrap();
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE sink = 'webhook:audit' AND status = 'pending' AND lease_until_ms > (extract(epoch from now()) * 1000)::bigint",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(leased >= 1, "A holds leases when it dies");
    a.kill_9();

    receiver.ack.store(true, Ordering::SeqCst);
    let b = Replica::start(&config(&store_url, port_b, &webhooks), port_b).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE sink = 'webhook:audit' AND status <> 'delivered'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} deliveries never completed after A died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Leave time for any duplicate to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM outbox WHERE sink = 'webhook:audit'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(keys.len(), 10);
    let acked = receiver.acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        10,
        "exactly the ten items were acknowledged: {acked:?}"
    );
    for (id, n) in &acked {
        assert_eq!(*n, 1, "{id} delivered {n} times");
        assert!(
            keys.iter()
                .any(|k| id.contains(k.as_str()) || k.contains(id.as_str())),
            "{id} is one of the outbox items"
        );
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_a_held_wire_client_its_request_stays_pending_and_exits() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store_url = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let (http_port, wire_port) = two_free_ports();
    let wire = format!(
        "[wire]\nlisten = \"127.0.0.1:{wire_port}\"\nallow_cleartext_without_tls = true\nhold_wait = 120\n"
    );
    let mut r = Replica::start(&config(&store_url, http_port, &wire), http_port).await;
    let client = agent_on_the_wire(wire_port).await;
    let held = tokio::spawn(async move {
        client
            .simple_query("DELETE FROM fleet_sigterm_target")
            .await
    });
    let pool = sqlx::PgPool::connect(&store_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM requests WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the statement was never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An API caller waiting in place (`?wait=`) as well.
    let waiting = {
        let url = format!("{}/v1/connections/local/query?wait=60s", r.base);
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(AGENT_TOKEN)
                .json(&serde_json::json!({ "sql": "DELETE FROM fleet_sigterm_http_target" }))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM requests WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API statement was never held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the session settle into its wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());

    let err = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held client is answered promptly")
        .unwrap()
        .expect_err("the statement did not run");
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(
        msg.contains("shutting down") && msg.contains("stays pending"),
        "message: {msg}"
    );
    // A shutdown, not a refusal: clients and pools read 57P01 as "reconnect".
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57P01"),
        "{err:?}"
    );
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting API caller is answered promptly")
        .unwrap();
    assert_eq!(answer["status"], "pending", "{answer}");
    assert_eq!(answer["shutting_down"], true, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting down"),
        "{answer}"
    );

    let exit = r.exit_within(Duration::from_secs(20)).await;
    assert!(exit.success(), "clean exit, got {exit:?}");
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM requests")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        statuses,
        ["pending", "pending"],
        "the requests survive the shutdown"
    );
}

/// SIGTERM with statements running: one that finishes within the grace returns its rows, one that
/// would outlast it is cancelled upstream (57014, as PostgreSQL's fast shutdown does) and never cut off
/// without a word; both sessions then end with 57P01 and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_statements_finish_and_cancels_long_ones() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store_url = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let (http_port, wire_port) = two_free_ports();
    // pg_sleep is held by default; this test is about running statements.
    let wire = format!(
        "[[policy.rules]]\nname = \"sleepers\"\nconnections = [\"local\"]\naction = \"allow\"\n\n[wire]\nlisten = \"127.0.0.1:{wire_port}\"\nallow_cleartext_without_tls = true\n"
    );
    let mut r = Replica::start(&config(&store_url, http_port, &wire), http_port).await;
    let (short, long) = (
        agent_on_the_wire(wire_port).await,
        agent_on_the_wire(wire_port).await,
    );
    let started = Instant::now();
    let short_run = tokio::spawn(async move {
        let rows = short.simple_query("SELECT pg_sleep(2), 'finished'").await;
        (rows, short)
    });
    let long_run = tokio::spawn(async move { long.simple_query("SELECT pg_sleep(300)").await });
    // The same long statement through the HTTP API.
    let api_run = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{http_port}/v1/connections/local/query"
            ))
            .bearer_auth(AGENT_TOKEN)
            .json(&serde_json::json!({ "sql": "SELECT pg_sleep(301)" }))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok::<_, reqwest::Error>((status, r.text().await?))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());

    let (rows, short) = short_run.await.unwrap();
    let rows = rows.expect("a statement finishing within the grace returns its result");
    let finished = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(1).map(str::to_string),
        _ => None,
    });
    assert_eq!(finished.as_deref(), Some("finished"));
    let next = short
        .simple_query("SELECT 1")
        .await
        .expect_err("the session ended after its statement");
    assert!(
        next.is_closed() || next.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
        "{next:?}"
    );

    let err = tokio::time::timeout(Duration::from_secs(30), long_run)
        .await
        .expect("the long statement is answered after the grace")
        .unwrap()
        .expect_err("the long statement was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}"
    );
    // The API statement got the same grace, then the same cancel: its caller learns so.
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), api_run)
        .await
        .expect("the API statement is answered after the grace")
        .unwrap()
        .expect("an HTTP answer, not a dropped connection");
    assert!(body.contains("57014"), "{status}: {body}");
    assert!(started.elapsed() < Duration::from_secs(60));

    let exit = r.exit_within(Duration::from_secs(30)).await;
    assert!(exit.success(), "clean exit, got {exit:?}");
}

/// A second SIGTERM during the drain ends the process at once instead of after the statements' grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_drain_exits_at_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = countersign_bot::testing::TempDir::new();
    let store_url = format!("sqlite://{}/state.db", data.path().display());
    let http_port = free_port();
    let allow =
        "[[policy.rules]]\nname = \"sleepers\"\nconnections = [\"local\"]\naction = \"allow\"\n";
    let mut r = Replica::start(&config(&store_url, http_port, allow), http_port).await;
    let _api_run = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{http_port}/v1/connections/local/query"
            ))
            .bearer_auth(AGENT_TOKEN)
            .json(&serde_json::json!({ "sql": "SELECT pg_sleep(60)" }))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = r.child.id().to_string();
    let term = || {
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("send SIGTERM");
        assert!(status.success());
    };
    term();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "the first SIGTERM drains: the running statement has 10 s"
    );
    let second = Instant::now();
    term();
    let exit = r.exit_within(Duration::from_secs(3)).await;
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(
        !exit.success(),
        "an interrupted drain is not a clean exit: {exit:?}"
    );
}

/// Static tokens for the two reviewers of [`config`] (`bob-token`, `carol-token`).
fn reviewer_tokens() -> String {
    ["bob", "carol"]
        .iter()
        .map(|who| {
            format!(
                "[[identity.static_tokens]]\nname = \"{who}\"\nsha256 = \"{}\"\nkind = \"human\"\nemail = \"{who}@example.com\"\n\n",
                sha(&format!("{who}-token"))
            )
        })
        .collect()
}

/// A direct session to PostgreSQL and a fresh table `prefix_<uuid> (id int)` holding `values`.
async fn table_of_ids(prefix: &str, values: &str) -> (tokio_postgres::Client, String) {
    let table = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int); INSERT INTO {table} VALUES {values}"
        ))
        .await
        .unwrap();
    (admin, table)
}

/// Both reviewers approve request `id` through the API; waits until it is approved.
async fn approve_by_both(http: &reqwest::Client, base: &str, id: &str) {
    for reviewer in ["bob-token", "carol-token"] {
        let r = http
            .post(format!("{base}/v1/requests/{id}/votes"))
            .bearer_auth(reviewer)
            .json(&serde_json::json!({ "decision": "approve" }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "vote: {}", r.status());
    }
    await_status(http, base, id, "approved").await;
}

/// The request's JSON as `GET /v1/requests/{id}` shows it.
async fn request_json(http: &reqwest::Client, base: &str, id: &str) -> serde_json::Value {
    http.get(format!("{base}/v1/requests/{id}"))
        .bearer_auth(AGENT_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls until the request's status is `want`, or fails naming the last status seen.
async fn await_status(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    want: &str,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = request_json(http, base, id).await;
        if body["status"] == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} never became {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_execution_records_it_interrupted_after_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The default store: one SQLite file, which the restarted process reopens.
    let data = countersign_bot::testing::TempDir::new();
    let store_url = format!("sqlite://{}/state.db", data.path().display());
    let reviewers = reviewer_tokens();
    let (mut admin, table) = table_of_ids("interrupted", "(1)").await;

    let port = free_port();
    let toml = config(&store_url, port, &reviewers);
    let mut a = Replica::start(&toml, port).await;
    let http = reqwest::Client::new();
    let sql = format!("DELETE FROM {table}");
    let id = hold(&http, &a.base, &sql).await;
    approve_by_both(&http, &a.base, &id).await;

    // A lock held elsewhere keeps the approved DELETE running when the gateway dies.
    let locker = admin.transaction().await.unwrap();
    locker
        .batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let run = {
        let (http, base, sql) = (http.clone(), a.base.clone(), sql.clone());
        tokio::spawn(async move {
            http.post(format!("{base}/v1/connections/local/query"))
                .bearer_auth(AGENT_TOKEN)
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await
        })
    };
    await_status(&http, &a.base, &id, "executing").await;
    a.kill_9();
    assert!(
        run.await.unwrap().is_err(),
        "the agent's call ends with the process"
    );
    locker.rollback().await.unwrap();

    let b = Replica::start(&toml, port).await;
    let body = await_status(&http, &b.base, &id, "failed").await;
    let error = body["execution"]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("interrupted:"),
        "the failure says the outcome is unknown: {body}"
    );
    // The interruption is in the audit trail, and the chain still verifies.
    let out = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .arg("--config")
        .arg(b._dir.path().join("countersign.toml"))
        .args(["audit", "verify"])
        .output()
        .expect("run countersign audit verify");
    assert!(
        out.status.success(),
        "audit verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_countersign"))
        .arg("--config")
        .arg(b._dir.path().join("countersign.toml"))
        .args(["audit", "export"])
        .output()
        .expect("run countersign audit export");
    let records = String::from_utf8_lossy(&out.stdout);
    assert!(
        records
            .lines()
            .any(|l| l.contains("request.execution_interrupted") && l.contains(&id)),
        "the interruption is audited: {records}"
    );
    // Re-running the statement is a new request: an interrupted execution is never run again unasked.
    let again = hold(&http, &b.base, &sql).await;
    assert_ne!(again, id);
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hanging_up_mid_execution_still_gets_its_statement_finished_and_recorded() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = countersign_bot::testing::TempDir::new();
    let store_url = format!("sqlite://{}/state.db", data.path().display());
    let reviewers = reviewer_tokens();
    let (mut admin, table) = table_of_ids("hangup", "(1), (2)").await;
    let port = free_port();
    let a = Replica::start(&config(&store_url, port, &reviewers), port).await;
    let http = reqwest::Client::new();
    let sql = format!("DELETE FROM {table}");
    let id = hold(&http, &a.base, &sql).await;
    approve_by_both(&http, &a.base, &id).await;
    let locker = admin.transaction().await.unwrap();
    locker
        .batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    // The agent gives up (its connection closes) while the DELETE waits for the lock.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/connections/local/query", a.base))
        .bearer_auth(AGENT_TOKEN)
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await;
    assert!(r.is_err(), "the agent's call timed out: {r:?}");
    assert_eq!(
        request_json(&http, &a.base, &id).await["status"],
        "executing"
    );
    locker.rollback().await.unwrap();
    let body = await_status(&http, &a.base, &id, "executed").await;
    assert_eq!(body["execution"]["command_tag"], "DELETE 2", "{body}");
    let left: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the approved DELETE ran once, to the end");
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// `check-config` fails, naming the key, when a secret the config references is not there: `serve`
/// would refuse to start. `--skip-secrets` checks the file alone.
#[test]
fn check_config_names_a_secret_reference_that_cannot_be_resolved() {
    let dir = countersign_bot::testing::TempDir::new();
    let path = dir.path().join("countersign.toml");
    let toml = config("sqlite::memory:", free_port(), "").replacen(
        "upstream_url = \"postgres://postgres@127.0.0.1:5432/postgres\"",
        "upstream_url_env = \"COUNTERSIGN_TEST_SURELY_UNSET_URL\"",
        1,
    );
    std::fs::write(&path, toml).expect("write config");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .args(extra)
            .env_remove("COUNTERSIGN_TEST_SURELY_UNSET_URL")
            .output()
            .expect("run countersign check-config")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("connections[0].upstream_url_env")
            && stderr.contains("COUNTERSIGN_TEST_SURELY_UNSET_URL")
            && stderr.contains("countersign.toml"),
        "{stderr}"
    );
    let out = run(&["--skip-secrets"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `check-config` also refuses what `serve` would refuse in a secret that is set: here a webhook
/// secret without its `whsec_` prefix.
#[test]
fn check_config_refuses_a_set_secret_serve_would_refuse() {
    let dir = countersign_bot::testing::TempDir::new();
    let path = dir.path().join("countersign.toml");
    let toml = format!(
        "{}\n[[webhooks.endpoints]]\nname = \"siem\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret_env = \"COUNTERSIGN_TEST_HOOK_SECRET\"\n",
        config("sqlite::memory:", free_port(), "")
    );
    std::fs::write(&path, toml).expect("write config");
    let run = |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .env("COUNTERSIGN_TEST_HOOK_SECRET", secret)
            .output()
            .expect("run countersign check-config")
    };
    let out = run("abc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("whsec_") && stderr.contains("countersign.toml"),
        "{stderr}"
    );
    let out = run("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A wire TLS file that is not there, a 3-byte audit key and a placeholder secret pass no longer: check-config
/// names the key, and `serve` refuses before it creates the store or binds anything.
#[test]
fn check_config_and_serve_refuse_missing_tls_files_a_short_audit_key_and_placeholders() {
    let dir = countersign_bot::testing::TempDir::new();
    let path = dir.path().join("countersign.toml");
    let db = dir.path().join("state.db");
    let store_url = format!("sqlite://{}", db.display());
    let run = |toml: &str, command: &str, audit_key: &str| {
        std::fs::write(&path, toml).expect("write config");
        Command::new(env!("CARGO_BIN_EXE_countersign"))
            .arg("--config")
            .arg(&path)
            .arg(command)
            .env("COUNTERSIGN_TEST_AUDIT_KEY", audit_key)
            .output()
            .expect("run countersign")
    };
    let good_key = "k".repeat(32);
    let tls = config(
        &store_url,
        free_port(),
        &format!(
            "[wire]\nlisten = \"127.0.0.1:{}\"\ntls = {{ cert = \"/nonexistent/tls.crt\", key = \"/nonexistent/tls.key\" }}\n",
            free_port()
        ),
    );
    for command in ["check-config", "serve"] {
        let out = run(&tls, command, &good_key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(
            stderr.contains("wire.tls.cert") && stderr.contains("/nonexistent/tls.crt"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("free address"), "{command}: {stderr}");
        assert!(!db.exists(), "{command} created the store");
    }
    let keyed = config(&store_url, free_port(), "").replacen(
        "[store]\n",
        "[store]\naudit_key_env = \"COUNTERSIGN_TEST_AUDIT_KEY\"\n",
        1,
    );
    for (key, says) in [
        ("abc", "3 bytes"),
        (
            "CHANGE-ME-to-64-hex-digits-from-openssl-rand-hex-32-000000000000",
            "CHANGE-ME",
        ),
    ] {
        for command in ["check-config", "serve"] {
            let out = run(&keyed, command, key);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command}: {stderr}");
            assert!(
                stderr.contains("store.audit_key_env") && stderr.contains(says),
                "{command}: {stderr}"
            );
            assert!(!db.exists(), "{command} created the store");
        }
    }
    let out = run(&keyed, "check-config", &good_key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Read-only commands never create a SQLite store: where there is none they say so and exit 2.
#[test]
fn read_only_commands_where_there_is_no_store_say_so_and_create_nothing() {
    let dir = countersign_bot::testing::TempDir::new();
    for args in [
        &["audit", "verify"][..],
        &["requests", "list"],
        &["sessions", "list"],
        &["outbox", "list"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_countersign"))
            .current_dir(dir.path())
            .env_remove("COUNTERSIGN_CONFIG")
            .args(args)
            .output()
            .expect("run countersign");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("no store at") && stderr.contains("countersign serve"),
            "{args:?}: {stderr}"
        );
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} created the data directory"
        );
    }
}

/// SIGTERM while an approved wire statement runs: it finishes within the grace, its client gets the
/// result, and its outcome reaches the store before the process exits (not "interrupted" later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_wire_statement_finishing_during_shutdown_is_recorded_executed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store_url = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let (mut admin, table) = table_of_ids("sigterm_exec", "(1)").await;
    let (http_port, wire_port) = two_free_ports();
    let extra = format!(
        "{}[wire]\nlisten = \"127.0.0.1:{wire_port}\"\nallow_cleartext_without_tls = true\nhold_wait = 120\n",
        reviewer_tokens()
    );
    let mut r = Replica::start(&config(&store_url, http_port, &extra), http_port).await;
    let client = agent_on_the_wire(wire_port).await;
    let sql = format!("DELETE FROM {table}");
    let run = tokio::spawn(async move { client.simple_query(&sql).await });
    let pool = sqlx::PgPool::connect(&store_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let id: String = loop {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM requests WHERE status = 'pending'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < deadline, "the statement was never held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A lock held elsewhere keeps the approved DELETE running into the shutdown.
    let locker = admin.transaction().await.unwrap();
    locker
        .batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    // (The waiting session claims the execution at once: no `approved` to wait for.)
    for reviewer in ["bob-token", "carol-token"] {
        let v = http
            .post(format!("{}/v1/requests/{id}/votes", r.base))
            .bearer_auth(reviewer)
            .json(&serde_json::json!({ "decision": "approve" }))
            .send()
            .await
            .unwrap();
        assert!(v.status().is_success(), "vote: {}", v.status());
    }
    await_status(&http, &r.base, &id, "executing").await;
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    locker.rollback().await.unwrap();
    let rows = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the client is answered")
        .unwrap()
        .expect("the approved statement ran");
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(1))),
        "DELETE 1"
    );
    let exit = r.exit_within(Duration::from_secs(40)).await;
    assert!(exit.success(), "clean exit, got {exit:?}");
    let status: String = sqlx::query_scalar("SELECT status FROM requests WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        status, "executed",
        "the result was recorded before the exit"
    );
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

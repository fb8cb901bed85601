//! Issue "Run as a fleet": two gateway replicas (in-process, each with its own HTTP and wire listener) on one
//! PostgreSQL store. A vote through one releases a statement held on the other through LISTEN/NOTIFY.
//! (Process-level tests — SIGKILL mid-delivery, SIGTERM — are in `gateway/tests/fleet_processes.rs`.)

use countersign_gateway::config::Config;
use countersign_gateway::engine::Engine;
use countersign_gateway::http::{router, AppState};
use countersign_tests::tokens::*;
use countersign_tests::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wire sessions in the 100-statement test.
const WIRE_CLIENTS: i32 = 10;

const WIRE: &str =
    "[wire]\nlisten = \"127.0.0.1:0\"\nallow_cleartext_without_tls = true\nhold_wait = 60\n";

/// One replica: HTTP API, wire listener and change listener over a shared store URL.
struct Replica {
    base: String,
    wire: SocketAddr,
    engine: Arc<Engine>,
    http: reqwest::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Replica {
    async fn start(store_url: &str) -> Replica {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cfg = Config::from_toml(&base_config(WIRE), "fleet.toml").expect("config");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http_listener.local_addr().unwrap();
        cfg.server.public_base_url = Some(format!("http://{http_addr}"));
        let wire_cfg = cfg.wire.clone().expect("[wire]");
        let store = countersign_bot::store::open(store_url)
            .await
            .expect("open the shared store");
        let engine = Arc::new(
            Engine::build_with_store(cfg, store, vec!["log".into()])
                .await
                .expect("engine"),
        );
        let mut tasks = vec![engine
            .workflow
            .spawn_change_listener()
            .expect("PostgreSQL has a change feed")];
        let app = router(AppState {
            engine: engine.clone(),
        });
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(
                http_listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        }));
        let gate: Arc<dyn countersign_gateway::pg::gate::WireGate> = engine.clone();
        let server = countersign_gateway::pg::server::WireServer::bind(wire_cfg, gate)
            .await
            .expect("bind wire");
        let wire = server.local_addr().unwrap();
        tasks.push(tokio::spawn(async move {
            let _ = server.run(std::future::pending::<()>()).await;
        }));
        Replica {
            base: format!("http://{http_addr}"),
            wire,
            engine,
            http: reqwest::Client::new(),
            tasks,
        }
    }

    async fn post(&self, token: &str, path: &str, body: serde_json::Value) -> Reply {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        Reply {
            status: r.status().as_u16(),
            body: r.json().await.unwrap_or(serde_json::Value::Null),
        }
    }

    async fn query_wait(&self, sql: &str) -> Reply {
        self.post(
            AGENT,
            "/v1/connections/local/query?wait=60s",
            json!({ "sql": sql }),
        )
        .await
    }

    async fn vote(&self, token: &str, id: &str, decision: &str) -> Reply {
        self.post(
            token,
            &format!("/v1/requests/{id}/votes"),
            json!({ "decision": decision }),
        )
        .await
    }

    async fn wire_client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=agent password={AGENT} dbname=local",
                self.wire.port()
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect to the wire listener");
        tokio::spawn(conn);
        client
    }

    /// The request id of the pending request for exactly `sql`, once it exists.
    async fn pending_id(&self, sql: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = self
                .engine
                .store()
                .list_requests(Some(countersign_bot::RequestStatus::Pending), 1000)
                .await
                .unwrap();
            if let Some(r) = pending.iter().find(|r| r.statement == sql) {
                return r.id.to_string();
            }
            assert!(Instant::now() < deadline, "{sql:?} was never held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn approve_through(r: &Replica, id: &str) {
    // Let the waiter on the other replica settle into its wait first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.vote(BOB, id, "approve").await.status, 200);
    let v = r.vote(CAROL, id, "approve").await;
    assert_eq!(v.body["status"], "approved", "{:?}", v.body);
}

/// The execution result is recorded just after the client has its answer: allow it a moment.
async fn wait_executed(r: &Replica, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let executed = r
            .engine
            .store()
            .list_requests(Some(countersign_bot::RequestStatus::Executed), 1000)
            .await
            .unwrap()
            .len();
        if executed == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{executed} of {n} approved requests recorded as executed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn two_replicas() -> (Replica, Replica) {
    let url = countersign_bot::testing::fresh_pg_database()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let a = Replica::start(&url).await;
    let b = Replica::start(&url).await;
    (a, b)
}

async fn make_table(prefix: &str) -> String {
    let t = table_name(prefix);
    direct()
        .await
        .batch_execute(&format!("CREATE TABLE {t} (id int primary key, v text)"))
        .await
        .unwrap();
    t
}

async fn ids_in(table: &str) -> Vec<i32> {
    direct()
        .await
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statement_held_on_a_is_approved_through_b_and_runs_once_on_a_quickly() {
    let (a, b) = two_replicas().await;
    let t = make_table("cs_fleet_once").await;

    // Held on A's wire listener.
    let wire_sql = format!("INSERT INTO {t} VALUES (1, 'wire')");
    let client = a.wire_client().await;
    let wire_held = {
        let sql = wire_sql.clone();
        tokio::spawn(async move {
            let r = client.simple_query(&sql).await;
            (r.map(|_| ()), Instant::now())
        })
    };
    // Held on A's HTTP API with ?wait=.
    let http_sql = format!("INSERT INTO {t} VALUES (2, 'http')");
    let http_held = {
        let base = a.base.clone();
        let sql = http_sql.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/connections/local/query?wait=60s"))
                .bearer_auth(AGENT)
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body, Instant::now())
        })
    };

    let mut lags = vec![];
    // Wire first: approve through B, the session on A runs it.
    let id = a.pending_id(&wire_sql).await;
    approve_through(&b, &id).await;
    let approved_at = Instant::now();
    let (result, at) = tokio::time::timeout(Duration::from_secs(5), wire_held)
        .await
        .expect("wire client released")
        .unwrap();
    result.expect("the approved statement ran on A's wire session");
    lags.push(at.saturating_duration_since(approved_at));

    // Then the HTTP ?wait= caller on A.
    let id = a.pending_id(&http_sql).await;
    approve_through(&b, &id).await;
    let approved_at = Instant::now();
    let (status, body, at) = tokio::time::timeout(Duration::from_secs(5), http_held)
        .await
        .expect("HTTP caller released")
        .unwrap();
    assert_eq!(
        (status, &body["decision"]),
        (200, &json!("approved")),
        "{body:?}"
    );
    lags.push(at.saturating_duration_since(approved_at));
    wait_executed(&a, 2).await;

    assert_eq!(ids_in(&t).await, vec![1, 2], "each ran exactly once");
    eprintln!("release after the approving vote on the other replica: {lags:?}");
    // While the change feed is live the store re-check runs only every 5 s: a release well under that can only
    // come from the NOTIFY. (The 100 ms wake-up target itself is asserted without execution or HTTP noise in
    // countersign_bot's `vote_on_replica_b_wakes_a_waiter_on_replica_a_within_100ms`.)
    for lag in lags {
        assert!(lag < Duration::from_secs(1), "released after {lag:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_held_statements_across_both_replicas_all_resolve_correctly() {
    let (a, b) = two_replicas().await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let t = make_table("cs_fleet_100").await;
    // Every third statement is denied; the rest approved by two humans. Ten arrive by wire (each wire session
    // holds an upstream connection, and the shared PostgreSQL allows 100), the rest by HTTP;
    // even ones are held on A and voted on through B, odd ones the other way round.
    let denied = |i: i32| i % 3 == 0;
    let mut held = vec![];
    for i in 0..100i32 {
        let (home, sql) = (
            if i % 2 == 0 { a.clone() } else { b.clone() },
            format!("INSERT INTO {t} VALUES ({i}, 'x')"),
        );
        held.push(tokio::spawn(async move {
            if i < WIRE_CLIENTS {
                let client = home.wire_client().await;
                match client.simple_query(&sql).await {
                    Ok(_) => "ran".to_string(),
                    Err(e) => e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string()),
                }
            } else {
                let r = home.query_wait(&sql).await;
                match r.status {
                    200 => "ran".to_string(),
                    _ => format!("{} {} {}", r.status, r.body["error"], r.body["message"]),
                }
            }
        }));
    }
    let mut votes = vec![];
    // HTTP executions of writes each open an upstream connection (no cap in the upstream pool): releasing
    // all 66 at once would exceed the shared PostgreSQL's 100 connections, so decisions trickle in.
    let deciding = Arc::new(tokio::sync::Semaphore::new(8));
    for i in 0..100i32 {
        let deciding = deciding.clone();
        let (home, other) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        let sql = format!("INSERT INTO {t} VALUES ({i}, 'x')");
        votes.push(tokio::spawn(async move {
            let id = home.pending_id(&sql).await;
            let _turn = deciding.acquire().await.unwrap();
            if denied(i) {
                let r = other.vote(BOB, &id, "deny").await;
                assert_eq!(r.body["status"], "denied", "{i}: {:?}", r.body);
            } else {
                assert_eq!(other.vote(BOB, &id, "approve").await.status, 200);
                let r = other.vote(CAROL, &id, "approve").await;
                assert_eq!(r.body["status"], "approved", "{i}: {:?}", r.body);
            }
        }));
    }
    for v in votes {
        v.await.unwrap();
    }
    let mut outcomes = vec![];
    for h in held {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .expect("every held statement is released")
                .unwrap(),
        );
    }
    for (i, outcome) in outcomes.iter().enumerate() {
        let i = i as i32;
        if denied(i) {
            assert!(
                outcome.contains("denied"),
                "statement {i} was denied: {outcome}"
            );
        } else {
            assert_eq!(outcome, "ran", "statement {i} was approved");
        }
    }
    let expected: Vec<i32> = (0..100).filter(|i| !denied(*i)).collect();
    assert_eq!(
        ids_in(&t).await,
        expected,
        "approved ones ran once, denied never"
    );
    wait_executed(&a, expected.len()).await;
}

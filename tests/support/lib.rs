//! Shared helpers for end-to-end tests: spawn the gateway in-process on loopback (HTTP API and wire
//! listener) against the real local PostgreSQL, on either store backend, plus a fake OIDC provider.
#![allow(clippy::missing_panics_doc)]

pub mod fake_slack;
pub mod idp;
pub mod transcript;

use countersign_bot::Store;
use countersign_gateway::config::Config;
use countersign_gateway::engine::Engine;
use countersign_gateway::http::AppState;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// Upstream PostgreSQL used by the tests (override with `COUNTERSIGN_TEST_UPSTREAM`).
pub fn upstream_url() -> String {
    std::env::var("COUNTERSIGN_TEST_UPSTREAM")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Demo tokens and their identities, as configured by [`base_config`].
pub mod tokens {
    /// Workload acting for alice.
    pub const AGENT: &str = "test-agent-token";
    /// Human reviewer alice (the human behind the agent).
    pub const ALICE: &str = "test-alice-token";
    /// Human reviewer bob.
    pub const BOB: &str = "test-bob-token";
    /// Human reviewer carol.
    pub const CAROL: &str = "test-carol-token";
    /// Human outside every approver group.
    pub const MALLORY: &str = "test-mallory-token";
}

fn sha(t: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(t.as_bytes()))
}

/// A config with static tokens for an agent (acting for alice), alice, bob, carol, mallory, ten extra
/// reviewers (`reviewerN@example.com`, token `test-reviewerN-token`), connection `local`, approver group
/// `reviewers` and `extra` appended.
pub fn base_config(extra: &str) -> String {
    let mut s = String::new();
    let mut tok =
        |name: &str, token: &str, kind: &str, email: Option<&str>, acts_for: Option<&str>| {
            s.push_str(&format!(
            "[[identity.static_tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nkind = \"{kind}\"\n",
            sha(token)
        ));
            if let Some(e) = email {
                s.push_str(&format!("email = \"{e}\"\n"));
            }
            if let Some(a) = acts_for {
                s.push_str(&format!("acts_for = \"{a}\"\n"));
            }
        };
    tok(
        "agent",
        tokens::AGENT,
        "workload",
        None,
        Some("alice@example.com"),
    );
    tok(
        "alice",
        tokens::ALICE,
        "human",
        Some("alice@example.com"),
        None,
    );
    tok("bob", tokens::BOB, "human", Some("bob@example.com"), None);
    tok(
        "carol",
        tokens::CAROL,
        "human",
        Some("carol@example.com"),
        None,
    );
    tok(
        "mallory",
        tokens::MALLORY,
        "human",
        Some("mallory@example.com"),
        None,
    );
    let mut members = vec![
        "alice@example.com".to_string(),
        "bob@example.com".into(),
        "carol@example.com".into(),
    ];
    for i in 1..=10 {
        tok(
            &format!("reviewer{i}"),
            &format!("test-reviewer{i}-token"),
            "human",
            Some(&format!("reviewer{i}@example.com")),
            None,
        );
        members.push(format!("reviewer{i}@example.com"));
    }
    format!(
        "{s}\n[[connections]]\nname = \"local\"\nupstream_url = \"{}\"\n\n[[approver_groups]]\nname = \"reviewers\"\nmembers = {}\n\n[policy.defaults]\napprover_groups = [\"reviewers\"]\nquorum = 2\nttl = \"1h\"\n\n{extra}",
        upstream_url(),
        serde_json::to_string(&members).unwrap()
    )
}

/// Which store backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// Both backends, for `for backend in BACKENDS`.
pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A running gateway.
pub struct Gateway {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The wire listener, when `[wire]` was configured.
    pub wire: Option<SocketAddr>,
    /// The engine.
    pub engine: Arc<Engine>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The store's URL.
    pub store_url: String,
    /// An HTTP client.
    pub http: reqwest::Client,
    _dir: Option<countersign_bot::testing::TempDir>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// One worker runtime taking every other wire session, as `countersign serve` does with
    /// `[wire] threads = 2`: holds, approvals and cancels then cross runtimes in every wire test.
    _wire_workers: Option<countersign_gateway::pg::WireWorkers>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Open a fresh store of `backend`; returns the store, its URL and the temp dir guard.
pub async fn fresh_store(
    backend: Backend,
) -> (
    Arc<dyn Store>,
    String,
    Option<countersign_bot::testing::TempDir>,
) {
    match backend {
        Backend::Sqlite => {
            let dir = countersign_bot::testing::TempDir::new();
            let url = format!("sqlite://{}/state.db", dir.path().display());
            (
                countersign_bot::store::open(&url)
                    .await
                    .expect("open sqlite"),
                url,
                Some(dir),
            )
        }
        Backend::Postgres => {
            let url = countersign_bot::testing::fresh_pg_database()
                .await
                .expect("create test database");
            (
                countersign_bot::store::open(&url)
                    .await
                    .expect("open postgres store"),
                url,
                None,
            )
        }
    }
}

/// Spawn a gateway with `toml` as its config on `backend`. A `[wire]` section's listen address is replaced
/// with `127.0.0.1:0`.
pub async fn spawn_gateway(toml: &str, backend: Backend) -> Gateway {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = Config::from_toml(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let report = cfg.validate("test.toml");
    assert!(report.problems.is_empty(), "{report}");
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    cfg.server.public_base_url = Some(format!("http://{http_addr}"));
    if let Some(w) = cfg.wire.as_mut() {
        w.listen = "127.0.0.1:0".parse().unwrap();
    }
    let wire_cfg = cfg.wire.clone();
    let (store, store_url, dir) = fresh_store(backend).await;
    let sinks = countersign_gateway::channels::sinks(&cfg);
    let engine = Arc::new(
        Engine::build_with_store(cfg, store.clone(), sinks)
            .await
            .expect("engine"),
    );
    engine.refresh_row_functions().await;
    let channels = countersign_gateway::channels::build(&engine).unwrap_or_else(|e| panic!("{e}"));
    let mut tasks = vec![];
    let policy = countersign_notifiers::RetryPolicy {
        base: std::time::Duration::from_millis(50),
        max_backoff: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let worker = Arc::new(countersign_notifiers::OutboxWorker::new(
        store.clone(),
        channels.notifiers,
        policy,
    ));
    tasks.push(worker.spawn(std::time::Duration::from_millis(50)));
    let app = countersign_gateway::http::app(
        AppState {
            engine: engine.clone(),
        },
        channels.routers,
    );
    // The listener `countersign serve` uses (connection cap, header deadline).
    tasks.push(tokio::spawn(countersign_gateway::http::listener::serve(
        http_listener,
        app,
        countersign_gateway::http::listener::HttpLimits::default(),
        std::future::pending(),
        std::time::Duration::from_secs(1),
    )));
    let mut wire = None;
    let mut wire_workers = None;
    if let Some(wcfg) = wire_cfg {
        let gate: Arc<dyn countersign_gateway::pg::gate::WireGate> = engine.clone();
        let workers = countersign_gateway::pg::WireWorkers::start(1, "test-wire-worker")
            .expect("start a wire worker");
        let server = countersign_gateway::pg::server::WireServer::bind(wcfg, gate)
            .await
            .expect("bind wire")
            .with_workers(workers.handles());
        wire_workers = Some(workers);
        wire = Some(server.local_addr().unwrap());
        tasks.push(tokio::spawn(async move {
            let _ = server.run(std::future::pending::<()>()).await;
        }));
    }
    Gateway {
        base: format!("http://{http_addr}"),
        wire,
        engine,
        store,
        store_url,
        http: reqwest::Client::new(),
        _dir: dir,
        tasks,
        _wire_workers: wire_workers,
    }
}

/// A JSON response: status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body (Null when not JSON).
    pub body: Value,
}

impl Gateway {
    /// POST a query as `token`.
    pub async fn query(&self, token: &str, sql: &str) -> Reply {
        self.query_with(token, sql, "").await
    }

    /// POST a query as `token` with a query string (e.g. `?wait=5s`).
    pub async fn query_with(&self, token: &str, sql: &str, qs: &str) -> Reply {
        self.post(
            token,
            &format!("/v1/connections/local/query{qs}"),
            json!({ "sql": sql }),
        )
        .await
    }

    /// Vote as `token`.
    pub async fn vote(&self, token: &str, id: &str, decision: &str) -> Reply {
        self.post(
            token,
            &format!("/v1/requests/{id}/votes"),
            json!({ "decision": decision }),
        )
        .await
    }

    /// GET a request as `token`.
    pub async fn request(&self, token: &str, id: &str) -> Reply {
        let r = self
            .http
            .get(format!("{}/v1/requests/{id}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        Reply {
            status,
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    /// POST JSON as `token`.
    pub async fn post(&self, token: &str, path: &str, body: Value) -> Reply {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        Reply {
            status,
            body: r.json().await.unwrap_or(Value::Null),
        }
    }
}

/// A direct connection to the upstream PostgreSQL (bypassing the gateway) for setup and checks.
pub async fn direct() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&upstream_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The first column of the one row `sql` returns, read directly from the upstream (a check that
/// something did or did not run).
pub async fn direct_scalar<T: tokio_postgres::types::FromSqlOwned>(sql: &str) -> T {
    scalar_in(&direct().await, sql).await
}

/// The libpq connection string of the agent (its token as password) for connection `local` on the
/// wire listener at `addr`, without TLS.
pub fn agent_wire_conninfo(addr: SocketAddr) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=local user=agent password={} sslmode=disable",
        addr.port(),
        tokens::AGENT
    )
}

/// The agent logged in on the wire listener at `addr`, and the task driving its connection (abort
/// it to drop the socket, as a client that vanishes would).
pub async fn agent_wire_session(
    addr: SocketAddr,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::connect(&agent_wire_conninfo(addr), tokio_postgres::NoTls)
        .await
        .expect("log in through the gateway");
    (client, tokio::spawn(conn))
}

/// The id of the pending request whose listing mentions `needle` (its statement, say), once a held
/// statement has created it.
pub async fn pending_request(base: &str, needle: &str) -> String {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let body: Value = http
            .get(format!("{base}/v1/requests?status=pending"))
            .bearer_auth(tokens::BOB)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(r) = body["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r.to_string().contains(needle))
        {
            return r["id"].as_str().expect("request id").to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no pending request for {needle:?} appeared");
}

/// The first column of the one row `sql` returns on `client`.
pub async fn scalar_in<T: tokio_postgres::types::FromSqlOwned>(
    client: &tokio_postgres::Client,
    sql: &str,
) -> T {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// A fresh table name.
pub fn table_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Runs `psql` with `args` as the test agent against the gateway's wire listener at `addr`
/// (connection `local`, no TLS, no psqlrc).
pub fn psql(addr: SocketAddr, args: &[&str]) -> std::process::Output {
    std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-d", "local", "-U", "agent", "-X"])
        .args(args)
        .env("PGPASSWORD", tokens::AGENT)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("psql must be installed (postgresql-client)")
}

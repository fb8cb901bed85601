//! SCRAM-SHA-256 client logins and TLS to the upstream, end to end against the real PostgreSQL at
//! 127.0.0.1:5432. A loopback fake answers the SSLRequest with 'S' (or 'N'), terminates TLS with a
//! generated certificate (demanding a client certificate when asked to) and forwards the decrypted bytes
//! to that server in plaintext.

mod support;

use countersign_gateway::identity::scram::ScramVerifier;
use countersign_gateway::pg::scram::ScramError;
use countersign_gateway::pg::testing::{GateEvent, StaticGate};
use countersign_gateway::pg::{TlsFiles, UpstreamTarget, WireAuth, WireConfig, WireServer};
use countersign_gateway::upstream::UpstreamPool;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use support::pki::{CertFiles, Pki};
use support::private_postgres::PrivatePostgres;
use support::tls_proxy::{tls_proxy, Backend, TlsProxy};
use tokio_postgres::NoTls;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "secret-token";

fn plain_upstream() -> UpstreamTarget {
    UpstreamTarget::parse("postgres://postgres@127.0.0.1:5432/test?sslmode=disable").unwrap()
}

async fn start(gate: StaticGate, auth: WireAuth) -> (Arc<StaticGate>, SocketAddr) {
    let gate = Arc::new(gate);
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.allow_cleartext_without_tls = true;
    config.auth = auth;
    let server = WireServer::bind(config, gate.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (gate, addr)
}

async fn login(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={} dbname=app user={user} password='{password}' sslmode=disable",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn sqlstate(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

fn scram_gate() -> StaticGate {
    StaticGate::new("app", plain_upstream(), TOKEN)
        .with_scram_user("ops", ScramVerifier::generate("correct horse"))
}

#[tokio::test]
async fn scram_user_with_the_right_password_runs_queries_and_tokens_still_work() {
    let (_gate, addr) = start(scram_gate(), WireAuth::Auto).await;
    let client = login(addr, "ops", "correct horse").await.unwrap();
    let row = client.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // Every other user name keeps the cleartext token login.
    let agent = login(addr, "agent", TOKEN).await.unwrap();
    agent.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn scram_with_a_wrong_password_fails_with_28p01_and_is_reported() {
    let (gate, addr) = start(scram_gate(), WireAuth::Auto).await;
    let err = login(addr, "ops", "wrong horse").await.unwrap_err();
    let (code, message) = sqlstate(&err);
    assert_eq!(code, "28P01", "{message}");
    assert!(
        message.contains("password authentication failed for user \"ops\""),
        "{message}"
    );
    assert!(gate.events().contains(&GateEvent::ScramRefused {
        user: "ops".into(),
        error: ScramError::Failed,
    }));
}

#[tokio::test]
async fn scram_only_listener_gives_unknown_users_a_mock_exchange_and_the_same_28p01() {
    let (gate, addr) = start(scram_gate(), WireAuth::Scram).await;
    let known = login(addr, "ops", "wrong horse").await.unwrap_err();
    let unknown = login(addr, "ghost", "anything").await.unwrap_err();
    let (known_code, known_message) = sqlstate(&known);
    let (unknown_code, unknown_message) = sqlstate(&unknown);
    assert_eq!(
        (known_code.as_str(), unknown_code.as_str()),
        ("28P01", "28P01")
    );
    assert_eq!(
        known_message.replace("\"ops\"", "\"ghost\""),
        unknown_message
    );
    // The mock exchange ran to the proof, like a real one.
    assert!(gate.events().contains(&GateEvent::ScramRefused {
        user: "ghost".into(),
        error: ScramError::Failed,
    }));
    // A token is no password in this mode, and the real password still works.
    assert_eq!(
        sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err()).0,
        "28P01"
    );
    let client = login(addr, "ops", "correct horse").await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

/// "correct horse" is no token, so a successful login can only be the SCRAM exchange.
#[tokio::test]
async fn psql_logs_in_with_scram_from_pgpassword() {
    let (_gate, addr) = start(scram_gate(), WireAuth::Auto).await;
    let run = move |password: &'static str| {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .args(["-d", "app", "-U", "ops", "-XAtc", "SELECT 6 * 7"])
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("psql must be installed")
    };
    let out = tokio::task::spawn_blocking(move || run("correct horse"))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = tokio::task::spawn_blocking(move || run("nope"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{out:?}"
    );
}

// ---- upstream TLS ----

/// The shared PostgreSQL behind a TLS-terminating proxy ('N' without an acceptor).
async fn fake_upstream(acceptor: Option<TlsAcceptor>) -> TlsProxy {
    tls_proxy(acceptor, Backend::Plain("127.0.0.1:5432".parse().unwrap())).await
}

fn target(upstream: &TlsProxy, query: &str) -> UpstreamTarget {
    UpstreamTarget::parse(&format!(
        "postgres://postgres@127.0.0.1:{}/test?{query}",
        upstream.addr.port()
    ))
    .unwrap()
}

async fn gateway_to(target: UpstreamTarget) -> SocketAddr {
    start(StaticGate::new("app", target, TOKEN), WireAuth::Auto)
        .await
        .1
}

fn root(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[tokio::test]
async fn verify_full_runs_wire_and_api_queries_over_tls() {
    let pki = Pki::new();
    let fake = fake_upstream(Some(pki.acceptor(&["127.0.0.1"]))).await;
    let ca = pki.ca_file("ca.pem");
    let target = target(&fake, &format!("sslmode=verify-full&{}", root(&ca)));
    let addr = gateway_to(target.clone()).await;
    let client = login(addr, "agent", TOKEN).await.unwrap();
    let rows = client
        .query(
            "SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000);
    let ssl = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(ssl.get::<_, i32>(0), 1);
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 1);
    // The HTTP API's client connects on its own, over TLS too.
    let pool = UpstreamPool::new(1);
    let out = pool
        .simple_query("app", &target, "SELECT 'over tls'", true)
        .await
        .unwrap();
    assert_eq!(out.results[0].rows[0][0].as_deref(), Some("over tls"));
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 2);
    // Ctrl-C: the gateway forwards the cancel over TLS as well.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), sleeper)
        .await
        .expect("the cancel reached the upstream")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err).0, "57014");
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_clearly_and_prefer_falls_back() {
    let fake = fake_upstream(None).await;
    let addr = gateway_to(target(&fake, "sslmode=require")).await;
    let err = login(addr, "agent", TOKEN).await.unwrap_err();
    let (code, message) = sqlstate(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("does not offer TLS"), "{message}");
    assert!(message.contains("sslmode=require"), "{message}");

    let addr = gateway_to(target(&fake, "sslmode=prefer")).await;
    let client = login(addr, "agent", TOKEN).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_that_verify_ca_accepts() {
    let pki = Pki::new();
    let fake = fake_upstream(Some(pki.acceptor(&["127.0.0.2"]))).await;
    let ca = pki.ca_file("ca.pem");
    let addr = gateway_to(target(&fake, &format!("sslmode=verify-full&{}", root(&ca)))).await;
    let err = login(addr, "agent", TOKEN).await.unwrap_err();
    let (code, message) = sqlstate(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("TLS handshake with the upstream failed"),
        "{message}"
    );
    assert!(message.contains("names include the host"), "{message}");
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 0);

    // The chain is fine, only the name is wrong: verify-ca and require-with-roots accept it.
    for mode in ["verify-ca", "require"] {
        let addr = gateway_to(target(&fake, &format!("sslmode={mode}&{}", root(&ca)))).await;
        let client = login(addr, "agent", TOKEN).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_unless_nothing_is_verified() {
    let pki = Pki::new();
    let other = Pki::new();
    let fake = fake_upstream(Some(pki.acceptor(&["127.0.0.1"]))).await;
    let wrong_ca = other.ca_file("other-ca.pem");
    for mode in ["verify-full", "verify-ca", "require"] {
        let addr = gateway_to(target(
            &fake,
            &format!("sslmode={mode}&{}", root(&wrong_ca)),
        ))
        .await;
        let err = login(addr, "agent", TOKEN).await.unwrap_err();
        let (code, message) = sqlstate(&err);
        assert_eq!(code, "08006", "{mode}: {message}");
        assert!(message.contains("TLS handshake"), "{mode}: {message}");
    }
    // require without sslrootcert encrypts without checking the certificate, as libpq does.
    let addr = gateway_to(target(&fake, "sslmode=require")).await;
    let client = login(addr, "agent", TOKEN).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_certificate_from_the_trusted_ca_is_presented_and_others_fail_clearly() {
    let pki = Pki::new();
    let client_ca = Pki::new();
    let other_ca = Pki::new();
    let fake = fake_upstream(Some(
        pki.acceptor_requiring_client_certs(&["127.0.0.1"], &client_ca),
    ))
    .await;
    let ca = pki.ca_file("ca.pem");
    let with_cert = |files: &support::pki::CertFiles| {
        format!(
            "sslmode=verify-full&{}&sslcert={}&sslkey={}",
            root(&ca),
            files.cert.display(),
            files.key.display()
        )
    };
    let good = client_ca.client_files("countersign", "gateway");
    let target = target(&fake, &with_cert(&good));
    let addr = gateway_to(target.clone()).await;
    let client = login(addr, "agent", TOKEN).await.unwrap();
    let row = client
        .query_one("SELECT 'with a client certificate'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "with a client certificate");
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 1);
    // The API's own connections present it too.
    let out = UpstreamPool::new(1)
        .simple_query("app", &target, "SELECT 2", true)
        .await
        .unwrap();
    assert_eq!(out.results[0].rows[0][0].as_deref(), Some("2"));

    // Without a certificate: the server's alert is explained.
    let addr = gateway_to(self::target(
        &fake,
        &format!("sslmode=verify-full&{}", root(&ca)),
    ))
    .await;
    let (code, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("requires a TLS client certificate"),
        "{message}"
    );
    assert!(message.contains("sslcert="), "{message}");

    // A certificate from a CA the server does not trust.
    let stranger = other_ca.client_files("countersign", "stranger");
    let addr = gateway_to(self::target(&fake, &with_cert(&stranger))).await;
    let (code, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("refused the gateway's client certificate"),
        "{message}"
    );
    assert!(
        message.contains(&stranger.cert.display().to_string()),
        "{message}"
    );
    assert_eq!(fake.tls_sessions.load(Ordering::SeqCst), 2);
}

// ---- SCRAM-SHA-256-PLUS: channel binding on both sides ----

/// A gateway whose wire listener speaks TLS with `cert` (passwords only over TLS, as in production).
async fn start_tls(gate: StaticGate, cert: &CertFiles) -> (Arc<StaticGate>, SocketAddr) {
    let gate = Arc::new(gate);
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsFiles {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    });
    let server = WireServer::bind(config, gate.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (gate, addr)
}

/// psql as user `ops` with the libpq options `conninfo`; returns success and stdout or stderr.
async fn psql_ops(addr: SocketAddr, conninfo: &str) -> Result<String, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=app user=ops {conninfo}",
        addr.port()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("psql")
            .args([conninfo.as_str(), "-XAtc", "SELECT 6 * 7"])
            .env("PGPASSWORD", "correct horse")
            .output()
            .expect("psql must be installed")
    })
    .await
    .unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

#[tokio::test]
async fn psql_with_channel_binding_required_logs_in_over_the_gateways_tls() {
    let pki = Pki::new();
    let cert = pki.server_files(&["127.0.0.1"], "gateway");
    let (gate, addr) = start_tls(scram_gate(), &cert).await;
    // libpq refuses to log in unless SCRAM-SHA-256-PLUS was offered, chosen and verified.
    let bound = psql_ops(addr, "sslmode=require channel_binding=require").await;
    assert_eq!(bound.as_deref(), Ok("42"));
    // Clients that don't bind still log in over TLS ('n'), and the default (prefer) binds.
    let unbound = psql_ops(addr, "sslmode=require channel_binding=disable").await;
    assert_eq!(unbound.as_deref(), Ok("42"));
    assert_eq!(psql_ops(addr, "sslmode=require").await.as_deref(), Ok("42"));
    assert!(gate
        .events()
        .iter()
        .all(|e| !matches!(e, GateEvent::ScramRefused { .. })));
}

#[tokio::test]
async fn a_proxy_terminating_tls_between_psql_and_the_gateway_is_detected() {
    let pki = Pki::new();
    let cert = pki.server_files(&["127.0.0.1"], "gateway");
    let (gate, addr) = start_tls(scram_gate(), &cert).await;
    // The proxy shows psql its own certificate and talks TLS to the gateway on its own.
    let intruder = Pki::new();
    let proxy = tls_proxy(
        Some(intruder.acceptor(&["127.0.0.1"])),
        Backend::Tls(addr, pki.connector()),
    )
    .await;
    let err = psql_ops(proxy.addr, "sslmode=require").await.unwrap_err();
    assert!(err.contains("SCRAM channel binding check failed"), "{err}");
    assert!(gate.events().iter().any(|e| matches!(
        e,
        GateEvent::ScramRefused { user, error: ScramError::ChannelBinding(_) } if user == "ops"
    )));
    // Without binding, nothing notices the proxy: what channel binding is for.
    let unbound = psql_ops(proxy.addr, "sslmode=require channel_binding=disable").await;
    assert_eq!(unbound.as_deref(), Ok("42"));
    assert_eq!(proxy.tls_sessions.load(Ordering::SeqCst), 2);
}

/// A private PostgreSQL whose certificate is signed with ecdsa-with-SHA384 (so both ends must hash the
/// certificate with SHA-384), SCRAM on hostssl, and cleartext passwords for database `cleartext_db`.
async fn private_postgres(pki: &Pki) -> PrivatePostgres {
    let cert = pki.server_files(&["127.0.0.1"], "pg");
    tokio::task::spawn_blocking(move || {
        PrivatePostgres::start(
            &cert,
            &[
                "hostssl cleartext_db all 127.0.0.1/32 password",
                "hostssl all all 127.0.0.1/32 scram-sha-256",
            ],
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn upstream_scram_plus_binds_to_a_real_postgres_and_exposes_a_proxy_in_between() {
    let pki = Pki::with_algorithm(&rcgen::PKCS_ECDSA_P384_SHA384);
    let pg = private_postgres(&pki).await;
    let ca = pki.ca_file("pg-ca.pem");
    let url = |query: &str| UpstreamTarget::parse(&pg.url("postgres", query)).unwrap();

    let target = url("sslmode=require&channel_binding=require");
    let addr = gateway_to(target.clone()).await;
    let client = login(addr, "agent", TOKEN)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pg.log()));
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the upstream session is TLS");
    let out = UpstreamPool::new(1)
        .simple_query("app", &target, "SELECT 'bound'", true)
        .await
        .unwrap();
    assert_eq!(out.results[0].rows[0][0].as_deref(), Some("bound"));
    for query in [
        format!("sslmode=verify-full&{}&channel_binding=require", root(&ca)),
        "sslmode=require".to_string(),
        "sslmode=require&channel_binding=disable".to_string(),
    ] {
        let addr = gateway_to(url(&query)).await;
        let client = login(addr, "agent", TOKEN).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    }
    // Never TLS: refused when the URL is read, before any connection.
    let never =
        UpstreamTarget::parse(&pg.url("postgres", "sslmode=disable&channel_binding=require"))
            .unwrap_err()
            .to_string();
    assert!(
        never.contains("channel_binding=require needs TLS, but sslmode=disable"),
        "{never}"
    );

    // A proxy between the gateway and the database, with a certificate of its own: the gateway (not
    // checking certificates under sslmode=require) binds to the proxy's certificate and PostgreSQL,
    // expecting its own, refuses the login.
    let intruder = Pki::new();
    let proxy = tls_proxy(
        Some(intruder.acceptor(&["127.0.0.1"])),
        Backend::Tls(pg.addr(), pki.connector()),
    )
    .await;
    let through = |query: &str| {
        UpstreamTarget::parse(&format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres?{query}",
            pg.password,
            proxy.addr.port()
        ))
        .unwrap()
    };
    let addr = gateway_to(through("sslmode=require")).await;
    let (code, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("refused the session"), "{message}");
    assert!(
        pg.log().contains("SCRAM channel binding check failed"),
        "{}",
        pg.log()
    );
    // Without channel binding the same proxy goes unnoticed.
    let addr = gateway_to(through("sslmode=require&channel_binding=disable")).await;
    let client = login(addr, "agent", TOKEN).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn channel_binding_require_refuses_logins_that_are_not_bound() {
    // TLS to a private PostgreSQL that asks for a cleartext password: refused before the password leaves.
    let pki = Pki::new();
    let pg = private_postgres(&pki).await;
    let cleartext = |query: &str| UpstreamTarget::parse(&pg.url("cleartext_db", query)).unwrap();
    let addr = gateway_to(cleartext("sslmode=require&channel_binding=require")).await;
    let (code, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("channel_binding=require"), "{message}");
    assert!(
        message.contains("asked for a cleartext password"),
        "{message}"
    );
    // With prefer the password is sent, and the login gets as far as the missing database.
    let addr = gateway_to(cleartext("sslmode=require")).await;
    let (_, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert!(message.contains("SQLSTATE 3D000"), "{message}");

    // The shared server trusts the gateway's user: no SCRAM at all, over TLS ...
    let fake = fake_upstream(Some(pki.acceptor(&["127.0.0.1"]))).await;
    let addr = gateway_to(target(&fake, "sslmode=require&channel_binding=require")).await;
    let (code, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("no authentication (trust)"), "{message}");
    // ... or over plaintext, when sslmode=prefer met a server without TLS.
    let fake = fake_upstream(None).await;
    let addr = gateway_to(target(&fake, "sslmode=prefer&channel_binding=require")).await;
    let (code, message) = sqlstate(&login(addr, "agent", TOKEN).await.unwrap_err());
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("not channel-bound"), "{message}");
}

#[tokio::test]
async fn a_cancel_request_over_tls_is_answered_with_a_clean_tls_close() {
    // libpq 17+ (PQcancelBlocking, psycopg's cancel_safe) waits for the server to close a cancel
    // connection and reports "SSL error: unexpected eof while reading" unless the close is a TLS
    // close_notify, as PostgreSQL sends.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let cert = pki.server_files(&["127.0.0.1"], "gateway");
    let (_gate, addr) = start_tls(scram_gate(), &cert).await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap(); // SSLRequest
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = pki.connector().connect(name, tcp).await.unwrap();
    // CancelRequest for a key no session has: PostgreSQL answers every CancelRequest alike.
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&4242i32.to_be_bytes());
    cancel.extend_from_slice(&77i32.to_be_bytes());
    tls.write_all(&cancel).await.unwrap();
    tls.flush().await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tls.read_to_end(&mut rest),
    )
    .await
    .expect("the gateway closes a cancel connection");
    assert!(
        closed.is_ok(),
        "the TLS connection ended without close_notify: {closed:?}"
    );
    assert!(rest.is_empty(), "a CancelRequest gets no answer: {rest:?}");
}

// ---- Direct TLS (`sslnegotiation=direct`, PostgreSQL 17+): TLS from the first byte, no SSLRequest ----

/// Opens TLS to `addr` at once, offering the ALPN protocols `alpn`, then logs in as `ops` with SCRAM
/// over it and runs one query.
async fn direct_tls_query(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> Result<i32, (String, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = pki
        .connector_offering(alpn)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .user("ops")
        .password("correct horse")
        .dbname("app")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = config
        .connect_raw(tls, NoTls)
        .await
        .map_err(|e| sqlstate(&e))?;
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT 6 * 7", &[])
        .await
        .map_err(|e| sqlstate(&e))?;
    Ok(row.get(0))
}

#[tokio::test]
async fn a_client_opening_tls_directly_with_alpn_postgresql_logs_in_and_queries() {
    let pki = Pki::new();
    let cert = pki.server_files(&["127.0.0.1"], "gateway");
    let (_gate, addr) = start_tls(scram_gate(), &cert).await;
    assert_eq!(direct_tls_query(&pki, addr, &[b"postgresql"]).await, Ok(42));
    // The standard SSLRequest path still works beside it, with and without ALPN.
    assert_eq!(psql_ops(addr, "sslmode=require").await.as_deref(), Ok("42"));
}

#[tokio::test]
async fn direct_tls_without_alpn_postgresql_is_refused_with_a_protocol_violation() {
    let pki = Pki::new();
    let cert = pki.server_files(&["127.0.0.1"], "gateway");
    let (_gate, addr) = start_tls(scram_gate(), &cert).await;
    let (code, message) = direct_tls_query(&pki, addr, &[]).await.unwrap_err();
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("ALPN"), "{message}");
}

#[tokio::test]
async fn psycopg_with_sslnegotiation_direct_logs_in_through_the_gateway() {
    let pki = Pki::new();
    let cert = pki.server_files(&["127.0.0.1"], "gateway");
    let (_gate, addr) = start_tls(scram_gate(), &cert).await;
    let script = format!(
        "import psycopg\n\
         assert psycopg.pq.version() >= 170000, 'libpq ' + str(psycopg.pq.version())\n\
         with psycopg.connect('host=127.0.0.1 port={} dbname=app user=ops password=\\'correct horse\\' sslmode=require sslnegotiation=direct') as c:\n\
         \x20   print(c.execute('SELECT 6 * 7').fetchone()[0])\n",
        addr.port()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3 must be installed")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'psycopg'"),
        "psycopg is not installed for python3: run `python3 -m pip install \"psycopg[binary]\"` (.ci/test does)"
    );
    assert!(out.status.success(), "psycopg failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

//! SCRAM-SHA-256 client logins and TLS to the upstream, end to end against the real PostgreSQL at
//! 127.0.0.1:5432. A loopback fake answers the SSLRequest with 'S' (or 'N'), terminates TLS with a
//! generated certificate (demanding a client certificate when asked to) and forwards the decrypted bytes
//! to that server in plaintext.

mod support;

use countersign_gateway::identity::scram::ScramVerifier;
use countersign_gateway::pg::scram::ScramError;
use countersign_gateway::pg::testing::{GateEvent, StaticGate};
use countersign_gateway::pg::{UpstreamTarget, WireAuth, WireConfig, WireServer};
use countersign_gateway::upstream::UpstreamPool;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;
use tokio_rustls::TlsAcceptor;

const TOKEN: &str = "secret-token";
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

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

/// A loopback stand-in for a TLS-enabled PostgreSQL: 'S' and a TLS handshake when it has an acceptor,
/// else 'N'; then it forwards everything to the real server. Counts completed TLS handshakes.
struct FakeUpstream {
    addr: SocketAddr,
    tls_sessions: Arc<AtomicUsize>,
}

async fn fake_upstream(acceptor: Option<TlsAcceptor>) -> FakeUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls_sessions = Arc::new(AtomicUsize::new(0));
    let count = tls_sessions.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 8];
                client.read_exact(&mut first).await?;
                let mut server = TcpStream::connect("127.0.0.1:5432").await?;
                if first != SSL_REQUEST {
                    server.write_all(&first).await?;
                    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                    return Ok::<_, std::io::Error>(());
                }
                match acceptor {
                    Some(acceptor) => {
                        client.write_all(b"S").await?;
                        let mut tls = acceptor.accept(client).await?;
                        count.fetch_add(1, Ordering::SeqCst);
                        tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                    }
                    None => {
                        client.write_all(b"N").await?;
                        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                    }
                }
                Ok(())
            });
        }
    });
    FakeUpstream { addr, tls_sessions }
}

fn target(upstream: &FakeUpstream, query: &str) -> UpstreamTarget {
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

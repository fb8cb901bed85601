//! End-to-end tests of the Postgres wire gateway against the real PostgreSQL at 127.0.0.1:5432,
//! with the static test gate (DELETE → review, DROP DATABASE → block, else allow).

use countersign_bot::{BoundParam, StatementHash};
use countersign_gateway::pg::testing::{GateEvent, StaticGate};
use countersign_gateway::pg::{HoldOutcome, UpstreamTarget, WireConfig, WireServer, WireWorkers};
use countersign_gateway::policy::Action;
use futures::SinkExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

mod support;
use support::raw::{cstr, message, read_frames_until, startup_packet};

const TOKEN: &str = "secret-token";

fn upstream(database: &str) -> UpstreamTarget {
    countersign_gateway::pg::testing::local_postgres(database)
}

async fn start_with(
    cfg: impl FnOnce(&mut WireConfig),
    database: &str,
) -> (Arc<StaticGate>, SocketAddr) {
    start_at(cfg, upstream(database)).await
}

/// A gateway whose connection `app` reaches `target`.
async fn start_at(
    cfg: impl FnOnce(&mut WireConfig),
    target: UpstreamTarget,
) -> (Arc<StaticGate>, SocketAddr) {
    let gate = Arc::new(StaticGate::new("app", target, TOKEN));
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.allow_cleartext_without_tls = true;
    config.hold_wait = Duration::from_secs(5);
    cfg(&mut config);
    let server = WireServer::bind(config, gate.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (gate, addr)
}

async fn start() -> (Arc<StaticGate>, SocketAddr) {
    start_with(|_| {}, "test").await
}

fn conn_str(addr: SocketAddr, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=app user=agent password={password} sslmode=disable",
        addr.port()
    )
}

async fn connect(addr: SocketAddr) -> Client {
    let (client, connection) = tokio_postgres::connect(&conn_str(addr, TOKEN), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

fn table() -> String {
    format!("wire_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh table `(id int)` holding `values`, e.g. `(1), (2)`; returns its name.
async fn table_of_ids(client: &Client, values: &str) -> String {
    let t = table();
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int); INSERT INTO {t} VALUES {values}"
        ))
        .await
        .unwrap();
    t
}

/// How many rows table `t` has.
async fn rows_in(client: &Client, t: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn drop_table(client: &Client, t: &str) {
    client
        .batch_execute(&format!("DROP TABLE {t}"))
        .await
        .unwrap();
}

async fn eventually(gate: &StaticGate, what: &str, pred: impl Fn(&GateEvent) -> bool) -> GateEvent {
    for _ in 0..100 {
        if let Some(e) = gate.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gate never saw {what}; events: {:#?}", gate.events());
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

#[tokio::test]
async fn simple_extended_and_prepared_queries_pass_through_unchanged() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table();
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int primary key, name text, data bytea)"
        ))
        .await
        .unwrap();
    let insert = client
        .prepare(&format!("INSERT INTO {t} VALUES ($1, $2, $3)"))
        .await
        .unwrap();
    for i in 0..3i32 {
        let n = client
            .execute(&insert, &[&i, &format!("n{i}"), &vec![i as u8, 0, 255]])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    let rows = client
        .query(
            &format!("SELECT id, name, data FROM {t} WHERE id >= $1 ORDER BY id"),
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].get::<_, String>(1), "n2");
    assert_eq!(rows[1].get::<_, Vec<u8>>(2), vec![2, 0, 255]);
    let simple = client
        .simple_query(&format!("SELECT count(*) FROM {t}; SELECT 'x'"))
        .await
        .unwrap();
    let first = simple.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
        _ => None,
    });
    assert_eq!(first.as_deref(), Some("3"));
    let event = eventually(&gate, "the insert record", |e| {
        matches!(e, GateEvent::Statement(r) if r.sql.starts_with("INSERT") && r.command_tag.as_deref() == Some("INSERT 0 1"))
    })
    .await;
    let GateEvent::Statement(record) = event else {
        unreachable!()
    };
    assert_eq!(record.decision, Action::Allow);
    assert_eq!(record.rows, Some(1));
    // Several statements in one query: the record keeps each one's tag.
    let both = eventually(
        &gate,
        "the two-statement record",
        |e| matches!(e, GateEvent::Statement(r) if r.sql.starts_with("SELECT count(*)")),
    )
    .await;
    let GateEvent::Statement(both) = both else {
        unreachable!()
    };
    assert_eq!(both.command_tag.as_deref(), Some("SELECT 1; SELECT 1"));
    assert_eq!(both.rows, Some(1));
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn blocked_statement_inside_a_transaction_fails_the_transaction_and_keeps_the_connection() {
    let (_gate, addr) = start().await;
    let client = connect(addr).await;
    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .batch_execute("DROP DATABASE postgres")
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        message.contains("static-test") && message.contains("never allowed"),
        "{message}"
    );
    // The transaction is now failed (status E), exactly as if Postgres had raised the error.
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    let rows = client.query("SELECT 41 + $1::int", &[&1i32]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    // Outside a transaction the block is reported and the session is still idle and usable.
    let err = client
        .query("DROP DATABASE postgres", &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn held_statement_runs_once_after_approval_and_reports_its_result() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1), (2), (2)").await;
    gate.push_outcome(Duration::from_millis(200), HoldOutcome::Approved);
    let sql = format!("DELETE FROM {t} WHERE id = $1");
    let deleted = client.execute(&sql, &[&2i32]).await.unwrap();
    assert_eq!(deleted, 2);
    let hold = eventually(&gate, "a hold", |e| matches!(e, GateEvent::Hold { .. })).await;
    let GateEvent::Hold {
        sql: held_sql,
        hash,
        id,
    } = hold
    else {
        unreachable!()
    };
    // Approvers read the text and the value it runs with.
    assert_eq!(
        held_sql,
        format!("{sql}\n-- parameters, sent apart from the text above; the statement runs with these values:\n-- $1 = 0x00000002 (binary, 4 bytes, type from the statement; as an integer 2)")
    );
    // The approval is bound to the text and the Bind parameter, in the binary form it was sent in.
    assert_eq!(
        hash,
        StatementHash::of_bound(&sql, &[BoundParam::Binary(&2i32.to_be_bytes()[..])])
    );
    let executed = eventually(&gate, "executed", |e| matches!(e, GateEvent::Executed(..))).await;
    let GateEvent::Executed(executed_id, outcome) = executed else {
        unreachable!()
    };
    assert_eq!(executed_id, id);
    assert_eq!(outcome.command_tag.as_deref(), Some("DELETE 2"));
    assert_eq!(outcome.rows, Some(2));
    let left = rows_in(&client, &t).await;
    assert_eq!(left, 1);
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn statement_approved_in_advance_runs_without_waiting() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1)").await;
    let sql = format!("DELETE FROM {t}");
    gate.approve_in_advance(StatementHash::of_text(&sql));
    let messages = client.simple_query(&sql).await.unwrap();
    assert!(matches!(
        messages[0],
        tokio_postgres::SimpleQueryMessage::CommandComplete(1)
    ));
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn denied_statement_gets_42501_naming_who_denied_and_why() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1)").await;
    let denial = HoldOutcome::Denied {
        by: vec!["alice@example.com".into()],
        reason: Some("not in prod".into()),
    };
    gate.push_outcome(Duration::from_millis(100), denial);
    let err = client
        .batch_execute(&format!("DELETE FROM {t}"))
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        message.contains("alice@example.com") && message.contains("not in prod"),
        "{message}"
    );
    let left = rows_in(&client, &t).await;
    assert_eq!(left, 1, "a denied DELETE must not run");
    let record = eventually(&gate, "denied record", |e| {
        matches!(e, GateEvent::Statement(r) if r.decision == Action::Review && r.error.is_some())
    })
    .await;
    let GateEvent::Statement(record) = record else {
        unreachable!()
    };
    assert!(record.request_id.is_some());
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn hold_that_times_out_says_the_request_stays_pending() {
    let (_gate, addr) = start_with(|c| c.hold_wait = Duration::from_millis(300), "test").await;
    let client = connect(addr).await;
    let err = client
        .batch_execute("DELETE FROM pg_catalog.pg_class WHERE false")
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        message.contains("stays pending") && message.contains("re-running the identical statement"),
        "{message}"
    );
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn cancel_request_during_a_hold_cancels_the_approval_request() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let cancel = client.cancel_token();
    let running = tokio::spawn(async move {
        let r = client
            .batch_execute("DELETE FROM pg_catalog.pg_class WHERE false")
            .await;
        (client, r)
    });
    eventually(&gate, "a hold", |e| matches!(e, GateEvent::Hold { .. })).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (client, result) = tokio::time::timeout(Duration::from_secs(3), running)
        .await
        .unwrap()
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(
        db_error(&err),
        (
            "57014".into(),
            "canceling statement due to user request".into()
        )
    );
    eventually(&gate, "cancel_hold", |e| {
        matches!(e, GateEvent::Cancelled(_))
    })
    .await;
    assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
}

#[tokio::test]
async fn cancel_request_reaches_a_running_upstream_query() {
    let (_gate, addr) = start().await;
    let client = connect(addr).await;
    let cancel = client.cancel_token();
    let started = std::time::Instant::now();
    let running = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The server's first Unix socket directory, asked over TCP so the test assumes no distribution layout.
async fn unix_socket_dir() -> String {
    let (direct, conn) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let dirs: String = direct
        .query_one("SHOW unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    let dir = dirs
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        dir.starts_with('/'),
        "the test PostgreSQL listens on no Unix socket directory ({dirs:?}); set unix_socket_directories"
    );
    dir
}

#[tokio::test]
async fn upstream_over_a_unix_socket_relays_holds_and_cancels() {
    let mut target = upstream("test");
    target.host = unix_socket_dir().await;
    let (gate, addr) = start_at(|_| {}, target).await;
    let client = connect(addr).await;

    // A Unix-socket session has no client inet address on the server side.
    let row = client
        .query_one("SELECT inet_client_addr() IS NULL, $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, i32>(1)), (true, 42));

    let t = table_of_ids(&client, "(1),(2)").await;
    gate.push_outcome(Duration::from_millis(100), HoldOutcome::Approved);
    let deleted = client
        .execute(format!("DELETE FROM {t} WHERE id = 1").as_str(), &[])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    eventually(&gate, "executed", |e| matches!(e, GateEvent::Executed(..))).await;
    let left = rows_in(&client, &t).await;
    assert_eq!(left, 1);
    drop_table(&client, &t).await;

    let cancel = client.cancel_token();
    let running = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
}

/// Creates `t (id int, name text)` and copies `rows` rows into it as one CopyData message; returns the
/// count COPY reports and the bytes sent.
async fn copy_rows_in(client: &Client, t: &str, rows: usize) -> (u64, usize) {
    client
        .batch_execute(&format!("CREATE TABLE {t} (id int, name text)"))
        .await
        .unwrap();
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {t} FROM STDIN"))
        .await
        .unwrap();
    futures::pin_mut!(sink);
    let data: String = (0..rows).map(|i| format!("{i}\tname {i}\n")).collect();
    let sent = data.len();
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    (sink.finish().await.unwrap(), sent)
}

#[tokio::test]
async fn copy_in_and_copy_out_are_relayed() {
    let (_gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table();
    let (copied, _) = copy_rows_in(&client, &t, 1000).await;
    assert_eq!(copied, 1000);
    let stream = client
        .copy_out(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"))
        .await
        .unwrap();
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        out.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert!(text.ends_with("999\tname 999\n"));
    drop_table(&client, &t).await;
}

/// CopyData is opaque (its COPY statement was classified), so a CopyData message is streamed rather
/// than buffered: one larger than `max_message_size` passes, as PostgreSQL takes any up to 1 GiB
/// (sqlx's `test_pg_copy_chunked` sends one of nearly 1 GiB).
#[tokio::test]
async fn copy_data_larger_than_max_message_size_is_streamed() {
    let (_gate, addr) = start_with(|c| c.max_message_size = 64 * 1024, "test").await;
    let client = connect(addr).await;
    let t = table();
    // One CopyData message of about 700 KiB, ten times the limit.
    let (copied, sent) = copy_rows_in(&client, &t, 50_000).await;
    assert!(sent > 10 * 64 * 1024);
    assert_eq!(copied, 50_000);
    assert_eq!(rows_in(&client, &t).await, 50_000);
    drop_table(&client, &t).await;
}

/// PostgreSQL ignores a Sync read in copy-in mode. tokio-postgres' `copy_in` sends Bind, Execute and
/// Sync, then the data, CopyDone and Sync, and gets one ReadyForQuery for the two Syncs: the gateway
/// must not wait for a second one, or every later answer is matched to the statement before it (a
/// refusal's own round trip then reaches the client, and records carry their neighbour's outcome).
#[tokio::test]
async fn sync_ignored_during_extended_copy_in_keeps_later_answers_in_step() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1)").await;
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {t} FROM STDIN"))
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"2\n3\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let e = client
        .batch_execute("DROP DATABASE never_dropped")
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).0, "42501", "{e:?}");
    assert_eq!(rows_in(&client, &t).await, 3);
    let copy = eventually(
        &gate,
        "the COPY's record",
        |e| matches!(e, GateEvent::Statement(r) if r.sql.starts_with("COPY")),
    )
    .await;
    let GateEvent::Statement(copy) = copy else {
        unreachable!()
    };
    assert_eq!(copy.command_tag.as_deref(), Some("COPY 2"));
    let count = eventually(
        &gate,
        "the count's record",
        |e| matches!(e, GateEvent::Statement(r) if r.sql.starts_with("SELECT count(*)")),
    )
    .await;
    let GateEvent::Statement(count) = count else {
        unreachable!()
    };
    assert_eq!(count.command_tag.as_deref(), Some("SELECT 1"));
    drop_table(&client, &t).await;
}

/// PostgreSQL's notices during login (here: the application_name it truncates) reach the client, as
/// they would connecting directly.
#[tokio::test]
async fn notices_from_the_upstream_login_reach_the_client() {
    let (_gate, addr) = start().await;
    let long_name = "x".repeat(65);
    let (client, mut connection) = tokio_postgres::connect(
        &format!("{} application_name={long_name}", conn_str(addr, TOKEN)),
        NoTls,
    )
    .await
    .unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(futures::StreamExt::forward(
        futures::StreamExt::map(messages, |m| Ok(m.unwrap())),
        tx,
    ));
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    let notices: Vec<String> = futures::StreamExt::collect::<Vec<_>>(rx)
        .await
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::AsyncMessage::Notice(n) => Some(n.message().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        notices,
        [format!(
            "identifier \"{long_name}\" will be truncated to \"{}\"",
            &long_name[..63]
        )]
    );
}

#[tokio::test]
async fn listen_notify_notifications_reach_the_listener() {
    let (_gate, addr) = start().await;
    let (listener, mut connection) = tokio_postgres::connect(&conn_str(addr, TOKEN), NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    let channel = table();
    listener
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    let sender = connect(addr).await;
    sender
        .batch_execute(&format!("NOTIFY {channel}, 'hello'"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (channel, "hello".to_string()));
}

#[tokio::test]
async fn wrong_password_is_refused_with_28p01() {
    let (_gate, addr) = start().await;
    let err = tokio_postgres::connect(&conn_str(addr, "wrong"), NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
}

#[tokio::test]
async fn startup_settings_pass_only_when_set_would_pass_without_review() {
    let (_gate, addr) = start().await;
    let with = |options: &str| {
        format!(
            "{} options='{options}' application_name=agent-app",
            conn_str(addr, TOKEN)
        )
    };
    // Harmless settings reach the upstream session, in `options` and as startup parameters.
    let (client, connection) = tokio_postgres::connect(
        &with("-c statement_timeout=4s --lock-timeout=3s -c enable_seqscan=off"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), \
             current_setting('enable_seqscan'), current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String, String) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        got,
        ("4s".into(), "3s".into(), "off".into(), "agent-app".into())
    );
    // Identity, trigger-bypassing and shadowing settings would skip the review SET gets.
    for (options, named) in [
        ("-c role=postgres", "role"),
        ("-c session_authorization=postgres", "session_authorization"),
        (
            "-c session_replication_role=replica",
            "session_replication_role",
        ),
        ("-c search_path=public,pg_catalog", "search_path"),
        (
            "-c standard_conforming_strings=off",
            "standard_conforming_strings",
        ),
        ("-c client_encoding=GBK", "client_encoding"),
        ("-d 5", "-d"),
    ] {
        let err = tokio_postgres::connect(&with(options), NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{options} was accepted"));
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{options}: {message}");
        assert!(message.contains(named), "{options}: {message}");
    }
    // PostgreSQL splits `options` on a vertical tab (C's isspace) too: one harmless-looking value
    // here would be two settings there.
    for options in [
        "-capplication_name=a\u{b}-crole=postgres",
        "-capplication_name=a\u{c}-csession_replication_role=replica",
    ] {
        let mut config: tokio_postgres::Config = conn_str(addr, TOKEN).parse().unwrap();
        config.options(options);
        let err = config
            .connect(NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{options:?} was accepted"));
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501", "{options:?}: {message}");
        assert!(
            message.contains("control characters"),
            "{options:?}: {message}"
        );
    }
}

#[tokio::test]
async fn unknown_connection_name_is_refused_with_3d000() {
    let (_gate, addr) = start().await;
    let url = format!(
        "host=127.0.0.1 port={} dbname=nope user=agent password={TOKEN} sslmode=disable",
        addr.port()
    );
    let err = tokio_postgres::connect(&url, NoTls).await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));
}

#[tokio::test]
async fn cleartext_password_without_tls_is_refused_unless_allowed() {
    let (_gate, addr) = start_with(|c| c.allow_cleartext_without_tls = false, "test").await;
    let err = tokio_postgres::connect(&conn_str(addr, TOKEN), NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
}

/// Reads until EOF and returns everything the gateway sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .unwrap()
        .ok();
    got
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn malformed_startup_length_gets_08p01_and_close() {
    let (_gate, addr) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 5, 0]).await.unwrap();
    let got = read_to_close(&mut s).await;
    assert_eq!(got.first(), Some(&b'E'));
    assert!(contains(&got, b"08P01"));
}

#[tokio::test]
async fn never_finished_startup_times_out_with_08p01() {
    let (_gate, addr) =
        start_with(|c| c.startup_timeout = Duration::from_millis(300), "test").await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40]).await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        contains(&got, b"08P01") && contains(&got, b"timed out"),
        "{got:?}"
    );
}

#[tokio::test]
async fn oversized_or_unknown_message_after_login_gets_08p01_and_close() {
    let (_gate, addr) = start_with(|c| c.max_message_size = 1024, "test").await;
    for bad in [
        vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
        vec![b'Q', 0, 0, 8, 0],
        vec![b'?', 0, 0, 0, 4],
        vec![b'Q', 0xff, 0xff, 0xff, 0xff],
        // A stray SSLRequest after login: type 0 with a "length" of 2,052 that never comes.
        vec![0, 0, 0, 8, 4, 210, 22, 47],
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&startup_packet("app")).await.unwrap();
        let mut auth = [0u8; 9];
        s.read_exact(&mut auth).await.unwrap();
        assert_eq!(auth, [b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
        let mut pw = vec![b'p'];
        pw.extend_from_slice(&((TOKEN.len() + 5) as i32).to_be_bytes());
        pw.extend_from_slice(TOKEN.as_bytes());
        pw.push(0);
        s.write_all(&pw).await.unwrap();
        s.write_all(&bad).await.unwrap();
        let got = read_to_close(&mut s).await;
        assert!(contains(&got, b"08P01"), "{bad:?} → {got:?}");
    }
}

/// Parse of `sql` as the unnamed statement with one text parameter.
fn parse(sql: &str) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    message(b'P', &body)
}

/// Bind of the unnamed statement with one text parameter, then Execute.
fn bind_execute(param: &str) -> Vec<u8> {
    let mut body = vec![0, 0, 0, 0, 0, 1];
    body.extend_from_slice(&(param.len() as i32).to_be_bytes());
    body.extend_from_slice(param.as_bytes());
    body.extend_from_slice(&[0, 0]);
    let mut m = message(b'B', &body);
    m.extend(message(b'E', &[0, 0, 0, 0, 0]));
    m
}

#[tokio::test]
async fn a_long_allowed_pipeline_reaches_the_upstream_before_its_sync() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    // The first Execute fails upstream (division by zero); ~400 KiB of allowed Executes follow, and
    // no Sync yet. PostgreSQL can only report the error if the pipeline reached it.
    let mut batch = parse("SELECT 1 / $1::int");
    batch.extend(bind_execute("0"));
    while batch.len() < 400 * 1024 {
        batch.extend(bind_execute("1"));
    }
    s.write_all(&batch).await.unwrap();
    // The upstream's error arrives before the client sends Sync.
    let answered = read_frames_until(&mut s, b'E').await;
    let error = &answered.last().expect("an ErrorResponse").1;
    assert!(contains(error, b"22012"), "{error:?}");
    s.write_all(&message(b'S', &[])).await.unwrap();
    let ready = read_frames_until(&mut s, b'Z').await;
    assert_eq!(
        ready.last().map(|(_, body)| body.as_slice()),
        Some(&b"I"[..])
    );
}

#[tokio::test]
async fn a_batch_waiting_for_a_decision_is_bounded_in_memory() {
    let (_gate, addr) = start_with(|c| c.max_message_size = 64 * 1024, "test").await;
    let mut s = raw_login(addr).await;
    // A DELETE needs review; what follows it in the batch waits with it, up to max_message_size.
    let mut batch = parse("DELETE FROM no_such_table WHERE id = $1");
    batch.extend(bind_execute("1"));
    while batch.len() < 300 * 1024 {
        batch.extend(bind_execute("1"));
    }
    // The gateway may close mid-write: what matters is what it answers.
    let _ = s.write_all(&batch).await;
    let got = read_to_close(&mut s).await;
    assert!(
        contains(&got, b"08P01") && contains(&got, b"waiting for a decision"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_batch_needing_a_decision_whose_text_is_too_long_to_review_is_refused_54000() {
    let (gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    // 200 KB of text, executed 100 times under one Sync: 20 MB for approvers to read.
    let sql = format!(
        "DELETE FROM no_such_table WHERE id = $1 /* {} */",
        "x".repeat(200_000)
    );
    let mut batch = parse(&sql);
    for _ in 0..100 {
        batch.extend(bind_execute("1"));
    }
    batch.extend(message(b'S', &[]));
    s.write_all(&batch).await.unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let error = &frames
        .iter()
        .find(|f| f.0 == b'E')
        .expect("an ErrorResponse")
        .1;
    assert!(
        contains(error, b"54000") && contains(error, b"fewer executions per Sync"),
        "{:?}",
        String::from_utf8_lossy(error)
    );
    assert!(
        !gate
            .events()
            .iter()
            .any(|e| matches!(e, GateEvent::Hold { .. })),
        "no request was made"
    );
    // The session goes on.
    s.write_all(&query_bytes(b"SELECT 1")).await.unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(tags, b"TDCZ");
}

fn psql(addr: SocketAddr, password: &str, sql: &str) -> std::process::Output {
    std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-d",
            "app",
            "-U",
            "agent",
            "-XAtc",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .output()
        .expect("psql must be installed")
}

#[tokio::test]
async fn psql_runs_queries_and_reports_blocks_and_bad_passwords() {
    let (_gate, addr) = start().await;
    let out = tokio::task::spawn_blocking(move || psql(addr, TOKEN, "SELECT 40 + 2"))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let out = tokio::task::spawn_blocking(move || psql(addr, TOKEN, "DROP DATABASE postgres"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blocked by policy rule"),
        "{out:?}"
    );
    let out = tokio::task::spawn_blocking(move || psql(addr, "nope", "SELECT 1"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{out:?}"
    );
}

#[tokio::test]
async fn pgbench_runs_in_simple_extended_and_prepared_modes() {
    let admin = {
        let (c, conn) = tokio_postgres::connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
            NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        c
    };
    let db = format!("wire_bench_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let (_gate, addr) = start_with(|_| {}, &db).await;
    let port = addr.port().to_string();
    let run = move |args: &[&str]| {
        let out = std::process::Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "agent"])
            .args(args)
            .arg("app")
            .env("PGPASSWORD", TOKEN)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("pgbench must be installed");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    tokio::task::spawn_blocking(move || {
        run(&["-i", "-s", "1", "-q"]);
        for mode in ["simple", "extended", "prepared"] {
            let out = run(&["-M", mode, "-c", "2", "-j", "2", "-T", "2"]);
            assert!(
                out.contains("number of failed transactions: 0"),
                "{mode}: {out}"
            );
        }
    })
    .await
    .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_connection_with_self_signed_certificate_accepts_the_password() {
    let dir = std::env::temp_dir().join(format!("wire_tls_{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    let tls = countersign_gateway::pg::TlsFiles { cert, key };
    // Cleartext without TLS is off, so a successful login proves the session ran over TLS.
    let (_gate, addr) = start_with(
        move |c| {
            c.allow_cleartext_without_tls = false;
            c.tls = Some(tls);
        },
        "test",
    )
    .await;
    let run = move |sslmode: &'static str| {
        std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-d",
                "app",
                "-U",
                "agent",
                "-XAtc",
                "SELECT 7",
            ])
            .env("PGPASSWORD", TOKEN)
            .env("PGSSLMODE", sslmode)
            .output()
            .expect("psql must be installed")
    };
    let out = tokio::task::spawn_blocking(move || run("require"))
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    let out = tokio::task::spawn_blocking(move || run("disable"))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only over TLS"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn session_start_and_end_are_recorded() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    client.simple_query("SELECT 1").await.unwrap();
    let started = eventually(&gate, "session start", |e| {
        matches!(e, GateEvent::SessionStarted(_))
    })
    .await;
    drop(client);
    let GateEvent::SessionStarted(id) = started else {
        unreachable!()
    };
    eventually(&gate, "session end", |e| *e == GateEvent::SessionEnded(id)).await;
}

#[tokio::test]
async fn client_disconnect_during_a_hold_cancels_the_approval_request() {
    let (gate, addr) = start().await;
    let (client, connection) = tokio_postgres::connect(&conn_str(addr, TOKEN), NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let running = tokio::spawn(async move {
        client
            .batch_execute("DELETE FROM pg_catalog.pg_class WHERE false")
            .await
    });
    let held = eventually(&gate, "a hold", |e| matches!(e, GateEvent::Hold { .. })).await;
    let GateEvent::Hold { id, .. } = held else {
        unreachable!()
    };
    // Dropping the connection task closes the socket, as a killed client would.
    connection.abort();
    running.abort();
    let started = std::time::Instant::now();
    let cancelled = eventually(&gate, "cancel_hold", |e| {
        matches!(e, GateEvent::Cancelled(_))
    })
    .await;
    assert_eq!(cancelled, GateEvent::Cancelled(id));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the request was cancelled only after the hold wait ran out"
    );
    eventually(&gate, "session end", |e| {
        matches!(e, GateEvent::SessionEnded(_))
    })
    .await;
    assert!(
        !gate
            .events()
            .iter()
            .any(|e| matches!(e, GateEvent::Executed(..))),
        "nothing may run for a client that left"
    );
}

#[tokio::test]
async fn statements_postgres_may_read_differently_after_a_setting_change_are_refused() {
    // The static gate allows every SET, as an approval of one would.
    let (_gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1), (2)").await;
    let smuggled = format!("SELECT 'a\\', '; DELETE FROM {t}; --'");
    client
        .batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    // The policy would see one SELECT; PostgreSQL would now see a SELECT and a DELETE.
    let err = client.simple_query(&smuggled).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(
        message.contains("standard_conforming_strings = off"),
        "{message}"
    );
    // Text that reads the same either way still runs, and the session stays usable.
    let rows = client.simple_query("SELECT 'plain'").await.unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    assert_eq!(rows_in(&client, &t).await, 2, "nothing was deleted");
    // Statements parsed meanwhile are refused when they run (the extended protocol too): a single
    // statement can hide a call the same way.
    let hiding = "SELECT 'a\\', ', pg_backend_pid(), $1::text, '--'";
    let prepared = client.prepare(hiding).await.unwrap();
    let err = client.query(&prepared, &[&"x"]).await.unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    client
        .batch_execute("RESET standard_conforming_strings")
        .await
        .unwrap();
    // Read as the policy reads it again: a SELECT of two strings.
    let rows = client.simple_query(&smuggled).await.unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    assert_eq!(rows_in(&client, &t).await, 2);
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn a_database_default_that_changes_how_postgres_reads_text_is_noticed_at_login() {
    let admin = direct().await;
    let db = format!("misread_{}", uuid::Uuid::new_v4().simple());
    for sql in [
        format!("CREATE DATABASE {db}"),
        format!("ALTER DATABASE {db} SET standard_conforming_strings = off"),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let (_gate, addr) = start_with(|_| {}, &db).await;
    let client = connect(addr).await;
    let err = client
        .simple_query("SELECT 'a\\', '; SELECT 1; --'")
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    let rows = client.simple_query("SELECT 'plain'").await.unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    drop(client);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

/// A direct session to the test database, bypassing the gateway.
async fn direct() -> Client {
    let (client, connection) =
        tokio_postgres::connect("host=127.0.0.1 port=5432 user=postgres dbname=test", NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

/// Waits until `sql` is running upstream and waiting on a lock.
async fn waiting_on_a_lock(observer: &Client, sql: &str) {
    for _ in 0..200 {
        let n: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND wait_event_type = 'Lock'",
                &[&sql],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{sql} never reached the upstream");
}

/// A session whose approved `DELETE FROM t` waits upstream on a lock `locker` holds, and whose
/// client has just gone away.
struct LeftWaiting {
    setup: Client,
    t: String,
    sql: String,
    locker: Client,
    observer: Client,
}

async fn approved_delete_left_waiting(
    gate: &StaticGate,
    addr: SocketAddr,
    values: &str,
) -> LeftWaiting {
    let setup = connect(addr).await;
    let t = table_of_ids(&setup, values).await;
    let (locker, observer) = (direct().await, direct().await);
    locker
        .batch_execute(&format!("BEGIN; LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    gate.push_outcome(Duration::from_millis(50), HoldOutcome::Approved);
    let sql = format!("DELETE FROM {t}");
    let (client, connection) = tokio_postgres::connect(&conn_str(addr, TOKEN), NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let running = {
        let sql = sql.clone();
        tokio::spawn(async move { client.simple_query(&sql).await })
    };
    waiting_on_a_lock(&observer, &sql).await;
    // The client goes away while its approved DELETE waits upstream.
    connection.abort();
    running.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    LeftWaiting {
        setup,
        t,
        sql,
        locker,
        observer,
    }
}

#[tokio::test]
async fn approved_statement_runs_to_the_end_and_is_recorded_when_its_client_leaves() {
    let (gate, addr) = start().await;
    let w = approved_delete_left_waiting(&gate, addr, "(1), (2), (3)").await;
    let GateEvent::Hold { id, .. } =
        eventually(&gate, "a hold", |e| matches!(e, GateEvent::Hold { .. })).await
    else {
        unreachable!()
    };
    w.locker.batch_execute("ROLLBACK").await.unwrap();
    let GateEvent::Executed(executed_id, outcome) =
        eventually(&gate, "executed", |e| matches!(e, GateEvent::Executed(..))).await
    else {
        unreachable!()
    };
    assert_eq!(executed_id, id);
    assert_eq!(outcome.command_tag.as_deref(), Some("DELETE 3"));
    assert_eq!(outcome.error, None);
    assert_eq!(
        rows_in(&w.setup, &w.t).await,
        0,
        "the approved DELETE ran once"
    );
    drop_table(&w.setup, &w.t).await;
}

#[tokio::test]
async fn approved_statement_whose_upstream_dies_is_recorded_as_unknown_when_its_client_left() {
    let (gate, addr) = start().await;
    let w = approved_delete_left_waiting(&gate, addr, "(1)").await;
    // The upstream session running it is terminated before it finishes.
    w.observer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
            &[&w.sql],
        )
        .await
        .unwrap();
    let GateEvent::Executed(_, outcome) =
        eventually(&gate, "executed", |e| matches!(e, GateEvent::Executed(..))).await
    else {
        unreachable!()
    };
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("terminat") || error.contains("whether it ran is unknown"),
        "the failure is recorded: {error}"
    );
    w.locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(rows_in(&w.setup, &w.t).await, 1);
    drop_table(&w.setup, &w.t).await;
}

/// A protocol message (frontend or backend): tag, length, body.
/// Parse of `sql` as the unnamed statement, no declared types.
fn parse_unnamed(sql: &str) -> Vec<u8> {
    message(b'P', &[cstr(""), cstr(sql), vec![0, 0]].concat())
}

/// Bind of the unnamed statement to the unnamed portal, no parameters.
fn bind_unnamed() -> Vec<u8> {
    message(b'B', &[cstr(""), cstr(""), vec![0, 0, 0, 0, 0, 0]].concat())
}

/// Execute of the unnamed portal for at most `rows` rows (0: all).
fn execute_unnamed(rows: i32) -> Vec<u8> {
    message(b'E', &[cstr(""), rows.to_be_bytes().to_vec()].concat())
}

/// A raw socket that sent a startup packet and read the request for a cleartext password.
async fn asked_for_password(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet("app")).await.unwrap();
    let mut auth = [0u8; 9];
    s.read_exact(&mut auth).await.unwrap();
    assert_eq!(&auth[..1], b"R");
    s
}

/// Logs in with a raw socket and reads up to the first ReadyForQuery.
async fn raw_login(addr: SocketAddr) -> TcpStream {
    support::raw::login(addr, "app", TOKEN).await
}

/// COPY data pipelined before the Sync of the batch whose Execute starts the COPY: PostgreSQL reads
/// the data in COPY mode, then the Sync.
#[tokio::test]
async fn copy_data_sent_before_the_batchs_sync_follows_its_execute() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1), (2)").await;
    let mut s = raw_login(addr).await;
    let copy_batch = |rows: &[u8]| {
        [
            parse_unnamed(&format!("COPY {t} FROM STDIN")),
            bind_unnamed(),
            execute_unnamed(0),
            message(b'd', rows),
            message(b'c', b""),
        ]
        .concat()
    };
    // Allowed.
    s.write_all(&[copy_batch(b"7\n"), message(b'S', b"")].concat())
        .await
        .unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(tags, b"12GCZ", "{:?}", String::from_utf8_lossy(&tags));
    assert_eq!(rows_in(&client, &t).await, 3);
    // Behind a statement that needs a decision, the data waits with the batch and follows it.
    gate.push_outcome(Duration::from_millis(100), HoldOutcome::Approved);
    let delete = [
        parse_unnamed(&format!("DELETE FROM {t} WHERE id = 1")),
        bind_unnamed(),
        execute_unnamed(0),
    ]
    .concat();
    s.write_all(&[delete, copy_batch(b"8\n9\n"), message(b'S', b"")].concat())
        .await
        .unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|f| f.0)
        .filter(|t| *t != b'N')
        .collect();
    assert_eq!(tags, b"12C12GCZ", "{:?}", String::from_utf8_lossy(&tags));
    assert_eq!(rows_in(&client, &t).await, 4, "1 deleted, 8 and 9 copied");
    // The session is in step.
    s.write_all(&query_bytes(b"SELECT 1")).await.unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(tags, b"TDCZ");
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn backend_key_pid_is_the_upstream_pid_that_queries_and_notifications_show() {
    let (_gate, addr) = start().await;
    let mut s = asked_for_password(addr).await;
    s.write_all(&message(b'p', &cstr(TOKEN))).await.unwrap();
    let login = read_frames_until(&mut s, b'Z').await;
    let key = &login
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData")
        .1;
    let pid = i32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    // psycopg2's test_notify and libpq clients that skip their own notifications compare these.
    let channel = format!("pid_{}", uuid::Uuid::new_v4().simple());
    let sql = format!("LISTEN {channel}; NOTIFY {channel}; SELECT pg_backend_pid()");
    s.write_all(&message(b'Q', &cstr(&sql))).await.unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let row = &frames.iter().find(|(t, _)| *t == b'D').expect("DataRow").1;
    let queried: i32 = std::str::from_utf8(&row[6..]).unwrap().parse().unwrap();
    let notification = &frames
        .iter()
        .find(|(t, _)| *t == b'A')
        .expect("Notification")
        .1;
    let notifier = i32::from_be_bytes([
        notification[0],
        notification[1],
        notification[2],
        notification[3],
    ]);
    assert_eq!((pid, notifier), (queried, queried));
}

/// A simple Query message for raw statement bytes (in whatever client encoding).
fn query_bytes(sql: &[u8]) -> Vec<u8> {
    message(b'Q', &[sql, &[0]].concat())
}

#[tokio::test]
async fn latin1_statement_text_is_read_as_latin1_and_other_encodings_only_as_ascii() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    s.write_all(&query_bytes(b"SET client_encoding TO 'LATIN1'"))
        .await
        .unwrap();
    read_frames_until(&mut s, b'Z').await;
    // psycopg2's test_latin1 and test_copy_text: LATIN1 text is not UTF-8, and passes as PostgreSQL reads it.
    s.write_all(&query_bytes(b"SELECT 'caf\xe9'::text"))
        .await
        .unwrap();
    let simple = read_frames_until(&mut s, b'Z').await;
    assert!(simple.iter().all(|(t, _)| *t != b'E'), "{simple:?}");
    let row = &simple.iter().find(|(t, _)| *t == b'D').expect("DataRow").1;
    assert!(row.ends_with(b"caf\xe9"), "{row:?}");
    let mut extended = message(
        b'P',
        &[&cstr("")[..], b"SELECT 'caf\xe9'::text\0", &[0, 0]].concat(),
    );
    extended.extend(bind_unnamed());
    extended.extend(message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()));
    extended.extend(message(b'S', &[]));
    s.write_all(&extended).await.unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let row = &frames.iter().find(|(t, _)| *t == b'D').expect("DataRow").1;
    assert!(row.ends_with(b"caf\xe9"), "{frames:?}");
    // In an encoding the gateway cannot read, non-ASCII text is refused and ASCII still passes.
    s.write_all(&query_bytes(b"SET client_encoding TO 'KOI8R'"))
        .await
        .unwrap();
    read_frames_until(&mut s, b'Z').await;
    s.write_all(&query_bytes(b"SELECT '\xc1'::text"))
        .await
        .unwrap();
    let refused = read_frames_until(&mut s, b'Z').await;
    let error = &refused
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("ErrorResponse")
        .1;
    assert!(contains(error, b"client_encoding is KOI8R"), "{refused:?}");
    s.write_all(&query_bytes(b"SELECT 1")).await.unwrap();
    let ascii = read_frames_until(&mut s, b'Z').await;
    assert!(ascii.iter().any(|(t, _)| *t == b'D'), "{ascii:?}");
    // PostgreSQL reports UNICODE as spelt (psycopg2's test_unicode): UTF-8 all the same.
    s.write_all(&query_bytes(b"SET client_encoding TO 'UNICODE'"))
        .await
        .unwrap();
    read_frames_until(&mut s, b'Z').await;
    s.write_all(&query_bytes("SELECT '☃'::text".as_bytes()))
        .await
        .unwrap();
    let unicode = read_frames_until(&mut s, b'Z').await;
    let row = &unicode.iter().find(|(t, _)| *t == b'D').expect("DataRow").1;
    assert!(row.ends_with("☃".as_bytes()), "{unicode:?}");
}

#[tokio::test]
async fn flush_before_sync_answers_the_prepare_and_holds_only_the_execution() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1), (2)").await;
    gate.push_outcome(Duration::from_millis(100), HoldOutcome::Approved);
    let mut s = raw_login(addr).await;
    // Prepare and describe, then Flush and wait for the answer before binding (asyncpg's pattern).
    let sql = format!("DELETE FROM {t} WHERE id = $1");
    let mut prepare = message(b'P', &[cstr("del"), cstr(&sql), vec![0, 0]].concat());
    prepare.extend(message(b'D', &[vec![b'S'], cstr("del")].concat()));
    prepare.extend(message(b'H', &[]));
    s.write_all(&prepare).await.unwrap();
    let described = read_frames_until(&mut s, b'n').await;
    let tags: Vec<u8> = described.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"1tn", "ParseComplete, ParameterDescription, NoData");
    // Binding "1" as text and executing is what needs the decision: held, approved, run once.
    let mut run = message(
        b'B',
        &[
            cstr(""),
            cstr("del"),
            vec![0, 0, 0, 1, 0, 0, 0, 1, b'1', 0, 0],
        ]
        .concat(),
    );
    run.extend(message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()));
    run.extend(message(b'S', &[]));
    s.write_all(&run).await.unwrap();
    let ran = read_frames_until(&mut s, b'Z').await;
    let complete = ran
        .iter()
        .find(|(t, _)| *t == b'C')
        .expect("CommandComplete");
    assert_eq!(complete.1, b"DELETE 1\0");
    assert!(ran
        .iter()
        .any(|(t, body)| *t == b'N' && contains(body, b"held for approval")));
    let hold = eventually(&gate, "a hold", |e| matches!(e, GateEvent::Hold { .. })).await;
    let GateEvent::Hold { sql: held_sql, .. } = hold else {
        unreachable!()
    };
    assert_eq!(
        held_sql,
        format!("{sql}\n-- parameters, sent apart from the text above; the statement runs with these values:\n-- $1 = '1'")
    );
    let left = rows_in(&client, &t).await;
    assert_eq!(left, 1);
    drop_table(&client, &t).await;
}

/// Binding a name this session never parsed (or closed) is answered as PostgreSQL does, 26000, so a
/// driver re-prepares; nothing runs.
#[tokio::test]
async fn binding_an_unknown_statement_name_is_26000() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let mut m = message(
        b'B',
        &[cstr(""), cstr("nosuch"), vec![0, 0, 0, 0, 0, 0]].concat(),
    );
    m.extend(execute_unnamed(0));
    m.extend(message(b'S', &[]));
    s.write_all(&m).await.unwrap();
    let answered = read_frames_until(&mut s, b'Z').await;
    let error = answered
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("an ErrorResponse");
    assert!(
        contains(&error.1, b"26000"),
        "{:?}",
        String::from_utf8_lossy(&error.1)
    );
    assert!(contains(&error.1, b"\"nosuch\" does not exist"));
}

/// Protocol 3.2 asked for: negotiated down to 3.0 (196608) as PostgreSQL 15 does, and the login goes on.
#[tokio::test]
async fn a_client_asking_for_protocol_3_2_is_offered_3_0() {
    let (_gate, addr) = start().await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut packet = startup_packet("app");
    packet[4..8].copy_from_slice(&((3i32 << 16) | 2).to_be_bytes());
    s.write_all(&packet).await.unwrap();
    let negotiated = read_frames_until(&mut s, b'v').await;
    let body = &negotiated.last().unwrap().1;
    assert_eq!(&body[..4], &196608i32.to_be_bytes(), "newest version 3.0");
    let mut auth = [0u8; 9];
    s.read_exact(&mut auth).await.unwrap();
    assert_eq!(auth[0], b'R');
    s.write_all(&message(b'p', &cstr(TOKEN))).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
}

/// Text the gateway can't read in the client encoding is refused with 22021 and the session goes
/// on; counts past 32,767 parameters are read as PostgreSQL reads them (unsigned).
#[tokio::test]
async fn unreadable_parse_text_and_many_parameters_keep_the_session() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let mut bad = message(
        b'P',
        &[vec![0], b"select 'caf\xe9'".to_vec(), vec![0, 0, 0]].concat(),
    );
    bad.extend(bind_unnamed());
    bad.extend(message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()));
    bad.extend(message(b'S', &[]));
    s.write_all(&bad).await.unwrap();
    let refused = read_frames_until(&mut s, b'Z').await;
    let error = refused
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("an ErrorResponse");
    assert!(
        contains(&error.1, b"22021"),
        "{:?}",
        String::from_utf8_lossy(&error.1)
    );
    // 32,768 declared parameter types.
    let mut types = 32768u16.to_be_bytes().to_vec();
    for _ in 0..32768 {
        types.extend_from_slice(&23u32.to_be_bytes());
    }
    let mut many = message(b'P', &[cstr(""), cstr("SELECT $1::int"), types].concat());
    many.extend(message(b'S', &[]));
    s.write_all(&many).await.unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(tags, b"1Z");
    s.write_all(&message(b'Q', &cstr("SELECT 1")))
        .await
        .unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(tags, b"TDCZ");
}

/// At shutdown, an idle session ends with PostgreSQL's own `57P01`, and a busy one once its
/// statement has answered.
#[tokio::test]
async fn shutting_down_ends_sessions_with_57p01_once_idle() {
    let gate = Arc::new(StaticGate::new("app", upstream("test"), TOKEN));
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.allow_cleartext_without_tls = true;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = WireServer::bind(config, gate.clone())
        .await
        .unwrap()
        .with_shutdown(stop_rx);
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let mut idle = raw_login(addr).await;
    let mut busy = raw_login(addr).await;
    busy.write_all(&message(b'Q', &cstr("SELECT pg_sleep(0.5), 'done'")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(true).unwrap();
    let fatal = read_frames_until(&mut idle, b'E').await;
    assert!(contains(&fatal.last().unwrap().1, b"57P01"), "{fatal:?}");
    // The busy session gets its result first, then the same.
    let answered = read_frames_until(&mut busy, b'E').await;
    let tags: Vec<u8> = answered.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCZE", "{answered:?}");
    assert!(contains(&answered.last().unwrap().1, b"57P01"));
}

/// Past the shutdown's grace, a statement still running is cancelled upstream: the client gets
/// PostgreSQL's own cancellation and ReadyForQuery, then `57P01`, instead of a dead socket.
#[tokio::test]
async fn past_the_shutdown_grace_a_running_statement_is_cancelled_then_57p01() {
    let gate = Arc::new(StaticGate::new("app", upstream("test"), TOKEN));
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.allow_cleartext_without_tls = true;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let server = WireServer::bind(config, gate.clone())
        .await
        .unwrap()
        .with_shutdown(stop_rx)
        .with_busy_cancel(cancel_rx);
    let live = server.live_sessions();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    let mut busy = raw_login(addr).await;
    assert_eq!(live.count(), 1);
    busy.write_all(&message(b'Q', &cstr("SELECT pg_sleep(300)")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    // Within the grace nothing happens to a running statement.
    assert!(!live.wait_none(Duration::from_millis(300)).await);
    let started = std::time::Instant::now();
    cancel_tx.send(true).unwrap();
    let cancelled = read_frames_until(&mut busy, b'Z').await;
    let error = cancelled
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("an error");
    assert!(contains(&error.1, b"57014"), "{cancelled:?}");
    let fatal = read_frames_until(&mut busy, b'E').await;
    assert!(contains(&fatal.last().unwrap().1, b"57P01"), "{fatal:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(live.wait_none(Duration::from_secs(5)).await);
}

/// When what went ahead of a held part fails upstream, PostgreSQL skips the held part until Sync: it
/// is answered at once, as PostgreSQL would, and no one is asked to approve it.
#[tokio::test]
async fn a_held_part_behind_a_failed_one_is_skipped_without_a_request() {
    let (gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let missing = format!("no_such_table_{}", uuid::Uuid::new_v4().simple());
    // A cursor whose Parse fails (the DELETE would need a decision).
    let mut m = parse_unnamed(&format!("DELETE FROM {missing}"));
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(10));
    m.extend(message(b'H', &[]));
    s.write_all(&m).await.unwrap();
    let failed = read_frames_until(&mut s, b'E').await;
    assert!(contains(&failed.last().unwrap().1, b"42P01"));
    s.write_all(&message(b'S', &[])).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    // The same with the Sync right behind the error.
    let mut m = parse_unnamed(&format!("DELETE FROM {missing}"));
    m.extend(message(b'H', &[]));
    s.write_all(&m).await.unwrap();
    read_frames_until(&mut s, b'E').await;
    let mut m = bind_unnamed();
    m.extend(message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()));
    m.extend(message(b'S', &[]));
    s.write_all(&m).await.unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(tags, b"Z");
    assert!(
        !gate
            .events()
            .iter()
            .any(|e| matches!(e, GateEvent::Hold { .. })),
        "no approval request: {:?}",
        gate.events()
    );
}

/// PostgreSQL plans a statement at Bind, and planning evaluates an immutable function over constants,
/// which may call a volatile one: a Bind with no Execute is judged as running the statement.
#[tokio::test]
async fn a_bind_without_execute_of_a_held_statement_is_held_too() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (seq, f) = (format!("planned_seq_{suffix}"), format!("planned_{suffix}"));
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE {seq};
             CREATE FUNCTION {f}(n int) RETURNS int LANGUAGE plpgsql IMMUTABLE
               AS $$BEGIN PERFORM nextval('{seq}'); RETURN n; END$$;"
        ))
        .await
        .unwrap();
    deny_next(&gate);
    // The gateway under test holds DELETEs.
    let t = table_of_ids(&client, "(1), (2)").await;
    let mut s = raw_login(addr).await;
    let mut batch = parse_unnamed(&format!("DELETE FROM {t} WHERE id = {f}(1)"));
    batch.extend(bind_unnamed());
    batch.extend(message(b'S', &[]));
    s.write_all(&batch).await.unwrap();
    let answered = read_frames_until(&mut s, b'Z').await;
    let error = answered
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("the denied batch is refused");
    assert!(
        contains(&error.1, b"42501"),
        "{:?}",
        String::from_utf8_lossy(&error.1)
    );
    let called: bool = client
        .query_one(&format!("SELECT is_called FROM {seq}"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(!called, "planning never ran the function");
    assert_eq!(rows_in(&client, &t).await, 2);
    drop_table(&client, &t).await;
    client
        .batch_execute(&format!("DROP FUNCTION {f}(int); DROP SEQUENCE {seq}"))
        .await
        .unwrap();
}

/// PostgreSQL refuses to Parse a name it already holds (42P05) and skips everything after an error
/// until Sync, so re-preparing "s1" as a SELECT may leave the DELETE upstream: a later Bind of "s1",
/// waiting for the failure or pipelined behind it, is refused rather than run under the SELECT's
/// verdict. Close, Parse and Execute in one batch is exact and runs the new text.
#[tokio::test]
async fn re_preparing_a_name_never_runs_the_old_text_under_the_new_verdict() {
    let (_gate, addr) = start().await;
    let client = connect(addr).await;
    let t = table_of_ids(&client, "(1), (2)").await;
    let mut s = raw_login(addr).await;
    let parse = |sql: &str| message(b'P', &[cstr("s1"), cstr(sql), vec![0, 0]].concat());
    let run = [
        message(b'B', &[cstr(""), cstr("s1"), vec![0; 6]].concat()),
        message(b'E', &[cstr(""), vec![0; 4]].concat()),
        message(b'S', &[]),
    ]
    .concat();
    let sync = message(b'S', &[]);
    let error_code = |frames: &[(u8, Vec<u8>)], code: &[u8]| {
        frames
            .iter()
            .any(|(tag, body)| *tag == b'E' && contains(body, code))
    };

    s.write_all(&[parse(&format!("DELETE FROM {t}")), sync.clone()].concat())
        .await
        .unwrap();
    read_frames_until(&mut s, b'Z').await;
    s.write_all(&[parse("SELECT 1"), sync.clone()].concat())
        .await
        .unwrap();
    let refused = read_frames_until(&mut s, b'Z').await;
    assert!(error_code(&refused, b"42P05"), "{refused:?}");
    s.write_all(&run).await.unwrap();
    let ran = read_frames_until(&mut s, b'Z').await;
    assert!(error_code(&ran, b"42501"), "{ran:?}");
    assert_eq!(rows_in(&client, &t).await, 2);

    // The same, pipelined: the Bind is sent before the Parse has failed.
    s.write_all(&[parse("SELECT 2"), sync.clone(), run.clone()].concat())
        .await
        .unwrap();
    read_frames_until(&mut s, b'Z').await;
    let ran = read_frames_until(&mut s, b'Z').await;
    assert!(error_code(&ran, b"42501"), "{ran:?}");
    assert_eq!(rows_in(&client, &t).await, 2);

    let close = message(b'C', &[vec![b'S'], cstr("s1")].concat());
    s.write_all(&[close, parse("SELECT 3"), run].concat())
        .await
        .unwrap();
    let ran = read_frames_until(&mut s, b'Z').await;
    assert!(
        ran.iter()
            .any(|(tag, body)| *tag == b'C' && body == b"SELECT 1\0"),
        "{ran:?}"
    );
    assert_eq!(rows_in(&client, &t).await, 2);
    drop_table(&client, &t).await;
}

#[tokio::test]
async fn sessions_shared_with_a_worker_runtime_relay_and_cancel_on_both_threads() {
    let workers = WireWorkers::start(1, "test-wire-worker").unwrap();
    let handle = workers.handles().remove(0);
    let gate = Arc::new(StaticGate::new("app", upstream("test"), TOKEN));
    let mut config = WireConfig::new("127.0.0.1:0".parse().unwrap());
    config.allow_cleartext_without_tls = true;
    let server = WireServer::bind(config, gate.clone())
        .await
        .unwrap()
        .with_workers(workers.handles());
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));

    // Sessions alternate between the worker and the accepting runtime.
    let first = connect(addr).await;
    let second = connect(addr).await;
    assert!(
        handle.metrics().num_alive_tasks() >= 1,
        "no session runs on the worker runtime"
    );
    for client in [&first, &second] {
        let row = client
            .query_one("SELECT $1::int + 1", &[&41])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    }
    // A CancelRequest reaches its session whichever runtime accepted the cancel connection.
    for client in [first, second] {
        let cancel = client.cancel_token();
        let running =
            tokio::spawn(
                async move { (client.batch_execute("SELECT pg_sleep(10)").await, client) },
            );
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(NoTls).await.unwrap();
        let (result, client) = tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
        assert_eq!(client.simple_query("SELECT 1").await.unwrap().len(), 3);
    }
    drop(workers);
}

/// A statement whose upstream is terminated mid-statement is recorded all the same, with the upstream's
/// FATAL and how long it ran.
#[tokio::test]
async fn statement_whose_upstream_dies_mid_statement_is_recorded_with_its_error() {
    let (gate, addr) = start().await;
    let client = connect(addr).await;
    let sql =
        "SELECT count(*) FROM generate_series(1, 300000000) g /* upstream dies */".to_string();
    let running = {
        let sql = sql.clone();
        tokio::spawn(async move { client.simple_query(&sql).await })
    };
    let observer = direct().await;
    let mut upstream_running = false;
    for _ in 0..200 {
        let n: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&sql],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            upstream_running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(upstream_running, "{sql} never reached the upstream");
    tokio::time::sleep(Duration::from_millis(200)).await;
    observer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
            &[&sql],
        )
        .await
        .unwrap();
    assert!(
        running.await.unwrap().is_err(),
        "the client sees the failure"
    );
    let GateEvent::Statement(record) = eventually(
        &gate,
        "the in-flight statement's record",
        |e| matches!(e, GateEvent::Statement(r) if *r.sql == *sql),
    )
    .await
    else {
        unreachable!()
    };
    let error = record.error.unwrap_or_default();
    assert!(
        error.contains("terminating connection due to administrator command"),
        "the upstream's FATAL is recorded: {error}"
    );
    assert_eq!(record.command_tag, None);
    assert!(
        record.duration >= Duration::from_millis(200),
        "it ran until terminated: {:?}",
        record.duration
    );
}

#[tokio::test]
async fn clients_past_max_connections_are_refused_with_53300_and_served_once_a_place_frees() {
    let (_gate, addr) = start_with(|c| c.max_connections = 2, "test").await;
    // Two connections that never finish startup hold both places.
    let mut idle = vec![
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = tokio_postgres::connect(&conn_str(addr, TOKEN), NoTls)
        .await
        .err()
        .expect("a third connection is refused");
    let db = err.as_db_error().expect("a FATAL from the gateway");
    assert_eq!(db.code().code(), "53300", "{db}");
    assert!(db.message().contains("max_connections"), "{db}");
    idle.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = connect(addr).await;
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_query_still_gets_the_result() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    // The query takes a while, so the half-close arrives before its result (as with `psql < file`
    // pipelines and clients that shut down their sending side after the last request).
    s.write_all(&message(
        b'Q',
        &cstr("SELECT count(*) FROM generate_series(1, 300000), pg_sleep(0.2)"),
    ))
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let row = frames
        .iter()
        .find(|(t, _)| *t == b'D')
        .expect("the DataRow reaches a half-closed client");
    assert!(
        String::from_utf8_lossy(&row.1).ends_with("300000"),
        "{frames:?}"
    );
    assert!(frames
        .iter()
        .any(|(t, b)| *t == b'C' && b.starts_with(b"SELECT 1")));
    // Then the gateway closes, as PostgreSQL does.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
}

#[tokio::test]
async fn a_client_writing_a_pipeline_past_the_limit_reads_the_fatal_that_ends_it() {
    let (_gate, addr) = start_with(|c| c.max_message_size = 1024 * 1024, "test").await;
    direct()
        .await
        .batch_execute("CREATE TABLE IF NOT EXISTS cs_pipeline_limit (id int)")
        .await
        .unwrap();
    let mut s = raw_login(addr).await;
    // asyncpg's executemany: one Parse, then Bind/Execute pairs, all written before anything is read. The
    // DELETE needs review, so the batch waits for its Sync and grows past the limit first.
    let mut pipeline = message(
        b'P',
        &[
            cstr(""),
            cstr("DELETE FROM cs_pipeline_limit WHERE id = $1"),
            vec![0, 0],
        ]
        .concat(),
    );
    let mut bind = cstr("");
    bind.extend_from_slice(&cstr(""));
    bind.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
    let execute = message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat());
    while pipeline.len() < 48 * 1024 * 1024 {
        pipeline.extend_from_slice(&message(b'B', &bind));
        pipeline.extend_from_slice(&execute);
    }
    pipeline.extend_from_slice(&message(b'S', &[]));
    // The gateway ends the session partway, but reads and drops what the client still writes: a client
    // whose write failed (asyncpg) would report "connection closed" without ever reading the FATAL.
    s.write_all(&pipeline)
        .await
        .expect("the client's writes are taken until it can read the FATAL");
    let frames = read_frames_until(&mut s, b'E').await;
    let (_, error) = frames.last().unwrap();
    let text = String::from_utf8_lossy(error);
    assert!(
        text.contains("08P01") && text.contains("send Sync"),
        "{text}"
    );
}

#[tokio::test]
async fn a_simple_query_before_sync_runs_after_the_pending_extended_messages_as_in_postgresql() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    // pgJDBC with autosave=always: BEGIN through Parse/Bind/Execute, then a simple-query SAVEPOINT,
    // then Sync. PostgreSQL answers 1 2 C(BEGIN) C(SAVEPOINT) Z(T) Z(T).
    let frames = execute_then_query(&mut s, "BEGIN", "SAVEPOINT a", 2).await;
    assert_eq!(
        shown_tags(&frames),
        ["1", "2", "C BEGIN", "C SAVEPOINT", "Z T", "Z T"],
        "{frames:?}"
    );
    // The transaction BEGIN opened is the session's: ROLLBACK ends it without a warning.
    s.write_all(&message(b'Q', &cstr("ROLLBACK")))
        .await
        .unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    assert!(frames.iter().all(|(t, _)| *t != b'N'), "{frames:?}");
    assert_eq!(frames.last().unwrap().1, b"I");
}

/// Sends `statement` through Parse/Bind/Execute, then `query` as a simple Query, then Sync, in one
/// write; returns every frame up to the second ReadyForQuery (the Query's and the Sync's).
async fn execute_then_query(
    s: &mut TcpStream,
    statement: &str,
    query: &str,
    ready_for_query: usize,
) -> Vec<(u8, Vec<u8>)> {
    let mut msgs = message(b'P', &[cstr(""), cstr(statement), vec![0, 0]].concat());
    msgs.extend(bind_unnamed());
    msgs.extend(message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat()));
    msgs.extend(message(b'Q', &cstr(query)));
    msgs.extend(message(b'S', &[]));
    s.write_all(&msgs).await.unwrap();
    let mut frames = Vec::new();
    for _ in 0..ready_for_query {
        frames.extend(read_frames_until(s, b'Z').await);
    }
    frames
}

/// Tags of `frames` in order, with command tags and ReadyForQuery status spelled out.
fn shown_tags(frames: &[(u8, Vec<u8>)]) -> Vec<String> {
    frames
        .iter()
        .map(|(t, b)| match t {
            b'C' => format!("C {}", String::from_utf8_lossy(&b[..b.len() - 1])),
            b'Z' => format!("Z {}", b[0] as char),
            t => (*t as char).to_string(),
        })
        .collect()
}

#[tokio::test]
async fn a_held_batch_before_a_simple_query_is_decided_first_and_answered_once() {
    let (gate, addr) = start().await;
    direct()
        .await
        .batch_execute("CREATE TABLE IF NOT EXISTS cs_batch_then_query (id int)")
        .await
        .unwrap();
    // Approved: the hold notice, the batch's answer, then the query's; one ReadyForQuery each for
    // the Query and the client's Sync, none for the gateway's own Sync. Denied: the refusal is the
    // batch's error, after which PostgreSQL skips the Query up to the client's Sync.
    for (outcome, want, ready) in [
        (
            HoldOutcome::Approved,
            vec![
                "N",
                "1",
                "2",
                "C DELETE 0",
                "T",
                "D",
                "C SELECT 1",
                "Z I",
                "Z I",
            ],
            2,
        ),
        (
            HoldOutcome::Denied {
                by: vec!["bob@example.com".into()],
                reason: None,
            },
            vec!["N", "E", "Z I"],
            1,
        ),
    ] {
        gate.push_outcome(Duration::from_millis(100), outcome);
        let mut s = raw_login(addr).await;
        let sql = "DELETE FROM cs_batch_then_query WHERE id = 1";
        let frames = execute_then_query(&mut s, sql, "SELECT 1", ready).await;
        assert_eq!(shown_tags(&frames), want, "{frames:?}");
        // Nothing more comes: the session is in step for its next query.
        s.write_all(&message(b'Q', &cstr("SELECT 2")))
            .await
            .unwrap();
        let next = read_frames_until(&mut s, b'Z').await;
        assert_eq!(shown_tags(&next), ["T", "D", "C SELECT 1", "Z I"]);
    }
}

/// psycopg's pipelines and `executemany(…, returning=True)` send Parse/Bind/Describe/Execute and a
/// Flush, and send Sync only once answered: a statement needing a decision is decided at that Flush
/// (held with its notice), not left waiting for a Sync that never comes. After a refusal the rest up to
/// the client's Sync is skipped, as PostgreSQL skips after an error.
#[tokio::test]
async fn a_held_statement_followed_by_flush_is_decided_at_the_flush() {
    let (gate, addr) = start().await;
    direct()
        .await
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cs_flush_held (id int); INSERT INTO cs_flush_held VALUES (7)",
        )
        .await
        .unwrap();
    let pipelined = |id: i32| {
        let mut m = parse_unnamed(&format!(
            "DELETE FROM cs_flush_held WHERE id = {id} RETURNING id"
        ));
        m.extend(bind_unnamed());
        m.extend(message(b'D', &[b"P".to_vec(), cstr("")].concat()));
        m.extend(execute_unnamed(0));
        m.extend(message(b'H', &[]));
        m
    };
    // Approved: the Parse (which needs no decision) answered first, the notice, then the statement's
    // results, before any Sync.
    gate.push_outcome(Duration::from_millis(100), HoldOutcome::Approved);
    let mut s = raw_login(addr).await;
    s.write_all(&pipelined(7)).await.unwrap();
    let answered = read_frames_until(&mut s, b'C').await;
    assert_eq!(
        shown_tags(&answered),
        ["1", "N", "2", "T", "D", "C DELETE 1"],
        "{answered:?}"
    );
    s.write_all(&message(b'S', &[])).await.unwrap();
    assert_eq!(shown_tags(&read_frames_until(&mut s, b'Z').await), ["Z I"]);

    // Denied: the notice and the error at once; what follows up to Sync is skipped, then one
    // ReadyForQuery, and the session goes on.
    deny_next(&gate);
    s.write_all(&pipelined(8)).await.unwrap();
    let refused = read_frames_until(&mut s, b'E').await;
    assert_eq!(shown_tags(&refused), ["1", "N", "E"], "{refused:?}");
    let mut rest = bind_unnamed();
    rest.extend(execute_unnamed(0));
    rest.extend(message(b'S', &[]));
    s.write_all(&rest).await.unwrap();
    assert_eq!(shown_tags(&read_frames_until(&mut s, b'Z').await), ["Z I"]);
    s.write_all(&message(b'Q', &cstr("SELECT 1")))
        .await
        .unwrap();
    assert_eq!(
        shown_tags(&read_frames_until(&mut s, b'Z').await),
        ["T", "D", "C SELECT 1", "Z I"]
    );
    let holds = gate
        .events()
        .iter()
        .filter(|e| matches!(e, GateEvent::Hold { .. }))
        .count();
    assert_eq!(holds, 2, "{:?}", gate.events());
}

/// In a failed transaction PostgreSQL refuses every statement but those ending it (25P02): a statement
/// that would need approval is refused there at once, with no request made, simple or extended; one
/// that could end the transaction first is still held.
#[tokio::test]
async fn a_statement_in_a_failed_transaction_is_refused_upstream_without_a_request() {
    let (gate, addr) = start().await;
    let mut s = in_a_failed_transaction(addr, "cs_failed_tx").await;
    let started = std::time::Instant::now();
    s.write_all(&message(
        b'Q',
        &cstr("DELETE FROM cs_failed_tx WHERE id = 1"),
    ))
    .await
    .unwrap();
    let refused = read_frames_until(&mut s, b'Z').await;
    assert_eq!(shown_tags(&refused), ["E", "Z E"], "{refused:?}");
    assert!(contains(&refused[0].1, b"25P02"), "{refused:?}");
    let mut m = parse_unnamed("DELETE FROM cs_failed_tx WHERE id = 2");
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(message(b'S', &[]));
    s.write_all(&m).await.unwrap();
    let refused = read_frames_until(&mut s, b'Z').await;
    assert_eq!(shown_tags(&refused), ["E", "Z E"], "{refused:?}");
    assert!(contains(&refused[0].1, b"25P02"), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    assert!(
        !gate
            .events()
            .iter()
            .any(|e| matches!(e, GateEvent::Hold { .. })),
        "no approval request: {:?}",
        gate.events()
    );
    // A batch that first runs a ROLLBACK would end the failure before its DELETE: it is held.
    deny_next(&gate);
    let mut m = parse_unnamed("ROLLBACK");
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(parse_unnamed("DELETE FROM cs_failed_tx WHERE id = 3"));
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(message(b'S', &[]));
    s.write_all(&m).await.unwrap();
    let held = read_frames_until(&mut s, b'Z').await;
    assert_eq!(shown_tags(&held)[0], "N", "{held:?}");
    assert!(held_any(&gate), "{:?}", gate.events());
}

/// What went upstream ahead of its Sync (on Flush) may have ended the failed transaction: a statement
/// after it is held, not taken for one PostgreSQL refuses.
#[tokio::test]
async fn a_rollback_sent_ahead_on_flush_leaves_the_next_statement_held() {
    let (gate, addr) = start().await;
    let mut s = in_a_failed_transaction(addr, "cs_failed_tx_ahead").await;
    let mut m = parse_unnamed("ROLLBACK");
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(message(b'H', &[]));
    s.write_all(&m).await.unwrap();
    let rolled = read_frames_until(&mut s, b'C').await;
    assert_eq!(shown_tags(&rolled), ["1", "2", "C ROLLBACK"], "{rolled:?}");
    deny_next(&gate);
    s.write_all(&message(
        b'Q',
        &cstr("DELETE FROM cs_failed_tx_ahead WHERE id = 1"),
    ))
    .await
    .unwrap();
    let held = read_frames_until(&mut s, b'E').await;
    assert_eq!(shown_tags(&held)[0], "N", "held: {held:?}");
    assert!(held_any(&gate), "{:?}", gate.events());
}

/// When a unit the gateway decided at Flush (and ended with its own Sync) fails upstream, the client
/// still expects PostgreSQL to skip to its own Sync: the messages in between are dropped, as
/// PostgreSQL would, and the client's Sync gets the one ReadyForQuery.
#[tokio::test]
async fn after_an_error_in_a_unit_decided_at_flush_the_rest_up_to_sync_is_skipped() {
    let (gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    // An allowed statement that fails goes ahead on Flush; PostgreSQL now skips to Sync.
    let mut m = parse_unnamed("SELECT 1/0");
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(message(b'H', &[]));
    s.write_all(&m).await.unwrap();
    let failed = read_frames_until(&mut s, b'E').await;
    assert!(contains(&failed.last().unwrap().1, b"22012"), "{failed:?}");
    // A held statement, then Flush: skipped upstream, so answered without a request.
    let mut m = parse_unnamed("DELETE FROM cs_no_such_table_skip WHERE id = 1");
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(message(b'H', &[]));
    // Then more, and the client's Sync: still skipped, one ReadyForQuery.
    m.extend(parse_unnamed("SELECT 42"));
    m.extend(bind_unnamed());
    m.extend(execute_unnamed(0));
    m.extend(message(b'S', &[]));
    s.write_all(&m).await.unwrap();
    let rest = read_frames_until(&mut s, b'Z').await;
    assert_eq!(shown_tags(&rest), ["Z I"], "{rest:?}");
    assert!(
        !gate
            .events()
            .iter()
            .any(|e| matches!(e, GateEvent::Hold { .. })),
        "{:?}",
        gate.events()
    );
    s.write_all(&message(b'Q', &cstr("SELECT 1")))
        .await
        .unwrap();
    assert_eq!(
        shown_tags(&read_frames_until(&mut s, b'Z').await),
        ["T", "D", "C SELECT 1", "Z I"]
    );
}

/// The next hold is denied by bob after 50 ms.
fn deny_next(gate: &StaticGate) {
    gate.push_outcome(
        Duration::from_millis(50),
        HoldOutcome::Denied {
            by: vec!["bob@example.com".into()],
            reason: None,
        },
    );
}

/// Whether any statement was held (an approval request made).
fn held_any(gate: &StaticGate) -> bool {
    gate.events()
        .iter()
        .any(|e| matches!(e, GateEvent::Hold { .. }))
}

/// A session whose transaction has failed (`BEGIN; SELECT 1/0`), with `table (id int)` existing.
async fn in_a_failed_transaction(addr: SocketAddr, table: &str) -> TcpStream {
    direct()
        .await
        .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id int)"))
        .await
        .unwrap();
    let mut s = raw_login(addr).await;
    s.write_all(&message(b'Q', &cstr("BEGIN; SELECT 1/0")))
        .await
        .unwrap();
    let failed = read_frames_until(&mut s, b'Z').await;
    assert_eq!(shown_tags(&failed).last().unwrap(), "Z E", "{failed:?}");
    s
}

#[tokio::test]
async fn a_long_pipeline_with_large_answers_flows_both_ways_at_once() {
    // The client keeps sending while PostgreSQL answers: tens of megabytes each way. A gateway that
    // stops reading the upstream while it writes to it leaves PostgreSQL blocked writing answers and
    // itself blocked writing requests, for good.
    let (_gate, addr) = start().await;
    let client = connect(addr).await;
    let big = "x".repeat(32 * 1024);
    let param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&big];
    let statement = client.prepare("SELECT $1::text").await.unwrap();
    let queries = (0..2_000).map(|_| client.query_one(&statement, &param));
    let rows = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::try_join_all(queries),
    )
    .await
    .expect("the pipeline must not stall")
    .unwrap();
    assert_eq!(rows.len(), 2_000);
    assert!(rows.iter().all(|r| r.get::<_, &str>(0).len() == big.len()));
}

#[tokio::test]
async fn a_query_pipelined_behind_the_password_is_answered() {
    let (_gate, addr) = start().await;
    let mut s = asked_for_password(addr).await;
    // Password and first query in one write, as a client that does not wait for AuthenticationOk may.
    let mut both = message(b'p', &cstr(TOKEN));
    both.extend_from_slice(&message(b'Q', &cstr("SELECT 42")));
    s.write_all(&both).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    let frames = read_frames_until(&mut s, b'Z').await;
    let row = &frames.iter().find(|(t, _)| *t == b'D').expect("DataRow").1;
    assert_eq!(&row[6..], b"42");
}

#[tokio::test]
async fn a_query_sent_with_terminate_is_answered_before_the_close() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let mut both = message(b'Q', &cstr("SELECT 777"));
    both.extend_from_slice(&message(b'X', &[]));
    s.write_all(&both).await.unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let row = &frames.iter().find(|(t, _)| *t == b'D').expect("DataRow").1;
    assert_eq!(&row[6..], b"777");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed after Terminate")
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn executing_a_portal_never_bound_answers_34000_and_the_session_goes_on() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let mut execute = cstr("nope");
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut batch = message(b'E', &execute);
    batch.extend_from_slice(&message(b'S', &[]));
    s.write_all(&batch).await.unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let error = &frames
        .iter()
        .find(|(t, _)| *t == b'E')
        .expect("ErrorResponse")
        .1;
    let text = String::from_utf8_lossy(error);
    assert!(text.contains("C34000"), "{text}");
    assert!(text.contains("portal \"nope\" does not exist"), "{text}");
    s.write_all(&message(b'Q', &cstr("SELECT 5")))
        .await
        .unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    assert!(frames.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"5")));
}

/// An upstream that logs anyone in, answers the first Query with a RowDescription and the first
/// `sent` bytes of a `claimed`-byte DataRow, then dies.
async fn upstream_dying_mid_row(claimed: usize, sent: usize) -> UpstreamTarget {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut startup = vec![0u8; i32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        let mut login = message(b'R', &0i32.to_be_bytes());
        for (k, v) in [
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
        ] {
            login.extend(message(b'S', &[cstr(k), cstr(v)].concat()));
        }
        login.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
        login.extend(message(b'Z', b"I"));
        s.write_all(&login).await.unwrap();
        loop {
            let mut head = [0u8; 5];
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0u8; len - 4];
            s.read_exact(&mut body).await.unwrap();
            if head[0] != b'Q' {
                continue;
            }
            // One text column `v`.
            let mut desc = 1i16.to_be_bytes().to_vec();
            desc.extend(cstr("v"));
            desc.extend(0i32.to_be_bytes()); // table oid
            desc.extend(0i16.to_be_bytes()); // attnum
            desc.extend(25i32.to_be_bytes()); // text
            desc.extend((-1i16).to_be_bytes());
            desc.extend((-1i32).to_be_bytes());
            desc.extend(0i16.to_be_bytes());
            let mut out = message(b'T', &desc);
            // DataRow: length counts itself, the column count, the value's length and the value.
            let value_len = claimed - 4 - 2 - 4;
            out.push(b'D');
            out.extend((claimed as i32).to_be_bytes());
            out.extend(1i16.to_be_bytes());
            out.extend((value_len as i32).to_be_bytes());
            out.extend(std::iter::repeat_n(b'x', sent));
            s.write_all(&out).await.unwrap();
            return; // the upstream dies mid-row
        }
    });
    UpstreamTarget {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
        database: "app".into(),
        tls: Default::default(),
    }
}

#[tokio::test]
async fn an_upstream_dying_mid_row_leaves_the_client_a_bare_close_not_a_spliced_error() {
    let (_gate, addr) = start_at(|_| {}, upstream_dying_mid_row(1_000_000, 20_000).await).await;
    let mut s = raw_login(addr).await;
    s.write_all(&message(b'Q', &cstr("SELECT 1")))
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    // RowDescription whole, then exactly the part of the row the upstream sent, then the close: no
    // FATAL appended inside the row, where the client would read it as row data.
    let desc_len = 1 + i32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize;
    assert_eq!(got[0], b'T', "{:?}", &got[..16.min(got.len())]);
    assert_eq!(got[desc_len], b'D');
    let row_part = got.len() - desc_len;
    assert_eq!(row_part, 5 + 2 + 4 + 20_000, "only the upstream's bytes");
    assert!(!contains(&got, b"08006"), "no error inside the row");
}

#[tokio::test]
async fn an_upstream_dying_between_frames_is_reported_with_08006() {
    // The row is whole; the upstream dies before its CommandComplete.
    let (_gate, addr) = start_at(|_| {}, upstream_dying_mid_row(20, 10).await).await;
    let mut s = raw_login(addr).await;
    s.write_all(&message(b'Q', &cstr("SELECT 1")))
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(contains(&got, b"08006"), "{got:?}");
}

#[tokio::test]
async fn a_query_after_an_error_in_an_unsynced_batch_is_skipped_as_postgresql_skips_it() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let mut out = parse_unnamed("SELECT 1/0");
    out.extend(bind_unnamed());
    out.extend(execute_unnamed(0));
    out.extend(message(b'Q', &cstr("SELECT 2")));
    out.extend(message(b'S', &[]));
    s.write_all(&out).await.unwrap();
    let tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    // PostgreSQL: ParseComplete, the error (1/0 is folded at Bind), then nothing until the Sync's
    // ReadyForQuery.
    assert_eq!(tags, b"1EZ", "{:?}", String::from_utf8_lossy(&tags));
    // In step: the next query gets its own answer.
    s.write_all(&message(b'Q', &cstr("SELECT 3")))
        .await
        .unwrap();
    let frames = read_frames_until(&mut s, b'Z').await;
    let tags: Vec<u8> = frames.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"TDCZ");
    // Without an error, the pending messages run, then the Query, as PostgreSQL runs them.
    let mut out = parse_unnamed("SELECT 1");
    out.extend(bind_unnamed());
    out.extend(execute_unnamed(0));
    out.extend(message(b'Q', &cstr("SELECT 2")));
    out.extend(message(b'S', &[]));
    s.write_all(&out).await.unwrap();
    let mut tags: Vec<u8> = read_frames_until(&mut s, b'Z')
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    tags.extend(
        read_frames_until(&mut s, b'Z')
            .await
            .into_iter()
            .map(|(t, _)| t),
    );
    assert_eq!(tags, b"12DCTDCZZ", "{:?}", String::from_utf8_lossy(&tags));
}

#[tokio::test]
async fn a_client_that_leaves_after_filling_its_read_ahead_during_a_hold_is_noticed() {
    let (gate, addr) = start_with(|c| c.hold_wait = Duration::from_secs(60), "test").await;
    let mut s = raw_login(addr).await;
    s.write_all(&message(
        b'Q',
        &cstr("DELETE FROM pg_catalog.pg_class WHERE false"),
    ))
    .await
    .unwrap();
    let GateEvent::Hold { id, .. } =
        eventually(&gate, "a hold", |e| matches!(e, GateEvent::Hold { .. })).await
    else {
        unreachable!()
    };
    // The client has read everything (its close is a FIN, not a reset)...
    let notice = read_frames_until(&mut s, b'N').await;
    assert!(String::from_utf8_lossy(&notice[0].1).contains("held for approval"));
    // ...and sends several MiB of queries behind the held one: more than the gateway reads ahead
    // during a hold.
    let pipeline = message(b'Q', &cstr("SELECT 1")).repeat(200_000);
    let _ = tokio::time::timeout(Duration::from_secs(3), s.write_all(&pipeline)).await;
    let started = std::time::Instant::now();
    drop(s);
    while !gate.events().contains(&GateEvent::Cancelled(id)) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the request was not cancelled; events: {:#?}",
            gate.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_statement_parsed_again_and_bound_in_the_next_pipelined_batch_runs_the_new_text() {
    let (_gate, addr) = start().await;
    let mut s = raw_login(addr).await;
    let sync = message(b'S', &[]);
    s.write_all(&[parse_unnamed("SELECT 1"), sync.clone()].concat())
        .await
        .unwrap();
    read_frames_until(&mut s, b'Z').await;
    // Re-parsed, then bound in a batch sent before the first one's answer: the gateway waits for that
    // answer (which settles the name's text) instead of refusing the Bind.
    s.write_all(
        &[
            parse_unnamed("SELECT 3"),
            sync.clone(),
            bind_unnamed(),
            execute_unnamed(0),
            sync,
        ]
        .concat(),
    )
    .await
    .unwrap();
    let first = read_frames_until(&mut s, b'Z').await;
    assert_eq!(first.iter().map(|(t, _)| *t).collect::<Vec<_>>(), b"1Z");
    let second = read_frames_until(&mut s, b'Z').await;
    let tags: Vec<u8> = second.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"2DCZ", "{second:?}");
    assert_eq!(second[1].1[6..], *b"3", "the new text ran");
}

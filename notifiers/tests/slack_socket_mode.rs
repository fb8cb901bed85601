//! Slack Socket Mode against local fakes: `apps.connections.open` over HTTP (checking the app-level token)
//! and a WebSocket server on 127.0.0.1 that plays Slack's side of the socket.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use countersign_bot::directory::{ApproverDirectory, ApproverGroup};
use countersign_bot::store::Store;
use countersign_bot::testing::{fresh_sqlite, human, workload, TempDir};
use countersign_bot::{
    Decision, NewRequest, RequestId, RequesterChain, StatementHash, Submitted, Workflow,
};
use countersign_notifiers::slack::message_refs::{add_message, MessageRef};
use countersign_notifiers::slack::render::{DenyOrigin, DENY_MODAL_CALLBACK, REASON_INPUT};
use countersign_notifiers::slack::{
    Backoff, SlackApi, SlackConfig, SlackInbound, SocketModeClient,
};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const BOT_TOKEN: &str = "xoxb-test-token";
const APP_TOKEN: &str = "xapp-1-test-app-token";
const CHANNEL: &str = "C0DBA";
const TS: &str = "1700000000.000001";

type Socket = WebSocketStream<TcpStream>;

/// The fake Web API: `apps.connections.open` hands out the WebSocket URL to holders of the app token;
/// every other method answers `ok` (the vote path may post ephemeral notes).
#[derive(Clone)]
struct FakeApi {
    ws_url: String,
    opens: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

async fn fake_api(
    State(fake): State<FakeApi>,
    Path(method): Path<String>,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if method == "apps.connections.open" {
        if auth != format!("Bearer {APP_TOKEN}") {
            fake.refused.fetch_add(1, Ordering::SeqCst);
            return Json(json!({ "ok": false, "error": "invalid_auth" })).into_response();
        }
        fake.opens.fetch_add(1, Ordering::SeqCst);
        return Json(json!({ "ok": true, "url": fake.ws_url })).into_response();
    }
    if auth != format!("Bearer {BOT_TOKEN}") {
        return Json(json!({ "ok": false, "error": "invalid_auth" })).into_response();
    }
    Json(json!({ "ok": true, "message_ts": TS })).into_response()
}

struct Harness {
    workflow: Arc<Workflow>,
    store: Arc<dyn Store>,
    api: FakeApi,
    /// Every WebSocket connection the client opens, in order.
    sockets: mpsc::Receiver<Socket>,
    client: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.client.abort();
    }
}

async fn start_ws_server() -> (String, mpsc::Receiver<Socket>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                if tx.send(ws).await.is_err() {
                    return;
                }
            }
        }
    });
    (format!("ws://{addr}/link/?ticket=t1"), rx)
}

async fn harness(app_token: &str) -> Harness {
    let (ws_url, sockets) = start_ws_server().await;
    let api_fake = FakeApi {
        ws_url,
        opens: Arc::default(),
        refused: Arc::default(),
    };
    let app = Router::new()
        .route("/api/{method}", post(fake_api))
        .with_state(api_fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config: SlackConfig = serde_json::from_value(json!({
        "bot_token_env": "SLACK_BOT_TOKEN",
        "signing_secret_env": "SLACK_SIGNING_SECRET",
        "app_token_env": "SLACK_APP_TOKEN",
        "api_base_url": base,
        "routes": { "groups": { "dba": [CHANNEL] } },
        "user_map": { "UBOB": "bob@example.com", "UCAROL": "carol@example.com" }
    }))
    .unwrap();
    config.validate().unwrap();
    let (store, dir) = fresh_sqlite().await;
    let directory = ApproverDirectory::new([ApproverGroup {
        name: "dba".into(),
        members: vec!["bob@example.com".into(), "carol@example.com".into()],
        idp_groups: vec![],
    }]);
    let workflow = Arc::new(Workflow::new(
        store.clone(),
        directory,
        vec!["slack".into()],
    ));
    let api = SlackApi::new(config.api_base(), BOT_TOKEN).unwrap();
    let inbound = SlackInbound::new(
        &config,
        api.clone(),
        "unused-signing-secret",
        workflow.clone(),
    );
    let client = SocketModeClient::new(inbound, api, app_token)
        .with_backoff(Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(200),
        })
        .spawn();
    Harness {
        workflow,
        store,
        api: api_fake,
        sockets,
        client,
        _dir: dir,
    }
}

impl Harness {
    /// A pending request (quorum 2) whose Slack message is `CHANNEL`/`TS`.
    async fn request(&self, sql: &str) -> RequestId {
        let new = NewRequest {
            connection: "prod".into(),
            statement: sql.into(),
            statement_hash: StatementHash::of_text(sql),
            requester: RequesterChain(vec![workload("deploy-agent"), human("alice@example.com")]),
            rule: "writes".into(),
            reasons: vec!["DELETE without WHERE".into()],
            approver_groups: vec!["dba".into()],
            quorum: 2,
            ttl_secs: 3600,
            origin: "api".into(),
            session_id: None,
            reminders: Default::default(),
        };
        let id = match self.workflow.submit(new).await.unwrap() {
            Submitted::Created(v) => v.request.id,
            other => panic!("expected a new request, got {other:?}"),
        };
        add_message(
            self.store.as_ref(),
            id,
            MessageRef {
                channel: CHANNEL.into(),
                ts: TS.into(),
                dm: false,
            },
        )
        .await
        .unwrap();
        id
    }

    async fn next_socket(&mut self) -> Socket {
        tokio::time::timeout(Duration::from_secs(5), self.sockets.recv())
            .await
            .expect("the client did not (re)connect within 5 s")
            .expect("WebSocket server stopped")
    }

    async fn votes(&self, id: RequestId, n: usize) -> Vec<countersign_bot::Vote> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.workflow.get(id).await.unwrap();
            if v.votes.len() >= n {
                return v.votes;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} votes: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn hello(ws: &mut Socket) {
    send(
        ws,
        json!({ "type": "hello", "num_connections": 1,
                "connection_info": { "app_id": "A0001" }, "debug_info": { "host": "fake" } }),
    )
    .await;
}

/// The next text frame, which must arrive within `within`.
async fn next_text(ws: &mut Socket, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .expect("no frame from the client in time")
            .expect("the client closed the socket")
            .expect("socket error");
        if let Message::Text(t) = frame {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

fn block_action(envelope_id: &str, user: &str, id: RequestId, verb: &str) -> Value {
    json!({
        "envelope_id": envelope_id,
        "type": "interactive",
        "accepts_response_payload": false,
        "payload": {
            "type": "block_actions",
            "user": { "id": user, "username": user.to_lowercase(), "team_id": "T0001" },
            "api_app_id": "A0001",
            "container": { "type": "message", "message_ts": TS, "channel_id": CHANNEL, "is_ephemeral": false },
            "trigger_id": "1234.5678.abcdef",
            "channel": { "id": CHANNEL, "name": "approvals" },
            "message": { "type": "message", "ts": TS, "text": "Countersign request", "bot_id": "B1" },
            "actions": [ { "action_id": format!("countersign_{verb}"), "block_id": "countersign_actions",
                           "value": format!("{verb}:{id}"), "type": "button", "action_ts": "1700000001.000001" } ]
        }
    })
}

#[tokio::test]
async fn block_action_over_socket_is_acked_by_envelope_id_and_records_the_vote() {
    let mut h = harness(APP_TOKEN).await;
    let id = h.request("DELETE FROM orders").await;
    let mut ws = h.next_socket().await;
    assert_eq!(h.api.opens.load(Ordering::SeqCst), 1);
    hello(&mut ws).await;

    send(&mut ws, block_action("env-bob-1", "UBOB", id, "approve")).await;
    let ack = next_text(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(ack, json!({ "envelope_id": "env-bob-1" }));

    let votes = h.votes(id, 1).await;
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0].voter.0, "email:bob@example.com");
    assert_eq!(votes[0].decision, Decision::Approve);
    assert_eq!(votes[0].channel, "slack");
}

#[tokio::test]
async fn socket_clicks_keep_the_http_rules_forged_message_is_acked_but_not_counted() {
    let mut h = harness(APP_TOKEN).await;
    let id = h.request("DELETE FROM invoices").await;
    let mut ws = h.next_socket().await;
    hello(&mut ws).await;

    // A copy of the buttons in another message: acknowledged (so Slack does not redeliver), not counted.
    let mut forged = block_action("env-forged", "UBOB", id, "approve");
    forged["payload"]["container"]["message_ts"] = "1700000099.000001".into();
    forged["payload"]["message"]["ts"] = "1700000099.000001".into();
    send(&mut ws, forged).await;
    assert_eq!(
        next_text(&mut ws, Duration::from_secs(3)).await,
        json!({ "envelope_id": "env-forged" })
    );

    // The genuine message then counts, and only it.
    send(&mut ws, block_action("env-carol", "UCAROL", id, "approve")).await;
    assert_eq!(
        next_text(&mut ws, Duration::from_secs(3)).await,
        json!({ "envelope_id": "env-carol" })
    );
    let votes = h.votes(id, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let votes_later = h.workflow.get(id).await.unwrap().votes;
    assert_eq!(votes.len(), 1);
    assert_eq!(votes_later.len(), 1, "{votes_later:?}");
    assert_eq!(votes_later[0].voter.0, "email:carol@example.com");
    let actions: Vec<String> = h
        .store
        .audit_records(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.entry.action)
        .collect();
    assert!(
        actions.iter().any(|a| a == "slack.foreign_message_refused"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn deny_modal_submitted_over_socket_records_a_deny_with_its_reason() {
    let mut h = harness(APP_TOKEN).await;
    let id = h.request("TRUNCATE payments").await;
    let mut ws = h.next_socket().await;
    hello(&mut ws).await;
    let origin = DenyOrigin {
        request: id,
        channel: CHANNEL.into(),
        ts: TS.into(),
    };
    send(
        &mut ws,
        json!({
            "envelope_id": "env-deny",
            "type": "interactive",
            "accepts_response_payload": true,
            "payload": {
                "type": "view_submission",
                "user": { "id": "UCAROL" },
                "view": {
                    "callback_id": DENY_MODAL_CALLBACK,
                    "private_metadata": serde_json::to_string(&origin).unwrap(),
                    "state": { "values": { REASON_INPUT: { REASON_INPUT: {
                        "type": "plain_text_input", "value": "no ticket for this" } } } }
                }
            }
        }),
    )
    .await;
    // An ack without a payload closes the modal.
    assert_eq!(
        next_text(&mut ws, Duration::from_secs(3)).await,
        json!({ "envelope_id": "env-deny" })
    );
    let votes = h.votes(id, 1).await;
    assert_eq!(votes[0].voter.0, "email:carol@example.com");
    assert_eq!(votes[0].decision, Decision::Deny);
    assert_eq!(votes[0].reason.as_deref(), Some("no ticket for this"));
}

#[tokio::test]
async fn disconnect_envelope_makes_the_client_reconnect_and_keep_voting() {
    let mut h = harness(APP_TOKEN).await;
    let id = h.request("DROP TABLE staging_orders").await;
    let mut first = h.next_socket().await;
    hello(&mut first).await;
    send(
        &mut first,
        json!({ "type": "disconnect", "reason": "refresh_requested",
                "debug_info": { "host": "fake" } }),
    )
    .await;

    let mut second = h.next_socket().await;
    assert_eq!(h.api.opens.load(Ordering::SeqCst), 2);
    hello(&mut second).await;
    send(
        &mut second,
        block_action("env-after", "UBOB", id, "approve"),
    )
    .await;
    assert_eq!(
        next_text(&mut second, Duration::from_secs(3)).await,
        json!({ "envelope_id": "env-after" })
    );
    assert_eq!(h.votes(id, 1).await[0].voter.0, "email:bob@example.com");
}

#[tokio::test]
async fn dropped_socket_is_reopened_with_a_fresh_url() {
    let mut h = harness(APP_TOKEN).await;
    let mut first = h.next_socket().await;
    hello(&mut first).await;
    drop(first);
    let mut second = h.next_socket().await;
    assert_eq!(h.api.opens.load(Ordering::SeqCst), 2);
    hello(&mut second).await;
}

#[tokio::test]
async fn slash_command_over_socket_is_answered_in_the_ack() {
    let mut h = harness(APP_TOKEN).await;
    let id = h.request("DELETE FROM sessions").await;
    let mut ws = h.next_socket().await;
    hello(&mut ws).await;
    send(
        &mut ws,
        json!({
            "envelope_id": "env-cmd",
            "type": "slash_commands",
            "accepts_response_payload": true,
            "payload": { "command": "/countersign", "text": "pending", "user_id": "UBOB",
                         "channel_id": CHANNEL, "team_id": "T0001",
                         "response_url": "https://hooks.slack.invalid/commands/1" }
        }),
    )
    .await;
    let ack = next_text(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(ack["envelope_id"], "env-cmd");
    assert_eq!(ack["payload"]["response_type"], "ephemeral");
    let text = ack["payload"]["text"].as_str().unwrap_or_default();
    assert!(text.contains(&id.to_string()), "{ack}");
}

#[tokio::test]
async fn unused_envelope_types_are_still_acknowledged() {
    let mut h = harness(APP_TOKEN).await;
    let mut ws = h.next_socket().await;
    hello(&mut ws).await;
    send(
        &mut ws,
        json!({ "envelope_id": "env-event", "type": "events_api", "accepts_response_payload": false,
                "payload": { "event": { "type": "app_mention" } } }),
    )
    .await;
    assert_eq!(
        next_text(&mut ws, Duration::from_secs(3)).await,
        json!({ "envelope_id": "env-event" })
    );
}

#[tokio::test]
async fn wrong_app_token_never_connects_and_keeps_retrying() {
    let mut h = harness("xapp-1-someone-elses-token").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.api.refused.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the client stopped retrying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.api.opens.load(Ordering::SeqCst), 0);
    assert!(h.sockets.try_recv().is_err(), "connected without a URL");
}

//! End-to-end Slack approvals against a local fake of the Slack Web API: requests posted through the
//! outbox, signed clicks through the router, votes checked in the store.

mod common;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use countersign_bot::directory::{ApproverDirectory, ApproverGroup};
use countersign_bot::store::{OutboxStatus, Store};
use countersign_bot::testing::{fresh_pg, fresh_sqlite, human, workload};
use countersign_bot::{
    ExecutionSummary, NewRequest, RequestId, RequestStatus, RequesterChain, StatementHash,
    Submitted, Workflow,
};
use countersign_notifiers::slack::signature::sign;
use countersign_notifiers::slack::{router, SlackApi, SlackConfig, SlackInbound, SlackNotifier};
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const TOKEN: &str = "xoxb-test-token";
const SECRET: &str = "test-signing-secret";
const CHANNEL: &str = "C0DBA";

// ---------------------------------------------------------------------------------------------------------
// The fake Slack Web API.

#[derive(Debug, Clone)]
struct Call {
    method: String,
    body: Value,
}

#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    /// Slack user id → profile e-mail (None: a profile without e-mail).
    users: HashMap<String, Option<String>>,
    /// Slack user id → fields overriding the user object `users.info` returns (another `team_id`,
    /// `is_stranger`, `enterprise_user`); everyone else is a member of the app's team T0001.
    overrides: HashMap<String, Value>,
    /// Failures to answer with before serving normally: 500, or 429 with Retry-After: 1.
    failures: VecDeque<u16>,
    next_ts: u64,
}

#[derive(Clone, Default)]
struct FakeSlack(Arc<Mutex<FakeState>>);

impl FakeSlack {
    fn calls(&self, method: &str) -> Vec<Value> {
        let s = self.0.lock().unwrap();
        s.calls
            .iter()
            .filter(|c| c.method == method)
            .map(|c| c.body.clone())
            .collect()
    }

    fn fail_next(&self, statuses: &[u16]) {
        self.0.lock().unwrap().failures.extend(statuses);
    }
}

fn slack_ok(v: Value) -> Response {
    let mut v = v;
    v["ok"] = true.into();
    Json(v).into_response()
}

fn slack_error(code: &str) -> Response {
    Json(json!({ "ok": false, "error": code })).into_response()
}

async fn fake_api(
    State(fake): State<FakeSlack>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {TOKEN}"))
    {
        return slack_error("invalid_auth");
    }
    let mut s = fake.0.lock().unwrap();
    if let Some(status) = s.failures.pop_front() {
        return match status {
            429 => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1"), ("content-type", "application/json")],
                r#"{"ok":false,"error":"ratelimited"}"#,
            )
                .into_response(),
            // A 429 asking for days.
            4290 => (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    ("retry-after", "999999"),
                    ("content-type", "application/json"),
                ],
                r#"{"ok":false,"error":"ratelimited"}"#,
            )
                .into_response(),
            other => (StatusCode::from_u16(other).unwrap(), "upstream trouble").into_response(),
        };
    }
    // GET methods carry their arguments in the query string, POST methods as JSON.
    let args: Value = if body.is_empty() {
        let q: HashMap<String, String> =
            serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
        serde_json::to_value(q).unwrap()
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    s.calls.push(Call {
        method: method.clone(),
        body: args.clone(),
    });
    s.next_ts += 1;
    let ts = format!("1700000000.{:06}", s.next_ts);
    match method.as_str() {
        "chat.postMessage" => {
            let Some(channel) = args["channel"].as_str() else {
                return slack_error("channel_not_found");
            };
            // Posting to a user id opens the app's DM with them.
            let channel = match channel.strip_prefix('U') {
                Some(rest) => format!("D{rest}"),
                None => channel.to_string(),
            };
            slack_ok(json!({ "channel": channel, "ts": ts,
                "message": { "ts": ts, "text": args["text"], "blocks": args["blocks"], "bot_id": "B1" } }))
        }
        "chat.update" => slack_ok(
            json!({ "channel": args["channel"], "ts": args["ts"], "text": args["text"],
            "message": { "text": args["text"], "blocks": args["blocks"] } }),
        ),
        "chat.postEphemeral" => slack_ok(json!({ "message_ts": ts })),
        "views.open" => {
            let mut view = args["view"].clone();
            view["id"] = "V0001".into();
            view["team_id"] = "T0001".into();
            view["hash"] = "h1".into();
            view["state"] = json!({ "values": {} });
            slack_ok(json!({ "view": view }))
        }
        // The bot token belongs to workspace T0001, as on a workspace outside Enterprise Grid.
        "auth.test" => slack_ok(
            json!({ "url": "https://example.slack.com/", "team": "Example",
            "user": "countersign", "team_id": "T0001", "user_id": "UBOT", "bot_id": "B1",
            "is_enterprise_install": false }),
        ),
        "users.info" => {
            let id = args["user"].as_str().unwrap_or_default();
            match s.users.get(id) {
                Some(email) => {
                    let mut profile = json!({ "real_name": "Someone" });
                    if let Some(e) = email {
                        profile["email"] = e.clone().into();
                    }
                    let mut user = json!({ "id": id, "team_id": "T0001", "name": "someone", "deleted": false, "profile": profile });
                    if let Some(Value::Object(fields)) = s.overrides.get(id) {
                        for (k, v) in fields {
                            user[k] = v.clone();
                        }
                    }
                    slack_ok(json!({ "user": user }))
                }
                None => slack_error("user_not_found"),
            }
        }
        "users.lookupByEmail" => {
            let wanted = args["email"].as_str().unwrap_or_default().to_lowercase();
            let found = s
                .users
                .iter()
                .find(|(_, e)| e.as_deref().map(str::to_lowercase) == Some(wanted.clone()))
                .map(|(id, _)| id.clone());
            match found {
                Some(id) => slack_ok(
                    json!({ "user": { "id": id, "team_id": "T0001", "profile": { "email": wanted } } }),
                ),
                None => slack_error("users_not_found"),
            }
        }
        _ => slack_error("unknown_method"),
    }
}

async fn start_fake(fake: FakeSlack) -> String {
    let app = Router::new()
        .route("/api/{method}", any(fake_api))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/api")
}

// ---------------------------------------------------------------------------------------------------------
// The system under test.

struct Harness {
    fake: FakeSlack,
    base: String,
    store: Arc<dyn Store>,
    workflow: Arc<Workflow>,
    worker: OutboxWorker,
    app: Router,
    _dir: Option<countersign_bot::testing::TempDir>,
}

fn directory() -> ApproverDirectory {
    ApproverDirectory::new([ApproverGroup {
        name: "dba".into(),
        members: vec![
            "bob@example.com".into(),
            "carol@example.com".into(),
            "alice@example.com".into(),
        ],
        idp_groups: vec![],
    }])
}

async fn harness(
    store: Arc<dyn Store>,
    dir: Option<countersign_bot::testing::TempDir>,
    dm_approvers: bool,
) -> Harness {
    harness_with(store, dir, dm_approvers, json!({})).await
}

/// A harness whose `[slack]` configuration has `extra` keys on top of the usual ones.
async fn harness_with(
    store: Arc<dyn Store>,
    dir: Option<countersign_bot::testing::TempDir>,
    dm_approvers: bool,
    extra: Value,
) -> Harness {
    let fake = FakeSlack::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.users
            .insert("UBOB".into(), Some("bob@example.com".into()));
        s.users
            .insert("UCAROL".into(), Some("Carol@Example.com".into()));
        s.users
            .insert("UALICE".into(), Some("alice@example.com".into()));
        s.users.insert("UNOMAIL".into(), None);
    }
    let base = start_fake(fake.clone()).await;
    let mut config = json!({
        "bot_token_env": "SLACK_BOT_TOKEN",
        "signing_secret_env": "SLACK_SIGNING_SECRET",
        "api_base_url": base,
        "routes": { "default_channel": "C0OTHER", "groups": { "dba": [CHANNEL] } },
        "dm_approvers": dm_approvers,
        // Bob is mapped explicitly; Carol and Alice are found through users.info.
        "user_map": { "UBOB": "bob@example.com" }
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            config[k] = v;
        }
    }
    let config: SlackConfig = serde_json::from_value(config).unwrap();
    config.validate().unwrap();
    let api = SlackApi::new(config.api_base(), TOKEN).unwrap();
    let workflow = Arc::new(Workflow::new(
        store.clone(),
        directory(),
        vec!["slack".into()],
    ));
    let notifier = SlackNotifier::new(config.clone(), api.clone(), store.clone(), directory());
    let policy = RetryPolicy {
        base: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let worker = OutboxWorker::new(store.clone(), vec![Arc::new(notifier)], policy);
    let inbound = SlackInbound::new(&config, api, SECRET, workflow.clone());
    Harness {
        fake,
        base: base.clone(),
        store,
        workflow,
        worker,
        app: router(inbound),
        _dir: dir,
    }
}

async fn sqlite_harness(dm_approvers: bool) -> Harness {
    let (store, dir) = fresh_sqlite().await;
    harness(store, Some(dir), dm_approvers).await
}

impl Harness {
    fn fake_base(&self) -> String {
        self.base.clone()
    }

    async fn submit(&self, sql: &str, quorum: u32) -> RequestId {
        let new = NewRequest {
            connection: "prod".into(),
            statement: sql.into(),
            statement_hash: StatementHash::of_text(sql),
            requester: RequesterChain(vec![workload("deploy-agent"), human("alice@example.com")]),
            rule: "writes".into(),
            reasons: vec!["DELETE without WHERE".into()],
            approver_groups: vec!["dba".into()],
            quorum,
            ttl_secs: 3600,
            origin: "api".into(),
            session_id: None,
            reminders: Default::default(),
        };
        match self.workflow.submit(new).await.unwrap() {
            Submitted::Created(v) => v.request.id,
            other => panic!("expected a new request, got {other:?}"),
        }
    }

    /// Run the outbox worker until nothing is pending; fails on dead letters.
    async fn drain(&self) {
        self.drain_around_dead().await;
        let dead = self
            .store
            .outbox_list(Some(OutboxStatus::Dead), 100)
            .await
            .unwrap();
        assert!(dead.is_empty(), "dead letters: {dead:?}");
    }

    /// Run the outbox worker until nothing is pending (dead letters stay as they are).
    async fn drain_around_dead(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.worker.run_once().await.unwrap();
            let pending = self
                .store
                .outbox_list(Some(OutboxStatus::Pending), 100)
                .await
                .unwrap();
            if pending.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "outbox not drained: {pending:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn message_of(&self, id: RequestId) -> (String, String) {
        let ch = self
            .store
            .get_ref(id, "slack", "channel")
            .await
            .unwrap()
            .expect("channel ref stored");
        let ts = self
            .store
            .get_ref(id, "slack", "ts")
            .await
            .unwrap()
            .expect("ts ref stored");
        (ch, ts)
    }

    async fn send(
        &self,
        path: &str,
        body: String,
        timestamp: i64,
        signature: Option<String>,
    ) -> StatusCode {
        let ts = timestamp.to_string();
        let sig = signature.unwrap_or_else(|| sign(SECRET.as_bytes(), &ts, body.as_bytes()));
        let req = Request::post(path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", sig)
            .body(Body::from(body))
            .unwrap();
        self.app.clone().oneshot(req).await.unwrap().status()
    }

    /// Sends a correctly signed interaction payload now; Slack must be answered 200 (refusals go back
    /// as ephemeral messages, not as HTTP errors).
    async fn click_ok(&self, body: String) {
        assert_eq!(
            self.send("/slack/interactions", body, now(), None).await,
            StatusCode::OK
        );
    }

    async fn send_for_body(&self, path: &str, body: String) -> (StatusCode, Value) {
        let ts = now().to_string();
        let sig = sign(SECRET.as_bytes(), &ts, body.as_bytes());
        let req = Request::post(path)
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", sig)
            .body(Body::from(body))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn wait_for<F: Fn(&countersign_bot::RequestView) -> bool>(
        &self,
        id: RequestId,
        what: &str,
        f: F,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.workflow.get(id).await.unwrap();
            if f(&v) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_calls(&self, method: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let calls = self.fake.calls(method);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} {method} calls, got {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn audit_actions(&self) -> Vec<String> {
        self.store
            .audit_records(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.entry.action)
            .collect()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn click(user: &str, channel: &str, ts: &str, action_id: &str, value: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": { "id": user, "username": user.to_lowercase(), "team_id": "T0001" },
        "api_app_id": "A0001",
        "token": "deprecated-verification-token",
        "container": { "type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": false },
        "trigger_id": "1234.5678.abcdef",
        "team": { "id": "T0001", "domain": "example" },
        "channel": { "id": channel, "name": "approvals" },
        "message": { "type": "message", "ts": ts, "text": "Countersign request", "bot_id": "B1" },
        "response_url": "https://hooks.slack.invalid/actions/T0001/1/abc",
        "actions": [ { "action_id": action_id, "block_id": "countersign_actions", "value": value,
                        "type": "button", "action_ts": "1700000001.000001" } ]
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

fn approve(user: &str, (channel, ts): &(String, String), id: RequestId) -> String {
    click(
        user,
        channel,
        ts,
        "countersign_approve",
        &format!("approve:{id}"),
    )
}

/// The same button clicked once more: Slack gives every click its own `action_ts` (and so signature).
fn clicked_again(click: &str) -> String {
    assert!(click.contains("1700000001.000001"));
    click.replace("1700000001.000001", "1700000002.000001")
}

fn texts(v: &Value) -> String {
    v.to_string()
}

// ---------------------------------------------------------------------------------------------------------

async fn two_approvals_release_the_statement_once(h: Harness) {
    let id = h.submit("DELETE FROM orders", 2).await;
    h.drain().await;
    let posted = h.fake.calls("chat.postMessage");
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["channel"], CHANNEL);
    assert!(texts(&posted[0]).contains(&format!("approve:{id}")));
    let msg = h.message_of(id).await;
    assert_eq!(msg.0, CHANNEL);

    // The requester's human clicks: refused ephemerally, no vote.
    h.click_ok(approve("UALICE", &msg, id)).await;
    let eph = h.wait_for_calls("chat.postEphemeral", 1).await;
    assert_eq!(eph[0]["user"], "UALICE");
    assert!(texts(&eph[0]).contains("separation of duties"), "{eph:?}");

    // Two distinct approvers: Bob (user_map) and Carol (users.info).
    let bob_click = approve("UBOB", &msg, id);
    let bob_sent_at = now();
    assert_eq!(
        h.send("/slack/interactions", bob_click.clone(), bob_sent_at, None)
            .await,
        StatusCode::OK
    );
    h.wait_for(id, "bob's vote", |v| v.votes.len() == 1).await;
    h.click_ok(approve("UCAROL", &msg, id)).await;
    h.wait_for(id, "approval", |v| {
        v.request.status == RequestStatus::Approved
    })
    .await;
    let view = h.workflow.get(id).await.unwrap();
    let voters: Vec<&str> = view.votes.iter().map(|v| v.voter.0.as_str()).collect();
    assert_eq!(voters, ["email:bob@example.com", "email:carol@example.com"]);
    assert!(view.votes.iter().all(|v| v.channel == "slack"));

    // The held statement is released once.
    assert!(h
        .workflow
        .claim(id, &view.request.requester)
        .await
        .unwrap()
        .is_some());
    assert!(h
        .workflow
        .claim(id, &view.request.requester)
        .await
        .unwrap()
        .is_none());
    let summary = ExecutionSummary {
        command_tag: Some("DELETE 3".into()),
        rows: Some(3),
        error: None,
        duration_ms: 4,
    };
    h.workflow.finish(id, summary).await.unwrap().unwrap();
    h.drain().await;

    // The message was updated in place; the last version has no buttons.
    let updates = h.fake.calls("chat.update");
    assert!(updates.len() >= 3, "{updates:?}");
    assert!(updates
        .iter()
        .all(|u| u["channel"] == CHANNEL && u["ts"] == msg.1.as_str()));
    let last = texts(updates.last().unwrap());
    assert!(
        !last.contains("countersign_approve") && !last.contains("countersign_deny"),
        "{last}"
    );
    assert!(last.contains("Status: executed"), "{last}");

    // Thread replies: the refusal, two votes, the resolution, the execution.
    let replies: Vec<String> = h
        .fake
        .calls("chat.postMessage")
        .into_iter()
        .filter(|c| c["thread_ts"] == msg.1.as_str())
        .map(|c| texts(&c))
        .collect();
    assert_eq!(replies.len(), 5, "{replies:#?}");
    assert!(
        replies[0].contains("A vote was refused") && !replies[0].contains("alice"),
        "{}",
        replies[0]
    );
    assert!(replies
        .iter()
        .any(|r| r.contains("approved by bob@example.com")));
    assert!(replies
        .iter()
        .any(|r| r.contains("approved by Carol@Example.com")));
    assert!(replies.iter().any(|r| r.contains("DELETE 3, 3 rows")));

    // The requester's human got a DM on resolution.
    let dms: Vec<Value> = h
        .fake
        .calls("chat.postMessage")
        .into_iter()
        .filter(|c| c["channel"] == "UALICE")
        .collect();
    assert_eq!(dms.len(), 1, "{dms:?}");
    assert!(texts(&dms[0]).contains("was approved"));

    // Bob's signed click replayed byte for byte (still inside the signature window) is refused.
    let before = h.workflow.get(id).await.unwrap();
    assert_eq!(
        h.send("/slack/interactions", bob_click.clone(), bob_sent_at, None)
            .await,
        StatusCode::UNAUTHORIZED
    );
    assert!(h
        .audit_actions()
        .await
        .iter()
        .any(|a| a == "slack.replay_refused"));
    // The same signature with its hex in another case is the same MAC: still a replay.
    let ts = bob_sent_at.to_string();
    let sig = sign(SECRET.as_bytes(), &ts, bob_click.as_bytes());
    let shouted = format!("v0={}", sig.trim_start_matches("v0=").to_ascii_uppercase());
    assert_eq!(
        h.send(
            "/slack/interactions",
            bob_click.clone(),
            bob_sent_at,
            Some(shouted)
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    // Bob clicking the stale button again after resolution changes nothing either.
    h.click_ok(clicked_again(&bob_click)).await;
    h.wait_for_calls("chat.postEphemeral", 2).await;
    let after = h.workflow.get(id).await.unwrap();
    assert_eq!(before.votes, after.votes);
    assert_eq!(after.request.status, RequestStatus::Executed);
    assert!(
        h.audit_actions()
            .await
            .iter()
            .filter(|a| *a == "vote.refused")
            .count()
            >= 2
    );
}

#[tokio::test]
async fn two_slack_approvals_release_the_statement_once_sqlite() {
    two_approvals_release_the_statement_once(sqlite_harness(false).await).await;
}

#[tokio::test]
async fn two_slack_approvals_release_the_statement_once_postgres() {
    two_approvals_release_the_statement_once(harness(fresh_pg().await, None, false).await).await;
}

#[tokio::test]
async fn forged_signature_and_stale_timestamp_are_refused_401_and_audited() {
    let h = sqlite_harness(false).await;
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let msg = h.message_of(id).await;
    let body = approve("UBOB", &msg, id);
    let forged = sign(b"not-the-secret", &now().to_string(), body.as_bytes());
    assert_eq!(
        h.send("/slack/interactions", body.clone(), now(), Some(forged))
            .await,
        StatusCode::UNAUTHORIZED
    );
    let old = now() - 600;
    assert_eq!(
        h.send("/slack/interactions", body.clone(), old, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.send(
            "/slack/commands",
            "user_id=UBOB&text=pending".into(),
            now(),
            Some("v0=00".into())
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let view = h.workflow.get(id).await.unwrap();
    assert!(view.votes.is_empty());
    assert_eq!(view.request.status, RequestStatus::Pending);
    let actions = h.audit_actions().await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "slack.signature_refused")
            .count(),
        2,
        "{actions:?}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "slack.stale_timestamp_refused")
            .count(),
        1,
        "{actions:?}"
    );
}

#[tokio::test]
async fn buttons_of_a_copied_or_forwarded_message_do_nothing() {
    let h = sqlite_harness(false).await;
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let (channel, ts) = h.message_of(id).await;
    let elsewhere = ("C0ELSEWHERE".to_string(), ts.clone());
    let other_ts = (channel, "1699999999.000001".to_string());
    h.click_ok(approve("UBOB", &elsewhere, id)).await;
    h.click_ok(approve("UBOB", &other_ts, id)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while h
        .audit_actions()
        .await
        .iter()
        .filter(|a| *a == "slack.foreign_message_refused")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "foreign clicks not audited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.workflow.get(id).await.unwrap().votes.is_empty());
    // Each clicker is told the vote was not recorded.
    let eph = h.wait_for_calls("chat.postEphemeral", 2).await;
    assert!(
        eph.iter()
            .all(|e| e.to_string().contains("your vote was not recorded")),
        "{eph:?}"
    );
}

#[tokio::test]
async fn deny_opens_a_modal_and_its_submission_denies_with_the_reason() {
    let h = sqlite_harness(false).await;
    let id = h.submit("DROP TABLE invoices", 2).await;
    h.drain().await;
    let msg = h.message_of(id).await;
    let body = click(
        "UCAROL",
        &msg.0,
        &msg.1,
        "countersign_deny",
        &format!("deny:{id}"),
    );
    h.click_ok(body).await;
    let opened = h.wait_for_calls("views.open", 1).await;
    assert_eq!(opened[0]["trigger_id"], "1234.5678.abcdef");
    let view = &opened[0]["view"];
    let metadata = view["private_metadata"].as_str().unwrap().to_string();
    assert!(
        h.workflow.get(id).await.unwrap().votes.is_empty(),
        "opening the modal must not vote"
    );

    let submission = json!({
        "type": "view_submission",
        "team": { "id": "T0001", "domain": "example" },
        "user": { "id": "UCAROL", "username": "carol", "team_id": "T0001" },
        "api_app_id": "A0001",
        "trigger_id": "2222.3333.ffff",
        "view": { "id": "V0001", "team_id": "T0001", "type": "modal", "callback_id": view["callback_id"],
                  "private_metadata": metadata, "hash": "h1",
                  "state": { "values": { "reason": { "reason": { "type": "plain_text_input", "value": "needs a WHERE clause" } } } } }
    });
    let body = serde_urlencoded::to_string([("payload", submission.to_string())]).unwrap();
    h.click_ok(body).await;
    h.wait_for(id, "denial", |v| v.request.status == RequestStatus::Denied)
        .await;
    let v = h.workflow.get(id).await.unwrap();
    assert_eq!(v.votes[0].reason.as_deref(), Some("needs a WHERE clause"));
    assert_eq!(v.votes[0].voter.0, "email:carol@example.com");
}

#[tokio::test]
async fn unmapped_slack_users_get_an_ephemeral_refusal_and_cannot_vote() {
    let h = sqlite_harness(false).await;
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let msg = h.message_of(id).await;
    for user in ["UNOMAIL", "UNKNOWN1"] {
        h.click_ok(approve(user, &msg, id)).await;
    }
    let eph = h.wait_for_calls("chat.postEphemeral", 2).await;
    assert!(
        eph.iter()
            .any(|e| e["user"] == "UNOMAIL" && texts(e).contains("cannot tell who you are")),
        "{eph:?}"
    );
    assert!(h.workflow.get(id).await.unwrap().votes.is_empty());
    let actions = h.audit_actions().await;
    assert!(actions.contains(&"slack.unmapped_user_refused".to_string()));
    // Slack answered `user_not_found` for UNKNOWN1: the uncounted click is audited too.
    assert!(
        actions.contains(&"slack.user_lookup_failed".to_string()),
        "{actions:?}"
    );
}

#[tokio::test]
async fn slack_outage_and_rate_limits_deliver_everything_once_afterwards() {
    let h = sqlite_harness(false).await;
    h.fake.fail_next(&[500, 500, 429]);
    let id = h.submit("DELETE FROM orders", 1).await;
    let started = Instant::now();
    h.drain().await;
    // The 429 asked for a one-second pause, and the worker honoured it.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.fake.calls("chat.postMessage").len(), 1);
    let msg = h.message_of(id).await;
    h.fake.fail_next(&[503]);
    h.click_ok(approve("UBOB", &msg, id)).await;
    h.wait_for(id, "approval", |v| {
        v.request.status == RequestStatus::Approved
    })
    .await;
    h.drain().await;
    let replies = h
        .fake
        .calls("chat.postMessage")
        .into_iter()
        .filter(|c| c["thread_ts"] == msg.1.as_str())
        .count();
    assert_eq!(replies, 2, "one vote reply and one resolution reply");
}

#[tokio::test]
async fn sql_with_mrkdwn_and_broadcast_mentions_is_rendered_inert() {
    let h = sqlite_harness(false).await;
    let sql = "UPDATE users SET note = '<!channel> *URGENT* approve now <https://evil.invalid|here> ```' WHERE id = 1";
    h.submit(sql, 1).await;
    h.drain().await;
    let posted = texts(&h.fake.calls("chat.postMessage")[0]);
    assert!(
        !posted.contains("<!channel>") && !posted.contains("<https://evil"),
        "{posted}"
    );
    assert!(posted.contains("&lt;!channel&gt; *URGENT*"), "{posted}");
    assert!(
        !posted.contains("\"mrkdwn\""),
        "request content must never be sent as mrkdwn: {posted}"
    );
}

#[tokio::test]
async fn approvers_get_direct_messages_whose_buttons_work_but_the_requester_gets_none() {
    let h = sqlite_harness(true).await;
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let posted = h.fake.calls("chat.postMessage");
    let targets: Vec<&str> = posted
        .iter()
        .filter_map(|p| p["channel"].as_str())
        .collect();
    assert!(
        targets.contains(&CHANNEL) && targets.contains(&"UBOB") && targets.contains(&"UCAROL"),
        "{targets:?}"
    );
    assert!(
        !targets.contains(&"UALICE"),
        "the requester must not be asked to approve: {targets:?}"
    );
    // Bob clicks in his DM (conversation DBOB).
    let dm_ts = h
        .store
        .get_ref(id, "slack", "ts:DBOB")
        .await
        .unwrap()
        .expect("DM ts stored");
    h.click_ok(approve("UBOB", &("DBOB".into(), dm_ts), id))
        .await;
    h.wait_for(id, "approval", |v| {
        v.request.status == RequestStatus::Approved
    })
    .await;
    h.drain().await;
    let updated: Vec<String> = h
        .fake
        .calls("chat.update")
        .iter()
        .filter_map(|u| u["channel"].as_str().map(String::from))
        .collect();
    assert!(
        updated.contains(&"DBOB".to_string()) && updated.contains(&CHANNEL.to_string()),
        "{updated:?}"
    );
}

#[tokio::test]
async fn slash_commands_list_and_show_only_what_the_user_may_review() {
    let h = sqlite_harness(false).await;
    let id = h.submit("DELETE FROM orders <!here>", 1).await;
    let (status, body) = h
        .send_for_body(
            "/slack/commands",
            "command=%2Fcountersign&text=pending&user_id=UBOB&channel_id=C0DBA".into(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["response_type"], "ephemeral");
    assert!(
        body["text"].as_str().unwrap().contains(&id.to_string()),
        "{body}"
    );
    let (_, body) = h
        .send_for_body(
            "/slack/commands",
            format!("command=%2Fcountersign&text=show+{id}&user_id=UBOB"),
        )
        .await;
    assert_eq!(body["response_type"], "ephemeral");
    let shown = body.to_string();
    assert!(
        shown.contains("DELETE FROM orders &lt;!here&gt;")
            && !shown.contains("countersign_approve"),
        "{shown}"
    );
    // Someone outside the approver groups sees nothing.
    h.fake
        .0
        .lock()
        .unwrap()
        .users
        .insert("UMALLORY".into(), Some("mallory@example.com".into()));
    let (_, body) = h
        .send_for_body(
            "/slack/commands",
            format!("command=%2Fcountersign&text=show+{id}&user_id=UMALLORY"),
        )
        .await;
    assert!(!body.to_string().contains("DELETE"), "{body}");
}

#[tokio::test]
async fn session_summary_is_threaded_under_each_held_request_once() {
    use countersign_bot::events::WorkflowEvent;
    use countersign_bot::sessions::SessionSummary;
    let h = sqlite_harness(false).await;
    let a = h.submit("DELETE FROM orders", 1).await;
    let b = h.submit("DELETE FROM invoices", 1).await;
    h.drain().await;
    let session = countersign_bot::SessionId::new();
    let event = WorkflowEvent::SessionSummary {
        requests: vec![a, b],
        summary: SessionSummary {
            session_id: Some(session),
            connection: "prod".into(),
            requester: "deploy-agent → alice@example.com".into(),
            duration_secs: 42,
            run: 7,
            blocked: 1,
            held: 2,
            approved: 1,
            rows_affected: 12,
            masked_fields: 0,
        },
    };
    h.store
        .enqueue(&event, &format!("session:{session}"), &["slack".into()])
        .await
        .unwrap();
    h.drain().await;
    for id in [a, b] {
        let (_, ts) = h.message_of(id).await;
        let replies: Vec<String> = h
            .fake
            .calls("chat.postMessage")
            .into_iter()
            .filter(|c| c["thread_ts"] == ts.as_str())
            .map(|c| texts(&c))
            .collect();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(
            replies[0].contains(
                "after 42 s: 7 statements run, 1 blocked, 2 held, 1 approved, 12 rows affected"
            ),
            "{}",
            replies[0]
        );
        assert!(replies[0].contains(&format!("countersign sessions show {session}")));
    }
}

#[tokio::test]
async fn redelivering_an_event_with_the_same_key_posts_nothing_twice() {
    use countersign_bot::events::{Notifier, WorkflowEvent};
    let h = sqlite_harness(false).await;
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let view = h.workflow.get(id).await.unwrap();
    // A crash after posting but before the outbox row was marked delivered means a second delivery.
    let config: SlackConfig = serde_json::from_value(json!({
        "bot_token_env": "X", "signing_secret_env": "Y",
        "api_base_url": h.fake_base(), "routes": { "groups": { "dba": [CHANNEL] } } }))
    .unwrap();
    let api = SlackApi::new(config.api_base(), TOKEN).unwrap();
    let notifier = SlackNotifier::new(config, api, h.store.clone(), directory());
    let created = WorkflowEvent::Created {
        request: view.clone(),
    };
    notifier.deliver("created-again", &created).await.unwrap();
    let reminder = WorkflowEvent::Reminder {
        request: view,
        escalated_to: vec![],
    };
    notifier.deliver("reminder-1", &reminder).await.unwrap();
    notifier.deliver("reminder-1", &reminder).await.unwrap();
    let posted = h.fake.calls("chat.postMessage");
    assert_eq!(
        posted.iter().filter(|c| c["thread_ts"].is_null()).count(),
        1,
        "{posted:?}"
    );
    assert_eq!(
        posted.iter().filter(|c| !c["thread_ts"].is_null()).count(),
        1,
        "{posted:?}"
    );
}

#[tokio::test]
async fn an_escalation_mentions_the_escalate_to_members_and_posts_to_their_groups_channel() {
    use countersign_bot::events::{Notifier, WorkflowEvent};
    let h = sqlite_harness(false).await;
    h.fake
        .0
        .lock()
        .unwrap()
        .users
        .insert("UDAVE".into(), Some("dave@example.com".into()));
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let view = h.workflow.get(id).await.unwrap();
    let config: SlackConfig = serde_json::from_value(json!({
        "bot_token_env": "X", "signing_secret_env": "Y", "api_base_url": h.fake_base(),
        "routes": { "groups": { "dba": [CHANNEL], "leads": ["C0LEADS"] } } }))
    .unwrap();
    let api = SlackApi::new(config.api_base(), TOKEN).unwrap();
    let mut groups = vec![ApproverGroup {
        name: "leads".into(),
        members: vec!["dave@example.com".into()],
        idp_groups: vec![],
    }];
    groups.extend(
        ["dba"]
            .iter()
            .map(|g| directory().group(g).unwrap().clone()),
    );
    let notifier = SlackNotifier::new(config, api, h.store.clone(), ApproverDirectory::new(groups));
    let escalation = WorkflowEvent::Reminder {
        request: view,
        escalated_to: vec!["leads".into()],
    };
    notifier.deliver("esc", &escalation).await.unwrap();
    // Delivered again (a crash before the outbox row was marked): nothing is posted twice.
    notifier.deliver("esc", &escalation).await.unwrap();
    let posted = h.fake.calls("chat.postMessage");
    let text = |c: &Value| c.to_string();
    // In the approvers' thread: the escalation, mentioning Dave.
    let in_thread: Vec<&Value> = posted
        .iter()
        .filter(|c| c["channel"] == CHANNEL && !c["thread_ts"].is_null())
        .collect();
    assert_eq!(in_thread.len(), 1, "{posted:?}");
    assert!(
        text(in_thread[0]).contains("Escalated to leads"),
        "{posted:?}"
    );
    assert!(text(in_thread[0]).contains("<@UDAVE>"), "{posted:?}");
    // In the leads' channel: the request without buttons, and the escalation under it.
    let leads: Vec<&Value> = posted
        .iter()
        .filter(|c| c["channel"] == "C0LEADS")
        .collect();
    assert_eq!(leads.len(), 2, "{posted:?}");
    assert!(leads[0]["thread_ts"].is_null(), "{posted:?}");
    assert!(text(leads[0]).contains("DELETE FROM orders"), "{posted:?}");
    assert!(
        !text(leads[0]).contains("countersign_approve"),
        "{posted:?}"
    );
    assert!(text(leads[1]).contains("<@UDAVE>"), "{posted:?}");
}

// ---------------------------------------------------------------------------------------------------------
// A Slack that accepts connections and never answers.

/// Records what it is given, at once (stands in for e-mail or a webhook).
#[derive(Default)]
struct PromptSink {
    delivered: Mutex<Vec<&'static str>>,
}

#[async_trait::async_trait]
impl countersign_bot::events::Notifier for PromptSink {
    fn sink(&self) -> &str {
        "prompt"
    }

    async fn deliver(
        &self,
        _key: &str,
        event: &countersign_bot::events::WorkflowEvent,
    ) -> Result<(), countersign_bot::events::DeliveryError> {
        self.delivered.lock().unwrap().push(event.kind());
        Ok(())
    }
}

/// A click as Slack sends it for a user of workspace `team` (a Slack Connect guest in our channel).
fn approve_from_team(user: &str, team: &str, msg: &(String, String), id: RequestId) -> String {
    approve(user, msg, id).replace("T0001", team)
}

async fn wait_for_audits(
    h: &Harness,
    action: &str,
    n: usize,
) -> Vec<countersign_bot::audit::AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Vec<_> = h
            .store
            .audit_records(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.entry.action == action)
            .collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} {action} audit records, got {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_slack_that_never_answers_times_out_without_stalling_other_channels() {
    let (store, _dir) = fresh_sqlite().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept every connection and hold it open without writing a byte.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config: SlackConfig = serde_json::from_value(json!({
        "bot_token_env": "SLACK_BOT_TOKEN",
        "signing_secret_env": "SLACK_SIGNING_SECRET",
        "api_base_url": format!("http://{addr}/api"),
        "routes": { "groups": { "dba": [CHANNEL] } },
        "timeout_secs": 2
    }))
    .unwrap();
    config.validate().unwrap();
    let api = SlackApi::new(config.api_base(), TOKEN)
        .unwrap()
        .with_timeout(Duration::from_secs(config.timeout_secs));
    let slack = SlackNotifier::new(config, api, store.clone(), directory());
    let prompt = Arc::new(PromptSink::default());
    let workflow = Workflow::new(
        store.clone(),
        directory(),
        vec!["slack".into(), "prompt".into()],
    );
    let policy = RetryPolicy {
        base: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    let worker = Arc::new(OutboxWorker::new(
        store.clone(),
        vec![Arc::new(slack), prompt.clone()],
        policy,
    ));
    let task = worker.spawn(Duration::from_millis(10));

    common::approved_request(&workflow, "DELETE FROM stalled").await;

    // Every event reaches the other channel well within one Slack timeout, while Slack hangs.
    let started = Instant::now();
    let expected = common::EXPECTED_KINDS;
    while prompt.delivered.lock().unwrap().len() < expected.len() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the other channel stalled behind Slack: {:?}",
            prompt.delivered.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*prompt.delivered.lock().unwrap(), expected);

    // The hanging Slack call gives up after its timeout and the item stays queued for a retry.
    let slack_item = loop {
        let items = store.outbox_list(None, 20).await.unwrap();
        let head = items
            .into_iter()
            .filter(|i| i.sink == "slack")
            .min_by_key(|i| i.id)
            .expect("a slack item");
        if head.last_error.is_some() {
            break head;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the Slack call never timed out: {head:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    task.abort();
    silent.abort();
    assert_eq!(slack_item.status, OutboxStatus::Pending, "{slack_item:?}");
    let error = slack_item.last_error.unwrap_or_default();
    assert!(error.contains("did not answer within"), "{error}");
}

#[tokio::test]
async fn no_direct_message_goes_to_another_organisations_user_with_an_approvers_email() {
    let h = sqlite_harness(true).await;
    {
        let mut s = h.fake.0.lock().unwrap();
        // The only Slack account with Bob's address belongs to another organisation (Slack Connect).
        s.users.remove("UBOB");
        s.users
            .insert("UEVE".into(), Some("bob@example.com".into()));
        s.overrides
            .insert("UEVE".into(), json!({ "team_id": "T0002" }));
    }
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let targets: Vec<String> = h
        .fake
        .calls("chat.postMessage")
        .iter()
        .filter_map(|p| p["channel"].as_str().map(str::to_owned))
        .collect();
    assert!(
        targets.iter().any(|t| t == "UCAROL"),
        "members still get their DM: {targets:?}"
    );
    assert!(
        !targets.iter().any(|t| t == "UEVE"),
        "the statement was sent to another organisation's user: {targets:?}"
    );
    assert!(h
        .store
        .get_ref(id, "slack", "dm:bob@example.com")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn users_of_another_workspace_cannot_vote_with_an_approvers_email() {
    let h = sqlite_harness(false).await;
    {
        let mut s = h.fake.0.lock().unwrap();
        // Another organisation, sharing the channel through Slack Connect, gave its user Bob's address.
        s.users
            .insert("UEVE".into(), Some("bob@example.com".into()));
        s.overrides
            .insert("UEVE".into(), json!({ "team_id": "T0002" }));
        // Slack flags a member of a foreign workspace party to a shared channel as a stranger.
        s.users
            .insert("UMIMIC".into(), Some("carol@example.com".into()));
        s.overrides
            .insert("UMIMIC".into(), json!({ "is_stranger": true }));
    }
    let id = h.submit("DELETE FROM orders", 1).await;
    h.drain().await;
    let msg = h.message_of(id).await;
    for (user, team) in [("UEVE", "T0002"), ("UMIMIC", "T0001")] {
        h.click_ok(approve_from_team(user, team, &msg, id)).await;
    }
    let eph = h.wait_for_calls("chat.postEphemeral", 2).await;
    for user in ["UEVE", "UMIMIC"] {
        assert!(
            eph.iter().any(|e| e["user"] == user
                && texts(e).contains("not counted")
                && texts(e).contains("another organisation")),
            "{user}: {eph:?}"
        );
    }
    let refused = wait_for_audits(&h, "slack.outside_user_refused", 2).await;
    let eve = refused
        .iter()
        .find(|r| r.entry.actor == "slack:UEVE")
        .expect("Eve's refusal is audited");
    assert_eq!(eve.entry.request_id, Some(id.to_string()));
    assert_eq!(eve.entry.decision.as_deref(), Some("refused"));
    assert_eq!(eve.entry.detail["team_id"], "T0002");
    assert_eq!(eve.entry.detail["reason"], "other_team");
    let mimic = refused
        .iter()
        .find(|r| r.entry.actor == "slack:UMIMIC")
        .expect("the stranger's refusal is audited");
    assert_eq!(mimic.entry.detail["reason"], "stranger");
    let view = h.workflow.get(id).await.unwrap();
    assert!(view.votes.is_empty(), "{:?}", view.votes);
    assert_eq!(view.request.status, RequestStatus::Pending);

    // Nor may the outsider list or read requests as Bob.
    let (_, body) = h
        .send_for_body(
            "/slack/commands",
            "command=%2Fcountersign&text=pending&user_id=UEVE".into(),
        )
        .await;
    assert!(!body.to_string().contains(&id.to_string()), "{body}");
    assert!(body.to_string().contains("another organisation"), "{body}");
    wait_for_audits(&h, "slack.outside_user_refused", 3).await;

    // A member of the app's own workspace, known only through users.info, still counts.
    h.click_ok(approve("UCAROL", &msg, id)).await;
    h.wait_for(id, "approval", |v| {
        v.request.status == RequestStatus::Approved
    })
    .await;
    let view = h.workflow.get(id).await.unwrap();
    let voters: Vec<&str> = view.votes.iter().map(|v| v.voter.0.as_str()).collect();
    assert_eq!(voters, ["email:carol@example.com"]);
    // The app's own team is learnt once, however many users are looked up.
    assert_eq!(h.fake.calls("auth.test").len(), 1);
}

#[tokio::test]
async fn trusted_teams_and_user_map_entries_vouch_for_users_of_other_workspaces() {
    let (store, dir) = fresh_sqlite().await;
    let h = harness_with(
        store,
        Some(dir),
        false,
        json!({
            "trusted_teams": ["T0002"],
            // The operator vouches for this user id, wherever its account lives.
            "user_map": { "UBOBEXT": "bob@example.com" }
        }),
    )
    .await;
    {
        let mut s = h.fake.0.lock().unwrap();
        s.users
            .insert("UCAROLX".into(), Some("carol@example.com".into()));
        s.overrides.insert(
            "UCAROLX".into(),
            json!({ "team_id": "T0002", "is_stranger": true }),
        );
        s.users
            .insert("UBOBEXT".into(), Some("mallory@elsewhere.example".into()));
        s.overrides.insert(
            "UBOBEXT".into(),
            json!({ "team_id": "T0009", "is_stranger": true }),
        );
        // Trusting T0002 trusts nobody else.
        s.users
            .insert("UEVE".into(), Some("carol@example.com".into()));
        s.overrides
            .insert("UEVE".into(), json!({ "team_id": "T0003" }));
    }
    let id = h.submit("DELETE FROM orders", 2).await;
    h.drain().await;
    let msg = h.message_of(id).await;
    h.click_ok(approve_from_team("UEVE", "T0003", &msg, id))
        .await;
    let refused = wait_for_audits(&h, "slack.outside_user_refused", 1).await;
    assert_eq!(refused[0].entry.detail["team_id"], "T0003");
    assert!(h.workflow.get(id).await.unwrap().votes.is_empty());

    h.click_ok(approve_from_team("UCAROLX", "T0002", &msg, id))
        .await;
    h.wait_for(id, "the trusted team's vote", |v| v.votes.len() == 1)
        .await;
    h.click_ok(approve_from_team("UBOBEXT", "T0009", &msg, id))
        .await;
    h.wait_for(id, "approval", |v| {
        v.request.status == RequestStatus::Approved
    })
    .await;
    let view = h.workflow.get(id).await.unwrap();
    let mut voters: Vec<&str> = view.votes.iter().map(|v| v.voter.0.as_str()).collect();
    voters.sort();
    assert_eq!(voters, ["email:bob@example.com", "email:carol@example.com"]);
    assert_eq!(
        h.audit_actions()
            .await
            .iter()
            .filter(|a| *a == "slack.outside_user_refused")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_statement_the_message_shows_only_in_part_cannot_be_approved_from_slack() {
    let h = sqlite_harness(false).await;
    // Past the 2,000 characters a message shows: what an approver in Slack would never read.
    let sql = format!(
        "UPDATE orders SET note = 'x' WHERE id = 1;{} UPDATE orders SET note = 'pwned'",
        "\n-- routine maintenance, see OPS-42".repeat(60)
    );
    let id = h.submit(&sql, 1).await;
    h.drain().await;
    let posted = h.wait_for_calls("chat.postMessage", 1).await;
    let message = texts(&posted[0]);
    assert!(
        message.contains("can't be approved from Slack"),
        "{message}"
    );
    assert!(
        !message.contains("countersign_approve") && !message.contains("'pwned'"),
        "{message}"
    );
    assert!(message.contains("countersign_deny"), "{message}");

    // An Approve click for it (a button from elsewhere, a crafted payload signed by Slack) is refused.
    let msg = h.message_of(id).await;
    h.click_ok(approve("UBOB", &msg, id)).await;
    let eph = h.wait_for_calls("chat.postEphemeral", 1).await;
    assert!(texts(&eph[0]).contains("only part of this"), "{eph:?}");
    assert!(h.workflow.get(id).await.unwrap().votes.is_empty());
    assert!(h
        .audit_actions()
        .await
        .contains(&"vote.refused".to_string()));
}

/// A `created` notification dead-lettered during an outage: the next event posts the request's
/// message as it is then (replies thread on it), and retrying the dead item adds no stale copy.
#[tokio::test]
async fn a_request_whose_created_message_was_dead_lettered_is_posted_by_its_next_event() {
    let h = sqlite_harness(false).await;
    let id = h.submit("DELETE FROM orders", 2).await;
    let created = pending_created(&h).await;
    h.store
        .outbox_failed(created.id, "Slack was down", None)
        .await
        .unwrap();
    h.workflow
        .vote(
            id,
            &human("bob@example.com"),
            countersign_bot::Decision::Approve,
            None,
            "api",
        )
        .await
        .unwrap();
    h.drain_around_dead().await;
    let posts = h.fake.calls("chat.postMessage");
    let roots: Vec<&Value> = posts
        .iter()
        .filter(|p| p.get("thread_ts").is_none())
        .collect();
    assert_eq!(roots.len(), 1, "{posts:#?}");
    assert!(
        roots[0].to_string().contains("1 of 2"),
        "the message shows the vote: {}",
        roots[0]
    );
    assert!(
        posts.iter().any(|p| p.get("thread_ts").is_some()),
        "the vote's reply is threaded"
    );
    assert!(h.store.outbox_retry(created.id, 0).await.unwrap());
    h.drain().await;
    let roots_after = h
        .fake
        .calls("chat.postMessage")
        .into_iter()
        .filter(|p| p.get("thread_ts").is_none())
        .count();
    assert_eq!(
        roots_after, 1,
        "no stale copy from the retried created item"
    );
}

#[tokio::test]
async fn a_retry_after_of_days_pauses_slack_for_an_hour_at_most() {
    let h = sqlite_harness(false).await;
    h.fake.fail_next(&[4290]);
    h.submit("DELETE FROM orders", 1).await;
    h.worker.run_once().await.unwrap();
    let item = pending_created(&h).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let wait = item.next_attempt_ms - now;
    assert!(
        (0..=3_600_000).contains(&wait),
        "retried in {wait} ms, not 999999 s"
    );
}

/// The pending `created` outbox item of the harness's request.
async fn pending_created(h: &Harness) -> countersign_bot::store::OutboxItem {
    h.store
        .outbox_list(Some(OutboxStatus::Pending), 10)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.event_kind == "created")
        .expect("a pending created item")
}

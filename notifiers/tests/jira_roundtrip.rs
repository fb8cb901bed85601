//! End to end against a local fake Jira Cloud: request → issue → signed webhook transitions → votes.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use countersign_bot::testing::{fresh_pg, fresh_sqlite, human, workload};
use countersign_bot::{
    ApproverDirectory, ApproverGroup, Decision, NewRequest, RequestId, RequestStatus,
    RequesterChain, StatementHash, Store, Submitted, VoteResult, Workflow,
};
use countersign_notifiers::jira::{
    self, adf, JiraConfig, JiraCredentials, JiraInbound, JiraNotifier,
};
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

const SERVICE_ACCOUNT: &str = "acc-countersign";
const SECRET: &str = "jira-webhook-secret";

#[derive(Default)]
struct Issue {
    status: String,
    fields: Value,
    comments: Vec<Value>,
    histories: Vec<Value>,
}

#[derive(Default)]
struct FakeJira {
    issues: HashMap<String, Issue>,
    users: HashMap<String, String>,
    next_history: u64,
    unauthorized: u32,
}

type Fake = Arc<Mutex<FakeJira>>;

const TRANSITIONS: &[(&str, &str, &str)] = &[
    ("11", "Approve", "Approved"),
    ("21", "Deny", "Denied"),
    ("31", "Back to review", "In Review"),
    ("41", "Done", "Done"),
];

impl FakeJira {
    /// Adds a changelog entry by `account` changing one `item` of issue `key`.
    fn record_change(&mut self, key: &str, account: &str, item: Value) {
        self.next_history += 1;
        let id = (10_000 + self.next_history).to_string();
        let created = format!("2026-01-01T10:{:02}:00.000+0000", self.next_history);
        let issue = self.issues.get_mut(key).expect("issue exists");
        issue.histories.push(json!({
            "id": id, "author": { "accountId": account }, "created": created, "items": [item]
        }));
    }

    /// `account` rewrites the issue's `field` (summary or description), as a user editing it would.
    fn edit_issue(&mut self, key: &str, account: &str, field: &str) {
        let item = json!({ "field": field, "fromString": "DELETE FROM t", "toString": "SELECT 1" });
        self.record_change(key, account, item);
    }

    fn move_issue(&mut self, key: &str, account: &str, to: &str) {
        let issue = self.issues.get_mut(key).expect("issue exists");
        let from = std::mem::replace(&mut issue.status, to.to_string());
        let item = json!({ "field": "status", "fromString": from, "toString": to });
        self.record_change(key, account, item);
    }
}

fn authorized(fake: &Fake, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bot@example.com:api-token")
    );
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str());
    if !ok {
        fake.lock().unwrap().unauthorized += 1;
    }
    ok
}

async fn spawn_fake_jira() -> (String, Fake) {
    let fake: Fake = Arc::default();
    let app = Router::new()
        .route(
            "/rest/api/3/issue",
            post(|State(f): State<Fake>, h: HeaderMap, Json(body): Json<Value>| async move {
                if !authorized(&f, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                let mut f = f.lock().unwrap();
                let key = format!("OPS-{}", f.issues.len() + 1);
                f.issues.insert(key.clone(), Issue { status: "To Review".into(), fields: body["fields"].clone(), ..Issue::default() });
                (StatusCode::CREATED, Json(json!({ "id": "1", "key": key })))
            }),
        )
        .route(
            "/rest/api/3/issue/{key}",
            get(|State(f): State<Fake>, h: HeaderMap, Path(key): Path<String>| async move {
                if !authorized(&f, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                let f = f.lock().unwrap();
                match f.issues.get(&key) {
                    Some(i) => (StatusCode::OK, Json(json!({
                        "key": key, "fields": { "status": { "name": i.status } },
                        "changelog": { "startAt": 0, "histories": i.histories }
                    }))),
                    None => (StatusCode::NOT_FOUND, Json(json!({}))),
                }
            }),
        )
        .route(
            "/rest/api/3/issue/{key}/comment",
            post(|State(f): State<Fake>, h: HeaderMap, Path(key): Path<String>, Json(body): Json<Value>| async move {
                if !authorized(&f, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                let mut f = f.lock().unwrap();
                let issue = f.issues.get_mut(&key).expect("issue");
                issue.comments.push(body["body"].clone());
                (StatusCode::CREATED, Json(json!({ "id": issue.comments.len().to_string() })))
            }),
        )
        .route(
            "/rest/api/3/issue/{key}/transitions",
            get(|State(f): State<Fake>, h: HeaderMap| async move {
                if !authorized(&f, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                let list: Vec<Value> = TRANSITIONS.iter().map(|(id, name, to)| json!({ "id": id, "name": name, "to": { "name": to } })).collect();
                (StatusCode::OK, Json(json!({ "transitions": list })))
            })
            .post(|State(f): State<Fake>, h: HeaderMap, Path(key): Path<String>, Json(body): Json<Value>| async move {
                if !authorized(&f, &h) {
                    return StatusCode::UNAUTHORIZED;
                }
                let id = body["transition"]["id"].as_str().unwrap_or_default().to_string();
                let Some((_, _, to)) = TRANSITIONS.iter().find(|t| t.0 == id) else {
                    return StatusCode::BAD_REQUEST;
                };
                f.lock().unwrap().move_issue(&key, SERVICE_ACCOUNT, to);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/rest/api/3/user",
            get(|State(f): State<Fake>, h: HeaderMap, Query(q): Query<HashMap<String, String>>| async move {
                if !authorized(&f, &h) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                let id = q.get("accountId").cloned().unwrap_or_default();
                let email = f.lock().unwrap().users.get(&id).cloned();
                match email {
                    Some(e) => (StatusCode::OK, Json(json!({ "accountId": id, "emailAddress": e }))),
                    None => (StatusCode::NOT_FOUND, Json(json!({}))),
                }
            }),
        )
        .route(
            "/rest/api/3/myself",
            get(|| async { Json(json!({ "accountId": SERVICE_ACCOUNT, "emailAddress": "bot@example.com" })) }),
        )
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    {
        let mut f = fake.lock().unwrap();
        f.users
            .insert("acc-alice".into(), "alice@example.com".into());
        f.users.insert("acc-bob".into(), "Bob@Example.com".into());
    }
    (format!("http://{addr}"), fake)
}

fn config(base_url: &str) -> JiraConfig {
    let mut cfg: JiraConfig = toml::from_str(&format!(
        r#"
        base_url = "{base_url}"
        project_key = "OPS"
        public_base_url = "https://countersign.example.com"
        approve_status = "Approved"
        deny_status = "Denied"
        revert_transition = "Back to review"
        max_statement_chars = 200
        [transitions]
        approved = "Done"
        "#
    ))
    .expect("config parses");
    cfg.timeout_secs = 5;
    cfg.validate().expect("config valid");
    cfg
}

fn creds() -> JiraCredentials {
    JiraCredentials {
        email: "bot@example.com".into(),
        api_token: "api-token".into(),
        webhook_secret: SECRET.into(),
    }
}

struct Harness {
    store: Arc<dyn Store>,
    workflow: Arc<Workflow>,
    worker: OutboxWorker,
    router: Router,
    fake: Fake,
}

impl Harness {
    /// Submits `sql`, delivers the outbox, and returns the request and the key of its Jira issue.
    async fn issue_for(&self, sql: &str) -> (RequestId, String) {
        let view = submit(&self.workflow, sql).await;
        drain(&self.worker).await;
        let key = self
            .store
            .get_ref(view.request.id, "jira", "issue")
            .await
            .expect("ref")
            .expect("issue key stored");
        (view.request.id, key)
    }
}

async fn harness(store: Arc<dyn Store>) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (base, fake) = spawn_fake_jira().await;
    let cfg = config(&base);
    let directory = ApproverDirectory::new([ApproverGroup {
        name: "dba".into(),
        members: vec![
            "alice@example.com".into(),
            "bob@example.com".into(),
            "carol@example.com".into(),
        ],
        idp_groups: vec![],
    }]);
    let workflow = Arc::new(Workflow::new(
        Arc::clone(&store),
        directory,
        vec!["jira".into()],
    ));
    let notifier = JiraNotifier::new(cfg.clone(), &creds(), Arc::clone(&store)).expect("notifier");
    let policy = RetryPolicy {
        base: Duration::from_millis(5),
        ..RetryPolicy::default()
    };
    let worker = OutboxWorker::new(Arc::clone(&store), vec![Arc::new(notifier)], policy);
    let router =
        jira::router(JiraInbound::new(&cfg, &creds(), Arc::clone(&workflow)).expect("inbound"));
    Harness {
        store,
        workflow,
        worker,
        router,
        fake,
    }
}

async fn submit(wf: &Workflow, sql: &str) -> countersign_bot::RequestView {
    let new = NewRequest {
        connection: "prod".into(),
        statement: sql.into(),
        statement_hash: StatementHash::of_text(sql),
        requester: RequesterChain(vec![workload("deploy-agent"), human("alice@example.com")]),
        rule: "writes-need-review".into(),
        reasons: vec!["DELETE without LIMIT".into()],
        approver_groups: vec!["dba".into()],
        quorum: 2,
        ttl_secs: 3600,
        origin: "http".into(),
        session_id: None,
        reminders: Default::default(),
    };
    match wf.submit(new).await.expect("submit") {
        Submitted::Created(v) => v,
        other => panic!("expected a new request, got {other:?}"),
    }
}

async fn drain(worker: &OutboxWorker) {
    for _ in 0..50 {
        if worker.run_once().await.expect("run") == 0 {
            return;
        }
    }
}

async fn webhook(router: &Router, body: &str, signature: Option<String>) -> (StatusCode, Value) {
    let mut req = Request::post("/jira/webhook").header("content-type", "application/json");
    if let Some(sig) = signature {
        req = req.header("x-hub-signature", sig);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("call");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The human moves the issue in Jira, and Jira calls the webhook (signed) with a payload we don't trust.
async fn move_in_jira(h: &Harness, key: &str, account: &str, to: &str) -> (StatusCode, Value) {
    h.fake.lock().unwrap().move_issue(key, account, to);
    let body = json!({ "webhookEvent": "jira:issue_updated", "issue": { "key": key, "fields": { "status": { "name": "Approved" } } },
        "user": { "accountId": "forged-admin" } }).to_string();
    let sig = jira::sign_body(SECRET.as_bytes(), body.as_bytes());
    webhook(&h.router, &body, Some(sig)).await
}

async fn audit_actions(store: &Arc<dyn Store>) -> Vec<String> {
    store
        .audit_records(0, 1000)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.entry.action)
        .collect()
}

#[tokio::test]
async fn jira_transition_and_api_vote_reach_quorum_and_requester_is_refused() {
    let (store, _dir) = fresh_sqlite().await;
    let h = harness(store).await;
    // Markup in the statement stays text; it fits the configured 200 characters, so Jira can approve it.
    let sql = format!(
        "DELETE FROM orders WHERE note = '{}'",
        "*[link](https://evil)* ".repeat(6)
    );
    let (id, key) = h.issue_for(&sql).await;
    {
        let f = h.fake.lock().unwrap();
        let issue = &f.issues[&key];
        assert_eq!(issue.fields["project"]["key"], "OPS");
        let text = adf::plain_text(&issue.fields["description"]);
        assert!(
            text.contains("deploy-agent → alice@example.com"),
            "requester chain shown: {text}"
        );
        assert!(text.contains(&sql), "statement shown whole: {text}");
        assert!(!text.contains("truncated"), "{text}");
        // No link to the request page: it opens only from an e-mail approval link.
        assert!(!text.contains("/requests/"), "{text}");
        assert_eq!(f.unauthorized, 0);
    }

    // The requester (alice, behind the agent) moves the issue to Approved: refused, commented, moved back.
    let (status, body) = move_in_jira(&h, &key, "acc-alice", "Approved").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "refused", "{body}");
    drain(&h.worker).await;
    {
        let f = h.fake.lock().unwrap();
        let issue = &f.issues[&key];
        assert_eq!(
            issue.status, "In Review",
            "moved back after the refused vote"
        );
        let last = adf::plain_text(issue.comments.last().expect("refusal comment"));
        assert!(last.contains("requester_cannot_approve"), "{last}");
    }
    // Countersign's own move-back triggers a webhook too; it is not a vote.
    let body = json!({ "issue": { "key": key } }).to_string();
    let (_, resp) = webhook(
        &h.router,
        &body,
        Some(jira::sign_body(SECRET.as_bytes(), body.as_bytes())),
    )
    .await;
    assert_eq!(resp["outcome"], "ignored");

    // Bob approves in Jira: one vote, as bob (e-mail from the user lookup, not from the payload).
    let (_, body) = move_in_jira(&h, &key, "acc-bob", "Approved").await;
    assert_eq!(body["outcome"], "recorded", "{body}");
    let v = h.workflow.get(id).await.expect("get");
    assert_eq!(v.votes.len(), 1);
    assert_eq!(v.votes[0].voter.0, "email:bob@example.com");
    assert_eq!(v.votes[0].channel, "jira");

    // The same webhook delivered again (same changelog entry) votes nothing and is audited.
    let body = json!({ "issue": { "key": key } }).to_string();
    let (_, resp) = webhook(
        &h.router,
        &body,
        Some(jira::sign_body(SECRET.as_bytes(), body.as_bytes())),
    )
    .await;
    assert_eq!(resp["outcome"], "duplicate");
    assert_eq!(h.workflow.get(id).await.expect("get").votes.len(), 1);

    // Bob again via Slack counts once.
    let r = h
        .workflow
        .vote(
            id,
            &human("bob@example.com"),
            Decision::Approve,
            None,
            "slack",
        )
        .await
        .expect("vote");
    assert!(
        matches!(r, VoteResult::Refused(ref x) if x.code == "already_voted"),
        "{r:?}"
    );

    // Carol via the API makes two distinct humans: approved.
    let r = h
        .workflow
        .vote(
            id,
            &human("carol@example.com"),
            Decision::Approve,
            None,
            "api",
        )
        .await
        .expect("vote");
    assert!(
        matches!(r, VoteResult::Recorded { resolved: true, .. }),
        "{r:?}"
    );
    assert_eq!(
        h.workflow.get(id).await.expect("get").request.status,
        RequestStatus::Approved
    );
    drain(&h.worker).await;
    {
        let f = h.fake.lock().unwrap();
        let issue = &f.issues[&key];
        assert_eq!(issue.status, "Done", "resolution transition applied");
        let all: String = issue.comments.iter().map(adf::plain_text).collect();
        assert!(all.contains("Bob@Example.com approved via jira"), "{all}");
        assert!(all.contains("carol@example.com approved via api"), "{all}");
        assert!(all.contains("approved with 2 of 2 approvals"), "{all}");
    }
    let dead = h
        .store
        .outbox_list(Some(countersign_bot::store::OutboxStatus::Dead), 10)
        .await
        .expect("list");
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    let actions = audit_actions(&h.store).await;
    assert!(actions.iter().any(|a| a == "jira.replay_refused"));
    assert!(actions.iter().any(|a| a == "vote.refused"));
}

#[tokio::test]
async fn unsigned_or_forged_webhook_is_refused_and_audited() {
    let (store, _dir) = fresh_sqlite().await;
    let h = harness(store).await;
    let (id, key) = h.issue_for("DELETE FROM t").await;
    h.fake
        .lock()
        .unwrap()
        .move_issue(&key, "acc-bob", "Approved");
    let body = json!({ "issue": { "key": key } }).to_string();

    let (status, _) = webhook(&h.router, &body, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let forged = jira::sign_body(b"guessed-secret", body.as_bytes());
    let (status, _) = webhook(&h.router, &body, Some(forged)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(h.workflow.get(id).await.expect("get").votes.is_empty());
    let refusals = audit_actions(&h.store)
        .await
        .into_iter()
        .filter(|a| a == "jira.signature_refused")
        .count();
    assert_eq!(refusals, 2);
}

#[tokio::test]
async fn jira_deny_transition_vetoes_on_postgres() {
    let h = harness(fresh_pg().await).await;
    let (id, key) = h.issue_for("DROP TABLE audit_log").await;
    let (_, body) = move_in_jira(&h, &key, "acc-bob", "Denied").await;
    assert_eq!(body["outcome"], "recorded", "{body}");
    let v = h.workflow.get(id).await.expect("get");
    assert_eq!(v.request.status, RequestStatus::Denied);
    assert_eq!(v.votes[0].decision, Decision::Deny);
    drain(&h.worker).await;
    let f = h.fake.lock().unwrap();
    let all: String = f.issues[&key]
        .comments
        .iter()
        .map(adf::plain_text)
        .collect();
    assert!(all.contains("denied with 0 of 2 approvals"), "{all}");
}

#[tokio::test]
async fn a_statement_the_issue_shows_only_in_part_cannot_be_approved_from_jira() {
    let (store, _dir) = fresh_sqlite().await;
    let h = harness(store).await;
    // The part past the configured 200 characters is what an approver in Jira would never see.
    let long_sql = format!(
        "UPDATE orders SET note = 'x' WHERE id = 1;{} UPDATE orders SET note = 'pwned'",
        "\n-- routine maintenance".repeat(12)
    );
    let (id, key) = h.issue_for(&long_sql).await;
    {
        let f = h.fake.lock().unwrap();
        let text = adf::plain_text(&f.issues[&key].fields["description"]);
        assert!(!text.contains("'pwned'"), "{text}");
        assert!(
            text.contains("truncated: 200 of") && text.contains("can't be approved from Jira"),
            "{text}"
        );
    }

    let (_, body) = move_in_jira(&h, &key, "acc-bob", "Approved").await;
    assert_eq!(body["outcome"], "refused", "{body}");
    assert!(
        body.to_string().contains("statement_not_shown_whole"),
        "{body}"
    );
    drain(&h.worker).await;
    {
        let f = h.fake.lock().unwrap();
        let issue = &f.issues[&key];
        assert_eq!(
            issue.status, "In Review",
            "moved back after the refused vote"
        );
        let last = adf::plain_text(issue.comments.last().expect("refusal comment"));
        assert!(last.contains("statement_not_shown_whole"), "{last}");
    }
    assert!(h.workflow.get(id).await.expect("get").votes.is_empty());
    assert!(audit_actions(&h.store)
        .await
        .iter()
        .any(|a| a == "vote.refused"));

    // A denial needs no more than what is shown: it counts.
    let (_, body) = move_in_jira(&h, &key, "acc-bob", "Denied").await;
    assert_eq!(body["outcome"], "recorded", "{body}");
    let v = h.workflow.get(id).await.expect("get");
    assert_eq!(v.votes.len(), 1);
    assert_eq!(v.votes[0].decision, Decision::Deny);
}

#[tokio::test]
async fn an_approval_after_someone_else_edited_the_issues_statement_is_refused() {
    let (store, _dir) = fresh_sqlite().await;
    let h = harness(store).await;
    let (id, key) = h.issue_for("DELETE FROM t WHERE id = 7").await;
    // The requester (or anyone with edit rights) rewrites the description to show harmless SQL.
    h.fake
        .lock()
        .unwrap()
        .edit_issue(&key, "acc-alice", "description");
    let (status, body) = move_in_jira(&h, &key, "acc-bob", "Approved").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "refused", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("statement_edited"),
        "{body}"
    );
    assert!(h.workflow.get(id).await.expect("get").votes.is_empty());
    assert!(audit_actions(&h.store)
        .await
        .iter()
        .any(|a| a == "vote.refused"));
    // A denial still counts: refusing to run something never needs the text to be the bot's.
    let (_, body) = move_in_jira(&h, &key, "acc-bob", "Denied").await;
    assert_eq!(body["outcome"], "recorded", "{body}");
    // Edits by the bot itself (or none) leave approvals alone.
    let (id2, key2) = h.issue_for("DELETE FROM t WHERE id = 8").await;
    h.fake
        .lock()
        .unwrap()
        .edit_issue(&key2, SERVICE_ACCOUNT, "summary");
    let (_, body) = move_in_jira(&h, &key2, "acc-bob", "Approved").await;
    assert_eq!(body["outcome"], "recorded", "{body}");
    assert_eq!(h.workflow.get(id2).await.expect("get").votes.len(), 1);
}

//! A local fake of the Slack Web API (the methods Countersign calls), recording every call, plus helpers
//! to build interaction payloads signed like Slack's. The bot token belongs to workspace [`HOME_TEAM`]
//! (`auth.test`); users live in that workspace unless added with another team (a Slack Connect guest).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One recorded Web API call.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method, e.g. `chat.postMessage`.
    pub method: String,
    /// Arguments (JSON body or query string).
    pub args: Value,
}

/// The workspace the fake's bot token belongs to, as `auth.test` reports it.
pub const HOME_TEAM: &str = "T1";

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// User id → (profile e-mail, team id).
    users: HashMap<String, (String, String)>,
    next_ts: u64,
}

/// The fake; cheap to clone.
#[derive(Clone, Default)]
pub struct FakeSlack {
    inner: Arc<Mutex<Inner>>,
    token: Arc<String>,
}

impl FakeSlack {
    /// Start on loopback; returns the fake and its API base URL (`http://127.0.0.1:PORT/api`).
    pub async fn start(token: &str, users: &[(&str, &str)]) -> (FakeSlack, String) {
        let fake = FakeSlack {
            inner: Arc::default(),
            token: Arc::new(token.to_string()),
        };
        {
            let mut i = fake.inner.lock().unwrap();
            for (id, email) in users {
                i.users
                    .insert(id.to_string(), (email.to_string(), HOME_TEAM.to_string()));
            }
        }
        let app = Router::new()
            .route("/api/{method}", any(api))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (fake, base)
    }

    /// Add a user of workspace `team` (another organisation's, when not [`HOME_TEAM`]) whose profile
    /// carries `email`, as that organisation chose to set it.
    pub fn add_user(&self, id: &str, email: &str, team: &str) {
        self.inner
            .lock()
            .unwrap()
            .users
            .insert(id.to_string(), (email.to_string(), team.to_string()));
    }

    /// Calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Calls of one method.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }
}

fn ok(mut v: Value) -> Response {
    v["ok"] = true.into();
    Json(v).into_response()
}

async fn api(
    State(fake): State<FakeSlack>,
    Path(method): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", fake.token));
    if !authorised {
        return Json(json!({ "ok": false, "error": "invalid_auth" })).into_response();
    }
    let args: Value = if body.is_empty() {
        let m: HashMap<String, String> =
            serde_urlencoded::from_str(q.as_deref().unwrap_or_default()).unwrap_or_default();
        serde_json::to_value(m).unwrap()
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let mut s = fake.inner.lock().unwrap();
    s.calls.push(Call {
        method: method.clone(),
        args: args.clone(),
    });
    s.next_ts += 1;
    let ts = format!("1700000000.{:06}", s.next_ts);
    match method.as_str() {
        "chat.postMessage" => ok(
            json!({ "channel": args["channel"], "ts": ts, "message": { "ts": ts, "text": args["text"] } }),
        ),
        "chat.update" => ok(
            json!({ "channel": args["channel"], "ts": args["ts"], "text": args["text"], "message": { "text": args["text"], "ts": args["ts"] } }),
        ),
        "chat.postEphemeral" => ok(json!({ "message_ts": ts })),
        "views.open" => ok(json!({ "view": { "id": "V1", "team_id": "T1", "type": "modal" } })),
        "auth.test" => ok(
            json!({ "url": "https://example.slack.com/", "team": "Example", "user": "countersign",
                "team_id": HOME_TEAM, "user_id": "UBOT", "bot_id": "B1", "is_enterprise_install": false }),
        ),
        // As Slack does for a member of a foreign workspace party to a shared channel, such users carry
        // their own team_id and is_stranger.
        "users.info" => match s.users.get(args["user"].as_str().unwrap_or_default()) {
            Some((email, team)) => ok(
                json!({ "user": { "id": args["user"], "team_id": team, "name": "x",
                    "is_stranger": team != HOME_TEAM, "profile": { "email": email, "team": team } } }),
            ),
            None => Json(json!({ "ok": false, "error": "user_not_found" })).into_response(),
        },
        "users.lookupByEmail" => {
            let wanted = args["email"].as_str().unwrap_or_default().to_lowercase();
            match s
                .users
                .iter()
                .find(|(_, (e, _))| e.to_lowercase() == wanted)
            {
                Some((id, (_, team))) => ok(
                    json!({ "user": { "id": id, "team_id": team, "profile": { "email": wanted } } }),
                ),
                None => Json(json!({ "ok": false, "error": "users_not_found" })).into_response(),
            }
        }
        _ => Json(json!({ "ok": false, "error": "unknown_method" })).into_response(),
    }
}

/// A `block_actions` payload for a button click by a member of [`HOME_TEAM`], form-encoded as Slack sends it.
pub fn click_body(user: &str, channel: &str, ts: &str, action_id: &str, value: &str) -> String {
    click_body_from_team(user, HOME_TEAM, channel, ts, action_id, value)
}

/// A click by a user of workspace `team` (a Slack Connect guest in a shared channel, when not ours).
pub fn click_body_from_team(
    user: &str,
    team: &str,
    channel: &str,
    ts: &str,
    action_id: &str,
    value: &str,
) -> String {
    // As from Slack, every click has its own trigger_id and action_ts, so no two clicks sign alike.
    static CLICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let click = CLICKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let payload = json!({
        "type": "block_actions",
        "user": { "id": user, "username": user.to_lowercase(), "team_id": team },
        "api_app_id": "A1",
        "token": "unused",
        "container": { "type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": false },
        "trigger_id": format!("{click}.2.3"),
        "team": { "id": team, "domain": "example" },
        "channel": { "id": channel, "name": "approvals" },
        "message": { "type": "message", "ts": ts, "text": "Countersign request" },
        "actions": [ { "action_id": action_id, "block_id": "countersign_actions", "value": value, "type": "button", "action_ts": format!("{now}.{click:06}") } ]
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

/// Slack's request signature over `v0:{ts}:{body}`.
pub fn sign(secret: &str, ts: i64, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

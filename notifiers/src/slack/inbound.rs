//! Inbound: `/slack/interactions` (buttons, the deny modal) and `/slack/commands` (`/countersign`).
//!
//! Every call is verified against the signing secret on its raw body before anything is parsed. Clicks are
//! acknowledged at once (Slack allows 3 s) and the vote runs in a spawned task; each click becomes exactly
//! one `Workflow::vote`, which enforces every separation-of-duties rule itself. Socket Mode
//! (`socket_mode`) feeds the same [`SlackInbound::handle_interaction`] / [`SlackInbound::handle_command`].

use super::api::SlackApi;
use super::config::SlackConfig;
use super::escape::escape_text;
use super::identity::{Outsider, Resolution, SlackIdentityResolver};
use super::message_refs;
use super::payload::{
    parse_vote_value, InteractionForm, InteractionPayload, PayloadView, SlashCommand,
};
use super::render::{DenyOrigin, MessageRenderer, DENY_MODAL_CALLBACK, OPEN_ACTION, REASON_INPUT};
use super::signature;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use countersign_bot::audit::AuditEntry;
use countersign_bot::store::Store;
use countersign_bot::{Decision, Identity, RequestId, RequestStatus, VoteResult, Workflow};
use std::sync::Arc;

/// Channel name votes from Slack carry.
pub const CHANNEL: &str = "slack";

/// Answer to a request whose signature was already seen.
const REPLAYED: &str = "this request was already received (a replay): Slack sends each click once; click again in Slack to act";

/// State of the inbound endpoints.
#[derive(Clone)]
pub struct SlackInbound {
    inner: Arc<Inner>,
}

struct Inner {
    workflow: Arc<Workflow>,
    store: Arc<dyn Store>,
    api: SlackApi,
    identities: SlackIdentityResolver,
    signing_secret: String,
    render: MessageRenderer,
}

/// The inbound routes: `POST /slack/interactions` and `POST /slack/commands`.
pub fn router(state: SlackInbound) -> Router {
    Router::new()
        .route("/slack/interactions", post(interactions))
        .route("/slack/commands", post(commands))
        .with_state(state)
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl SlackInbound {
    /// Inbound state voting through `workflow` (whose store keeps the message refs).
    pub fn new(
        config: &SlackConfig,
        api: SlackApi,
        signing_secret: &str,
        workflow: Arc<Workflow>,
    ) -> Self {
        let store = Arc::clone(workflow.store());
        Self {
            inner: Arc::new(Inner {
                identities: SlackIdentityResolver::new(
                    config.user_map.clone(),
                    config.trusted_teams.clone(),
                    api.clone(),
                    config.identity_ttl(),
                ),
                workflow,
                store,
                api,
                signing_secret: signing_secret.to_string(),
                render: MessageRenderer::new(config.max_statement_chars),
            }),
        }
    }
}

impl Inner {
    async fn audit(&self, entry: AuditEntry) {
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::error!(error = %e, "could not audit a refused Slack call; check the store");
        }
    }

    /// Verify the signature and that this exact request was not received before; refusals are audited
    /// and answered 401.
    async fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = header("x-slack-signature");
        match signature::verify(
            self.signing_secret.as_bytes(),
            header("x-slack-request-timestamp"),
            signed,
            body,
            now_unix(),
        ) {
            Ok(()) => self.first_delivery(signed.unwrap_or_default()).await,
            Err(e) => {
                tracing::warn!(error = %e, "refused an unverified Slack call");
                self.audit(
                    AuditEntry::new("unauthenticated", e.audit_action(), CHANNEL)
                        .decision("refused")
                        .detail(serde_json::json!({ "error": e.to_string() })),
                )
                .await;
                Err((StatusCode::UNAUTHORIZED, e.to_string()).into_response())
            }
        }
    }

    /// A verified request is accepted once: the signature covers the timestamp and the body (each click
    /// carries its own trigger_id and action_ts), so the same signature again is a captured request
    /// replayed within the five-minute window.
    async fn first_delivery(&self, signature: &str) -> Result<(), Response> {
        let now_ms = countersign_bot::clock::now_ms();
        match self
            .store
            // Keyed on the MAC, not its spelling: the hex is accepted in either case.
            .consume_nonce(
                &format!("slack:{}", signature.trim().to_ascii_lowercase()),
                now_ms,
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!("refused a replayed Slack call");
                self.audit(
                    AuditEntry::new("unauthenticated", "slack.replay_refused", CHANNEL)
                        .decision("refused")
                        .detail(serde_json::json!({ "error": REPLAYED })),
                )
                .await;
                Err((StatusCode::UNAUTHORIZED, REPLAYED).into_response())
            }
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable while checking a Slack call for replay; refused");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Countersign's store is unavailable; click again in a moment",
                )
                    .into_response())
            }
        }
    }

    async fn ephemeral(&self, channel: &str, user: &str, text: &str) {
        let content = match self.render.ephemeral(text) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot render an ephemeral answer");
                return;
            }
        };
        if let Err(e) = self.api.post_ephemeral(channel, user, content).await {
            tracing::warn!(error = %e, %channel, "could not post an ephemeral answer to a Slack user");
        }
    }

    /// Audit a user of another organisation's workspace trying to act; `request` when they clicked a vote.
    async fn audit_outsider(&self, user: &str, request: Option<RequestId>, outsider: &Outsider) {
        tracing::warn!(%user, team_id = ?outsider.team_id, reason = outsider.code(), "refused a Slack user from outside the organisation's workspace");
        let mut entry = AuditEntry::new(
            format!("slack:{user}"),
            "slack.outside_user_refused",
            CHANNEL,
        )
        .decision("refused")
        .detail(serde_json::json!({
            "reason": outsider.code(),
            "team_id": outsider.team_id,
            "enterprise_id": outsider.enterprise_id,
        }));
        if let Some(request) = request {
            entry = entry.request(request);
        }
        self.audit(entry).await;
    }

    /// The clicker's identity, or an ephemeral refusal (audited) when Slack gives no e-mail for them or they
    /// belong to another organisation's workspace.
    async fn identity(&self, user: &str, channel: &str, request: RequestId) -> Option<Identity> {
        match self.identities.resolve(user).await {
            Ok(Resolution::Member(id)) => Some(id),
            Ok(Resolution::NoEmail) => {
                self.audit(
                    AuditEntry::new(
                        format!("slack:{user}"),
                        "slack.unmapped_user_refused",
                        CHANNEL,
                    )
                    .request(request)
                    .decision("refused"),
                )
                .await;
                self.ephemeral(channel, user, "Countersign cannot tell who you are: your Slack profile has no e-mail it can use. Ask an administrator to add you to slack.user_map.").await;
                None
            }
            Ok(Resolution::Outsider(outsider)) => {
                self.audit_outsider(user, Some(request), &outsider).await;
                self.ephemeral(
                    channel,
                    user,
                    &format!("Your vote was not counted: {}", outsider.explanation()),
                )
                .await;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, %user, "could not look a Slack user up; the click was not counted");
                self.audit(
                    AuditEntry::new(format!("slack:{user}"), "slack.user_lookup_failed", CHANNEL)
                        .request(request)
                        .decision("refused")
                        .detail(serde_json::json!({ "error": e.to_string() })),
                )
                .await;
                self.ephemeral(channel, user, "Countersign could not look your Slack account up just now; please click again in a moment.").await;
                None
            }
        }
    }

    /// Is `channel`/`ts` one of this request's messages? Refusals (copies, forwards) are audited.
    async fn genuine_message(
        &self,
        request: RequestId,
        user: &str,
        channel: &str,
        ts: &str,
    ) -> bool {
        match message_refs::is_request_message(self.store.as_ref(), request, channel, ts).await {
            Ok(true) => true,
            Ok(false) => {
                self.audit(
                    AuditEntry::new(
                        format!("slack:{user}"),
                        "slack.foreign_message_refused",
                        CHANNEL,
                    )
                    .request(request)
                    .decision("refused")
                    .detail(serde_json::json!({ "channel": channel, "ts": ts })),
                )
                .await;
                // The clicker learns why nothing happened (a copy of the request message posted twice
                // after a timeout, or a message edited to name another request).
                self.ephemeral(
                    channel,
                    user,
                    "This message is not the request message Countersign tracks, so your vote was not recorded; vote on the current request message, or in another channel.",
                )
                .await;
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "store unavailable while checking a Slack click; ignored");
                self.ephemeral(
                    channel,
                    user,
                    "Countersign's store is unavailable, so your vote was not recorded; try again shortly.",
                )
                .await;
                false
            }
        }
    }

    async fn vote(
        &self,
        request: RequestId,
        user: &str,
        channel: &str,
        decision: Decision,
        reason: Option<String>,
    ) {
        let Some(who) = self.identity(user, channel, request).await else {
            return;
        };
        match self
            .workflow
            .vote_as_shown(request, &who, decision, reason, CHANNEL, &|sql| {
                self.render.shows_whole(sql)
            })
            .await
        {
            Ok(VoteResult::Recorded { .. }) => {}
            Ok(VoteResult::Refused(r)) => {
                self.ephemeral(
                    channel,
                    user,
                    &format!("Your vote was not counted: {}", r.reason),
                )
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, request_id = %request, "Slack vote failed");
                self.ephemeral(
                    channel,
                    user,
                    &format!("Your vote could not be recorded: {e}"),
                )
                .await;
            }
        }
    }

    async fn block_actions(&self, p: InteractionPayload) {
        let (Some(user), Some((channel, ts))) = (p.user.as_ref(), p.message_location()) else {
            return;
        };
        for action in &p.actions {
            if action.action_id == OPEN_ACTION {
                continue;
            }
            let Some((decision, request)) = action.value.as_deref().and_then(parse_vote_value)
            else {
                tracing::debug!(action_id = %action.action_id, "ignoring a Slack action that is not a vote");
                continue;
            };
            if !self.genuine_message(request, &user.id, &channel, &ts).await {
                continue;
            }
            match decision {
                Decision::Approve => self.vote(request, &user.id, &channel, decision, None).await,
                Decision::Deny => {
                    let origin = DenyOrigin {
                        request,
                        channel: channel.clone(),
                        ts: ts.clone(),
                    };
                    let opened = match (p.trigger_id.as_deref(), self.render.deny_modal(&origin)) {
                        (Some(trigger), Ok(view)) => self
                            .api
                            .open_view(trigger, view)
                            .await
                            .map_err(|e| e.to_string()),
                        (None, _) => Err("the click carried no trigger_id".into()),
                        (_, Err(e)) => Err(e.to_string()),
                    };
                    if let Err(e) = opened {
                        tracing::warn!(error = %e, request_id = %request, "could not open the deny modal");
                        self.ephemeral(
                            &channel,
                            &user.id,
                            "Countersign could not open the deny dialog; click Deny again.",
                        )
                        .await;
                    }
                }
            }
        }
    }

    async fn deny_submitted(&self, user: &str, view: PayloadView) {
        let Some(origin) = view
            .private_metadata
            .as_deref()
            .and_then(|m| serde_json::from_str::<DenyOrigin>(m).ok())
        else {
            tracing::warn!("deny modal submitted without Countersign's metadata; ignored");
            return;
        };
        if !self
            .genuine_message(origin.request, user, &origin.channel, &origin.ts)
            .await
        {
            return;
        }
        let reason = view
            .input(REASON_INPUT, REASON_INPUT)
            .filter(|r| !r.trim().is_empty());
        self.vote(
            origin.request,
            user,
            &origin.channel,
            Decision::Deny,
            reason,
        )
        .await;
    }
}

async fn interactions(State(s): State<SlackInbound>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = s.inner.authenticate(&headers, &body).await {
        return refused;
    }
    let payload = serde_urlencoded::from_bytes::<InteractionForm>(&body)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            serde_json::from_str::<InteractionPayload>(&f.payload).map_err(|e| e.to_string())
        });
    match payload {
        Ok(p) => s.handle_interaction(p),
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a Slack interaction payload ({e}): send form field payload=<JSON>"),
            )
                .into_response()
        }
    }
    // An empty 200 acknowledges the click and closes a submitted modal.
    StatusCode::OK.into_response()
}

fn ephemeral_json(text: String) -> serde_json::Value {
    serde_json::json!({ "response_type": "ephemeral", "text": text })
}

async fn commands(State(s): State<SlackInbound>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = s.inner.authenticate(&headers, &body).await {
        return refused;
    }
    let Ok(cmd) = serde_urlencoded::from_bytes::<SlashCommand>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            "not a Slack slash command: expected form fields user_id, text, command",
        )
            .into_response();
    };
    Json(s.handle_command(cmd).await).into_response()
}

impl SlackInbound {
    /// Act on an authenticated interaction (signature-verified over HTTP, or received on the Socket Mode
    /// connection). Returns at once: the vote runs in a spawned task so the caller can acknowledge in time.
    pub fn handle_interaction(&self, payload: InteractionPayload) {
        let inner = Arc::clone(&self.inner);
        match payload.kind.as_str() {
            "block_actions" => {
                tokio::spawn(async move { inner.block_actions(payload).await });
            }
            "view_submission" => {
                let is_deny = payload.view.as_ref().and_then(|v| v.callback_id.as_deref())
                    == Some(DENY_MODAL_CALLBACK);
                if let (true, Some(user), Some(view)) =
                    (is_deny, payload.user.clone(), payload.view)
                {
                    tokio::spawn(async move { inner.deny_submitted(&user.id, view).await });
                }
            }
            other => tracing::debug!(
                kind = other,
                "ignoring a Slack interaction type Countersign does not use"
            ),
        }
    }

    /// Answer an authenticated `/countersign` command; the result is the ephemeral response body.
    pub async fn handle_command(&self, cmd: SlashCommand) -> serde_json::Value {
        let inner = &self.inner;
        let who = match inner.identities.resolve(&cmd.user_id).await {
            Ok(Resolution::Member(who)) => who,
            Ok(Resolution::NoEmail) => {
                inner
                    .audit(
                        AuditEntry::new(
                            format!("slack:{}", cmd.user_id),
                            "slack.unmapped_user_refused",
                            CHANNEL,
                        )
                        .decision("refused"),
                    )
                    .await;
                return ephemeral_json("Countersign cannot tell who you are: your Slack profile has no e-mail it can use. Ask an administrator to add you to slack.user_map.".into());
            }
            // An outsider borrowing an approver's e-mail must not list or read requests either.
            Ok(Resolution::Outsider(outsider)) => {
                inner.audit_outsider(&cmd.user_id, None, &outsider).await;
                return ephemeral_json(format!(
                    "Countersign will not answer: {}",
                    escape_text(&outsider.explanation())
                ));
            }
            Err(e) => {
                return ephemeral_json(format!(
                    "Countersign could not look your Slack account up ({}); try again in a moment.",
                    escape_text(&e.to_string())
                ))
            }
        };
        let mut words = cmd.text.split_whitespace();
        match (words.next(), words.next()) {
            (Some("pending"), None) => pending(inner, &who).await,
            (Some("show"), Some(id)) => show(inner, &who, id).await,
            _ => ephemeral_json(format!(
                "Usage: {} pending | {} show REQUEST_ID",
                escape_text(&cmd.command),
                escape_text(&cmd.command)
            )),
        }
    }
}

/// True when `who` may see `request` (an approver of it, or in its requester chain).
fn may_see(wf: &Workflow, who: &Identity, r: &countersign_bot::ApprovalRequest) -> bool {
    r.requester.contains(who) || wf.directory().is_member_of_any(&r.approver_groups, who)
}

async fn pending(inner: &Inner, who: &Identity) -> serde_json::Value {
    let list = match inner
        .store
        .list_requests(Some(RequestStatus::Pending), 200)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            return ephemeral_json(format!(
                "Countersign's store is unavailable ({}); try again shortly.",
                escape_text(&e.to_string())
            ))
        }
    };
    let lines: Vec<String> = list
        .iter()
        .filter(|r| may_see(&inner.workflow, who, r))
        .take(20)
        .map(|r| {
            format!(
                "• {} on {} by {} (expires {})",
                r.id,
                escape_text(&r.connection),
                escape_text(&r.requester.display()),
                r.expires_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            )
        })
        .collect();
    if lines.is_empty() {
        return ephemeral_json("No pending requests you can review.".into());
    }
    ephemeral_json(format!(
        "Pending requests you can review:\n{}",
        lines.join("\n")
    ))
}

async fn show(inner: &Inner, who: &Identity, id: &str) -> serde_json::Value {
    let Ok(id) = id.parse::<RequestId>() else {
        return ephemeral_json(
            "That is not a request id: use the id shown on the request message (a UUID).".into(),
        );
    };
    let view = match inner.workflow.get(id).await {
        Ok(v) if may_see(&inner.workflow, who, &v.request) => v,
        Ok(_) | Err(countersign_bot::WorkflowError::NotFound(_)) => {
            return ephemeral_json("No such request, or you are not one of its approvers.".into())
        }
        Err(e) => {
            return ephemeral_json(format!(
                "Countersign's store is unavailable ({}); try again shortly.",
                escape_text(&e.to_string())
            ))
        }
    };
    match inner.render.request_message(&view, false) {
        Ok(content) => {
            let mut body = serde_json::to_value(&content).unwrap_or_default();
            body["response_type"] = "ephemeral".into();
            body
        }
        Err(e) => ephemeral_json(escape_text(&e.to_string())),
    }
}

//! Inbound: `POST /jira/webhook`. Authenticated by the shared-secret HMAC of the raw body; the payload is
//! trusted for nothing but the issue key. The issue's changelog is re-fetched to learn who moved it where,
//! and that change becomes exactly one vote, once.

use super::client::JiraClient;
use super::config::{JiraConfig, JiraCredentials};
use super::notifier::ISSUE_REF;
use super::SINK;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use countersign_bot::audit::AuditEntry;
use countersign_bot::{Decision, Identity, IdentityKind, Store, VoteResult, Workflow};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// State for the Jira webhook endpoint.
#[derive(Clone)]
pub struct JiraInbound {
    workflow: Arc<Workflow>,
    store: Arc<dyn Store>,
    client: JiraClient,
    secret: Arc<[u8]>,
    approve_status: String,
    deny_status: String,
    /// Statements longer than this are cut short in issues, so can't be approved from Jira.
    max_statement_chars: usize,
    own_account: Arc<OnceCell<String>>,
}

impl JiraInbound {
    /// Inbound state for the configured site; votes go to `workflow`.
    pub fn new(
        cfg: &JiraConfig,
        creds: &JiraCredentials,
        workflow: Arc<Workflow>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            store: Arc::clone(workflow.store()),
            workflow,
            client: JiraClient::new(cfg, creds)?,
            secret: creds.webhook_secret.as_bytes().into(),
            approve_status: cfg.approve_status.trim().to_string(),
            deny_status: cfg.deny_status.trim().to_string(),
            max_statement_chars: cfg.max_statement_chars,
            own_account: Arc::new(OnceCell::new()),
        })
    }
}

/// The `X-Hub-Signature` value Jira sends for `body` under `secret` (for tests and tooling).
pub fn sign_body(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&sig).is_ok()
}

/// Routes: `POST /jira/webhook`.
pub fn router(state: JiraInbound) -> Router {
    Router::new()
        .route("/jira/webhook", post(webhook))
        .with_state(state)
}

fn reply(status: StatusCode, outcome: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "outcome": outcome, "detail": detail.into() })),
    )
        .into_response()
}

async fn audit(state: &JiraInbound, actor: &str, what: &str, detail: Value) {
    let entry = AuditEntry::new(actor, format!("jira.{what}_refused"), SINK)
        .decision("refused")
        .detail(detail);
    if let Err(e) = state.store.append_audit(entry).await {
        tracing::error!(error = %e, "could not audit a refused Jira webhook call");
    }
}

async fn webhook(State(state): State<JiraInbound>, headers: HeaderMap, body: Bytes) -> Response {
    let header = headers.get("x-hub-signature").and_then(|v| v.to_str().ok());
    if !signature_valid(&state.secret, &body, header) {
        audit(
            &state,
            "unknown",
            "signature",
            json!({ "reason": "missing or invalid X-Hub-Signature" }),
        )
        .await;
        return reply(
            StatusCode::UNAUTHORIZED,
            "refused",
            "invalid signature: configure the Jira webhook with the same secret as jira.webhook_secret_env",
        );
    }
    let key = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.pointer("/issue/key")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let Some(key) = key.filter(|k| super::is_issue_key(k)) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "ignored",
            "payload has no issue.key",
        );
    };
    match handle(&state, &key).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(issue = %key, error = %e, "Jira webhook could not be processed; Jira may retry");
            reply(StatusCode::BAD_GATEWAY, "error", e)
        }
    }
}

async fn handle(state: &JiraInbound, key: &str) -> Result<Response, String> {
    let Some(request_id) = state
        .store
        .find_ref(SINK, ISSUE_REF, key)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(reply(StatusCode::OK, "ignored", "not a Countersign issue"));
    };
    let Some(change) = state
        .client
        .latest_status_change(key)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(reply(StatusCode::OK, "ignored", "no status change"));
    };
    let decision = if change
        .to_status
        .trim()
        .eq_ignore_ascii_case(&state.approve_status)
    {
        Decision::Approve
    } else if change
        .to_status
        .trim()
        .eq_ignore_ascii_case(&state.deny_status)
    {
        Decision::Deny
    } else {
        return Ok(reply(
            StatusCode::OK,
            "ignored",
            "not an approve or deny status",
        ));
    };
    let own = state
        .own_account
        .get_or_try_init(|| state.client.myself())
        .await
        .map_err(|e| e.to_string())?;
    if *own == change.author_account_id {
        return Ok(reply(
            StatusCode::OK,
            "ignored",
            "Countersign's own transition",
        ));
    }
    let email = state
        .client
        .user_email(&change.author_account_id)
        .await
        .map_err(|e| e.to_string())?;
    // Consumed before voting: a replayed or re-delivered webhook for the same change never votes twice.
    let nonce = format!("jira:changelog:{key}:{}", change.id);
    let now_ms = countersign_bot::clock::now_ms();
    if !state
        .store
        .consume_nonce(&nonce, now_ms)
        .await
        .map_err(|e| e.to_string())?
    {
        audit(
            state,
            &format!("sub:jira|{}", change.author_account_id),
            "replay",
            json!({ "issue": key, "changelog_id": change.id }),
        )
        .await;
        return Ok(reply(
            StatusCode::OK,
            "duplicate",
            "this change was already processed",
        ));
    }
    let voter = Identity {
        issuer: SINK.into(),
        subject: change.author_account_id.clone(),
        email,
        unverified_email: None,
        kind: IdentityKind::Human,
        groups: vec![],
    };
    // The summary and description show the statement: edited by anyone but the bot before this
    // change, they may have shown the reviewer another statement than the one held.
    if decision == Decision::Approve && change.content_edited_by.iter().any(|who| who != own) {
        let refused = state
            .workflow
            .refuse_vote(
                request_id,
                &voter,
                SINK,
                "statement_edited",
                format!(
                    "{key}'s summary or description was edited by someone other than Countersign, so the issue may not have shown the statement that was held; approve from the e-mail approval page or the API, which show it as held"
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        if let VoteResult::Refused(r) = refused {
            return Ok(reply(
                StatusCode::OK,
                "refused",
                format!("{}: {}", r.code, r.reason),
            ));
        }
    }
    let reason = format!("Jira {key} moved to \"{}\"", change.to_status.trim());
    let result = state
        .workflow
        .vote_as_shown(request_id, &voter, decision, Some(reason), SINK, &|sql| {
            super::adf::shown_whole(sql, state.max_statement_chars)
        })
        .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            // Nothing was recorded: Jira's retry of this delivery must count, not be taken for a replay.
            if let Err(release) = state.store.release_nonce(&nonce).await {
                tracing::warn!(error = %release, issue = %key, "could not release a Jira change whose vote failed");
            }
            return Err(e.to_string());
        }
    };
    // A refusal is commented on and reverted by the Jira notifier from the outbox's vote_refused event.
    Ok(match result {
        VoteResult::Recorded { resolved, .. } => reply(
            StatusCode::OK,
            "recorded",
            if resolved {
                "vote recorded; request resolved"
            } else {
                "vote recorded"
            },
        ),
        VoteResult::Refused(r) => reply(
            StatusCode::OK,
            "refused",
            format!("{}: {}", r.code, r.reason),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_must_match_the_raw_body() {
        let body = br#"{"issue":{"key":"OPS-1"}}"#;
        let sig = sign_body(b"s3cret", body);
        assert!(signature_valid(b"s3cret", body, Some(&sig)));
        assert!(!signature_valid(
            b"s3cret",
            br#"{"issue":{"key":"OPS-2"}}"#,
            Some(&sig)
        ));
        assert!(!signature_valid(b"other", body, Some(&sig)));
        assert!(!signature_valid(
            b"s3cret",
            body,
            Some(sig.trim_start_matches("sha256="))
        ));
        assert!(!signature_valid(b"s3cret", body, None));
    }
}

//! `/email/act`: GET shows a confirmation page and never decides; POST (with the CSRF token tied to the
//! link) consumes the link's nonce and casts exactly one vote as the link's recipient.

use super::html::{error_page, escape, html_response, page, request_summary, vote_timeline};
use crate::email::inbound::{used_marker, EmailInbound};
use crate::email::token::{LinkClaims, LinkError};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use countersign_bot::{
    Decision, Identity, IdentityKind, RequestStatus, RequestView, VoteResult, WorkflowError,
};
use serde::Deserialize;

/// Query of the GET.
#[derive(Debug, Deserialize)]
pub struct ActQuery {
    /// The link token.
    pub t: Option<String>,
}

/// Form of the POST.
#[derive(Debug, Deserialize)]
pub struct ActForm {
    /// The link token.
    pub t: Option<String>,
    /// CSRF token derived from the link.
    pub csrf: Option<String>,
    /// Optional reason.
    pub reason: Option<String>,
}

fn link_error_page(e: &LinkError) -> Response {
    let status = match e {
        LinkError::Malformed => StatusCode::BAD_REQUEST,
        LinkError::Forged => StatusCode::UNAUTHORIZED,
        LinkError::Expired => StatusCode::GONE,
    };
    error_page(status, "This link cannot be used", &e.to_string())
}

fn used_page() -> Response {
    error_page(
        StatusCode::GONE,
        "This link was already used",
        "Each approval link works once and this one has been used. Open the request page from your e-mail to see where the request stands.",
    )
}

fn store_failure(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "e-mail approval page failed on the store");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again shortly",
        "The approval service could not reach its database. Your link has not been used up unless a vote was confirmed; try again in a minute.",
    )
}

/// Verify the token and check it is a voting link; refusals are audited and rendered.
async fn voting_claims(
    state: &EmailInbound,
    token: Option<&str>,
) -> Result<(LinkClaims, Decision), Response> {
    let Some(token) = token.filter(|t| !t.trim().is_empty()) else {
        state.audit_bad_token(&LinkError::Malformed).await;
        return Err(link_error_page(&LinkError::Malformed));
    };
    let claims = match state.signer.verify(token) {
        Ok(c) => c,
        Err(e) => {
            state.audit_bad_token(&e).await;
            return Err(link_error_page(&e));
        }
    };
    let Some(decision) = claims.act.decision() else {
        state
            .audit_refusal(
                Some(&claims),
                "view_link_cannot_vote",
                "a view link was used on /email/act",
            )
            .await;
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            "This link cannot vote",
            "This link only opens the request page. Use the Approve or Deny link from the approval e-mail.",
        ));
    };
    Ok((claims, decision))
}

async fn load(state: &EmailInbound, claims: &LinkClaims) -> Result<RequestView, Response> {
    match state.workflow.get(claims.rid).await {
        Ok(v) => Ok(v),
        Err(WorkflowError::NotFound(_)) => Err(error_page(
            StatusCode::NOT_FOUND,
            "No such request",
            "The request this link belongs to no longer exists. Ask the requester to submit the statement again.",
        )),
        Err(e) => Err(store_failure(e)),
    }
}

fn voter(claims: &LinkClaims) -> Identity {
    Identity {
        issuer: "email".into(),
        subject: claims.sub.clone(),
        email: Some(claims.sub.clone()),
        unverified_email: None,
        kind: IdentityKind::Human,
        groups: vec![],
    }
}

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Approve => "Approve",
        Decision::Deny => "Deny",
    }
}

fn request_link(state: &EmailInbound, claims: &LinkClaims, token: &str) -> String {
    format!(
        "<p><a href=\"{}/requests/{}?t={}\">Open the request page</a></p>",
        escape(&state.public_base_url),
        claims.rid,
        escape(token)
    )
}

/// GET: render the confirmation page. Changes nothing, so scanners and prefetchers are harmless.
pub async fn show(State(state): State<EmailInbound>, Query(q): Query<ActQuery>) -> Response {
    let (claims, decision) = match voting_claims(&state, q.t.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let token = q.t.unwrap_or_default();
    match state
        .store
        .get_ref(claims.rid, "email", &used_marker(&claims.jti))
        .await
    {
        Ok(Some(_)) => {
            state
                .audit_refusal(Some(&claims), "reused", "GET of a used link")
                .await;
            return used_page();
        }
        Ok(None) => {}
        Err(e) => return store_failure(e),
    }
    let view = match load(&state, &claims).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let verb = verb(decision);
    let who = format!(
        "<p class=\"who\">You are voting as <strong>{}</strong>. This link was sent to that address: if it was forwarded to you, the vote still counts as theirs, not yours.</p>",
        escape(&claims.sub)
    );
    let action = if view.request.status == RequestStatus::Pending {
        format!(
            "<form method=\"post\" action=\"{base}/email/act\">\
<input type=\"hidden\" name=\"t\" value=\"{t}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<p><label for=\"reason\">Reason (optional)</label><br>\
<textarea id=\"reason\" name=\"reason\" rows=\"3\" cols=\"60\" maxlength=\"2000\"></textarea></p>\
<p><button type=\"submit\" id=\"confirm\">{verb} this request</button></p></form>",
            base = escape(&state.public_base_url),
            t = escape(&token),
            csrf = escape(&state.signer.csrf_for(&claims)),
        )
    } else {
        format!(
            "<p><strong>This request is already {}; no vote is possible.</strong></p>",
            escape(view.request.status.as_str())
        )
    };
    let body = format!(
        "{who}{summary}{action}{timeline}{link}",
        summary = request_summary(&view),
        timeline = vote_timeline(&view),
        link = request_link(&state, &claims, &token),
    );
    html_response(StatusCode::OK, page(&format!("{verb} request?"), &body))
}

/// POST: check the CSRF token, use the link up, and cast one vote as the link's recipient.
pub async fn submit(State(state): State<EmailInbound>, Form(f): Form<ActForm>) -> Response {
    let (claims, decision) = match voting_claims(&state, f.t.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let csrf_ok = f
        .csrf
        .as_deref()
        .is_some_and(|c| state.signer.csrf_matches(&claims, c));
    if !csrf_ok {
        state
            .audit_refusal(
                Some(&claims),
                "csrf_mismatch",
                "POST without the link's CSRF token",
            )
            .await;
        return error_page(
            StatusCode::FORBIDDEN,
            "Please confirm from the page",
            "This vote did not come from the confirmation page. Open the link from your e-mail again and press the button.",
        );
    }
    let now_ms = countersign_bot::clock::now_ms();
    match state.store.consume_nonce(&claims.jti, now_ms).await {
        Ok(true) => {}
        Ok(false) => {
            state
                .audit_refusal(Some(&claims), "reused", "POST of a used link")
                .await;
            return used_page();
        }
        Err(e) => return store_failure(e),
    }
    let reason = f
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let result = state
        .workflow
        .vote(claims.rid, &voter(&claims), decision, reason, "email")
        .await;
    if result.is_err() {
        // Nothing was recorded: the link stays usable, so the reviewer can press the button again.
        if let Err(e) = state.store.release_nonce(&claims.jti).await {
            tracing::warn!(error = %e, request_id = %claims.rid, "could not release an e-mail link whose vote failed");
        }
    } else if let Err(e) = state
        .store
        .put_ref(claims.rid, "email", &used_marker(&claims.jti), "1")
        .await
    {
        // The nonce is consumed, which is what enforces single use; the marker only improves the GET page.
        tracing::warn!(error = %e, request_id = %claims.rid, "could not mark an e-mail link as used");
    }
    let token = f.t.unwrap_or_default();
    let link = request_link(&state, &claims, &token);
    match result {
        Ok(VoteResult::Recorded { view, .. }) => {
            let r = &view.request;
            let body = format!(
                "<p>Your vote ({dec}) was recorded as <strong>{who}</strong>.</p>\
<p>The request is now <strong>{status}</strong> ({n} of {q} approvals).</p>{timeline}{link}",
                dec = decision.as_str(),
                who = escape(&claims.sub),
                status = escape(r.status.as_str()),
                n = view.approvals(),
                q = r.quorum,
                timeline = vote_timeline(&view),
            );
            html_response(StatusCode::OK, page("Vote recorded", &body))
        }
        Ok(VoteResult::Refused(refusal)) => {
            let status = match refusal.code {
                "resolved" | "already_voted" => StatusCode::CONFLICT,
                "expired" => StatusCode::GONE,
                _ => StatusCode::FORBIDDEN,
            };
            let body = format!(
                "<p>Your vote as <strong>{who}</strong> was not counted: {reason}</p><p><small>Refusal code: <code>{code}</code></small></p>{link}",
                who = escape(&claims.sub),
                reason = escape(&refusal.reason),
                code = escape(refusal.code),
            );
            html_response(status, page("Vote not counted", &body))
        }
        Err(WorkflowError::NotFound(_)) => error_page(
            StatusCode::NOT_FOUND,
            "No such request",
            "The request this link belongs to no longer exists.",
        ),
        Err(e) => store_failure(e),
    }
}

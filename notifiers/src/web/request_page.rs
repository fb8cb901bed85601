//! `/requests/{id}`: status, vote timeline and statement, for holders of a link token for that request.

use super::html::{error_page, html_response, page, request_summary, vote_timeline};
use crate::email::inbound::EmailInbound;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use countersign_bot::{RequestId, WorkflowError};
use serde::Deserialize;

/// Query of the request page.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// A link token for this request (voting or view link, used or not).
    pub t: Option<String>,
}

/// GET: render the request page when `t` is a valid link token for this very request.
pub async fn show(
    State(state): State<EmailInbound>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Ok(id) = id.parse::<RequestId>() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such request",
            "This address names no request: open the link from your e-mail again.",
        );
    };
    let Some(token) = q.t.filter(|t| !t.trim().is_empty()) else {
        return error_page(
            StatusCode::UNAUTHORIZED,
            "Open this page from your e-mail",
            "The request page is shown to the people asked to review it: open it with the link in your approval e-mail.",
        );
    };
    let claims = match state.signer.verify(&token) {
        Ok(c) => c,
        Err(e) => {
            state.audit_bad_token(&e).await;
            let status = match e {
                crate::email::LinkError::Expired => StatusCode::GONE,
                crate::email::LinkError::Malformed => StatusCode::BAD_REQUEST,
                crate::email::LinkError::Forged => StatusCode::UNAUTHORIZED,
            };
            return error_page(status, "This link cannot be used", &e.to_string());
        }
    };
    if claims.rid != id {
        state
            .audit_refusal(
                Some(&claims),
                "wrong_request",
                &format!("token for another request used on /requests/{id}"),
            )
            .await;
        return error_page(
            StatusCode::FORBIDDEN,
            "This link is for another request",
            "Open the request page from the e-mail about this request.",
        );
    }
    let view = match state.workflow.get(id).await {
        Ok(v) => v,
        Err(WorkflowError::NotFound(_)) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No such request",
                "This request no longer exists.",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "request page failed on the store");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                "The approval service could not reach its database; reload in a minute.",
            );
        }
    };
    let body = format!("{}{}", request_summary(&view), vote_timeline(&view));
    html_response(
        StatusCode::OK,
        page(&format!("Request {}", view.request.status), &body),
    )
}

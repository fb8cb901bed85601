//! The HTTP side of e-mail approvals: state and routes. The pages themselves live in [`crate::web`].

use super::token::{LinkClaims, LinkError, LinkSigner};
use axum::routing::get;
use axum::Router;
use countersign_bot::audit::AuditEntry;
use countersign_bot::{Store, Workflow};
use std::sync::Arc;

/// State of the e-mail endpoints.
#[derive(Clone)]
pub struct EmailInbound {
    /// The workflow every confirmed link votes through.
    pub workflow: Arc<Workflow>,
    /// The store (nonces, audit, used-link markers).
    pub store: Arc<dyn Store>,
    /// Verifies link and CSRF tokens.
    pub signer: LinkSigner,
    /// Public base URL (no trailing slash), for links on the pages.
    pub public_base_url: String,
}

impl EmailInbound {
    /// Audit a refused link (`email.link_refused`). Audit failures are logged, never shown to the caller.
    pub(crate) async fn audit_refusal(
        &self,
        claims: Option<&LinkClaims>,
        code: &str,
        detail: &str,
    ) {
        let actor = claims
            .map(|c| format!("email:{}", c.sub))
            .unwrap_or_else(|| "unauthenticated".into());
        let mut entry = AuditEntry::new(actor, "email.link_refused", "email")
            .decision("refused")
            .detail(serde_json::json!({ "code": code, "detail": detail }));
        if let Some(c) = claims {
            entry = entry.request(c.rid);
        }
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::error!(error = %e, code, "could not audit a refused e-mail link");
        }
    }

    /// Audit a token that failed verification.
    pub(crate) async fn audit_bad_token(&self, err: &LinkError) {
        self.audit_refusal(None, err.code(), &err.to_string()).await;
    }
}

/// Routes: `GET/POST /email/act` (confirm and vote) and `GET /requests/{id}` (request page).
pub fn router(state: EmailInbound) -> Router {
    Router::new()
        .route(
            "/email/act",
            get(crate::web::confirm::show).post(crate::web::confirm::submit),
        )
        .route("/requests/{id}", get(crate::web::request_page::show))
        .with_state(state)
}

/// Store ref key marking a link's nonce as used, so a later GET can say so before any POST.
pub(crate) fn used_marker(jti: &str) -> String {
    format!("used:{jti}")
}

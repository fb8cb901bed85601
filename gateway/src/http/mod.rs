//! The agent and reviewer HTTP API (axum): queries, requests, votes, health.

mod auth;
pub mod error;
mod health;
pub mod listener;
mod query;
mod requests;

pub use auth::Caller;
pub use error::ApiError;

use crate::engine::Engine;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
}

/// The API router. Channel routers (Slack, e-mail, Jira) are merged by the composition root.
pub fn router(state: AppState) -> Router {
    let limit = state.engine.config.server.max_body_bytes;
    Router::new()
        .route("/v1/connections/{name}/query", post(query::query))
        .route("/v1/requests", get(requests::list))
        .route("/v1/requests/{id}", get(requests::show))
        .route("/v1/requests/{id}/votes", post(requests::vote))
        .route("/v1/requests/{id}/cancel", post(requests::cancel))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::metrics::scrape))
        .fallback(|| async { ApiError::not_found("no such endpoint; see the README for the API") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The whole HTTP app: the API and the channels' routes (Slack, e-mail, Jira), all under the
/// configured body limit (the channels' webhooks are read and HMAC'd before they are authenticated).
pub fn app(state: AppState, channels: Vec<Router>) -> Router {
    let limit = state.engine.config.server.max_body_bytes;
    let mut app = router(state);
    for r in channels {
        app = app.merge(r);
    }
    // Set after the merge: it applies to the routes the router holds, the channels' among them.
    app.method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
}

/// A known path with a method it does not take: the JSON error every other refusal has.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; see the README's API table for the methods each path takes",
            uri.path()
        ),
    )
}

/// Parse `?wait=` values: `30s`, `500ms`, `2m`, or plain seconds.
pub(crate) fn parse_wait(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    crate::config::parse_duration(t)
}

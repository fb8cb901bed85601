//! Liveness and readiness.

use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

/// Alive: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the state store answers.
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    match st.engine.store().list_requests(None, 1).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": st.engine.store().backend() })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "unavailable", "error": "store_unavailable", "message": e.to_string() }),
            ),
        ),
    }
}

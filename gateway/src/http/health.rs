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

/// How long readiness waits for the store: a probe (Kubernetes gives it 1–2 s) must not hold a
/// connection for the pool's whole acquire timeout while the store is down.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready: the state store answers within [`READY_WITHIN`].
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let trouble =
        match tokio::time::timeout(READY_WITHIN, st.engine.store().list_requests(None, 1)).await {
            Ok(Ok(_)) => {
                return (
                    StatusCode::OK,
                    Json(json!({ "status": "ready", "store": st.engine.store().backend() })),
                )
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the state store did not answer within {READY_WITHIN:?}"),
        };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "unavailable", "error": "store_unavailable", "message": trouble })),
    )
}

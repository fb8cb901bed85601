//! `Authorization: Bearer …` → requester chain, as an axum extractor.

use super::error::ApiError;
use super::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use countersign_bot::RequesterChain;

/// The authenticated caller.
pub struct Caller(pub RequesterChain);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "send `Authorization: Bearer <token>` (an OIDC JWT or a configured static token)")
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "the Authorization header must use the Bearer scheme",
                )
            })?;
        match state.engine.authenticate(token, "api").await {
            Ok(chain) => Ok(Caller(chain)),
            Err(e) => {
                Err(
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
                        .with(serde_json::json!({ "reason": e.code() })),
                )
            }
        }
    }
}

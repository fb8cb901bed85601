//! The API's one error type: a stable `error` code, a human message, and the right status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// Extra fields merged into the body.
    pub extra: serde_json::Value,
}

impl ApiError {
    /// An error with no extra fields.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: serde_json::Value::Null,
        }
    }

    /// Add fields to the body.
    pub fn with(mut self, extra: serde_json::Value) -> Self {
        self.extra = extra;
        self
    }

    /// 400 bad request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A JSON body the extractor refused: keeps axum's status (400, 413, 415, 422) with our shape.
    pub fn from_json_rejection(e: axum::extract::rejection::JsonRejection, expected: &str) -> Self {
        let status = e.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        Self::new(
            status,
            code,
            format!("{}; send JSON {expected}", e.body_text()),
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 when the store fails: the caller may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let (Some(obj), serde_json::Value::Object(extra)) = (body.as_object_mut(), self.extra) {
            for (k, v) in extra {
                obj.insert(k, v);
            }
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<countersign_bot::WorkflowError> for ApiError {
    fn from(e: countersign_bot::WorkflowError) -> Self {
        match e {
            countersign_bot::WorkflowError::NotFound(id) => ApiError::not_found(format!(
                "no request {id}: list requests with GET /v1/requests"
            )),
            e @ countersign_bot::WorkflowError::RequesterWithoutEmail(_) => ApiError::new(
                StatusCode::FORBIDDEN,
                "requester_without_email",
                e.to_string(),
            ),
            countersign_bot::WorkflowError::Store(s) => {
                tracing::error!(error = %s, "store failure");
                ApiError::unavailable("the state store is unavailable; retry shortly")
            }
        }
    }
}

impl From<countersign_bot::store::StoreError> for ApiError {
    fn from(e: countersign_bot::store::StoreError) -> Self {
        countersign_bot::WorkflowError::Store(e).into()
    }
}

//! How an HTTP delivery outcome maps onto the outbox's retry decision, shared by the HTTP channels
//! (Jira, webhooks): outages, 5xx, 408 and 429 are retried (honouring `Retry-After`), other 4xx are not.

use countersign_bot::events::DeliveryError;
use reqwest::StatusCode;
use std::time::Duration;

/// Longest `Retry-After` honoured; a server asking for more is retried at this cap.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parse a `Retry-After` header given in seconds (the HTTP-date form is treated as absent).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Classify a non-success response. `what` names the call for the error message.
pub fn status_error(
    what: &str,
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
) -> DeliveryError {
    let body: String = body.chars().take(300).collect();
    let message = format!("{what} returned HTTP {status}: {body}");
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        DeliveryError::Retryable {
            message,
            retry_after: parse_retry_after(retry_after),
        }
    } else {
        DeliveryError::Permanent(format!(
            "{message}; fix the configuration or credentials, then `countersign outbox retry ID`"
        ))
    }
}

/// Classify a transport error (connection refused, timeout, TLS): always worth retrying.
pub fn transport_error(what: &str, err: &reqwest::Error) -> DeliveryError {
    DeliveryError::Retryable {
        message: format!("{what} failed: {err}; will retry when the receiver is reachable"),
        retry_after: None,
    }
}

/// Send a request and turn anything but 2xx into a [`DeliveryError`]; returns the response body.
pub async fn send(what: &str, req: reqwest::RequestBuilder) -> Result<String, DeliveryError> {
    let resp = req.send().await.map_err(|e| transport_error(what, &e))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.map_err(|e| transport_error(what, &e))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(status_error(what, status, retry_after.as_deref(), &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_and_server_errors_are_retried_with_retry_after() {
        match status_error("x", StatusCode::TOO_MANY_REQUESTS, Some("7"), "") {
            DeliveryError::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("expected retryable, got {other:?}"),
        }
        assert!(matches!(
            status_error("x", StatusCode::BAD_GATEWAY, None, ""),
            DeliveryError::Retryable {
                retry_after: None,
                ..
            }
        ));
    }

    #[test]
    fn client_errors_other_than_429_are_permanent() {
        assert!(matches!(
            status_error("x", StatusCode::UNAUTHORIZED, None, "bad token"),
            DeliveryError::Permanent(m) if m.contains("bad token")
        ));
    }

    #[test]
    fn retry_after_is_capped_and_dates_are_ignored() {
        assert_eq!(parse_retry_after(Some("999999")), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }
}

//! Verification of Slack's request signatures (`X-Slack-Signature`, `X-Slack-Request-Timestamp`).
//!
//! HMAC-SHA256 with the signing secret over `v0:{timestamp}:{raw body}`, compared in constant time, and the
//! timestamp must be within five minutes of now so a captured request cannot be replayed later.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// Why an inbound request was not accepted as coming from Slack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A signature header is absent.
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp header: requests must come from Slack")]
    Missing,
    /// The timestamp is not a number.
    #[error("X-Slack-Request-Timestamp is not a Unix timestamp")]
    BadTimestamp,
    /// The timestamp is outside the window.
    #[error("request timestamp is {skew_secs} s away from now (limit {MAX_SKEW_SECS} s): a replay, or this host's clock is wrong (check NTP)")]
    Stale {
        /// Distance from now, in seconds.
        skew_secs: i64,
    },
    /// The HMAC does not match.
    #[error("signature does not match: the request was not signed with this app's signing secret (check SLACK signing secret configuration)")]
    Mismatch,
}

impl SignatureError {
    /// Audit action name for this refusal.
    pub fn audit_action(&self) -> &'static str {
        match self {
            Self::Stale { .. } => "slack.stale_timestamp_refused",
            _ => "slack.signature_refused",
        }
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"v0:");
    m.update(timestamp.as_bytes());
    m.update(b":");
    m.update(body);
    m
}

/// The `v0=…` signature Slack would send for `body` at `timestamp` (for fakes and tests).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Verify a request; `now_unix` is the current Unix time in seconds. The signature is checked before the
/// timestamp so a forged request is reported as forged, whatever its age.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let given = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Mismatch)?;
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)?;
    let skew = (now_unix - ts).abs();
    if skew > MAX_SKEW_SECS {
        return Err(SignatureError::Stale { skew_secs: skew });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's documented example ("Verifying requests from Slack").
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn slacks_documented_vector_verifies_at_its_own_time() {
        assert_eq!(sign(SECRET.as_bytes(), TS, BODY.as_bytes()), SIG);
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                Some(TS),
                Some(SIG),
                BODY.as_bytes(),
                1531420618 + 10
            ),
            Ok(())
        );
    }

    #[test]
    fn slacks_documented_vector_is_refused_as_stale_today() {
        let r = verify(
            SECRET.as_bytes(),
            Some(TS),
            Some(SIG),
            BODY.as_bytes(),
            now(),
        );
        assert!(matches!(r, Err(SignatureError::Stale { .. })), "{r:?}");
    }

    #[test]
    fn a_changed_body_or_wrong_secret_is_a_mismatch() {
        let t = 1531420618 + 1;
        let tampered = BODY.replace("roadrunner", "coyote");
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                Some(TS),
                Some(SIG),
                tampered.as_bytes(),
                t
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"another-secret", Some(TS), Some(SIG), BODY.as_bytes(), t),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                Some(TS),
                Some("v0=zz"),
                BODY.as_bytes(),
                t
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_headers_and_bad_timestamps_are_refused() {
        assert_eq!(
            verify(SECRET.as_bytes(), None, Some(SIG), BODY.as_bytes(), now()),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(
                SECRET.as_bytes(),
                Some("soon"),
                Some(SIG),
                BODY.as_bytes(),
                now()
            ),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn future_timestamps_beyond_the_window_are_stale_too() {
        let future = (now() + MAX_SKEW_SECS + 30).to_string();
        let sig = sign(b"s", &future, b"x");
        assert!(matches!(
            verify(b"s", Some(&future), Some(&sig), b"x", now()),
            Err(SignatureError::Stale { .. })
        ));
        let fresh = now().to_string();
        let sig = sign(b"s", &fresh, b"x");
        assert_eq!(verify(b"s", Some(&fresh), Some(&sig), b"x", now()), Ok(()));
    }
}

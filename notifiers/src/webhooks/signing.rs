//! Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`,
//! keyed with the base64 part of a `whsec_` secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A webhook secret that is not a `whsec_`-prefixed base64 key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Missing prefix.
    #[error("webhook secret must start with `whsec_` followed by base64 key bytes: generate one with `echo whsec_$(head -c 32 /dev/urandom | base64)`")]
    MissingPrefix,
    /// Not base64, or too short.
    #[error("webhook secret after `whsec_` must be base64 of at least 16 bytes: generate one with `echo whsec_$(head -c 32 /dev/urandom | base64)`")]
    BadKey,
}

/// Signs and verifies Standard Webhooks messages.
#[derive(Clone)]
pub struct WebhookSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSigner(..)")
    }
}

impl WebhookSigner {
    /// Parse a `whsec_<base64>` secret.
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        let b64 = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(b64).map_err(|_| SecretError::BadKey)?;
        if key.len() < 16 {
            return Err(SecretError::BadKey);
        }
        Ok(Self { key })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            B64.encode(self.mac(id, timestamp, body).finalize().into_bytes())
        )
    }

    /// True when any space-separated `v1,` signature in `header` matches (constant-time comparison).
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split_whitespace().any(|sig| {
            let Some(b64) = sig.strip_prefix("v1,") else {
                return false;
            };
            let Ok(bytes) = B64.decode(b64) else {
                return false;
            };
            self.mac(id, timestamp, body).verify_slice(&bytes).is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks reference test vector (standard-webhooks/libraries test suites).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signature_matches_the_reference_vector() {
        let s = WebhookSigner::from_secret(SECRET).expect("secret");
        assert_eq!(s.sign(ID, TS, BODY), EXPECTED);
        assert!(s.verify(ID, TS, BODY, &format!("v1,bogus {EXPECTED}")));
    }

    #[test]
    fn changed_body_id_or_timestamp_fails_verification() {
        let s = WebhookSigner::from_secret(SECRET).expect("secret");
        assert!(!s.verify(ID, TS, b"{}", EXPECTED));
        assert!(!s.verify("msg_other", TS, BODY, EXPECTED));
        assert!(!s.verify(ID, TS + 1, BODY, EXPECTED));
    }

    #[test]
    fn secrets_without_prefix_or_with_short_keys_are_rejected() {
        assert!(matches!(
            WebhookSigner::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::MissingPrefix)
        ));
        assert!(matches!(
            WebhookSigner::from_secret("whsec_c2hvcnQ="),
            Err(SecretError::BadKey)
        ));
    }
}

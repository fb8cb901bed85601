//! Signed approval-link tokens: one per recipient, request and decision, single use, and the CSRF token a
//! confirmation form carries.

use countersign_bot::{Decision, RequestId};
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// The audience every e-mail link token carries; tokens for other audiences are refused.
pub const LINK_AUDIENCE: &str = "countersign-email";

/// What a link lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkAction {
    /// Open the confirmation page and, by POST, approve.
    Approve,
    /// Open the confirmation page and, by POST, deny.
    Deny,
    /// Only view the request page (follow-up mails); never votes.
    View,
}

impl LinkAction {
    /// The vote this link casts, if it is a voting link.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Self::Approve => Some(Decision::Approve),
            Self::Deny => Some(Decision::Deny),
            Self::View => None,
        }
    }
}

impl From<Decision> for LinkAction {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Approve => Self::Approve,
            Decision::Deny => Self::Deny,
        }
    }
}

/// The claims of a link token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The recipient's e-mail address: the link votes as this person, whoever clicks it.
    pub sub: String,
    /// The request.
    pub rid: RequestId,
    /// What the link does.
    pub act: LinkAction,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Single-use nonce.
    pub jti: String,
    /// Always [`LINK_AUDIENCE`].
    pub aud: String,
}

/// Why a link token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token at all (truncated by a mail client, pasted wrongly).
    #[error("this link is malformed: open it again from the original e-mail, without editing it")]
    Malformed,
    /// Signature, audience or claims don't verify: forged or altered.
    #[error("this link is not valid (forged or altered): use the link from the original e-mail")]
    Forged,
    /// Past its expiry.
    #[error("this link has expired: open the request page or ask the requester to submit again")]
    Expired,
}

impl LinkError {
    /// Stable code for the audit trail.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Forged => "forged",
            Self::Expired => "expired",
        }
    }
}

/// Mints and verifies link tokens and CSRF tokens with the server's HMAC key.
#[derive(Clone)]
pub struct LinkSigner {
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner").finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

impl LinkSigner {
    /// A signer over `key` (at least 32 bytes; checked by [`super::EmailSecrets`]).
    pub fn new(key: Vec<u8>) -> Self {
        Self { key: Arc::new(key) }
    }

    /// A token for `recipient` to take `act` on `request`, valid until `expires` (Unix seconds).
    pub fn mint(
        &self,
        request: RequestId,
        recipient: &str,
        act: LinkAction,
        expires: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = LinkClaims {
            sub: recipient.trim().to_lowercase(),
            rid: request,
            act,
            exp: expires,
            iat: unix_now(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
            aud: LINK_AUDIENCE.into(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
    }

    /// Verify signature, audience and expiry (no leeway: an expired link is expired).
    pub fn verify(&self, token: &str) -> Result<LinkClaims, LinkError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[LINK_AUDIENCE]);
        v.set_required_spec_claims(&["exp", "aud", "sub", "jti"]);
        v.leeway = 0;
        v.reject_tokens_expiring_in_less_than = 0;
        match jsonwebtoken::decode::<LinkClaims>(
            token.trim(),
            &DecodingKey::from_secret(&self.key),
            &v,
        ) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => LinkError::Expired,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                    LinkError::Malformed
                }
                _ => LinkError::Forged,
            }),
        }
    }

    /// The CSRF token a confirmation form for this link must carry: HMAC of the link's nonce.
    pub fn csrf_for(&self, claims: &LinkClaims) -> String {
        hex::encode(self.csrf_mac(claims).finalize().into_bytes())
    }

    /// Constant-time check of a submitted CSRF token.
    pub fn csrf_matches(&self, claims: &LinkClaims, submitted: &str) -> bool {
        let expected = self.csrf_for(claims);
        expected
            .as_bytes()
            .ct_eq(submitted.trim().as_bytes())
            .into()
    }

    fn csrf_mac(&self, claims: &LinkClaims) -> Hmac<Sha256> {
        // Key separation: the same key signs tokens (JWT HS256) and CSRF values, so prefix the input.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(b"countersign-email-csrf\0");
        mac.update(claims.jti.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn minted_link_verifies_with_its_claims() {
        let s = signer();
        let id = RequestId::new();
        let t = s
            .mint(id, "Bob@Example.com", LinkAction::Approve, unix_now() + 60)
            .unwrap();
        let c = s.verify(&t).unwrap();
        assert_eq!(c.rid, id);
        assert_eq!(c.sub, "bob@example.com");
        assert_eq!(c.act, LinkAction::Approve);
        assert_eq!(c.aud, LINK_AUDIENCE);
    }

    #[test]
    fn link_signed_with_another_key_is_forged() {
        let other = LinkSigner::new(b"another-key-another-key-another-".to_vec());
        let t = other
            .mint(
                RequestId::new(),
                "bob@example.com",
                LinkAction::Approve,
                unix_now() + 60,
            )
            .unwrap();
        assert_eq!(signer().verify(&t), Err(LinkError::Forged));
    }

    #[test]
    fn expired_link_is_refused() {
        let s = signer();
        let t = s
            .mint(
                RequestId::new(),
                "bob@example.com",
                LinkAction::View,
                unix_now() - 10,
            )
            .unwrap();
        assert_eq!(s.verify(&t), Err(LinkError::Expired));
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(signer().verify("not-a-token"), Err(LinkError::Malformed));
    }

    #[test]
    fn csrf_token_is_bound_to_the_link() {
        let s = signer();
        let a = s
            .verify(
                &s.mint(
                    RequestId::new(),
                    "a@x.io",
                    LinkAction::Deny,
                    unix_now() + 60,
                )
                .unwrap(),
            )
            .unwrap();
        let b = s
            .verify(
                &s.mint(
                    RequestId::new(),
                    "a@x.io",
                    LinkAction::Deny,
                    unix_now() + 60,
                )
                .unwrap(),
            )
            .unwrap();
        assert!(s.csrf_matches(&a, &s.csrf_for(&a)));
        assert!(!s.csrf_matches(&a, &s.csrf_for(&b)));
        assert!(!s.csrf_matches(&a, ""));
    }
}

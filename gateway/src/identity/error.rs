//! Why a bearer token was refused. Messages never include the token or key material.

/// Authentication failure with a stable machine-readable [`code`](AuthError::code).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a token we can parse at all.
    #[error(
        "malformed token ({reason}); send the raw JWT or static token as the bearer credential"
    )]
    Malformed { reason: String },
    /// Not a JWT and no configured static token matches.
    #[error("unknown token; ask an operator for a token configured in [[identity.static_tokens]]")]
    UnknownToken,
    /// `iss` missing, not configured, or not the expected value.
    #[error(
        "token issuer {issuer:?} is not trusted; use a token from an issuer in [[identity.oidc]]"
    )]
    BadIssuer { issuer: String },
    /// Header `alg` is not pinned for the issuer (includes `none` and HMAC).
    #[error("token algorithm {alg:?} is not allowed for this issuer; have the IdP sign with a configured algorithm")]
    AlgorithmNotAllowed { alg: String },
    /// No JWKS key with the token's `kid`, even after a refetch.
    #[error("signing key {kid:?} is unknown to the issuer's JWKS; retry shortly if the IdP just rotated keys")]
    UnknownKey { kid: String },
    /// The JWKS could not be fetched or read.
    #[error("could not load the JWKS of {issuer:?} ({reason}); check the IdP is reachable and `jwks_url`/`discovery`")]
    JwksUnavailable { issuer: String, reason: String },
    /// Signature does not verify with the issuer's key.
    #[error("token signature is invalid; obtain a new token from the identity provider")]
    BadSignature,
    /// `exp` is in the past (beyond the clock skew).
    #[error("token expired; obtain a fresh token from the identity provider")]
    Expired,
    /// `nbf` or `iat` is in the future (beyond the clock skew).
    #[error("token is not valid yet (nbf or iat in the future); check the client and IdP clocks")]
    NotYetValid,
    /// `aud` does not list our audience.
    #[error(
        "token audience does not include this gateway; request a token for the configured audience"
    )]
    BadAudience,
    /// A required claim (`exp`, `iss`, `aud`, subject) is absent.
    #[error("token lacks the required claim {claim:?}; configure the IdP to include it")]
    MissingClaim { claim: String },
    /// RFC 8693 `act` nesting deeper than allowed.
    #[error("delegation chain deeper than {max} actors; shorten the chain of agents")]
    DelegationTooDeep { max: usize },
}

impl AuthError {
    /// Stable code for API responses, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::UnknownToken => "unknown_token",
            Self::BadIssuer { .. } => "bad_issuer",
            Self::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Self::UnknownKey { .. } => "unknown_key",
            Self::JwksUnavailable { .. } => "jwks_unavailable",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadAudience => "bad_audience",
            Self::MissingClaim { .. } => "missing_claim",
            Self::DelegationTooDeep { .. } => "delegation_too_deep",
        }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed {
            reason: reason.into(),
        }
    }
}

/// Caps attacker-controlled text (issuer, kid, alg) before it lands in messages and logs.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacker_controlled_text_is_clipped() {
        let long = "x".repeat(500);
        assert_eq!(clip(&long).chars().count(), 81);
        assert_eq!(clip("short"), "short");
    }
}

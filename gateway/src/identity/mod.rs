//! Who is calling: bearer tokens (OIDC JWTs or configured static tokens) → [`RequesterChain`].
//!
//! **Invariant:** every identity in a chain comes from a verified signature or a configured token hash;
//! unverified token contents only select which issuer configuration and key to verify with.
//!
//! Configuration (`[identity]`, see [`IdentityConfig`]):
//!
//! ```toml
//! [identity]
//! clock_skew = "30s"                  # leeway for exp/nbf, at most 5m
//! [[identity.oidc]]
//! issuer = "https://idp.example.com"
//! audience = "countersign"
//! jwks_url = "https://idp.example.com/.well-known/jwks.json"   # or: discovery = true
//! algorithms = ["RS256"]              # pinned; `none` and HS* are refused
//! default_kind = "workload"           # kind of a subject no glob matches
//! human_groups = ["staff", "oncall-*"]
//! human_subjects = []                 # subject globs that are people
//! workload_subjects = ["svc-*"]       # wins over the human globs
//! # subject_claim = "sub", email_claim = "email", groups_claim = "groups", jwks_min_refetch = "10s"
//! [[identity.static_tokens]]
//! name = "ci-agent"                   # subject; issuer is "static"
//! sha256 = "<hex SHA-256 of the token>"
//! kind = "workload"
//! acts_for = "alice@example.com"      # chain = [ci-agent, alice]
//! [[identity.static_tokens]]
//! name = "ops-psql"                   # wire clients with user=ops-psql log in with SCRAM-SHA-256
//! kind = "human"
//! scram_verifier = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"   # `countersign scram-verifier`
//! ```

pub mod claims;
pub mod config;
pub mod delegation;
pub mod error;
pub mod jwks;
pub mod jwt;
pub mod scram;
pub mod static_tokens;

#[cfg(test)]
mod authenticator_tests;

pub use config::{ConfigError, IdentityConfig, OidcIssuerConfig, StaticTokenConfig};
pub use error::AuthError;

use claims::ClaimMapping;
use config::{checked_url, parse_duration};
use countersign_bot::RequesterChain;
use error::clip;
use jwks::{JwksCache, JwksSource};
use jwt::IssuerVerifier;
pub use static_tokens::ScramLogin;
use static_tokens::StaticTokens;
use std::collections::HashMap;

/// Longest bearer accepted; bounds the decoding work an unauthenticated caller can cause.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

struct TrustedIssuer {
    verifier: IssuerVerifier,
    mapping: ClaimMapping,
}

/// Authenticates bearer tokens against the configured issuers and static tokens.
///
/// A bearer with exactly two dots is treated as a JWT; anything else as a static token (so static
/// tokens must not be shaped like `a.b.c`).
pub struct Authenticator {
    issuers: HashMap<String, TrustedIssuer>,
    static_tokens: StaticTokens,
}

impl Authenticator {
    /// Validates `cfg` and prepares the verifiers; JWKS are fetched lazily with `http`.
    pub fn new(cfg: &IdentityConfig, http: reqwest::Client) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let leeway_secs = cfg.clock_skew()?.as_secs();
        let mut issuers = HashMap::new();
        for (i, oidc) in cfg.oidc.iter().enumerate() {
            let source = match &oidc.jwks_url {
                Some(url) => {
                    JwksSource::Url(checked_url(&format!("identity.oidc[{i}].jwks_url"), url)?)
                }
                None => JwksSource::Discovery {
                    issuer: oidc.issuer.clone(),
                },
            };
            let pinned = oidc.pinned_algorithms(i)?;
            let min_refetch = parse_duration(
                &format!("identity.oidc[{i}].jwks_min_refetch"),
                &oidc.jwks_min_refetch,
            )?;
            let jwks = JwksCache::new(
                oidc.issuer.clone(),
                source,
                http.clone(),
                pinned.clone(),
                min_refetch,
            );
            let verifier = IssuerVerifier::new(
                oidc.issuer.clone(),
                oidc.audience.clone(),
                pinned,
                leeway_secs,
                jwks,
            );
            let mapping = ClaimMapping::new(i, oidc)?;
            issuers.insert(oidc.issuer.clone(), TrustedIssuer { verifier, mapping });
        }
        let static_tokens = StaticTokens::new(&cfg.static_tokens)?;
        Ok(Self {
            issuers,
            static_tokens,
        })
    }

    /// The SCRAM-SHA-256 login of the static identity named `user`, if it has a `scram_verifier`.
    pub fn scram_login(&self, user: &str) -> Option<&ScramLogin> {
        self.static_tokens.scram_login(user)
    }

    /// The requester chain proven by `bearer` (the raw token, without the `Bearer ` prefix).
    pub async fn authenticate(&self, bearer: &str) -> Result<RequesterChain, AuthError> {
        let token = bearer.trim();
        if token.is_empty() {
            return Err(AuthError::malformed("empty bearer token"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::malformed("bearer token longer than 16 KiB"));
        }
        if token.matches('.').count() != 2 {
            return self.static_tokens.authenticate(token);
        }
        let unverified = jwt::peek(token)?;
        let trusted = self
            .issuers
            .get(&unverified.iss)
            .ok_or_else(|| AuthError::BadIssuer {
                issuer: clip(&unverified.iss),
            })?;
        let claims = trusted.verifier.verify(token, &unverified).await?;
        delegation::requester_chain(&claims, trusted.verifier.issuer(), &trusted.mapping, |i| {
            self.issuers.contains_key(i) || (i == static_tokens::STATIC_ISSUER)
        })
    }
}

// The authenticator is shared across connection tasks.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Authenticator>();
};

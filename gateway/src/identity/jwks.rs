//! An issuer's signing keys: fetched from its JWKS (optionally via OIDC discovery), cached by `kid`,
//! refetched on an unknown `kid` at most once per interval, one fetch at a time.

use super::error::{clip, AuthError};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

/// Bound on a JWKS or discovery document; real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Per-request timeout for JWKS and discovery fetches.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A fixed JWKS URL.
    Url(reqwest::Url),
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`, resolved on first fetch.
    Discovery {
        /// The configured issuer; the discovery document must name the same one.
        issuer: String,
    },
}

/// One usable verification key.
#[derive(Clone)]
pub struct SigningKey {
    /// The key itself.
    pub key: DecodingKey,
    /// The JWK's `alg`, when it pins one.
    pub alg: Option<Algorithm>,
}

struct FetchState {
    last_fetch: Option<Instant>,
    jwks_url: Option<reqwest::Url>,
    // Reported while rate-limited after a failed fetch, so callers see the cause, not "unknown key".
    last_error: Option<AuthError>,
}

/// Cached signing keys of one issuer.
pub struct JwksCache {
    issuer: String,
    source: JwksSource,
    http: reqwest::Client,
    pinned: Vec<Algorithm>,
    min_refetch: Duration,
    keys: RwLock<Arc<HashMap<String, SigningKey>>>,
    // Held across a fetch, so concurrent misses wait for one fetch instead of each starting their own.
    fetch: Mutex<FetchState>,
}

impl JwksCache {
    /// A cache that fetches lazily, on the first token.
    pub fn new(
        issuer: String,
        source: JwksSource,
        http: reqwest::Client,
        pinned: Vec<Algorithm>,
        min_refetch: Duration,
    ) -> Self {
        Self {
            issuer,
            source,
            http,
            pinned,
            min_refetch,
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetch: Mutex::new(FetchState {
                last_fetch: None,
                jwks_url: None,
                last_error: None,
            }),
        }
    }

    /// The key for `kid` (a token without `kid` matches a set holding exactly one key).
    pub async fn key(&self, kid: Option<&str>) -> Result<SigningKey, AuthError> {
        let seen = self.keys.read().await.clone();
        if let Some(found) = lookup(&seen, kid) {
            return Ok(found);
        }
        let mut state = self.fetch.lock().await;
        // Another task may have refreshed the set while we waited for the lock.
        let current = self.keys.read().await.clone();
        if !Arc::ptr_eq(&current, &seen) {
            if let Some(found) = lookup(&current, kid) {
                return Ok(found);
            }
        }
        let rate_limited = state
            .last_fetch
            .is_some_and(|t| t.elapsed() < self.min_refetch);
        if rate_limited {
            return Err(state.last_error.clone().unwrap_or_else(|| unknown(kid)));
        }
        state.last_fetch = Some(Instant::now());
        let fetched = self.fetch_keys(&mut state).await;
        state.last_error = fetched.as_ref().err().cloned();
        let fresh = Arc::new(fetched?);
        *self.keys.write().await = fresh.clone();
        lookup(&fresh, kid).ok_or_else(|| unknown(kid))
    }

    async fn fetch_keys(
        &self,
        state: &mut FetchState,
    ) -> Result<HashMap<String, SigningKey>, AuthError> {
        let url = match (&state.jwks_url, &self.source) {
            (Some(url), _) => url.clone(),
            (None, JwksSource::Url(url)) => url.clone(),
            (None, JwksSource::Discovery { issuer }) => {
                let url = self.discover(issuer).await?;
                state.jwks_url = Some(url.clone());
                url
            }
        };
        let body = self.get(&url).await?;
        let set: RawJwkSet = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("bad JWKS JSON: {e}")))?;
        let mut keys = HashMap::new();
        for raw in set.keys {
            // Keys we cannot use (other kty, encryption keys, foreign algorithms) are skipped, not fatal:
            // IdPs publish such keys next to signing keys.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            if let Some((kid, key)) = self.usable(&jwk) {
                keys.insert(kid, key);
            }
        }
        tracing::debug!(issuer = %self.issuer, keys = keys.len(), "JWKS fetched");
        Ok(keys)
    }

    fn usable(&self, jwk: &Jwk) -> Option<(String, SigningKey)> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let alg = match jwk.common.key_algorithm {
            Some(a) => {
                let alg = Algorithm::from_str(&a.to_string()).ok()?;
                if !self.pinned.contains(&alg) {
                    return None;
                }
                Some(alg)
            }
            None => None,
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        // A symmetric key in a public JWKS would let anyone who can read it mint tokens.
        if key.family() == AlgorithmFamily::Hmac
            || !self.pinned.iter().any(|a| a.family() == key.family())
        {
            return None;
        }
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        Some((kid, SigningKey { key, alg }))
    }

    async fn discover(&self, issuer: &str) -> Result<reqwest::Url, AuthError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let url = reqwest::Url::parse(&url)
            .map_err(|_| self.unavailable("issuer is not a URL".into()))?;
        let body = self.get(&url).await?;
        let doc: DiscoveryDocument = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("bad discovery JSON: {e}")))?;
        // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
        if doc.issuer != issuer {
            return Err(self.unavailable("discovery document names a different issuer".into()));
        }
        super::config::checked_url("jwks_uri", &doc.jwks_uri)
            .map_err(|_| self.unavailable("discovery jwks_uri is not an https URL".into()))
    }

    async fn get(&self, url: &reqwest::Url) -> Result<Vec<u8>, AuthError> {
        let mut response = self
            .http
            .get(url.clone())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unavailable(format!("request failed: {}", e.without_url())))?;
        if !response.status().is_success() {
            return Err(self.unavailable(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.unavailable(format!("reading body failed: {}", e.without_url())))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(self.unavailable("document larger than 256 KiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn unavailable(&self, reason: String) -> AuthError {
        AuthError::JwksUnavailable {
            issuer: self.issuer.clone(),
            reason,
        }
    }
}

fn lookup(keys: &HashMap<String, SigningKey>, kid: Option<&str>) -> Option<SigningKey> {
    match kid {
        Some(kid) => keys.get(kid).cloned(),
        None if keys.len() == 1 => keys.values().next().cloned(),
        None => None,
    }
}

fn unknown(kid: Option<&str>) -> AuthError {
    AuthError::UnknownKey {
        kid: clip(kid.unwrap_or("(none)")),
    }
}

#[derive(serde::Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

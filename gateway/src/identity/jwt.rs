//! OIDC JWT verification for one issuer: pinned algorithms, `iss`/`aud`/`exp` required, `nbf` checked,
//! bounded leeway.

use super::error::{clip, AuthError};
use super::jwks::JwksCache;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::str::FromStr;

/// The parts of an unverified token used only to choose the issuer configuration and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// Header `alg`, as written.
    pub alg: String,
    /// Header `kid`.
    pub kid: Option<String>,
    /// Payload `iss`.
    pub iss: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct RawIssuer {
    #[serde(default)]
    iss: Option<Value>,
}

/// Reads `alg`, `kid` and `iss` without trusting them: they only select what is then verified.
pub fn peek(token: &str) -> Result<Unverified, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::malformed("a JWT has three dot-separated parts"));
    };
    let header: RawHeader = decode_part(header, "header")?;
    // RFC 7515 §4.1.11: critical extensions we do not implement must make the token invalid.
    if header.crit.is_some() {
        return Err(AuthError::malformed(
            "the crit header names extensions this gateway does not support",
        ));
    }
    let body: RawIssuer = decode_part(payload, "payload")?;
    // Readers disagree on a repeated claim (the gateway's JSON reader keeps the last, others the
    // first), so a token naming one person to an auditing tool and another to the gateway is refused.
    let _: UniqueKeys = decode_part(payload, "payload")?;
    let iss = match body.iss {
        Some(Value::String(s)) => s,
        Some(_) => return Err(AuthError::malformed("iss is not a string")),
        None => {
            return Err(AuthError::MissingClaim {
                claim: "iss".into(),
            })
        }
    };
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        iss,
    })
}

/// A JSON value read only to refuse one holding an object with a repeated key, at any depth.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON without repeated object keys")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("a repeated key"));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str, what: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::malformed(format!("JWT {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::malformed(format!("JWT {what} is not the expected JSON")))
}

/// Verifies tokens of one configured issuer.
pub struct IssuerVerifier {
    issuer: String,
    audience: String,
    pinned: Vec<Algorithm>,
    leeway_secs: u64,
    jwks: JwksCache,
}

impl IssuerVerifier {
    /// `pinned` must hold asymmetric algorithms only (config validation ensures it).
    pub fn new(
        issuer: String,
        audience: String,
        pinned: Vec<Algorithm>,
        leeway_secs: u64,
        jwks: JwksCache,
    ) -> Self {
        Self {
            issuer,
            audience,
            pinned,
            leeway_secs,
            jwks,
        }
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies signature and standard claims; returns the verified claims.
    pub async fn verify(
        &self,
        token: &str,
        unverified: &Unverified,
    ) -> Result<Map<String, Value>, AuthError> {
        let not_allowed = || AuthError::AlgorithmNotAllowed {
            alg: clip(&unverified.alg),
        };
        let alg = Algorithm::from_str(&unverified.alg).map_err(|_| not_allowed())?;
        if !self.pinned.contains(&alg) {
            return Err(not_allowed());
        }
        let key = self.jwks.key(unverified.kid.as_deref()).await?;
        if key.alg.is_some_and(|a| a != alg) || key.key.family() != alg.family() {
            return Err(not_allowed());
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.leeway = self.leeway_secs;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| auth_error(e.kind(), &unverified.alg))?;
        self.check_issued_at(&data.claims)?;
        Ok(data.claims)
    }

    /// A token issued in the future (beyond the leeway) is refused like one whose `nbf` is in the
    /// future: jsonwebtoken does not look at `iat`, and a pre-dated token signals a forged or
    /// mis-minted credential (or a broken IdP clock).
    fn check_issued_at(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let Some(iat) = claims.get("iat") else {
            return Ok(());
        };
        let iat = iat
            .as_f64()
            .ok_or_else(|| AuthError::malformed("claim \"iat\" has the wrong type"))?;
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if iat > now + self.leeway_secs as f64 {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

fn auth_error(kind: &ErrorKind, alg: &str) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::BadAudience,
        ErrorKind::InvalidIssuer => AuthError::BadIssuer {
            issuer: "(not the configured issuer)".into(),
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed { alg: clip(alg) },
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim {
            claim: claim.clone(),
        },
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::malformed(format!("claim {claim:?} has the wrong type"))
        }
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Signing(_)
        | ErrorKind::Provider(_) => AuthError::BadSignature,
        _ => AuthError::malformed("the token does not decode"),
    }
}

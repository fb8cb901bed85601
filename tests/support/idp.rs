//! A fake OIDC provider on loopback: serves a JWKS and signs tokens with the test keys.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const RSA_A: &[u8] = include_bytes!("../../gateway/tests/fixtures/identity/rsa-a.key.pem");
const RSA_B: &[u8] = include_bytes!("../../gateway/tests/fixtures/identity/rsa-b.key.pem");
/// The RSA public key as PEM (for the HS256 key-confusion attack).
pub const RSA_A_PUBLIC: &[u8] =
    include_bytes!("../../gateway/tests/fixtures/identity/rsa-a.pub.pem");

/// Audience the test issuer uses.
pub const AUDIENCE: &str = "countersign";

/// A running fake IdP.
#[derive(Clone)]
pub struct Idp {
    /// Issuer URL (`http://127.0.0.1:PORT`).
    pub issuer: String,
    jwks: Arc<Mutex<Value>>,
    /// JWKS fetches so far.
    pub fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(State(idp): State<Idp>) -> Json<Value> {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    Json(idp.jwks.lock().map(|j| j.clone()).unwrap_or(Value::Null))
}

/// Key `rsa-a` (published at start).
pub fn key_a() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_A).unwrap()
}

/// Key `rsa-b` (not published until [`Idp::rotate_in_b`]).
pub fn key_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_B).unwrap()
}

fn jwk(key: &EncodingKey, kid: &str) -> Value {
    let mut j = Jwk::from_encoding_key(key, Algorithm::RS256).unwrap();
    j.common.key_id = Some(kid.into());
    serde_json::to_value(j).unwrap()
}

impl Idp {
    /// Start one publishing `rsa-a`.
    pub async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let idp = Idp {
            issuer,
            jwks: Arc::new(Mutex::new(json!({ "keys": [jwk(&key_a(), "rsa-a")] }))),
            fetches: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/keys", get(serve_jwks))
            .with_state(idp.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        idp
    }

    /// Publish `rsa-b` as well (key rotation).
    pub fn rotate_in_b(&self) {
        *self.jwks.lock().unwrap() =
            json!({ "keys": [jwk(&key_a(), "rsa-a"), jwk(&key_b(), "rsa-b")] });
    }

    /// `[[identity.oidc]]` section trusting this issuer for RS256.
    pub fn config(&self) -> String {
        format!(
            "[identity]\nclock_skew = \"5s\"\n\n[[identity.oidc]]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\njwks_url = \"{}/keys\"\nalgorithms = [\"RS256\"]\nhuman_subjects = [\"human-*\"]\njwks_min_refetch = \"1s\"\n",
            self.issuer, self.issuer
        )
    }

    /// Standard claims for `sub`, valid for five minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        json!({ "iss": self.issuer, "aud": AUDIENCE, "sub": sub, "exp": now + 300, "iat": now })
    }

    /// Sign `claims` with RS256 and key id `kid`.
    pub fn sign(&self, claims: &Value, kid: &str, key: &EncodingKey) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }
}

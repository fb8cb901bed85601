//! End-to-end tests of [`Authenticator`] against a JWKS server on 127.0.0.1.

use super::*;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use countersign_bot::IdentityKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RSA_A: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa-a.key.pem");
const RSA_B: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa-b.key.pem");
const RSA_A_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa-a.pub.pem");
const EC_A: &[u8] = include_bytes!("../../tests/fixtures/identity/ec-p256.key.pem");
const AUDIENCE: &str = "countersign";

#[derive(Clone)]
struct Idp {
    jwks: Arc<Mutex<Value>>,
    issuer: Arc<Mutex<String>>,
    jwks_fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(State(idp): State<Idp>) -> Json<Value> {
    idp.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    // Slow enough that concurrent misses overlap with the fetch in flight.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let jwks = idp.jwks.lock().map(|j| j.clone()).unwrap_or(Value::Null);
    Json(jwks)
}

async fn serve_discovery(State(idp): State<Idp>) -> Json<Value> {
    let issuer = idp.issuer.lock().map(|i| i.clone()).unwrap_or_default();
    Json(json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")}))
}

/// A fake IdP serving `jwks` at `{issuer}/keys` and discovery at the well-known path.
async fn start_idp(jwks: Value) -> (String, Idp) {
    let idp = Idp {
        jwks: Arc::new(Mutex::new(jwks)),
        issuer: Arc::new(Mutex::new(String::new())),
        jwks_fetches: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/keys", get(serve_jwks))
        .route("/.well-known/openid-configuration", get(serve_discovery))
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    *idp.issuer.lock().unwrap() = issuer.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (issuer, idp)
}

fn rsa_key(pem: &[u8]) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_A).unwrap()
}

fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn claims(issuer: &str) -> Value {
    json!({"iss": issuer, "aud": AUDIENCE, "sub": "deploy-agent", "exp": now() + 300, "iat": now()})
}

fn sign(claims: &Value, alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn issuer_cfg(issuer: &str, extra: &str) -> String {
    format!(
        "[[identity.oidc]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\njwks_url = \"{issuer}/keys\"\n{extra}\n"
    )
}

fn authenticator(toml_text: &str) -> Authenticator {
    #[derive(serde::Deserialize)]
    struct File {
        identity: IdentityConfig,
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let file: File =
        toml::from_str(&format!("[identity]\nclock_skew = \"30s\"\n{toml_text}")).unwrap();
    Authenticator::new(&file.identity, reqwest::Client::new()).unwrap()
}

/// An IdP with RSA key `rsa-a` and an authenticator trusting it for RS256 (+ ES256 when asked).
async fn rsa_setup(extra: &str) -> (String, Idp, Authenticator) {
    let (issuer, idp) =
        start_idp(json!({"keys": [public_jwk(&rsa_key(RSA_A), Algorithm::RS256, "rsa-a")]})).await;
    let auth = authenticator(&issuer_cfg(
        &issuer,
        &format!("algorithms = [\"RS256\"]\n{extra}"),
    ));
    (issuer, idp, auth)
}

fn code(result: Result<countersign_bot::RequesterChain, AuthError>) -> &'static str {
    result.expect_err("token must be refused").code()
}

#[tokio::test]
async fn valid_rs256_token_yields_the_subject_as_a_workload() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["groups"] = json!(["deployers"]);
    let chain = auth
        .authenticate(&sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A)))
        .await
        .unwrap();
    assert_eq!(chain.0.len(), 1);
    let id = &chain.0[0];
    assert_eq!(
        (id.issuer.as_str(), id.subject.as_str()),
        (issuer.as_str(), "deploy-agent")
    );
    assert_eq!(id.kind, IdentityKind::Workload);
    assert_eq!(id.groups, vec!["deployers".to_owned()]);
}

#[tokio::test]
async fn valid_es256_token_is_accepted_when_pinned() {
    let (issuer, _idp) = start_idp(json!({"keys": [
        public_jwk(&rsa_key(RSA_A), Algorithm::RS256, "rsa-a"),
        public_jwk(&ec_key(), Algorithm::ES256, "ec-a"),
    ]}))
    .await;
    let auth = authenticator(&issuer_cfg(
        &issuer,
        "algorithms = [\"RS256\", \"ES256\"]\ndefault_kind = \"human\"",
    ));
    let mut c = claims(&issuer);
    c["email"] = json!("alice@example.com");
    let chain = auth
        .authenticate(&sign(&c, Algorithm::ES256, "ec-a", &ec_key()))
        .await
        .unwrap();
    assert_eq!(chain.0[0].email.as_deref(), Some("alice@example.com"));
    assert_eq!(chain.0[0].kind, IdentityKind::Human);
}

#[tokio::test]
async fn es256_token_is_refused_when_only_rs256_is_pinned() {
    let (issuer, _idp) =
        start_idp(json!({"keys": [public_jwk(&ec_key(), Algorithm::ES256, "ec-a")]})).await;
    let auth = authenticator(&issuer_cfg(&issuer, "algorithms = [\"RS256\"]"));
    let token = sign(&claims(&issuer), Algorithm::ES256, "ec-a", &ec_key());
    assert_eq!(
        code(auth.authenticate(&token).await),
        "algorithm_not_allowed"
    );
}

#[tokio::test]
async fn expired_token_is_refused_as_expired() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["exp"] = json!(now() - 120);
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "expired");
}

#[tokio::test]
async fn token_expired_within_the_clock_skew_is_accepted() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["exp"] = json!(now() - 5);
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert!(auth.authenticate(&token).await.is_ok());
}

#[tokio::test]
async fn token_with_nbf_in_the_future_is_not_yet_valid() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["nbf"] = json!(now() + 120);
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "not_yet_valid");
}

#[tokio::test]
async fn token_issued_in_the_future_is_not_yet_valid() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["iat"] = json!(now() + 3600);
    c["exp"] = json!(now() + 7200);
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "not_yet_valid");
    // Within the clock skew (30 s here) it is accepted; a non-numeric iat is malformed.
    c["iat"] = json!(now() + 5);
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert!(auth.authenticate(&token).await.is_ok());
    c["iat"] = json!("yesterday");
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "malformed");
}

#[tokio::test]
async fn token_for_another_audience_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["aud"] = json!(["some-other-api"]);
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "bad_audience");
}

#[tokio::test]
async fn token_from_an_unconfigured_issuer_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c["iss"] = json!("https://evil.example.com");
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "bad_issuer");
}

#[tokio::test]
async fn alg_none_token_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(&issuer).to_string());
    let token = format!("{header}.{payload}.");
    assert_eq!(
        code(auth.authenticate(&token).await),
        "algorithm_not_allowed"
    );
}

#[tokio::test]
async fn token_with_a_crit_header_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    header.crit = Some(vec!["exp-ext".into()]);
    let token = jsonwebtoken::encode(&header, &claims(&issuer), &rsa_key(RSA_A)).unwrap();
    assert_eq!(code(auth.authenticate(&token).await), "malformed");
}

#[tokio::test]
async fn oversized_bearer_is_refused_before_decoding() {
    let (_issuer, _idp, auth) = rsa_setup("").await;
    let huge = format!("{}.{}.sig", "a".repeat(10), "b".repeat(MAX_TOKEN_BYTES));
    assert_eq!(code(auth.authenticate(&huge).await), "malformed");
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let (issuer, idp, auth) = rsa_setup("").await;
    // The classic key-confusion attack: the public PEM used as an HMAC secret.
    let forged = sign(
        &claims(&issuer),
        Algorithm::HS256,
        "rsa-a",
        &EncodingKey::from_secret(RSA_A_PUBLIC),
    );
    assert_eq!(
        code(auth.authenticate(&forged).await),
        "algorithm_not_allowed"
    );
    assert_eq!(
        idp.jwks_fetches.load(Ordering::SeqCst),
        0,
        "refused before any key lookup"
    );
}

#[tokio::test]
async fn token_with_a_tampered_payload_fails_the_signature() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(&issuer);
    c["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(c.to_string()),
        parts[2]
    );
    assert_eq!(code(auth.authenticate(&tampered).await), "bad_signature");
}

#[tokio::test]
async fn token_signed_by_another_key_with_a_known_kid_fails_the_signature() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_B));
    assert_eq!(code(auth.authenticate(&token).await), "bad_signature");
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c.as_object_mut().unwrap().remove("exp");
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    let err = auth.authenticate(&token).await.unwrap_err();
    assert_eq!(
        err,
        AuthError::MissingClaim {
            claim: "exp".into()
        }
    );
}

#[tokio::test]
async fn token_without_aud_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut c = claims(&issuer);
    c.as_object_mut().unwrap().remove("aud");
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "missing_claim");
}

#[tokio::test]
async fn rotated_key_is_picked_up_by_a_rate_limited_refetch() {
    let (issuer, idp, auth) = rsa_setup("jwks_min_refetch = \"1s\"").await;
    // Signed up front: debug-build RSA signing is slow and must not eat into the interval.
    let old = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    let new = sign(&claims(&issuer), Algorithm::RS256, "rsa-b", &rsa_key(RSA_B));
    let rotated = json!({"keys": [public_jwk(&rsa_key(RSA_B), Algorithm::RS256, "rsa-b")]});
    assert!(auth.authenticate(&old).await.is_ok());
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 1);

    *idp.jwks.lock().unwrap() = rotated;
    // Within the interval the unknown kid does not reach the IdP.
    assert_eq!(code(auth.authenticate(&new).await), "unknown_key");
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let chain = auth.authenticate(&new).await.unwrap();
    assert_eq!(chain.0[0].subject, "deploy-agent");
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 2);
    // A cached kid needs no fetch.
    assert!(auth.authenticate(&new).await.is_ok());
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn concurrent_requests_with_a_new_kid_share_one_fetch() {
    let (issuer, idp, auth) = rsa_setup("").await;
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    let auth = Arc::new(auth);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (auth, token) = (auth.clone(), token.clone());
            tokio::spawn(async move { auth.authenticate(&token).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jwks_key_whose_alg_is_not_pinned_is_not_used() {
    let (issuer, _idp) =
        start_idp(json!({"keys": [public_jwk(&rsa_key(RSA_A), Algorithm::RS384, "rsa-a")]})).await;
    let auth = authenticator(&issuer_cfg(&issuer, "algorithms = [\"RS256\"]"));
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "unknown_key");
}

#[tokio::test]
async fn unreachable_jwks_is_reported_as_unavailable() {
    // Bind then drop to get a local port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let auth = authenticator(&issuer_cfg(&issuer, "algorithms = [\"RS256\"]"));
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "jwks_unavailable");
    // Rate-limited retries keep reporting the cause rather than an unknown key.
    assert_eq!(code(auth.authenticate(&token).await), "jwks_unavailable");
}

#[tokio::test]
async fn discovery_finds_the_jwks_uri() {
    let (issuer, idp) =
        start_idp(json!({"keys": [public_jwk(&rsa_key(RSA_A), Algorithm::RS256, "rsa-a")]})).await;
    let auth = authenticator(&format!(
        "[[identity.oidc]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\ndiscovery = true\nalgorithms = [\"RS256\"]\n"
    ));
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert!(auth.authenticate(&token).await.is_ok());
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let (issuer, idp) =
        start_idp(json!({"keys": [public_jwk(&rsa_key(RSA_A), Algorithm::RS256, "rsa-a")]})).await;
    *idp.issuer.lock().unwrap() = "http://127.0.0.1:1".into();
    let auth = authenticator(&format!(
        "[[identity.oidc]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\ndiscovery = true\nalgorithms = [\"RS256\"]\n"
    ));
    let token = sign(&claims(&issuer), Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "jwks_unavailable");
    assert_eq!(idp.jwks_fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn nested_act_token_yields_actors_first_and_the_human_last() {
    let (issuer, _idp, auth) = rsa_setup("human_groups = [\"staff\"]").await;
    let mut c = claims(&issuer);
    c["sub"] = json!("alice");
    c["email"] = json!("alice@example.com");
    c["groups"] = json!(["staff"]);
    c["act"] = json!({"sub": "subagent-7", "act": {"sub": "deploy-agent"}});
    let chain = auth
        .authenticate(&sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A)))
        .await
        .unwrap();
    let got: Vec<_> = chain
        .0
        .iter()
        .map(|i| (i.subject.as_str(), i.kind))
        .collect();
    assert_eq!(
        got,
        [
            ("subagent-7", IdentityKind::Workload),
            ("deploy-agent", IdentityKind::Workload),
            ("alice", IdentityKind::Human)
        ]
    );
}

#[tokio::test]
async fn act_nested_too_deep_is_refused() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let mut act = json!({"sub": "a-last"});
    for i in 0..delegation::MAX_ACTORS {
        act = json!({"sub": format!("a-{i}"), "act": act});
    }
    let mut c = claims(&issuer);
    c["act"] = act;
    let token = sign(&c, Algorithm::RS256, "rsa-a", &rsa_key(RSA_A));
    assert_eq!(code(auth.authenticate(&token).await), "delegation_too_deep");
}

#[tokio::test]
async fn static_tokens_go_through_the_same_authenticate() {
    let hash = hex::encode(sha2::Sha256::digest(b"cs_static_ci_token")).to_uppercase();
    let auth = authenticator(&format!(
        "[[identity.static_tokens]]\nname = \"ci-agent\"\nsha256 = \"{hash}\"\nkind = \"workload\"\nacts_for = \"alice@example.com\"\n"
    ));
    let chain = auth.authenticate("cs_static_ci_token").await.unwrap();
    assert_eq!(chain.display(), "ci-agent → alice@example.com");
    assert_eq!(chain.0[1].kind, IdentityKind::Human);
    assert_eq!(
        code(auth.authenticate("cs_static_ci_tokem").await),
        "unknown_token"
    );
    assert_eq!(code(auth.authenticate("   ").await), "malformed");
}

#[tokio::test]
async fn garbage_shaped_like_a_jwt_is_malformed() {
    let (_issuer, _idp, auth) = rsa_setup("").await;
    assert_eq!(code(auth.authenticate("a.b.c").await), "malformed");
    assert_eq!(code(auth.authenticate("!!.??.##").await), "malformed");
}

#[tokio::test]
async fn a_signed_token_repeating_a_claim_is_malformed() {
    let (issuer, _idp, auth) = rsa_setup("").await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"rsa-a","typ":"JWT"}"#);
    let token = |payload: String| {
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &rsa_key(RSA_A), Algorithm::RS256)
                .unwrap();
        format!("{message}.{signature}")
    };
    let body = format!(
        r#""iss":"{issuer}","aud":"{AUDIENCE}","exp":{},"sub":"u1""#,
        now() + 300
    );
    // The same payload without the repetition is a valid token, so the refusal is the repetition's.
    let plain = auth.authenticate(&token(format!("{{{body}}}"))).await;
    assert!(plain.is_ok(), "{plain:?}");
    for repeated in [
        format!(r#"{{{body},"email":"alice@example.com","email":"zed@example.com"}}"#),
        format!(r#"{{{body},"act":{{"sub":"a","sub":"b"}}}}"#),
    ] {
        assert_eq!(code(auth.authenticate(&token(repeated)).await), "malformed");
    }
}

#[test]
fn error_messages_do_not_echo_the_token() {
    let err = jwt::peek("eyJhbGciOiJub25lIn0.c2VjcmV0LXBheWxvYWQ.sig").unwrap_err();
    assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    assert_eq!(err.code(), "malformed");
}

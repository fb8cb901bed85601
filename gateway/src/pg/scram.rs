//! The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802 / RFC 7677) as PostgreSQL runs it:
//! over TLS both mechanisms are offered and `-PLUS` binds the exchange to the gateway's certificate
//! (`tls-server-end-point`, RFC 5929), so a proxy in between that terminates TLS is detected; over
//! plaintext only SCRAM-SHA-256. The user name inside the SCRAM messages is ignored in favour of the
//! startup packet's `user`. Pure message handling; the socket I/O lives in `auth`.
//!
//! A user without a verifier gets a mock exchange with a salt derived from the user name, so the
//! failure looks the same as a wrong password and does not reveal which users exist.

use super::channel_binding::TLS_SERVER_END_POINT;
use crate::identity::scram::{hmac, ScramVerifier, DEFAULT_ITERATIONS};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The mechanism without channel binding, offered on every connection.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// The mechanism with channel binding, offered over TLS.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What the server offers on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Plaintext (or a listener certificate without a usable hash): SCRAM-SHA-256 only.
    ScramOnly,
    /// TLS: SCRAM-SHA-256-PLUS first, then SCRAM-SHA-256; the listener certificate's
    /// `tls-server-end-point` data.
    WithPlus(Vec<u8>),
}

impl Offer {
    /// The mechanism names for AuthenticationSASL, in order of preference.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self {
            Self::ScramOnly => &[MECHANISM],
            Self::WithPlus(_) => &[MECHANISM_PLUS, MECHANISM],
        }
    }

    /// The mechanism the client chose, if it was offered.
    pub fn choose(&self, name: &[u8]) -> Option<Mechanism> {
        match (name, self) {
            (n, _) if n == MECHANISM.as_bytes() => Some(Mechanism::Scram),
            (n, Self::WithPlus(_)) if n == MECHANISM_PLUS.as_bytes() => Some(Mechanism::ScramPlus),
            _ => None,
        }
    }
}

/// The mechanism a client selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// SCRAM-SHA-256.
    Scram,
    /// SCRAM-SHA-256-PLUS with `tls-server-end-point`.
    ScramPlus,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client broke the SCRAM message syntax or asked for something unsupported (SQLSTATE 08P01).
    #[error("{0}")]
    Malformed(String),
    /// The proof did not verify, or the user has no verifier (SQLSTATE 28P01).
    #[error("SCRAM proof did not verify")]
    Failed,
    /// Channel binding failed: the client saw another certificate than the gateway's, or claims the
    /// gateway offered no channel binding when it did (a downgrade). SQLSTATE 28000.
    #[error("{0}")]
    ChannelBinding(String),
}

fn malformed(what: &str) -> ScramError {
    ScramError::Malformed(format!("malformed SCRAM message: {what}"))
}

enum State {
    Initial,
    SentFirst {
        /// The GS2 header and, for SCRAM-SHA-256-PLUS, the channel-binding data.
        expected_binding: Vec<u8>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// One server-side exchange: [`ScramServer::client_first`] then [`ScramServer::client_final`].
pub struct ScramServer {
    verifier: ScramVerifier,
    offer: Offer,
    /// False for the mock exchange of a user without a verifier: the proof never verifies.
    real: bool,
    server_nonce: String,
    state: State,
}

impl ScramServer {
    /// An exchange against `verifier`; `None` runs the mock exchange for `user`, whose salt is derived
    /// from `mock_secret` so that repeated attempts see the same salt, as for a real user. `offer` is
    /// what AuthenticationSASL advertised on this connection.
    pub fn new(
        verifier: Option<ScramVerifier>,
        user: &str,
        mock_secret: &[u8],
        offer: Offer,
    ) -> Self {
        let mut nonce = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let (verifier, real) = match verifier {
            Some(v) => (v, true),
            None => (mock_verifier(user, mock_secret), false),
        };
        Self {
            verifier,
            offer,
            real,
            server_nonce: B64.encode(nonce),
            state: State::Initial,
        }
    }

    #[cfg(test)]
    fn with_server_nonce(mut self, nonce: &str) -> Self {
        self.server_nonce = nonce.to_string();
        self
    }

    /// Handles the client-first-message (the SASLInitialResponse data) for the chosen `mechanism`;
    /// returns the server-first-message.
    pub fn client_first(
        &mut self,
        mechanism: Mechanism,
        message: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(malformed("client-first-message sent twice"));
        }
        let text = std::str::from_utf8(message).map_err(|_| malformed("not UTF-8"))?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or_else(|| malformed("no GS2 header"))?;
        // The c= of the client-final-message must carry the GS2 header plus this.
        let binding_data = self.binding_data(mechanism, flag)?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "SCRAM authorization identities (a=) are not supported; leave it out".into(),
            ));
        }
        let mut expected_binding = format!("{flag},,").into_bytes();
        expected_binding.extend_from_slice(&binding_data);
        let mut attrs = bare.split(',');
        let user = attrs.next().unwrap_or_default();
        if user.starts_with("m=") {
            return Err(ScramError::Malformed(
                "mandatory SCRAM extensions (m=) are not supported".into(),
            ));
        }
        // The user that counts is the startup packet's (libpq sends `n=`); only the shape is checked.
        if !user.starts_with("n=") {
            return Err(malformed("expected n="));
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
            .ok_or_else(|| malformed("expected a printable nonce r="))?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::SentFirst {
            expected_binding,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Handles the client-final-message (the SASLResponse data); returns the server-final-message (`v=…`)
    /// when the proof verifies.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentFirst {
            expected_binding,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(malformed("client-final-message out of order"));
        };
        let text = std::str::from_utf8(message).map_err(|_| malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| malformed("no proof p="))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .and_then(|c| B64.decode(c).ok())
            .ok_or_else(|| malformed("expected channel binding c="))?;
        if binding.len() != expected_binding.len() || !bool::from(binding.ct_eq(&expected_binding))
        {
            return Err(
                if matches!(self.offer, Offer::WithPlus(_)) && expected_binding.starts_with(b"p=") {
                    ScramError::ChannelBinding(
                    "SCRAM channel binding check failed: the client saw a different TLS certificate than the gateway's (is a proxy terminating TLS in between?); connect to the gateway directly".into(),
                )
                } else {
                    ScramError::Malformed(
                        "SCRAM channel-binding data does not match the GS2 header".into(),
                    )
                },
            );
        }
        let sent_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| malformed("expected nonce r="))?;
        if sent_nonce != nonce {
            return Err(ScramError::Malformed("SCRAM nonce does not match".into()));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| malformed("the proof is not 32 bytes of base64"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let matches = computed.ct_eq(&self.verifier.stored_key);
        if !(bool::from(matches) && self.real) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

impl ScramServer {
    /// Checks the GS2 channel-binding flag against the mechanism and the offer (RFC 5802 §6, as
    /// PostgreSQL does) and returns the binding data the client must echo.
    fn binding_data(&self, mechanism: Mechanism, flag: &str) -> Result<Vec<u8>, ScramError> {
        match (mechanism, flag, &self.offer) {
            (Mechanism::Scram, "n", _) | (Mechanism::Scram, "y", Offer::ScramOnly) => Ok(Vec::new()),
            // The client supports channel binding and believes the gateway doesn't: someone removed
            // -PLUS from the offer on the way.
            (Mechanism::Scram, "y", Offer::WithPlus(_)) => Err(ScramError::ChannelBinding(
                "SCRAM channel binding negotiation error: the client supports channel binding and was told the gateway does not, but the gateway offered SCRAM-SHA-256-PLUS (a downgrade attack in between?); connect to the gateway directly".into(),
            )),
            (Mechanism::Scram, f, _) if f.starts_with("p=") => Err(ScramError::Malformed(
                "the client selected SCRAM-SHA-256 without channel binding, but its SCRAM message asks for channel binding; select SCRAM-SHA-256-PLUS".into(),
            )),
            (Mechanism::ScramPlus, f, Offer::WithPlus(end_point)) if f.starts_with("p=") => {
                if &f[2..] == TLS_SERVER_END_POINT {
                    Ok(end_point.clone())
                } else {
                    Err(ScramError::Malformed(format!(
                        "unsupported SCRAM channel-binding type {:?}; the gateway supports only {TLS_SERVER_END_POINT}",
                        &f[2..]
                    )))
                }
            }
            (Mechanism::ScramPlus, "n" | "y", _) => Err(ScramError::Malformed(
                "the client selected SCRAM-SHA-256-PLUS, but its SCRAM message has no channel-binding data".into(),
            )),
            // Offer::choose never yields -PLUS without the offer.
            (Mechanism::ScramPlus, f, Offer::ScramOnly) if f.starts_with("p=") => {
                Err(ScramError::Malformed(
                    "the client requires channel binding (SCRAM-SHA-256-PLUS), which the gateway offers only over TLS; connect with sslmode=require".into(),
                ))
            }
            _ => Err(malformed("unknown channel-binding flag")),
        }
    }
}

/// A plausible verifier for a user that has none: stable salt per user, keys no password can match.
fn mock_verifier(user: &str, secret: &[u8]) -> ScramVerifier {
    let salt = hmac(secret, format!("salt\0{user}").as_bytes())[..16].to_vec();
    ScramVerifier {
        iterations: DEFAULT_ITERATIONS,
        salt,
        stored_key: hmac(secret, format!("stored\0{user}").as_bytes()),
        server_key: hmac(secret, format!("server\0{user}").as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_VERIFIER: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc_server() -> ScramServer {
        ScramServer::new(
            Some(RFC_VERIFIER.parse().unwrap()),
            "user",
            b"k",
            Offer::ScramOnly,
        )
        .with_server_nonce(SERVER_NONCE)
    }

    #[test]
    fn rfc7677_exchange_verifies_and_signs() {
        let mut s = rfc_server();
        let first = s
            .client_first(Mechanism::Scram, CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(
            String::from_utf8(first).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let last = s.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(last).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn wrong_proof_fails() {
        let mut s = rfc_server();
        s.client_first(Mechanism::Scram, CLIENT_FIRST.as_bytes())
            .unwrap();
        let tampered = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        assert_eq!(s.client_final(tampered.as_bytes()), Err(ScramError::Failed));
    }

    #[test]
    fn mock_exchange_looks_real_but_never_verifies() {
        let mut a = ScramServer::new(None, "nobody", b"secret", Offer::ScramOnly)
            .with_server_nonce(SERVER_NONCE);
        let mut b = ScramServer::new(None, "nobody", b"secret", Offer::ScramOnly);
        let first_a = String::from_utf8(
            a.client_first(Mechanism::Scram, CLIENT_FIRST.as_bytes())
                .unwrap(),
        )
        .unwrap();
        let first_b = String::from_utf8(
            b.client_first(Mechanism::Scram, CLIENT_FIRST.as_bytes())
                .unwrap(),
        )
        .unwrap();
        let salt = |m: &str| m.split(",s=").nth(1).unwrap().to_string();
        assert_eq!(salt(&first_a), salt(&first_b), "same user, same salt");
        assert!(first_a.ends_with(",i=4096"));
        assert_eq!(
            a.client_final(CLIENT_FINAL.as_bytes()),
            Err(ScramError::Failed)
        );
        let other = ScramServer::new(None, "somebody", b"secret", Offer::ScramOnly);
        assert_ne!(other.verifier.salt, a.verifier.salt);
    }

    #[test]
    fn y_flag_is_accepted_and_must_match_the_binding_data() {
        // With "y,," the client's c= is base64("y,,") = "eSws"; the proof then differs from the RFC's,
        // so only the binding check is exercised here.
        let mut s = rfc_server();
        s.client_first(Mechanism::Scram, b"y,,n=,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        let wrong = CLIENT_FINAL; // c=biws is "n,,"
        assert!(matches!(
            s.client_final(wrong.as_bytes()),
            Err(ScramError::Malformed(m)) if m.contains("GS2")
        ));
        let mut s = rfc_server();
        s.client_first(Mechanism::Scram, b"y,,n=,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        let right = CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(s.client_final(right.as_bytes()), Err(ScramError::Failed));
    }

    #[test]
    fn unsupported_or_broken_client_first_messages_are_refused() {
        for (message, needle) in [
            (
                "p=tls-server-end-point,,n=,r=abc",
                "select SCRAM-SHA-256-PLUS",
            ),
            ("n,a=admin,n=,r=abc", "authorization"),
            ("n,,m=ext,n=,r=abc", "mandatory"),
            ("x,,n=,r=abc", "flag"),
            ("n,,n=,r=", "nonce"),
            ("n,,n=", "nonce"),
            ("garbage", "GS2"),
        ] {
            let mut s = rfc_server();
            match s.client_first(Mechanism::Scram, message.as_bytes()) {
                Err(ScramError::Malformed(m)) => assert!(m.contains(needle), "{message}: {m}"),
                other => panic!("{message}: {other:?}"),
            }
        }
    }

    #[test]
    fn final_message_with_another_nonce_is_refused() {
        let mut s = rfc_server();
        s.client_first(Mechanism::Scram, CLIENT_FIRST.as_bytes())
            .unwrap();
        let other = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert!(matches!(
            s.client_final(other.as_bytes()),
            Err(ScramError::Malformed(m)) if m.contains("nonce")
        ));
        // And nothing can be retried on a finished exchange.
        assert!(s.client_final(CLIENT_FINAL.as_bytes()).is_err());
    }

    // ---- SCRAM-SHA-256-PLUS, driven by postgres-protocol's client (libpq's behaviour in Rust) ----

    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const GATEWAY_CERT_HASH: &[u8] = &[7; 32];

    /// Runs a whole exchange: the client's binding choice against the server's offer.
    fn exchange(
        offer: Offer,
        mechanism: Mechanism,
        binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let verifier = ScramVerifier::generate("correct horse");
        let mut server = ScramServer::new(Some(verifier), "ops", b"k", offer);
        let mut client = ScramSha256::new(b"correct horse", binding);
        let server_first = server.client_first(mechanism, client.message())?;
        client.update(&server_first).unwrap();
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .expect("the client accepts the server signature");
        Ok(())
    }

    fn with_plus() -> Offer {
        Offer::WithPlus(GATEWAY_CERT_HASH.to_vec())
    }

    #[test]
    fn plus_is_offered_first_and_only_with_tls() {
        assert_eq!(with_plus().mechanisms(), [MECHANISM_PLUS, MECHANISM]);
        assert_eq!(Offer::ScramOnly.mechanisms(), [MECHANISM]);
        assert_eq!(
            with_plus().choose(b"SCRAM-SHA-256-PLUS"),
            Some(Mechanism::ScramPlus)
        );
        assert_eq!(with_plus().choose(b"SCRAM-SHA-256"), Some(Mechanism::Scram));
        assert_eq!(Offer::ScramOnly.choose(b"SCRAM-SHA-256-PLUS"), None);
        assert_eq!(with_plus().choose(b"SCRAM-SHA-1"), None);
    }

    #[test]
    fn plus_with_the_gateway_certificate_hash_verifies() {
        let binding = ChannelBinding::tls_server_end_point(GATEWAY_CERT_HASH.to_vec());
        assert_eq!(exchange(with_plus(), Mechanism::ScramPlus, binding), Ok(()));
    }

    #[test]
    fn plus_with_another_certificate_hash_fails_the_binding_check() {
        let binding = ChannelBinding::tls_server_end_point(vec![8; 32]);
        match exchange(with_plus(), Mechanism::ScramPlus, binding) {
            Err(ScramError::ChannelBinding(m)) => {
                assert!(m.contains("channel binding check failed"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // A hash of another length (SHA-384 vs SHA-256) too.
        let binding = ChannelBinding::tls_server_end_point(vec![7; 48]);
        assert!(matches!(
            exchange(with_plus(), Mechanism::ScramPlus, binding),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn y_is_a_downgrade_when_plus_was_offered_and_fine_when_it_was_not() {
        match exchange(with_plus(), Mechanism::Scram, ChannelBinding::unrequested()) {
            Err(ScramError::ChannelBinding(m)) => assert!(m.contains("downgrade"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            exchange(
                Offer::ScramOnly,
                Mechanism::Scram,
                ChannelBinding::unrequested()
            ),
            Ok(())
        );
    }

    #[test]
    fn n_is_accepted_over_tls_for_clients_that_do_not_bind() {
        assert_eq!(
            exchange(with_plus(), Mechanism::Scram, ChannelBinding::unsupported()),
            Ok(())
        );
    }

    #[test]
    fn plus_needs_binding_data_of_the_one_supported_type() {
        for (message, needle) in [
            ("n,,n=,r=abc", "no channel-binding data"),
            ("y,,n=,r=abc", "no channel-binding data"),
            (
                "p=tls-unique,,n=,r=abc",
                "unsupported SCRAM channel-binding type",
            ),
        ] {
            let mut s = ScramServer::new(None, "ops", b"k", with_plus());
            match s.client_first(Mechanism::ScramPlus, message.as_bytes()) {
                Err(ScramError::Malformed(m)) => assert!(m.contains(needle), "{message}: {m}"),
                other => panic!("{message}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_mock_exchange_checks_the_binding_before_failing_like_a_wrong_password() {
        // An unknown user with the right binding fails as a wrong password would (no enumeration) ...
        let mut s = ScramServer::new(None, "ghost", b"k", with_plus());
        let mut client = ScramSha256::new(
            b"x",
            ChannelBinding::tls_server_end_point(GATEWAY_CERT_HASH.to_vec()),
        );
        let first = s
            .client_first(Mechanism::ScramPlus, client.message())
            .unwrap();
        client.update(&first).unwrap();
        assert_eq!(s.client_final(client.message()), Err(ScramError::Failed));
    }
}

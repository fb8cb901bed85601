//! SCRAM-SHA-256 verifiers (RFC 5802 / RFC 7677) in the format PostgreSQL stores in `pg_authid`:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). The password itself is never kept;
//! the wire listener proves a client knows it with [`crate::pg`]'s SCRAM exchange.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

/// PBKDF2 iterations of a new verifier: PostgreSQL's default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Fewest iterations accepted in a configured verifier (RFC 7677 asks for at least 4096; PostgreSQL accepts
/// fewer, so do we, but never fewer than this).
pub const MIN_ITERATIONS: u32 = 1;

/// Most iterations accepted: a verifier is checked on every login, and a typo must not stall the listener.
pub const MAX_ITERATIONS: u32 = 10_000_000;

const KEY_LEN: usize = 32;

/// A parsed SCRAM-SHA-256 verifier: what the server needs to check a client proof and sign its answer.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// The salt (raw bytes).
    pub salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

// Keys stay out of logs and panics.
impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a verifier string was refused; the config layer adds the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    /// Not `SCRAM-SHA-256$…`.
    #[error("it must start with \"SCRAM-SHA-256$\"")]
    Mechanism,
    /// The `$`/`:` structure is wrong.
    #[error("it must look like SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")]
    Shape,
    /// The iteration count is not a number in range.
    #[error("the iteration count must be a number from {MIN_ITERATIONS} to {MAX_ITERATIONS}")]
    Iterations,
    /// A part is not base64 or has the wrong length.
    #[error("the {0} is not valid base64 of the right length")]
    Encoding(&'static str),
}

impl FromStr for ScramVerifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(VerifierError::Mechanism)?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError::Shape)?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError::Shape)?;
        let (stored, server) = keys.split_once(':').ok_or(VerifierError::Shape)?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
            .ok_or(VerifierError::Iterations)?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(VerifierError::Encoding("salt"))?;
        let key = |text: &str, what| -> Result<[u8; KEY_LEN], VerifierError> {
            B64.decode(text)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or(VerifierError::Encoding(what))
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored, "StoredKey")?,
            server_key: key(server, "ServerKey")?,
        })
    }
}

impl fmt::Display for ScramVerifier {
    /// The `pg_authid` form, accepted by [`FromStr`] and by PostgreSQL's `ALTER ROLE … PASSWORD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

impl ScramVerifier {
    /// A verifier for `password` with a fresh random 16-byte salt and [`DEFAULT_ITERATIONS`].
    pub fn generate(password: &str) -> Self {
        Self::generate_with(password, DEFAULT_ITERATIONS)
    }

    /// A verifier for `password` with a fresh random 16-byte salt and `iterations`.
    pub fn generate_with(password: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self::derive(password, salt, iterations)
    }

    /// The verifier for `password` with this salt and iteration count. The password is SASLprep-normalised
    /// as PostgreSQL and libpq do (falling back to the raw bytes when SASLprep refuses it), so logins from
    /// any libpq-compatible client match.
    pub fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let prepared = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned(),
            Err(_) => password.to_owned(),
        };
        let mut salted = [0u8; KEY_LEN];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN),
            &salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        Self {
            iterations,
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

/// HMAC-SHA-256 of `data` under `key`.
pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
    pub(crate) const RFC7677: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    #[test]
    fn rfc7677_password_derives_the_published_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::derive("pencil", salt, 4096);
        assert_eq!(v.to_string(), RFC7677);
        assert_eq!(RFC7677.parse::<ScramVerifier>().unwrap(), v);
    }

    #[test]
    fn generated_verifiers_round_trip_and_use_fresh_salts() {
        let a = ScramVerifier::generate("correct horse");
        let b = ScramVerifier::generate("correct horse");
        assert_ne!(a.salt, b.salt);
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_eq!(a.to_string().parse::<ScramVerifier>().unwrap(), a);
        assert_eq!(
            ScramVerifier::derive("correct horse", a.salt.clone(), a.iterations),
            a
        );
    }

    #[test]
    fn saslprep_maps_non_ascii_spaces_like_libpq() {
        // U+00A0 (no-break space) maps to a plain space under SASLprep.
        let salt = b"0123456789abcdef".to_vec();
        assert_eq!(
            ScramVerifier::derive("a\u{a0}b", salt.clone(), 4096),
            ScramVerifier::derive("a b", salt, 4096)
        );
    }

    #[test]
    fn malformed_verifiers_say_what_is_wrong() {
        let cases = [
            ("md5abcdef", VerifierError::Mechanism),
            ("SCRAM-SHA-256$4096:c2FsdA==", VerifierError::Shape),
            ("SCRAM-SHA-256$0:c2FsdA==$a:b", VerifierError::Iterations),
            ("SCRAM-SHA-256$x:c2FsdA==$a:b", VerifierError::Iterations),
            ("SCRAM-SHA-256$4096:!!$a:b", VerifierError::Encoding("salt")),
            (
                "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
                VerifierError::Encoding("StoredKey"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ScramVerifier>(), Err(want), "{text}");
        }
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let v: ScramVerifier = RFC7677.parse().unwrap();
        let shown = format!("{v:?}");
        assert!(!shown.contains("WG5d8"), "{shown}");
    }
}

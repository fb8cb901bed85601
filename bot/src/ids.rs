//! Typed identifiers so a request id, a statement hash and a session id can't be mixed up.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Identifies one approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub Uuid);

impl RequestId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Identifies one recorded client session (wire or HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Hex SHA-256 of the exact statement text (and parameters, when there are any).
///
/// An approval is bound to this hash: any difference in text is a different statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatementHash(pub String);

impl StatementHash {
    /// Hash of a statement's exact text.
    pub fn of_text(sql: &str) -> Self {
        Self::of_parts(sql, &[])
    }

    /// Hash of a statement's text plus bound parameters (extended protocol).
    ///
    /// Parameters are length-prefixed so that no two different inputs collide by concatenation.
    pub fn of_parts(sql: &str, params: &[Option<&[u8]>]) -> Self {
        let mut h = Sha256::new();
        h.update((sql.len() as u64).to_be_bytes());
        h.update(sql.as_bytes());
        for p in params {
            match p {
                None => h.update((-1i64).to_be_bytes()),
                Some(b) => {
                    h.update((b.len() as i64).to_be_bytes());
                    h.update(b);
                }
            }
        }
        Self(hex::encode(h.finalize()))
    }

    /// The hash as lower-case hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StatementHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_hash_differs_on_any_change() {
        assert_ne!(
            StatementHash::of_text("DELETE FROM t"),
            StatementHash::of_text("DELETE FROM t ")
        );
        assert_eq!(StatementHash::of_text("x"), StatementHash::of_text("x"));
        assert_ne!(
            StatementHash::of_parts("ab", &[]),
            StatementHash::of_parts("a", &[Some(b"b")])
        );
        assert_ne!(
            StatementHash::of_parts("q", &[None]),
            StatementHash::of_parts("q", &[Some(b"")])
        );
    }
}

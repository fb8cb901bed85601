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

/// One parameter value bound to a statement, as an approval binds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundParam<'a> {
    /// SQL NULL.
    Null,
    /// A value in text form.
    Text(&'a [u8]),
    /// A value in binary form (read by the parameter type's binary input function).
    Binary(&'a [u8]),
}

/// SHA-256 of the exact statement text (and parameters, when there are any), shown and serialised as
/// lower-case hex.
///
/// An approval is bound to this hash: any difference in text is a different statement.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatementHash([u8; 32]);

impl StatementHash {
    /// Hash of a statement's exact text.
    pub fn of_text(sql: &str) -> Self {
        Self::of_parts(sql, &[])
    }

    /// Hash of a statement's text plus bound parameters in text form (`None` = NULL).
    pub fn of_parts(sql: &str, params: &[Option<&[u8]>]) -> Self {
        let params: Vec<BoundParam<'_>> = params
            .iter()
            .map(|p| p.map_or(BoundParam::Null, BoundParam::Text))
            .collect();
        Self::of_bound(sql, &params)
    }

    /// Hash of a statement's text plus bound parameters (extended protocol), each with its form.
    ///
    /// Parameters are length-prefixed so that no two different inputs collide by concatenation, and a
    /// binary value is tagged: the same bytes read in text and in binary form are different values.
    /// Text-form hashes are the ones [`StatementHash::of_parts`] always gave.
    pub fn of_bound(sql: &str, params: &[BoundParam<'_>]) -> Self {
        let mut h = Sha256::new();
        h.update((sql.len() as u64).to_be_bytes());
        h.update(sql.as_bytes());
        for p in params {
            match p {
                BoundParam::Null => h.update((-1i64).to_be_bytes()),
                BoundParam::Text(b) => {
                    h.update((b.len() as i64).to_be_bytes());
                    h.update(b);
                }
                BoundParam::Binary(b) => {
                    // No length is negative, so this tag cannot be read as a text value's prefix.
                    h.update((-2i64).to_be_bytes());
                    h.update((b.len() as i64).to_be_bytes());
                    h.update(b);
                }
            }
        }
        Self(h.finalize().into())
    }

    /// This hash with further facts the approval must bind, such as the parameter types a statement
    /// declares; domain-separated, so it never equals a hash of text and parameters alone.
    pub fn with_context(&self, context: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"countersign statement context\0");
        h.update(self.0);
        h.update((context.len() as u64).to_be_bytes());
        h.update(context);
        Self(h.finalize().into())
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// From the 32 bytes of a digest (as stored); `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for StatementHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for StatementHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatementHash({self})")
    }
}

/// The text is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a statement hash is 64 hex digits (SHA-256)")]
pub struct BadStatementHash;

impl FromStr for StatementHash {
    type Err = BadStatementHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadStatementHash)?;
        Ok(Self(out))
    }
}

impl Serialize for StatementHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatementHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
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
        // The hex form is what approvals and audit records have always carried.
        let h = StatementHash::of_text("x");
        assert_eq!(
            h.to_string(),
            "028f0df5b8596fbcd10c9720b7a4784f8e7e04f629bd5a62bfbdf139678b6624"
        );
        assert_eq!(h.to_string().parse::<StatementHash>(), Ok(h));
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{h}\""));
        assert_eq!(
            serde_json::from_str::<StatementHash>(&format!("\"{h}\"")).unwrap(),
            h
        );
        assert!("xyz".parse::<StatementHash>().is_err());
        assert_ne!(
            StatementHash::of_parts("ab", &[]),
            StatementHash::of_parts("a", &[Some(b"b")])
        );
        assert_ne!(
            StatementHash::of_parts("q", &[None]),
            StatementHash::of_parts("q", &[Some(b"")])
        );
    }

    #[test]
    fn the_same_bytes_in_text_and_in_binary_form_are_different_statements() {
        // 8 bytes that are the int8 12345678 in text and 3544952156018063160 in binary.
        let value = b"12345678";
        let text = StatementHash::of_bound("q", &[BoundParam::Text(value)]);
        let binary = StatementHash::of_bound("q", &[BoundParam::Binary(value)]);
        assert_ne!(text, binary);
        assert_eq!(text, StatementHash::of_parts("q", &[Some(value)]));
        assert_ne!(
            StatementHash::of_bound("q", &[BoundParam::Binary(b"")]),
            StatementHash::of_bound("q", &[BoundParam::Null])
        );
    }
}

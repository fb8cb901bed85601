//! The tamper-evident audit trail: an append-only hash chain.
//!
//! Each record's hash is SHA-256 over the previous record's hash and the record's own canonical fields, so
//! editing, deleting or reordering any stored record breaks every later link.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The hash that precedes the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Who acted: canonical id or requester chain key, `system` for the gateway itself.
    pub actor: String,
    /// What happened, e.g. `request.created`, `vote.recorded`, `vote.refused`, `auth.refused`.
    pub action: String,
    /// Request concerned, if any.
    pub request_id: Option<String>,
    /// Decision or outcome, e.g. `approve`, `deny`, `allow`, `block`, `review`, `refused`.
    pub decision: Option<String>,
    /// Channel (`api`, `wire`, `slack`, `email`, `jira`, `system`).
    pub channel: String,
    /// Statement hash concerned, if any.
    pub statement_hash: Option<String>,
    /// Free-form details (reason, rule, refusal code).
    pub detail: serde_json::Value,
}

impl AuditEntry {
    /// A minimal entry; fill optional fields with the builder methods.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        channel: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            request_id: None,
            decision: None,
            channel: channel.into(),
            statement_hash: None,
            detail: serde_json::Value::Null,
        }
    }

    /// Set the request id.
    pub fn request(mut self, id: impl ToString) -> Self {
        self.request_id = Some(id.to_string());
        self
    }

    /// Set the decision.
    pub fn decision(mut self, d: impl Into<String>) -> Self {
        self.decision = Some(d.into());
        self
    }

    /// Set the statement hash.
    pub fn statement(mut self, h: impl ToString) -> Self {
        self.statement_hash = Some(h.to_string());
        self
    }

    /// Set details.
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = d;
        self
    }
}

/// A chained, stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Hash of the previous record (or [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

impl AuditRecord {
    /// Hash of a record's content chained to `prev_hash`.
    pub fn compute_hash(seq: i64, at_ms: i64, entry: &AuditEntry, prev_hash: &str) -> String {
        // A fixed field order with length prefixes: unambiguous without depending on JSON key order.
        let detail = serde_json::to_string(&entry.detail).unwrap_or_default();
        let fields: [&str; 8] = [
            &entry.actor,
            &entry.action,
            entry.request_id.as_deref().unwrap_or("\u{0}"),
            entry.decision.as_deref().unwrap_or("\u{0}"),
            &entry.channel,
            entry.statement_hash.as_deref().unwrap_or("\u{0}"),
            &detail,
            prev_hash,
        ];
        let mut h = Sha256::new();
        h.update(seq.to_be_bytes());
        h.update(at_ms.to_be_bytes());
        for f in fields {
            h.update((f.len() as u64).to_be_bytes());
            h.update(f.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Time as an `OffsetDateTime`.
    pub fn at(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.at_ms as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ChainCheck {
    /// Every link holds.
    Intact {
        /// Records checked.
        records: u64,
    },
    /// The first record whose stored hash or link doesn't match.
    Broken {
        /// Its sequence number.
        seq: i64,
        /// What is wrong with it.
        problem: String,
    },
}

/// [`verify_chain`], then that the chain ends where its head (as the store's appends left it) says:
/// records cut from the end leave every remaining link intact, and only the head tells.
pub fn verify_chain_to_head<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    head: Option<(i64, &str)>,
) -> ChainCheck {
    let mut last: Option<(i64, &str)> = None;
    let check = verify_chain(
        records
            .into_iter()
            .inspect(|r| last = Some((r.seq, &r.hash))),
    );
    let ChainCheck::Intact { .. } = check else {
        return check;
    };
    match (head, last) {
        (None, None) => check,
        (Some((seq, hash)), Some((last_seq, last_hash))) if seq == last_seq && hash == last_hash => {
            check
        }
        (Some((seq, _)), Some((last_seq, _))) if seq > last_seq => ChainCheck::Broken {
            seq: last_seq + 1,
            problem: format!(
                "the chain's head records #{seq} but the chain ends at #{last_seq}: records at the end were deleted"
            ),
        },
        (Some((seq, _)), None) => ChainCheck::Broken {
            seq: 1,
            problem: format!(
                "the chain's head records #{seq} but there are no records: they were deleted"
            ),
        },
        (Some((seq, _)), Some((last_seq, _))) => ChainCheck::Broken {
            seq: last_seq,
            problem: format!(
                "the chain's head records #{seq} (hash differs or is earlier) but the chain ends at #{last_seq}: the head or the last records were altered"
            ),
        },
        (None, Some(_)) => ChainCheck::Broken {
            seq: 1,
            problem: "the chain's head is missing: it was deleted".into(),
        },
    }
}

/// Verify records given in sequence order; names the first broken record.
pub fn verify_chain<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> ChainCheck {
    let mut prev = GENESIS_HASH.to_string();
    let mut n = 0u64;
    for (expected_seq, r) in (1i64..).zip(records) {
        if r.seq != expected_seq {
            return ChainCheck::Broken {
                seq: r.seq,
                problem: format!(
                    "expected record #{expected_seq} here: a record was deleted or inserted"
                ),
            };
        }
        if r.prev_hash != prev {
            return ChainCheck::Broken {
                seq: r.seq,
                problem: "prev_hash does not match the previous record's hash".into(),
            };
        }
        let computed = AuditRecord::compute_hash(r.seq, r.at_ms, &r.entry, &r.prev_hash);
        if computed != r.hash {
            return ChainCheck::Broken {
                seq: r.seq,
                problem: "content does not match its hash: the record was modified".into(),
            };
        }
        prev = r.hash.clone();
        n += 1;
    }
    ChainCheck::Intact { records: n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry::new("alice", "vote.recorded", "api").decision("approve");
                let hash = AuditRecord::compute_hash(seq, 1000 + seq, &entry, &prev);
                let r = AuditRecord {
                    seq,
                    at_ms: 1000 + seq,
                    entry,
                    prev_hash: prev.clone(),
                    hash,
                };
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), ChainCheck::Intact { records: 5 });
    }

    #[test]
    fn edited_record_is_named() {
        let mut c = chain(5);
        c[2].entry.decision = Some("deny".into());
        assert!(matches!(
            verify_chain(&c),
            ChainCheck::Broken { seq: 3, .. }
        ));
    }

    #[test]
    fn a_chain_falling_short_of_its_head_is_broken() {
        let c = chain(5);
        fn head(r: &AuditRecord) -> Option<(i64, &str)> {
            Some((r.seq, r.hash.as_str()))
        }
        assert_eq!(
            verify_chain_to_head(&c, head(&c[4])),
            ChainCheck::Intact { records: 5 }
        );
        assert_eq!(
            verify_chain_to_head(&[], None),
            ChainCheck::Intact { records: 0 }
        );
        // The last two records cut: what is left links up, only the head tells.
        assert!(matches!(
            verify_chain_to_head(&c[..3], head(&c[4])),
            ChainCheck::Broken { seq: 4, .. }
        ));
        assert!(matches!(
            verify_chain_to_head(&[], head(&c[4])),
            ChainCheck::Broken { seq: 1, .. }
        ));
        // The head deleted, or set back.
        assert!(matches!(
            verify_chain_to_head(&c, None),
            ChainCheck::Broken { .. }
        ));
        assert!(matches!(
            verify_chain_to_head(&c, head(&c[2])),
            ChainCheck::Broken { .. }
        ));
    }

    #[test]
    fn deleted_record_is_named() {
        let mut c = chain(5);
        c.remove(1);
        assert!(matches!(
            verify_chain(&c),
            ChainCheck::Broken { seq: 3, .. }
        ));
    }
}

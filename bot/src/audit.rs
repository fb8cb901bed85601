//! The tamper-evident audit trail: an append-only hash chain.
//!
//! Each record's hash is SHA-256 over the previous record's hash and the record's own canonical fields, so
//! editing, deleting or reordering any stored record breaks every later link. The chain's head (the last
//! record's number and hash, stored apart) shows records cut from the end.
//!
//! Anyone who can write the store could still rewrite a record and recompute every later hash. With an
//! [`AuditKey`] each record and the head also carry a seal, an HMAC of the hash under a key kept outside
//! the store, which such a rewrite cannot reproduce.

use hmac::{Hmac, Mac};
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
    /// HMAC of the hash under the audit key, when one was configured as it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// The key that seals audit records; kept outside the store (an environment variable, a file).
#[derive(Clone)]
pub struct AuditKey(Vec<u8>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(…)")
    }
}

/// The fewest key bytes accepted: an HMAC key shorter than this is guessable.
pub const MIN_AUDIT_KEY_BYTES: usize = 32;

impl AuditKey {
    /// A key from its bytes; `None` when shorter than [`MIN_AUDIT_KEY_BYTES`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let bytes = bytes.into();
        (bytes.len() >= MIN_AUDIT_KEY_BYTES).then_some(Self(bytes))
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The seal of a record with this hash.
    pub fn seal_record(&self, hash: &str) -> String {
        self.mac(&[b"countersign-audit-record", hash.as_bytes()])
    }

    /// The seal of the head naming record `seq` with this hash.
    pub fn seal_head(&self, seq: i64, hash: &str) -> String {
        self.mac(&[
            b"countersign-audit-head",
            &seq.to_be_bytes(),
            hash.as_bytes(),
        ])
    }
}

/// The chain's head as the store's appends left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// The last record's number.
    pub seq: i64,
    /// The last record's hash.
    pub hash: String,
    /// Its seal, when written with a key.
    pub seal: Option<String>,
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
/// records cut from the end leave every remaining link intact, and only the head tells. With the
/// audit `key`, every seal is checked too: records written before a key was configured may be
/// unsealed, but only ahead of the first sealed one, and the last record and the head must be sealed.
pub fn verify_chain_to_head<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    head: Option<&AuditHead>,
    key: Option<&AuditKey>,
) -> ChainCheck {
    let mut last: Option<&AuditRecord> = None;
    let mut sealed_seen = false;
    let mut seal_problem: Option<ChainCheck> = None;
    let check = verify_chain(records.into_iter().inspect(|r| {
        last = Some(r);
        let (Some(key), None) = (key, &seal_problem) else {
            return;
        };
        let problem = match &r.seal {
            Some(seal) if *seal == key.seal_record(&r.hash) => {
                sealed_seen = true;
                None
            }
            Some(_) => Some("its seal does not match: the record was rewritten (its hashes recomputed) by someone without the audit key, or the key is not the one it was written with"),
            None if sealed_seen => Some("it is not sealed although earlier records are: the record was rewritten by someone without the audit key"),
            None => None,
        };
        if let Some(problem) = problem {
            seal_problem = Some(ChainCheck::Broken {
                seq: r.seq,
                problem: problem.into(),
            });
        }
    }));
    let ChainCheck::Intact { .. } = check else {
        return check;
    };
    if let Some(problem) = seal_problem {
        return problem;
    }
    let broken = |seq, problem: String| ChainCheck::Broken { seq, problem };
    match (head, last) {
        (None, None) => return check,
        (Some(head), Some(last)) if head.seq == last.seq && head.hash == last.hash => {}
        (Some(head), Some(last)) if head.seq > last.seq => {
            return broken(
                last.seq + 1,
                format!(
                    "the chain's head records #{} but the chain ends at #{}: records at the end were deleted",
                    head.seq, last.seq
                ),
            )
        }
        (Some(head), None) => {
            return broken(
                1,
                format!(
                    "the chain's head records #{} but there are no records: they were deleted",
                    head.seq
                ),
            )
        }
        (Some(head), Some(last)) => {
            return broken(
                last.seq,
                format!(
                    "the chain's head records #{} (hash differs or is earlier) but the chain ends at #{}: the head or the last records were altered",
                    head.seq, last.seq
                ),
            )
        }
        (None, Some(_)) => return broken(1, "the chain's head is missing: it was deleted".into()),
    }
    if let (Some(key), Some(head), Some(last)) = (key, head, last) {
        if last.seal.is_none() {
            return broken(
                last.seq,
                "the last record is not sealed although an audit key is configured: the gateway seals every record it writes with one (and marks the first after a key is set), so the chain was rewritten".into(),
            );
        }
        if head.seal.as_deref() != Some(&key.seal_head(head.seq, &head.hash)) {
            return broken(
                head.seq,
                "the chain's head seal does not match: the head was rewritten by someone without the audit key".into(),
            );
        }
    }
    check
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
                    seal: None,
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

    fn head_of(r: &AuditRecord, key: Option<&AuditKey>) -> AuditHead {
        AuditHead {
            seq: r.seq,
            hash: r.hash.clone(),
            seal: key.map(|k| k.seal_head(r.seq, &r.hash)),
        }
    }

    #[test]
    fn a_chain_falling_short_of_its_head_is_broken() {
        let c = chain(5);
        let head = |r: &AuditRecord| head_of(r, None);
        assert_eq!(
            verify_chain_to_head(&c, Some(&head(&c[4])), None),
            ChainCheck::Intact { records: 5 }
        );
        assert_eq!(
            verify_chain_to_head(&[], None, None),
            ChainCheck::Intact { records: 0 }
        );
        // The last two records cut: what is left links up, only the head tells.
        assert!(matches!(
            verify_chain_to_head(&c[..3], Some(&head(&c[4])), None),
            ChainCheck::Broken { seq: 4, .. }
        ));
        assert!(matches!(
            verify_chain_to_head(&[], Some(&head(&c[4])), None),
            ChainCheck::Broken { seq: 1, .. }
        ));
        // The head deleted, or set back.
        assert!(matches!(
            verify_chain_to_head(&c, None, None),
            ChainCheck::Broken { .. }
        ));
        assert!(matches!(
            verify_chain_to_head(&c, Some(&head(&c[2])), None),
            ChainCheck::Broken { .. }
        ));
    }

    /// `chain(n)` sealed with `key` from record `from` (1-based) on.
    fn sealed(n: i64, key: &AuditKey, from: i64) -> Vec<AuditRecord> {
        let mut c = chain(n);
        for r in c.iter_mut().filter(|r| r.seq >= from) {
            r.seal = Some(key.seal_record(&r.hash));
        }
        c
    }

    #[test]
    fn a_rewrite_with_recomputed_hashes_breaks_the_seals() {
        let key = AuditKey::new(vec![7u8; 32]).unwrap();
        let c = sealed(5, &key, 1);
        let head = head_of(&c[4], Some(&key));
        assert_eq!(
            verify_chain_to_head(&c, Some(&head), Some(&key)),
            ChainCheck::Intact { records: 5 }
        );
        // Records from before the key was set may be unsealed, ahead of the sealed ones.
        let mixed = sealed(5, &key, 3);
        assert_eq!(
            verify_chain_to_head(&mixed, Some(&head_of(&mixed[4], Some(&key))), Some(&key)),
            ChainCheck::Intact { records: 5 }
        );
        // Record #3 edited and every later hash recomputed: the chain links, the seals don't.
        let mut forged = c.clone();
        forged[2].entry.actor = "mallory".into();
        let mut prev = forged[1].hash.clone();
        for r in forged.iter_mut().skip(2) {
            r.prev_hash = prev.clone();
            r.hash = AuditRecord::compute_hash(r.seq, r.at_ms, &r.entry, &r.prev_hash);
            prev = r.hash.clone();
        }
        let forged_head = AuditHead {
            seq: 5,
            hash: forged[4].hash.clone(),
            seal: head.seal.clone(),
        };
        assert!(matches!(verify_chain(&forged), ChainCheck::Intact { .. }));
        assert!(matches!(
            verify_chain_to_head(&forged, Some(&forged_head), Some(&key)),
            ChainCheck::Broken { seq: 3, .. }
        ));
        // The same with the seals stripped from the rewritten part, or from everything.
        let mut stripped = forged.clone();
        for r in stripped.iter_mut().skip(2) {
            r.seal = None;
        }
        assert!(matches!(
            verify_chain_to_head(&stripped, Some(&forged_head), Some(&key)),
            ChainCheck::Broken { seq: 3, .. }
        ));
        for r in stripped.iter_mut() {
            r.seal = None;
        }
        assert!(matches!(
            verify_chain_to_head(&stripped, Some(&forged_head), Some(&key)),
            ChainCheck::Broken { seq: 5, .. }
        ));
        // A head set back to an earlier record with a made-up seal.
        let cut_head = AuditHead {
            seq: 3,
            hash: c[2].hash.clone(),
            seal: Some("00".repeat(32)),
        };
        assert!(matches!(
            verify_chain_to_head(&c[..3], Some(&cut_head), Some(&key)),
            ChainCheck::Broken { seq: 3, .. }
        ));
        // Another key sees every seal as forged.
        let other = AuditKey::new(vec![8u8; 32]).unwrap();
        assert!(matches!(
            verify_chain_to_head(&c, Some(&head), Some(&other)),
            ChainCheck::Broken { seq: 1, .. }
        ));
        assert!(AuditKey::new(vec![1u8; 31]).is_none());
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

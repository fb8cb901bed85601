//! A small per-session cache of keyed-hash outputs: the same value hashed again (a customer's e-mail on
//! every order row of a join, a grouping key) costs a lookup instead of an HMAC.
//!
//! Direct-mapped and fixed in size: [`SLOTS`] slots of values up to [`MAX_VALUE`] bytes, allocated on the
//! first insert (about 36 KiB), never grown; a new value evicts whatever shared its slot. Longer values
//! are not cached. One cache serves one session of one [`super::Masker`], whose hash rules all share one
//! key, so a value has one output; caches are never shared between sessions.

use std::hash::{BuildHasher, RandomState};

/// Number of slots (a power of two).
pub const SLOTS: usize = 512;
/// Longest value cached, in bytes.
pub const MAX_VALUE: usize = 54;
/// Bytes of HMAC output kept (the style prints 16 bytes as 32 hex digits).
pub const DIGEST: usize = 16;

#[derive(Clone, Copy)]
struct Slot {
    /// Value length plus one; 0 marks an empty slot.
    len: u8,
    value: [u8; MAX_VALUE],
    digest: [u8; DIGEST],
}

const EMPTY: Slot = Slot {
    len: 0,
    value: [0; MAX_VALUE],
    digest: [0; DIGEST],
};

/// Keyed-hash outputs by value; see the module docs.
pub struct HashCache {
    slots: Vec<Slot>,
    /// Per-cache random seed, so one client's values can't be chosen to collide in every session.
    seed: RandomState,
    enabled: bool,
}

impl Default for HashCache {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            seed: RandomState::new(),
            enabled: true,
        }
    }
}

impl std::fmt::Debug for HashCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print cached values.
        let used = self.slots.iter().filter(|s| s.len != 0).count();
        write!(f, "HashCache({used}/{SLOTS} slots used)")
    }
}

impl HashCache {
    /// A cache that stores nothing (one-off masking, where a cache would only cost).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    fn slot_of(&self, value: &[u8]) -> usize {
        self.seed.hash_one(value) as usize & (SLOTS - 1)
    }

    /// The cached output for `value`, if it is there.
    pub fn get(&self, value: &[u8]) -> Option<&[u8; DIGEST]> {
        if self.slots.is_empty() || value.len() > MAX_VALUE {
            return None;
        }
        let slot = &self.slots[self.slot_of(value)];
        (usize::from(slot.len) == value.len() + 1 && &slot.value[..value.len()] == value)
            .then_some(&slot.digest)
    }

    /// Remembers `digest` as the output for `value` (when the value is short enough).
    pub fn put(&mut self, value: &[u8], digest: &[u8; DIGEST]) {
        if !self.enabled || value.len() > MAX_VALUE {
            return;
        }
        if self.slots.is_empty() {
            self.slots = vec![EMPTY; SLOTS];
        }
        let i = self.slot_of(value);
        let slot = &mut self.slots[i];
        slot.len = value.len() as u8 + 1;
        slot.value[..value.len()].copy_from_slice(value);
        slot.digest = *digest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_what_was_put_and_nothing_else() {
        let mut c = HashCache::default();
        assert_eq!(c.get(b"a@example.com"), None);
        c.put(b"a@example.com", &[7; DIGEST]);
        assert_eq!(c.get(b"a@example.com"), Some(&[7; DIGEST]));
        assert_eq!(c.get(b"a@example.co"), None);
        assert_eq!(c.get(b""), None);
        c.put(b"", &[1; DIGEST]);
        assert_eq!(c.get(b""), Some(&[1; DIGEST]));
    }

    #[test]
    fn stays_bounded_and_skips_long_values() {
        let mut c = HashCache::default();
        for i in 0..10 * SLOTS {
            c.put(format!("value-{i}").as_bytes(), &[1; DIGEST]);
        }
        assert_eq!(c.slots.len(), SLOTS);
        let long = vec![b'x'; MAX_VALUE + 1];
        c.put(&long, &[2; DIGEST]);
        assert_eq!(c.get(&long), None);
        let mut off = HashCache::disabled();
        off.put(b"x", &[3; DIGEST]);
        assert_eq!(off.get(b"x"), None);
    }
}

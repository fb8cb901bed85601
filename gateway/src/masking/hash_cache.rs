//! A small per-session cache of keyed-hash outputs: the same value hashed again (a customer's e-mail on
//! every order row of a join, a grouping key, a client repeating a query) costs a lookup instead of an
//! HMAC.
//!
//! Two-way set-associative and bounded: it starts with [`INITIAL_SLOTS`] slots of values up to
//! [`MAX_VALUE`] bytes (about 18 KiB, allocated on the first insert) and doubles, up to [`SLOTS`] (about
//! 290 KiB), only while misses keep evicting live entries (one in eight lookups and inserts, over a
//! table's worth of them), i.e. while the session's working set of hashed values is larger than the
//! cache. A new value evicts the older of its set's two entries. Longer values are not cached. One
//! cache serves one session of one [`super::Masker`], whose hash rules all share one key, so a value
//! has one output; caches are never shared between sessions.

use std::hash::{BuildHasher, RandomState};

/// Most slots a cache grows to (a power of two).
pub const SLOTS: usize = 4096;
/// Slots a cache starts with (a power of two).
pub const INITIAL_SLOTS: usize = 256;
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

impl Slot {
    fn holds(&self, value: &[u8]) -> bool {
        usize::from(self.len) == value.len() + 1 && &self.value[..value.len()] == value
    }
}

/// Keyed-hash outputs by value; see the module docs.
pub struct HashCache {
    /// Sets of two slots, the more recently stored first.
    slots: Vec<Slot>,
    /// Per-cache random seed for choosing a set, so one client's values can't be chosen to share a
    /// set in every session (and a set shared anyway costs only HMACs, never a wrong output).
    seed: u64,
    /// Lookups and inserts, and evictions of live entries, in the current window (a table's worth of
    /// operations).
    operations: usize,
    evictions: usize,
    enabled: bool,
}

impl Default for HashCache {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            seed: RandomState::new().hash_one(0x636f_756e_7465_7273u64),
            operations: 0,
            evictions: 0,
            enabled: true,
        }
    }
}

impl std::fmt::Debug for HashCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print cached values.
        let used = self.slots.iter().filter(|s| s.len != 0).count();
        write!(f, "HashCache({used}/{} slots used)", self.slots.len())
    }
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl HashCache {
    /// A cache that stores nothing (one-off masking, where a cache would only cost).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// A seeded multiply-rotate hash over 8-byte words: a few cycles for a short value, where SipHash
    /// cost about as much as the lookup saved.
    fn hash(&self, value: &[u8]) -> u64 {
        let mut h = self.seed ^ (value.len() as u64).wrapping_mul(MIX);
        let mut words = value.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            h = (h ^ w).wrapping_mul(MIX).rotate_left(31);
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        h = (h ^ u64::from_le_bytes(last)).wrapping_mul(MIX);
        h ^ (h >> 29)
    }

    /// The index of the first slot of `value`'s set in a table of `slots` slots.
    fn set_of(hash: u64, slots: usize) -> usize {
        (hash as usize & (slots / 2 - 1)) * 2
    }

    /// The cached output for `value`, if it is there.
    pub fn get(&mut self, value: &[u8]) -> Option<&[u8; DIGEST]> {
        if self.slots.is_empty() || value.len() > MAX_VALUE {
            return None;
        }
        self.operations += 1;
        let set = Self::set_of(self.hash(value), self.slots.len());
        self.slots[set..set + 2]
            .iter()
            .find(|s| s.holds(value))
            .map(|s| &s.digest)
    }

    /// Remembers `digest` as the output for `value` (when the value is short enough).
    pub fn put(&mut self, value: &[u8], digest: &[u8; DIGEST]) {
        if !self.enabled || value.len() > MAX_VALUE {
            return;
        }
        if self.slots.is_empty() {
            self.slots = vec![EMPTY; INITIAL_SLOTS];
        }
        let mut slot = Slot {
            len: value.len() as u8 + 1,
            value: [0; MAX_VALUE],
            digest: *digest,
        };
        slot.value[..value.len()].copy_from_slice(value);
        let set = Self::set_of(self.hash(value), self.slots.len());
        let pair = &mut self.slots[set..set + 2];
        if pair[0].holds(value) {
            pair[0] = slot;
            return;
        }
        // The first slot's entry becomes the older one; the older one before it is evicted.
        let evicted = pair[1].len != 0 && !pair[1].holds(value);
        self.operations += 1;
        pair[1] = pair[0];
        pair[0] = slot;
        self.evictions += usize::from(evicted);
        if self.operations >= self.slots.len() {
            // The session cycles through more values than the cache holds: grow it.
            if self.evictions * 8 >= self.operations && self.slots.len() < SLOTS {
                self.grow();
            }
            (self.operations, self.evictions) = (0, 0);
        }
    }

    /// Doubles the table, emptied: its entries were being evicted anyway, and re-inserting them would
    /// cost about as much as the HMACs they save.
    fn grow(&mut self) {
        self.slots = vec![EMPTY; self.slots.len() * 2];
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

    #[test]
    fn a_small_working_set_keeps_the_initial_table() {
        let mut c = HashCache::default();
        for _ in 0..50 {
            for i in 0..INITIAL_SLOTS / 8 {
                let v = format!("v{i}");
                if c.get(v.as_bytes()).is_none() {
                    c.put(v.as_bytes(), &[1; DIGEST]);
                }
            }
        }
        assert_eq!(c.slots.len(), INITIAL_SLOTS);
    }

    #[test]
    fn a_repeated_large_working_set_grows_the_table_and_then_hits() {
        let mut c = HashCache::default();
        let digest = |i: usize| [(i % 251) as u8; DIGEST];
        let values: Vec<String> = (0..2000).map(|i| format!("user{i}@example.com")).collect();
        let mut hits = 0;
        for round in 0..10 {
            for (i, v) in values.iter().enumerate() {
                match c.get(v.as_bytes()) {
                    // A hit is always the value's own output, never another's.
                    Some(d) => {
                        assert_eq!(d, &digest(i), "{v}");
                        hits += usize::from(round == 9);
                    }
                    None => c.put(v.as_bytes(), &digest(i)),
                }
            }
        }
        assert_eq!(c.slots.len(), SLOTS);
        // Sets that three or more of the values share keep missing (about a quarter of the values).
        assert!(hits >= 1200, "only {hits} of 2000 values hit");
    }
}

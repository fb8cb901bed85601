//! LRU cache of classifications keyed by exact SQL text, so repeated statements skip parsing.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::verdict::StatementFacts;

/// Classifications by SQL text. The lock is held only for a lookup or insert, never while parsing.
#[derive(Debug)]
pub struct ClassificationCache {
    entries: Mutex<LruCache<String, Arc<[StatementFacts]>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ClassificationCache {
    /// A cache holding up to `capacity` distinct SQL strings (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached classification of `sql`, computing and storing it with `classify` on a miss.
    pub fn get_or_insert_with(
        &self,
        sql: &str,
        classify: impl FnOnce(&str) -> Vec<StatementFacts>,
    ) -> Arc<[StatementFacts]> {
        if let Some(found) = self.lock().get(sql).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return found;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let facts: Arc<[StatementFacts]> = classify(sql).into();
        self.lock().put(sql.to_string(), Arc::clone(&facts));
        facts
    }

    /// `(hits, misses)` since creation.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// A poisoned lock only means another thread panicked mid-update of an LRU of pure values;
    /// the data is still usable, so recover it rather than propagate the panic.
    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<[StatementFacts]>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::classify;

    #[test]
    fn second_lookup_of_same_text_is_a_hit_and_skips_classification() {
        let cache = ClassificationCache::new(8);
        let first = cache.get_or_insert_with("SELECT 1", classify);
        let second = cache.get_or_insert_with("SELECT 1", |_| {
            panic!("must not classify a cached statement")
        });
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.stats(), (1, 1));
    }

    #[test]
    fn least_recently_used_entry_is_evicted_at_capacity() {
        let cache = ClassificationCache::new(2);
        cache.get_or_insert_with("SELECT 1", classify);
        cache.get_or_insert_with("SELECT 2", classify);
        cache.get_or_insert_with("SELECT 1", classify);
        cache.get_or_insert_with("SELECT 3", classify);
        cache.get_or_insert_with("SELECT 2", classify);
        assert_eq!(cache.stats(), (1, 4));
    }
}

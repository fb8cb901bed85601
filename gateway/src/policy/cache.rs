//! LRU cache of classifications keyed by exact SQL text and, for statements whose classification
//! cannot depend on literal values, by literal template (see `template`), so `... WHERE id = 1`
//! and `... WHERE id = 2` are parsed once.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::template::literal_template;
use super::verdict::StatementFacts;

/// Classifications by SQL text. The lock is held only for a lookup or insert, never while parsing.
#[derive(Debug)]
pub struct ClassificationCache {
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug)]
struct Entries {
    exact: LruCache<String, Arc<[StatementFacts]>>,
    templates: LruCache<String, Arc<[StatementFacts]>>,
}

impl ClassificationCache {
    /// A cache holding up to `capacity` distinct SQL strings and as many templates (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(Entries {
                exact: LruCache::new(capacity),
                templates: LruCache::new(capacity),
            }),
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
        if let Some(found) = self.lock().exact.get(sql).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return found;
        }
        let template = literal_template(sql);
        if let Some(t) = &template {
            if let Some(found) = self.lock().templates.get(t).cloned() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return found;
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let facts: Arc<[StatementFacts]> = classify(sql).into();
        let mut entries = self.lock();
        match template {
            Some(t) if facts.iter().all(literal_insensitive) => {
                entries.templates.put(t, Arc::clone(&facts));
            }
            _ => {
                entries.exact.put(sql.to_string(), Arc::clone(&facts));
            }
        }
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// True when no literal in the statement can have influenced its facts: it parsed, it calls no
/// function (`set_config('role', …)` is judged by its argument) and it is plain DML or a query
/// (`EXPLAIN (ANALYZE 0)`, `SET x = 'y'` and the like are judged by literal values).
fn literal_insensitive(facts: &StatementFacts) -> bool {
    !facts.unparsed
        && facts.functions.is_empty()
        // A PREPARE keeps its statement's text for the session to judge again at EXECUTE.
        && facts.prepared.is_none()
        && matches!(
            facts.kind.as_str(),
            "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TABLE"
        )
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
        cache.get_or_insert_with("SELECT a FROM t1", classify);
        cache.get_or_insert_with("SELECT a FROM t2", classify);
        cache.get_or_insert_with("SELECT a FROM t1", classify);
        cache.get_or_insert_with("SELECT a FROM t3", classify);
        cache.get_or_insert_with("SELECT a FROM t2", classify);
        assert_eq!(cache.stats(), (1, 4));
    }

    #[test]
    fn statements_differing_only_in_literals_share_one_classification() {
        let cache = ClassificationCache::new(8);
        let first = cache.get_or_insert_with("SELECT b FROM accounts WHERE aid = 17", classify);
        let second = cache.get_or_insert_with("SELECT b FROM accounts WHERE aid = 42", |_| {
            panic!("must reuse the template's classification")
        });
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(cache.stats(), (1, 1));
    }

    #[test]
    fn literal_sensitive_classifications_are_never_shared() {
        let cache = ClassificationCache::new(8);
        let cases = [
            // Judged by the literal argument: the harmless setting must not vouch for the identity one.
            (
                "SELECT set_config('application_name', 'x', false)",
                "SELECT set_config('role', 'x', false)",
            ),
            (
                "EXPLAIN (ANALYZE 0) DELETE FROM t",
                "EXPLAIN (ANALYZE 1) DELETE FROM t",
            ),
            (
                "SET statement_timeout = '1s'",
                "SET statement_timeout = '2s'",
            ),
        ];
        for (first, second) in cases {
            let a = cache.get_or_insert_with(first, classify);
            let b = cache.get_or_insert_with(second, classify);
            assert!(!Arc::ptr_eq(&a, &b), "{first} vouched for {second}");
        }
        assert_eq!(cache.stats(), (0, 6));
        let harmless = cache.get_or_insert_with(
            "SELECT set_config('application_name', 'x', false)",
            classify,
        );
        let identity = cache.get_or_insert_with("SELECT set_config('role', 'x', false)", classify);
        assert_ne!(harmless[0].action, identity[0].action);
    }
}

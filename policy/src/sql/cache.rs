//! The verdict cache: parse each distinct statement once, then answer with a hash and a lookup.
//!
//! Keyed by [`strip_comments`] of the text (trimmed), so the same statement sent with a thousand different
//! sqlcommenter tags (tenant, trace id, route) is one entry, and the verdict is computed from
//! that same comment-free text, so it is a function of the key alone. Bounded by entry count
//! (`moka`, TinyLFU admission); texts longer than [`MAX_CACHED_LEN`] are classified every time
//! and never stored, so a few huge generated statements cannot evict the useful ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;

use super::classify::classify;
use super::verdict::{Rules, Verdict};
use crate::tenant::{mask_constants, strip_comments};

/// Starts the key of a verdict stored for a constant-masked text. No query text holds a NUL (the
/// protocol ends texts with one), so these keys never meet an exact text's.
const MASKED: char = '\0';

/// Comment-free texts longer than this (64 KiB) are not cached.
pub const MAX_CACHED_LEN: usize = 64 * 1024;

/// The comment-free text without the whitespace around it, where a leading or trailing tag
/// was: `/*a*/ SELECT 1` and `SELECT 1 /*b*/` share an entry. Whitespace outside every token
/// means nothing to the parser (a text that ends inside an unterminated literal is unparsable
/// either way).
fn cache_key(stripped: &str) -> &str {
    stripped.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

/// A bounded, shared cache of verdicts for one set of [`Rules`].
pub struct VerdictCache {
    cache: Cache<Arc<str>, Arc<Verdict>>,
    rules: Arc<Rules>,
    hits: AtomicU64,
    misses: AtomicU64,
    uncached: AtomicU64,
}

/// Counters of a [`VerdictCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to classify (including the over-long texts).
    pub misses: u64,
    /// Of the misses, texts too long to cache.
    pub uncached: u64,
    /// Entries held now.
    pub entries: u64,
}

impl CacheStats {
    /// Hits over lookups, 0.0 before the first lookup.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache")
            .field("rules", &self.rules)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl VerdictCache {
    /// A cache of at most `capacity` verdicts, classified by `rules`. A change of rules needs a
    /// new cache.
    pub fn new(capacity: u64, rules: Arc<Rules>) -> Self {
        Self {
            cache: Cache::builder().max_capacity(capacity).build(),
            rules,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            uncached: AtomicU64::new(0),
        }
    }

    /// The verdict for `sql`, from the cache or classified now.
    ///
    /// Keyed by the comment-free text: a hit allocates nothing more than that copy. Plain DML is
    /// also keyed by its text with the constants masked ([`mask_constants`]), so the same
    /// statement with other literal values is a hit too, at the cost of building that key.
    pub fn verdict(&self, sql: &str) -> Arc<Verdict> {
        let stripped = strip_comments(sql);
        let key = cache_key(&stripped);
        if key.len() > MAX_CACHED_LEN {
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.uncached.fetch_add(1, Ordering::Relaxed);
            return Arc::new(classify(key, &self.rules));
        }
        if let Some(verdict) = self.cache.get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return verdict;
        }
        // Texts that differ only in their constants (literals inlined by a client library)
        // share the verdict of plain DML, which does not depend on them.
        let masked = mask_constants(key).map(|m| format!("{MASKED}{m}"));
        if let Some(masked) = &masked
            && let Some(verdict) = self.cache.get(masked.as_str())
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return verdict;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let verdict = Arc::new(classify(key, &self.rules));
        // Under the exact text too, so a text sent again (bind parameters, prepared
        // statements) is found by the first lookup; texts that only share the masked form do
        // not add entries of their own.
        self.cache.insert(Arc::from(key), Arc::clone(&verdict));
        if !verdict.constants_matter
            && let Some(masked) = masked
        {
            self.cache.insert(Arc::from(masked), Arc::clone(&verdict));
        }
        verdict
    }

    /// Counters and the current entry count (after applying pending evictions, so not for the
    /// hot path).
    pub fn stats(&self) -> CacheStats {
        self.cache.run_pending_tasks();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            uncached: self.uncached.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
        }
    }

    /// The rules the verdicts were classified by.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_drops_comments_and_the_whitespace_around_the_text() {
        assert_eq!(cache_key(&strip_comments("/*a*/ SELECT 1")), "SELECT 1");
        assert_eq!(cache_key(&strip_comments("SELECT 1 /*b*/\n")), "SELECT 1");
        assert_eq!(cache_key(&strip_comments("SELECT 1\t-- c")), "SELECT 1");
        // Inside the text nothing changes.
        assert_eq!(
            cache_key(&strip_comments("SELECT  'a  b' ")),
            "SELECT  'a  b'"
        );
        // Non-SQL whitespace is kept: it is not whitespace to the parser.
        assert_eq!(cache_key("\u{a0}SELECT 1"), "\u{a0}SELECT 1");
    }

    #[test]
    fn leading_and_trailing_tags_share_an_entry() {
        let cache = VerdictCache::new(10, Arc::new(Rules::default()));
        cache.verdict("/*tenant='a'*/ SELECT 1");
        cache.verdict("SELECT 1 /*tenant='b'*/");
        cache.verdict("SELECT 1");
        let stats = cache.stats();
        // One text, kept under its key and under its constant-masked key (plain DML).
        assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 2));
    }

    #[test]
    fn hit_rate() {
        assert_eq!(CacheStats::default().hit_rate(), 0.0);
        let stats = CacheStats {
            hits: 3,
            misses: 1,
            ..CacheStats::default()
        };
        assert_eq!(stats.hit_rate(), 0.75);
    }
}

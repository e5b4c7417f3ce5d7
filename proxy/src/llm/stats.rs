//! Counters of the egress proxy, read by the admin port's metrics. Labels are fixed sets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use sentinel_policy::llm::{Micros, Usage};

#[derive(Default)]
pub struct EgressStats {
    /// Requests being served now (graceful shutdown waits for them).
    pub in_flight: AtomicUsize,
    /// Finished requests by outcome label.
    outcomes: Mutex<BTreeMap<&'static str, u64>>,
    pub input_tokens: AtomicU64,
    pub cached_input_tokens: AtomicU64,
    pub cache_write_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub charged_micros: AtomicU64,
    pub reserved_micros: AtomicU64,
    /// Reservations granted.
    pub reservations: AtomicU64,
}

impl EgressStats {
    pub fn outcome(&self, label: &'static str) {
        *self.outcomes.lock().entry(label).or_default() += 1;
    }

    pub fn outcomes(&self) -> BTreeMap<&'static str, u64> {
        self.outcomes.lock().clone()
    }

    pub fn charged(&self, usage: &Usage, cost: Micros) {
        self.input_tokens.fetch_add(usage.input, Ordering::Relaxed);
        self.cached_input_tokens
            .fetch_add(usage.cached_input, Ordering::Relaxed);
        self.cache_write_tokens.fetch_add(
            usage.cache_write_5m + usage.cache_write_1h,
            Ordering::Relaxed,
        );
        self.output_tokens
            .fetch_add(usage.output, Ordering::Relaxed);
        self.charged_micros.fetch_add(cost.0, Ordering::Relaxed);
    }
}

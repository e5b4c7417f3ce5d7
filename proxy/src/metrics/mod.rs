//! What Sentinel counts for `/metrics`, and how it is written out.
//!
//! Components count in their own stats structs (pools, egress, ledger, tenancy) or here, in
//! [`Metrics`], for what has no better home; the admin port reads all of them at scrape time
//! and writes them with [`Families`] in the Prometheus text format. Nothing here is global:
//! one `Arc<Metrics>` is handed to whoever counts.

mod capped;
mod families;
mod histogram;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub use capped::{CappedCounters, OTHER};
pub use families::Families;
pub use histogram::{Histogram, LATENCY_BUCKETS};

pub struct Metrics {
    pub pg: PgMetrics,
    /// LLM calls and cost per tenant, with a bounded number of tenant labels.
    pub llm_tenants: CappedCounters,
    pub llm_added_latency: Histogram,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub blocked_llm: AtomicU64,
    pub blocked_db: AtomicU64,
    /// LLM calls refused per tenant, by reason (for `GET /v1/tenants/{id}`, not labels).
    llm_refusals: Mutex<HashMap<String, BTreeMap<&'static str, u64>>>,
}

/// Tenants whose refusals are kept at most (the first seen).
const REFUSAL_TENANTS: usize = 100_000;

/// The Postgres front's request counters and timings.
pub struct PgMetrics {
    pub queries: AtomicU64,
    pub transactions: AtomicU64,
    pub pool_wait: Histogram,
    pub query_duration: Histogram,
    pub transaction_duration: Histogram,
    pub added_latency: Histogram,
    /// Logins by result: `ok`, or the refusal's kind.
    logins: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn new(tenant_label_cap: usize) -> Metrics {
        Metrics {
            pg: PgMetrics {
                queries: AtomicU64::new(0),
                transactions: AtomicU64::new(0),
                pool_wait: Histogram::latency(),
                query_duration: Histogram::latency(),
                transaction_duration: Histogram::latency(),
                added_latency: Histogram::latency(),
                logins: Mutex::new(BTreeMap::new()),
            },
            llm_tenants: CappedCounters::new(tenant_label_cap),
            llm_added_latency: Histogram::latency(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            blocked_llm: AtomicU64::new(0),
            blocked_db: AtomicU64::new(0),
            llm_refusals: Mutex::new(HashMap::new()),
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn llm_refused(&self, tenant: &str, reason: &'static str) {
        let mut all = self.llm_refusals.lock();
        if !all.contains_key(tenant) && all.len() >= REFUSAL_TENANTS {
            return;
        }
        *all.entry(tenant.to_owned())
            .or_default()
            .entry(reason)
            .or_insert(0) += 1;
    }

    pub fn tenant_refusals(&self, tenant: &str) -> BTreeMap<&'static str, u64> {
        self.llm_refusals
            .lock()
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }
}

impl PgMetrics {
    pub fn login(&self, result: &'static str) {
        *self.logins.lock().entry(result).or_insert(0) += 1;
    }

    pub fn logins(&self) -> BTreeMap<&'static str, u64> {
        self.logins.lock().clone()
    }
}

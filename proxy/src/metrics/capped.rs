//! Per-tenant counters with a bounded number of label values: the first `cap` tenants seen get
//! their own series, the rest are summed under `other`, so a scrape stays small however many
//! tenants there are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The label value that collects tenants past the cap.
pub const OTHER: &str = "other";

pub struct CappedCounters {
    cap: AtomicUsize,
    /// tenant → [requests, cost]
    values: Mutex<HashMap<String, [u64; 2]>>,
}

impl CappedCounters {
    pub fn new(cap: usize) -> CappedCounters {
        CappedCounters {
            cap: AtomicUsize::new(cap),
            values: Mutex::new(HashMap::new()),
        }
    }

    /// Takes effect for tenants seen from now on (series already out stay, so counters never
    /// go back).
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub fn add(&self, tenant: &str, requests: u64, cost: u64) {
        let mut values = self.values.lock();
        let named = values.contains_key(tenant)
            || values.len()
                < self.cap.load(Ordering::Relaxed) + usize::from(values.contains_key(OTHER));
        let key = if named && tenant != OTHER {
            tenant
        } else {
            OTHER
        };
        let entry = values.entry(key.to_owned()).or_insert([0, 0]);
        entry[0] += requests;
        entry[1] += cost;
    }

    /// (tenant label, requests, cost), sorted by label.
    pub fn snapshot(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = self
            .values
            .lock()
            .iter()
            .map(|(t, v)| (t.clone(), v[0], v[1]))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_past_the_cap_fold_into_other() {
        let c = CappedCounters::new(2);
        c.add("a", 1, 10);
        c.add("b", 1, 20);
        c.add("c", 1, 30);
        c.add("d", 2, 40);
        c.add("a", 1, 5);
        let snap = c.snapshot();
        assert_eq!(
            snap,
            vec![
                ("a".to_owned(), 2, 15),
                ("b".to_owned(), 1, 20),
                ("other".to_owned(), 3, 70)
            ]
        );
    }

    #[test]
    fn a_tenant_named_other_cannot_pose_as_the_fold() {
        let c = CappedCounters::new(5);
        c.add("other", 1, 1);
        c.add("a", 1, 1);
        assert_eq!(c.snapshot().len(), 2);
    }
}

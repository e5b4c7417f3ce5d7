//! A lock-free histogram for hot paths: fixed buckets, one atomic add per observation.
//! (prometheus-client's own histogram takes a lock per observation.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: 50 µs to 30 s, roughly ×2.5 apart.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for observations above the last bound.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn latency() -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let index = self.bounds.partition_point(|&b| b < secs);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sum in seconds, count, and (upper bound, count in that bucket alone) pairs ending with
    /// +Inf (`f64::MAX`); the encoder makes them cumulative.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            // The encoder writes `le="+Inf"` for `f64::MAX`, as its own histograms use.
            let bound = self.bounds.get(i).copied().unwrap_or(f64::MAX);
            buckets.push((bound, count));
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, total, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets() {
        let h = Histogram::latency();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 60.00308).abs() < 1e-9, "{sum}");
        // 50 µs is inside the first bucket (le is inclusive).
        assert_eq!(buckets[0], (0.000_05, 2));
        let in_5ms = buckets.iter().find(|(b, _)| *b == 0.005).map(|b| b.1);
        assert_eq!(in_5ms, Some(1));
        assert_eq!(buckets.last(), Some(&(f64::MAX, 1)));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 4);
    }
}

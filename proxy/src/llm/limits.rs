//! Per-tenant request and token rates (a token bucket per limit, refilled continuously).
//!
//! Tokens are counted at admission as the call's input bound plus output bound, and what the
//! call did not use is given back when it settles, so a tenant whose calls stop short is not
//! throttled for tokens it never spent.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// Tenants tracked before idle, full buckets are dropped.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct RateLimits {
    tenants: Mutex<HashMap<String, Buckets>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub requests_per_minute: u32,
    pub tokens_per_minute: u64,
}

/// Refused: which limit, and whole seconds until a retry can pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    pub what: &'static str,
    pub retry_after: u64,
}

struct Buckets {
    requests: Bucket,
    tokens: Bucket,
}

struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_minute: f64, now: Instant) -> Bucket {
        Bucket {
            level: per_minute,
            at: now,
        }
    }

    fn refill(&mut self, per_minute: f64, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * per_minute / 60.0).min(per_minute);
        self.at = now;
    }

    /// Seconds until `need` (at most a minute's worth) is available; 0 when it is now.
    fn wait(&self, need: f64, per_minute: f64) -> u64 {
        let need = need.min(per_minute);
        if self.level >= need {
            0
        } else {
            ((need - self.level) * 60.0 / per_minute).ceil().max(1.0) as u64
        }
    }
}

impl RateLimits {
    /// Admits one request of up to `tokens`, or says how long to wait. A limit of 0 is no limit.
    /// A call larger than a minute's tokens is admitted when the bucket is full, and leaves it in
    /// debt.
    pub fn admit(
        &self,
        tenant: &str,
        limit: Limit,
        tokens: u64,
        now: Instant,
    ) -> Result<(), Throttled> {
        if limit.requests_per_minute == 0 && limit.tokens_per_minute == 0 {
            return Ok(());
        }
        let rpm = f64::from(limit.requests_per_minute);
        let tpm = limit.tokens_per_minute as f64;
        let mut tenants = self.tenants.lock();
        if tenants.len() > PRUNE_ABOVE {
            tenants.retain(|_, b| b.requests.level < rpm || b.tokens.level < tpm);
        }
        let b = tenants.entry(tenant.to_owned()).or_insert_with(|| Buckets {
            requests: Bucket::full(rpm, now),
            tokens: Bucket::full(tpm, now),
        });
        b.requests.refill(rpm, now);
        b.tokens.refill(tpm, now);
        if rpm > 0.0 {
            let wait = b.requests.wait(1.0, rpm);
            if wait > 0 {
                return Err(Throttled {
                    what: "requests",
                    retry_after: wait,
                });
            }
        }
        if tpm > 0.0 {
            let wait = b.tokens.wait(tokens as f64, tpm);
            if wait > 0 {
                return Err(Throttled {
                    what: "tokens",
                    retry_after: wait,
                });
            }
        }
        if rpm > 0.0 {
            b.requests.level -= 1.0;
        }
        if tpm > 0.0 {
            b.tokens.level -= tokens as f64;
        }
        Ok(())
    }

    /// Gives back tokens admitted but not used.
    pub fn refund(&self, tenant: &str, limit: Limit, tokens: u64) {
        if limit.tokens_per_minute == 0 || tokens == 0 {
            return;
        }
        if let Some(b) = self.tenants.lock().get_mut(tenant) {
            b.tokens.level = (b.tokens.level + tokens as f64).min(limit.tokens_per_minute as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_per_minute() {
        let limits = RateLimits::default();
        let limit = Limit {
            requests_per_minute: 2,
            tokens_per_minute: 0,
        };
        let t0 = Instant::now();
        assert!(limits.admit("a", limit, 0, t0).is_ok());
        assert!(limits.admit("a", limit, 0, t0).is_ok());
        let refused = limits.admit("a", limit, 0, t0).unwrap_err();
        assert_eq!(
            refused,
            Throttled {
                what: "requests",
                retry_after: 30
            }
        );
        assert!(
            limits.admit("b", limit, 0, t0).is_ok(),
            "tenants are separate"
        );
        assert!(
            limits
                .admit("a", limit, 0, t0 + Duration::from_secs(30))
                .is_ok()
        );
    }

    #[test]
    fn tokens_per_minute_with_refund_and_debt() {
        let limits = RateLimits::default();
        let limit = Limit {
            requests_per_minute: 0,
            tokens_per_minute: 1_000,
        };
        let t0 = Instant::now();
        assert!(limits.admit("a", limit, 800, t0).is_ok());
        assert_eq!(
            limits.admit("a", limit, 300, t0).unwrap_err().what,
            "tokens"
        );
        limits.refund("a", limit, 500);
        assert!(limits.admit("a", limit, 300, t0).is_ok());
        // Larger than a minute's worth: admitted on a full bucket only, then in debt.
        let t1 = t0 + Duration::from_secs(120);
        assert!(limits.admit("a", limit, 5_000, t1).is_ok());
        let wait = limits.admit("a", limit, 1, t1).unwrap_err().retry_after;
        assert!(wait > 60, "{wait}");
    }

    #[test]
    fn zero_is_unlimited() {
        let limits = RateLimits::default();
        let limit = Limit {
            requests_per_minute: 0,
            tokens_per_minute: 0,
        };
        for _ in 0..1000 {
            assert!(limits.admit("a", limit, 1 << 40, Instant::now()).is_ok());
        }
    }
}

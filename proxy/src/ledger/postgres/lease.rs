//! A replica's slice of one tenant's budget, served from memory.
//!
//! The database holds `amount` for the lease (its share of the tenant's `reserved`). Calls hold
//! parts of it here without a round trip; a settled call's cost stays `pending` until its usage
//! is recorded, when the database and this copy both take it off `amount`. So at any moment
//! `holds + pending <= amount` is what this replica may still owe, and the heartbeat reports it
//! as `owed` for the sweeper, should the replica die. What each call contributed to the last
//! report is remembered (`reported`), so recording its usage takes exactly that off `owed` and
//! a sweep after a crash never charges a call that was already recorded.

use std::collections::HashMap;

use std::time::{Duration, Instant};

use crate::ledger::ReservationId;

/// How many seconds of this tenant's recent spend rate a top-up asks for.
const SLICE_SECS: f64 = 5.0;
/// How fast the rate estimate forgets (seconds).
const RATE_HALF_LIFE: f64 = 5.0;

#[derive(Debug)]
pub struct LocalLease {
    pub id: String,
    pub amount: u64,
    pub holds: u64,
    pub pending: u64,
    /// Settled calls not yet recorded, with their costs.
    pending_calls: HashMap<ReservationId, u64>,
    /// What each call contributed to the `owed` of the last heartbeat.
    reported: HashMap<ReservationId, u64>,
    /// Past this, the lease may have been swept by another replica: no new holds from it.
    pub valid_until: Instant,
    pub last_used: Instant,
    /// Micro-dollars held per second, smoothed.
    rate: f64,
    rate_at: Instant,
    /// Swept or lost: holds in flight finish, nothing new is taken from it.
    pub dead: bool,
}

impl LocalLease {
    pub fn new(id: String, now: Instant, ttl: Duration) -> LocalLease {
        LocalLease {
            id,
            amount: 0,
            holds: 0,
            pending: 0,
            pending_calls: HashMap::new(),
            reported: HashMap::new(),
            valid_until: now + usable(ttl),
            last_used: now,
            rate: 0.0,
            rate_at: now,
            dead: false,
        }
    }

    pub fn available(&self) -> u64 {
        self.amount.saturating_sub(self.holds + self.pending)
    }

    pub fn owed(&self) -> u64 {
        self.holds + self.pending
    }

    pub fn usable(&self, now: Instant) -> bool {
        !self.dead && now < self.valid_until
    }

    /// Holds `amount` if the lease has it.
    pub fn try_hold(&mut self, amount: u64, now: Instant) -> bool {
        if !self.usable(now) || self.available() < amount {
            return false;
        }
        self.holds += amount;
        self.last_used = now;
        self.observe(amount, now);
        true
    }

    fn observe(&mut self, amount: u64, now: Instant) {
        let dt = now.saturating_duration_since(self.rate_at).as_secs_f64();
        let decay = 0.5f64.powf(dt / RATE_HALF_LIFE);
        self.rate = self.rate * decay + amount as f64 * (1.0 - decay).max(0.05) / dt.max(0.05);
        self.rate_at = now;
    }

    /// What a top-up should ask for when `need` more is missing: a few seconds of the recent
    /// rate, at least four calls like this one. The database caps it near the limit.
    pub fn want(&self, need: u64) -> u64 {
        let by_rate = (self.rate * SLICE_SECS) as u64;
        need.saturating_mul(4).max(by_rate).max(need)
    }

    /// The database confirmed the lease until `ttl` from `now`.
    pub fn renewed(&mut self, now: Instant, ttl: Duration) {
        self.valid_until = now + usable(ttl);
    }

    pub fn release(&mut self, hold: u64) {
        self.holds = self.holds.saturating_sub(hold);
    }

    pub fn settle(&mut self, id: &ReservationId, hold: u64, cost: u64) {
        self.holds = self.holds.saturating_sub(hold);
        self.pending += cost;
        self.pending_calls.insert(id.clone(), cost);
    }

    /// A settled call's usage was recorded: the database took its cost off the lease (at most
    /// what the lease still held). Returns what the call contributed to the last heartbeat's
    /// `owed`, for the database to take off too.
    pub fn recorded(&mut self, id: &ReservationId, cost: u64) -> u64 {
        if self.pending_calls.remove(id).is_some() {
            self.pending = self.pending.saturating_sub(cost);
            self.amount = self.amount.saturating_sub(cost);
        }
        self.reported.remove(id).unwrap_or(0)
    }

    /// What `id` contributed to the last heartbeat's `owed`.
    pub fn reported_of(&self, id: &ReservationId) -> u64 {
        self.reported.get(id).copied().unwrap_or(0)
    }

    /// The heartbeat's report: `in_flight` are the holds of this lease's calls in flight. Returns
    /// the total owed, and remembers each call's part.
    pub fn report(&mut self, in_flight: impl Iterator<Item = (ReservationId, u64)>) -> u64 {
        self.reported = in_flight.collect();
        self.reported.extend(
            self.pending_calls
                .iter()
                .map(|(id, cost)| (id.clone(), *cost)),
        );
        self.reported.values().sum()
    }

    pub fn idle(&self, now: Instant, after: Duration) -> bool {
        self.holds == 0
            && self.pending == 0
            && now.saturating_duration_since(self.last_used) >= after
    }
}

/// A lease is used for two thirds of its life; the last third is margin against clock and
/// heartbeat delays before another replica may sweep it.
fn usable(ttl: Duration) -> Duration {
    ttl.mul_f64(2.0 / 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_pending_and_recording() {
        let t0 = Instant::now();
        let mut l = LocalLease::new("l".into(), t0, Duration::from_secs(15));
        assert!(!l.try_hold(1, t0), "an empty lease holds nothing");
        l.amount = 100;
        assert!(l.try_hold(60, t0));
        assert!(!l.try_hold(41, t0));
        let id = ReservationId("r1".into());
        l.settle(&id, 60, 50);
        assert_eq!((l.available(), l.owed()), (50, 50));
        assert_eq!(
            l.report(std::iter::empty()),
            50,
            "a settled call owes its cost"
        );
        assert_eq!(
            l.recorded(&id, 50),
            50,
            "recording takes off what was reported"
        );
        assert_eq!(l.recorded(&id, 50), 0, "and only once");
        assert_eq!((l.amount, l.pending, l.available()), (50, 0, 50));
        assert!(l.try_hold(50, t0));
        l.release(50);
        assert_eq!(l.available(), 50);
    }

    #[test]
    fn a_call_in_flight_is_reported_with_its_hold() {
        let t0 = Instant::now();
        let mut l = LocalLease::new("l".into(), t0, Duration::from_secs(15));
        l.amount = 500;
        assert!(l.try_hold(228, t0));
        let id = ReservationId("r1".into());
        assert_eq!(l.report([(id.clone(), 228)].into_iter()), 228);
        l.settle(&id, 228, 210);
        // Recorded before the next heartbeat: the database takes off what it was told, 228.
        assert_eq!(l.recorded(&id, 210), 228);
        assert_eq!((l.amount, l.owed()), (290, 0));
    }

    #[test]
    fn an_expired_or_dead_lease_takes_nothing() {
        let t0 = Instant::now();
        let mut l = LocalLease::new("l".into(), t0, Duration::from_secs(3));
        l.amount = 100;
        assert!(!l.try_hold(1, t0 + Duration::from_secs(2)));
        l.renewed(t0 + Duration::from_secs(2), Duration::from_secs(3));
        assert!(l.try_hold(1, t0 + Duration::from_secs(3)));
        l.dead = true;
        assert!(!l.try_hold(1, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn the_slice_follows_the_rate() {
        let t0 = Instant::now();
        let mut l = LocalLease::new("l".into(), t0, Duration::from_secs(60));
        l.amount = u64::MAX / 4;
        assert_eq!(l.want(10), 40);
        for i in 0..100 {
            assert!(l.try_hold(1_000, t0 + Duration::from_millis(10 * i)));
        }
        // About 100,000 µ$/s held: a slice of several seconds of it.
        assert!(l.want(10) > 100_000, "{}", l.want(10));
    }
}

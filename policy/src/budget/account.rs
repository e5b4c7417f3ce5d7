//! One budget scope's arithmetic.

use serde::Serialize;

use super::period::{Period, period_start};
use crate::llm::Micros;

/// A budget scope: its limit, what the current period has spent, what calls in flight hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Account {
    pub limit: Micros,
    pub period: Period,
    /// Unix second the current period began; spend before it no longer counts.
    pub period_start: u64,
    pub spent: Micros,
    pub reserved: Micros,
}

/// Why a reservation does not fit: the figures a 402 can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub limit: Micros,
    pub spent: Micros,
    pub reserved: Micros,
    pub requested: Micros,
}

impl Shortfall {
    /// What the scope could still take.
    pub fn available(&self) -> Micros {
        self.limit
            .saturating_sub(self.spent)
            .saturating_sub(self.reserved)
    }
}

impl Account {
    pub fn new(limit: Micros, period: Period, now: u64) -> Account {
        Account {
            limit,
            period,
            period_start: period_start(period, now),
            spent: Micros::ZERO,
            reserved: Micros::ZERO,
        }
    }

    /// Starts a new period if `now` is past the current one: spend restarts from zero, while
    /// reservations in flight keep holding their amounts until they settle.
    pub fn roll(&mut self, now: u64) {
        let start = period_start(self.period, now);
        if start > self.period_start {
            self.period_start = start;
            self.spent = Micros::ZERO;
        }
    }

    /// What is left: limit − spent − reserved, never below zero.
    pub fn remaining(&self) -> Micros {
        self.limit
            .saturating_sub(self.spent)
            .saturating_sub(self.reserved)
    }

    /// Checks that `amount` fits (`spent + reserved + amount <= limit`).
    pub fn check(&self, amount: Micros) -> Result<(), Shortfall> {
        let total = u128::from(self.spent.0) + u128::from(self.reserved.0) + u128::from(amount.0);
        if total <= u128::from(self.limit.0) {
            Ok(())
        } else {
            Err(Shortfall {
                limit: self.limit,
                spent: self.spent,
                reserved: self.reserved,
                requested: amount,
            })
        }
    }

    /// Holds `amount` for a call in flight; callers [`check`](Self::check) every scope first so
    /// that several scopes are taken all or nothing.
    pub fn hold(&mut self, amount: Micros) {
        self.reserved = self.reserved.saturating_add(amount);
    }

    /// Ends a hold of `reserved`, charging `cost` (zero for a release). The cost may exceed the
    /// hold when a provider reports more than the bound; it is charged all the same, because it
    /// was spent.
    pub fn settle(&mut self, reserved: Micros, cost: Micros) {
        self.reserved = self.reserved.saturating_sub(reserved);
        self.spent = self.spent.saturating_add(cost);
    }

    /// True once spend has reached `fraction` of the limit (the soft alert threshold).
    pub fn past(&self, fraction: f64) -> bool {
        self.limit.0 > 0 && (self.spent.0 as f64) >= fraction * self.limit.0 as f64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DEC_2: u64 = 1_796_226_972;
    const JAN_1_2027: u64 = 1_798_761_600;

    #[test]
    fn fits_exactly_up_to_the_limit() {
        let mut a = Account::new(Micros(100), Period::Month, DEC_2);
        assert!(a.check(Micros(100)).is_ok());
        a.hold(Micros(60));
        assert!(a.check(Micros(40)).is_ok());
        let short = a.check(Micros(41)).unwrap_err();
        assert_eq!(short.available(), Micros(40));
        assert_eq!(short.requested, Micros(41));
    }

    #[test]
    fn settle_moves_the_hold_to_the_cost() {
        let mut a = Account::new(Micros(100), Period::Total, DEC_2);
        a.hold(Micros(60));
        a.settle(Micros(60), Micros(25));
        assert_eq!(
            (a.spent, a.reserved, a.remaining()),
            (Micros(25), Micros::ZERO, Micros(75))
        );
        a.hold(Micros(10));
        a.settle(Micros(10), Micros::ZERO);
        assert_eq!(a.remaining(), Micros(75));
    }

    #[test]
    fn a_new_period_restarts_spend_but_keeps_holds() {
        let mut a = Account::new(Micros(100), Period::Month, DEC_2);
        a.hold(Micros(30));
        a.settle(Micros(10), Micros(10));
        a.roll(DEC_2 + 60);
        assert_eq!(a.spent, Micros(10), "same month");
        a.roll(JAN_1_2027);
        assert_eq!((a.spent, a.reserved), (Micros::ZERO, Micros(20)));
        assert_eq!(a.period_start, JAN_1_2027);
        // An older clock reading never goes back a period.
        a.roll(DEC_2);
        assert_eq!(a.period_start, JAN_1_2027);
    }

    #[test]
    fn soft_threshold() {
        let mut a = Account::new(Micros(1000), Period::Total, 0);
        a.settle(Micros::ZERO, Micros(799));
        assert!(!a.past(0.8));
        a.settle(Micros::ZERO, Micros(1));
        assert!(a.past(0.8));
    }
}

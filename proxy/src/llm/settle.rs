//! Exactly-once settlement of a call's reservation.
//!
//! A [`Settlement`] is made when the reservation is held and consumed by [`Settlement::charge`]
//! or [`Settlement::release`]. If it is dropped unconsumed (the request task was cancelled),
//! `Drop` still settles it: in full if the request may have reached the provider, since the
//! provider may bill it, or as a release if it cannot have. The ledger makes a second settlement
//! of the same id a no-op, so no path charges twice.

use std::sync::Arc;

use sentinel_policy::llm::{Micros, Usage};

use crate::ledger::{Ledger, ReservationId, Settled, UsageEvent};

pub struct Settlement {
    ledger: Arc<dyn Ledger>,
    id: ReservationId,
    pub amount: Micros,
    /// The request may have reached the provider.
    sent: bool,
    done: bool,
    tenant: String,
    model: String,
    provider: String,
}

impl Settlement {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        id: ReservationId,
        amount: Micros,
        tenant: &str,
        model: &str,
        provider: &str,
    ) -> Settlement {
        Settlement {
            ledger,
            id,
            amount,
            sent: false,
            done: false,
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            provider: provider.to_owned(),
        }
    }

    /// From here on the provider may have the request.
    pub fn mark_sent(&mut self) {
        self.sent = true;
    }

    fn event(
        &self,
        usage: Usage,
        cost: Micros,
        outcome: &'static str,
        estimated: bool,
    ) -> UsageEvent {
        UsageEvent {
            request_id: self.id.0.clone(),
            tenant: self.tenant.clone(),
            model: self.model.clone(),
            provider: self.provider.clone(),
            usage,
            cost,
            outcome: outcome.to_owned(),
            estimated,
            at_unix: crate::ledger::Clock::now(&crate::ledger::SystemClock),
        }
    }

    /// Charges `cost` for `usage` and ends the reservation.
    pub async fn charge(
        mut self,
        usage: Usage,
        cost: Micros,
        outcome: &'static str,
        estimated: bool,
    ) {
        self.done = true;
        let event = self.event(usage, cost, outcome, estimated);
        report(&self.id, self.ledger.settle(&self.id, event).await);
    }

    /// Ends the reservation without a charge: the provider never had the request.
    pub async fn release(mut self) {
        self.done = true;
        report(&self.id, self.ledger.release(&self.id).await);
    }
}

fn report(id: &ReservationId, result: Result<Settled, crate::ledger::LedgerError>) {
    match result {
        Ok(Settled::Now) => {}
        Ok(Settled::Already) => {
            tracing::warn!(reservation = %id, "reservation was already settled")
        }
        // The hold stays until it expires and is swept in full: never lost, never undercharged.
        Err(e) => {
            tracing::error!(reservation = %id, error = %e, "settlement failed; the sweeper will charge the hold")
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(reservation = %self.id, "request dropped outside a runtime; the sweeper will charge the hold");
            return;
        };
        let ledger = self.ledger.clone();
        let id = self.id.clone();
        if self.sent {
            let event = self.event(Usage::default(), self.amount, "cancelled", true);
            runtime.spawn(async move { report(&id, ledger.settle(&id, event).await) });
        } else {
            runtime.spawn(async move { report(&id, ledger.release(&id).await) });
        }
    }
}

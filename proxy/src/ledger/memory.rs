//! The in-memory ledger: one process's budgets behind one lock. Atomic by construction (every
//! operation runs under the lock); gone when the process ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use sentinel_policy::budget::Account;
use sentinel_policy::llm::Micros;

use super::{
    Balance, BudgetSpec, Clock, Ended, Ledger, LedgerError, Reservation, ReservationId,
    ReserveRequest, Settled, UsageEvent,
};

/// Usage events kept per tenant (the newest; older ones are dropped).
const EVENTS_PER_TENANT: usize = 1_000;

pub struct MemoryLedger {
    clock: Arc<dyn Clock>,
    /// The budget of tenants without one of their own; `None`: such tenants are refused.
    default_budget: Option<BudgetSpec>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, TenantBudget>,
    holds: HashMap<ReservationId, Hold>,
    ended: Ended,
    events: HashMap<String, VecDeque<UsageEvent>>,
    revoked: HashSet<String>,
}

struct TenantBudget {
    spec: BudgetSpec,
    all: Account,
    models: HashMap<String, Account>,
}

struct Hold {
    tenant: String,
    model: String,
    amount: Micros,
    expires_at: u64,
    request_id: String,
}

impl TenantBudget {
    fn new(spec: BudgetSpec, now: u64) -> TenantBudget {
        let models = spec
            .models
            .iter()
            .map(|(m, limit)| (m.clone(), Account::new(*limit, spec.period, now)))
            .collect();
        TenantBudget {
            all: Account::new(spec.limit, spec.period, now),
            spec,
            models,
        }
    }

    fn roll(&mut self, now: u64) {
        self.all.roll(now);
        self.models.values_mut().for_each(|a| a.roll(now));
    }

    fn settle(&mut self, model: &str, amount: Micros, cost: Micros) {
        self.all.settle(amount, cost);
        if let Some(account) = self.models.get_mut(model) {
            account.settle(amount, cost);
        }
    }
}

impl MemoryLedger {
    pub fn new(clock: Arc<dyn Clock>, default_budget: Option<BudgetSpec>) -> MemoryLedger {
        MemoryLedger {
            clock,
            default_budget,
            state: Mutex::new(State::default()),
        }
    }

    /// Sets the configured budgets at start. Spend starts at zero: this backend remembers
    /// nothing across restarts.
    pub fn with_budgets(self, budgets: impl IntoIterator<Item = (String, BudgetSpec)>) -> Self {
        let now = self.clock.now();
        {
            let mut state = self.state.lock();
            for (tenant, spec) in budgets {
                state.tenants.insert(tenant, TenantBudget::new(spec, now));
            }
        }
        self
    }

    pub fn with_revoked(self, key_ids: impl IntoIterator<Item = String>) -> Self {
        self.state.lock().revoked.extend(key_ids);
        self
    }

    fn budget<'a>(
        &self,
        state: &'a mut State,
        tenant: &str,
        now: u64,
    ) -> Result<&'a mut TenantBudget, LedgerError> {
        if !state.tenants.contains_key(tenant) {
            let spec = self
                .default_budget
                .clone()
                .ok_or_else(|| LedgerError::NoBudget {
                    tenant: tenant.to_owned(),
                })?;
            state
                .tenants
                .insert(tenant.to_owned(), TenantBudget::new(spec, now));
        }
        let budget = state
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| LedgerError::NoBudget {
                tenant: tenant.to_owned(),
            })?;
        budget.roll(now);
        Ok(budget)
    }
}

impl State {
    fn end(&mut self, id: &ReservationId) -> Option<Hold> {
        let hold = self.holds.remove(id)?;
        self.ended.insert(id.clone());
        Some(hold)
    }

    fn record(&mut self, event: UsageEvent) {
        let events = self.events.entry(event.tenant.clone()).or_default();
        events.push_front(event);
        events.truncate(EVENTS_PER_TENANT);
    }

    fn charge(&mut self, hold: &Hold, cost: Micros) {
        if let Some(budget) = self.tenants.get_mut(&hold.tenant) {
            budget.settle(&hold.model, hold.amount, cost);
        }
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn reserve(&self, request: ReserveRequest) -> Result<Reservation, LedgerError> {
        let now = self.clock.now();
        let id = ReservationId(request.request_id.clone());
        let mut guard = self.state.lock();
        let state = &mut *guard;
        if state.holds.contains_key(&id) || state.ended.contains(&id) {
            return Err(LedgerError::DuplicateReservation(id));
        }
        let budget = self.budget(state, &request.tenant, now)?;
        budget
            .all
            .check(request.amount)
            .map_err(|short| LedgerError::Insufficient { scope: None, short })?;
        if let Some(account) = budget.models.get(&request.model) {
            account
                .check(request.amount)
                .map_err(|short| LedgerError::Insufficient {
                    scope: Some(request.model.clone()),
                    short,
                })?;
        }
        budget.all.hold(request.amount);
        if let Some(account) = budget.models.get_mut(&request.model) {
            account.hold(request.amount);
        }
        let reservation = Reservation {
            id: id.clone(),
            amount: request.amount,
            remaining: budget.all.remaining(),
            near_limit: budget.all.past(budget.spec.soft_threshold),
        };
        state.holds.insert(
            id,
            Hold {
                tenant: request.tenant,
                model: request.model,
                amount: request.amount,
                expires_at: now.saturating_add(request.ttl.as_secs().max(1)),
                request_id: request.request_id,
            },
        );
        Ok(reservation)
    }

    async fn settle(&self, id: &ReservationId, event: UsageEvent) -> Result<Settled, LedgerError> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let Some(hold) = state.end(id) else {
            return state.ended.again(id);
        };
        if let Some(budget) = state.tenants.get_mut(&hold.tenant) {
            budget.roll(now);
        }
        state.charge(&hold, event.cost);
        state.record(event);
        Ok(Settled::Now)
    }

    async fn release(&self, id: &ReservationId) -> Result<Settled, LedgerError> {
        let mut state = self.state.lock();
        let Some(hold) = state.end(id) else {
            return state.ended.again(id);
        };
        state.charge(&hold, Micros::ZERO);
        Ok(Settled::Now)
    }

    async fn balance(&self, tenant: &str) -> Result<Vec<Balance>, LedgerError> {
        let now = self.clock.now();
        let mut guard = self.state.lock();
        let budget = match self.budget(&mut guard, tenant, now) {
            Ok(budget) => budget,
            Err(LedgerError::NoBudget { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let threshold = budget.spec.soft_threshold;
        let scope = |model: Option<String>, a: &Account| Balance {
            model,
            limit: a.limit,
            period: a.period,
            period_start: a.period_start,
            spent: a.spent,
            reserved: a.reserved,
            remaining: a.remaining(),
            near_limit: a.past(threshold),
        };
        let mut out = vec![scope(None, &budget.all)];
        let mut models: Vec<_> = budget.models.iter().collect();
        models.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(models.into_iter().map(|(m, a)| scope(Some(m.clone()), a)));
        Ok(out)
    }

    async fn usage(
        &self,
        tenant: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, LedgerError> {
        let state = self.state.lock();
        Ok(state
            .events
            .get(tenant)
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e.at_unix >= since)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_budget(&self, tenant: &str, spec: BudgetSpec) -> Result<(), LedgerError> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let mut fresh = TenantBudget::new(spec, now);
        if let Some(old) = state.tenants.remove(tenant) {
            // Keep what the period has spent and what is held; a new period starts from zero.
            let same_period = old.spec.period == fresh.spec.period;
            fresh.all.reserved = old.all.reserved;
            if same_period {
                fresh.all.spent = old.all.spent;
            }
            for (model, account) in &mut fresh.models {
                if let Some(prev) = old.models.get(model) {
                    account.reserved = prev.reserved;
                    if same_period {
                        account.spent = prev.spent;
                    }
                }
            }
            fresh.roll(now);
        }
        state.tenants.insert(tenant.to_owned(), fresh);
        Ok(())
    }

    async fn sweep_expired(&self) -> Result<usize, LedgerError> {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let expired: Vec<ReservationId> = state
            .holds
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(hold) = state.end(id) {
                // Nobody settled it: the provider may have billed the whole bound.
                state.charge(&hold, hold.amount);
                let event = UsageEvent {
                    request_id: hold.request_id.clone(),
                    tenant: hold.tenant.clone(),
                    model: hold.model.clone(),
                    provider: String::new(),
                    usage: Default::default(),
                    cost: hold.amount,
                    outcome: "expired".to_owned(),
                    estimated: true,
                    at_unix: now,
                };
                state.record(event);
            }
        }
        Ok(expired.len())
    }

    async fn revoke_key(&self, key_id: &str) -> Result<(), LedgerError> {
        self.state.lock().revoked.insert(key_id.to_owned());
        Ok(())
    }

    async fn is_revoked(&self, key_id: &str) -> Result<bool, LedgerError> {
        Ok(self.state.lock().revoked.contains(key_id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use sentinel_policy::budget::Period;

    use super::*;

    struct TestClock(AtomicU64);
    impl Clock for TestClock {
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const DEC_31_2026_23H: u64 = 1_798_758_000;
    const JAN_1_2027: u64 = 1_798_761_600;

    fn spec(limit: u64, models: &[(&str, u64)]) -> BudgetSpec {
        BudgetSpec {
            limit: Micros(limit),
            period: Period::Month,
            soft_threshold: 0.8,
            models: models
                .iter()
                .map(|(m, l)| ((*m).to_owned(), Micros(*l)))
                .collect(),
        }
    }

    fn ledger(clock: Arc<TestClock>, budgets: &[(&str, BudgetSpec)]) -> MemoryLedger {
        MemoryLedger::new(clock, None)
            .with_budgets(budgets.iter().map(|(t, s)| ((*t).to_owned(), s.clone())))
    }

    fn request(tenant: &str, model: &str, amount: u64, id: &str) -> ReserveRequest {
        ReserveRequest {
            tenant: tenant.into(),
            model: model.into(),
            amount: Micros(amount),
            request_id: id.into(),
            ttl: Duration::from_secs(60),
        }
    }

    fn event(tenant: &str, id: &str, cost: u64) -> UsageEvent {
        UsageEvent {
            request_id: id.into(),
            tenant: tenant.into(),
            model: "m".into(),
            provider: "p".into(),
            usage: Default::default(),
            cost: Micros(cost),
            outcome: "ok".to_owned(),
            estimated: false,
            at_unix: 0,
        }
    }

    #[tokio::test]
    async fn reserve_settle_release_and_idempotence() {
        let clock = Arc::new(TestClock(AtomicU64::new(DEC_31_2026_23H)));
        let l = ledger(clock, &[("acme", spec(100, &[]))]);
        let r = l.reserve(request("acme", "m", 70, "r1")).await.unwrap();
        assert_eq!(r.remaining, Micros(30));
        let err = l.reserve(request("acme", "m", 31, "r2")).await.unwrap_err();
        assert!(
            matches!(err, LedgerError::Insufficient { scope: None, .. }),
            "{err}"
        );
        assert_eq!(
            l.settle(&r.id, event("acme", "r1", 20)).await.unwrap(),
            Settled::Now
        );
        assert_eq!(
            l.settle(&r.id, event("acme", "r1", 20)).await.unwrap(),
            Settled::Already
        );
        assert_eq!(l.release(&r.id).await.unwrap(), Settled::Already);
        let b = &l.balance("acme").await.unwrap()[0];
        assert_eq!(
            (b.spent, b.reserved, b.remaining),
            (Micros(20), Micros::ZERO, Micros(80))
        );
        assert!(matches!(
            l.reserve(request("acme", "m", 1, "r1")).await,
            Err(LedgerError::DuplicateReservation(_))
        ));
        let r3 = l.reserve(request("acme", "m", 80, "r3")).await.unwrap();
        assert_eq!(l.release(&r3.id).await.unwrap(), Settled::Now);
        assert_eq!(l.balance("acme").await.unwrap()[0].remaining, Micros(80));
        assert_eq!(l.usage("acme", 0, 10).await.unwrap().len(), 1);
        assert!(matches!(
            l.settle(&ReservationId("nope".into()), event("acme", "nope", 1))
                .await,
            Err(LedgerError::UnknownReservation(_))
        ));
    }

    #[tokio::test]
    async fn model_budget_narrows_and_both_scopes_hold() {
        let clock = Arc::new(TestClock(AtomicU64::new(DEC_31_2026_23H)));
        let l = ledger(clock, &[("acme", spec(100, &[("big", 30)]))]);
        let err = l
            .reserve(request("acme", "big", 31, "a"))
            .await
            .unwrap_err();
        assert!(matches!(err, LedgerError::Insufficient { scope: Some(ref m), .. } if m == "big"));
        // A refused reservation holds nothing in either scope.
        let bal = l.balance("acme").await.unwrap();
        assert!(bal.iter().all(|b| b.reserved == Micros::ZERO));
        l.reserve(request("acme", "big", 30, "b")).await.unwrap();
        l.reserve(request("acme", "small", 70, "c")).await.unwrap();
        assert!(l.reserve(request("acme", "small", 1, "d")).await.is_err());
    }

    #[tokio::test]
    async fn unknown_tenant_without_default_is_refused() {
        let clock = Arc::new(TestClock(AtomicU64::new(0)));
        let l = ledger(clock.clone(), &[]);
        assert!(matches!(
            l.reserve(request("ghost", "m", 1, "x")).await,
            Err(LedgerError::NoBudget { .. })
        ));
        assert!(l.balance("ghost").await.unwrap().is_empty());
        let l = MemoryLedger::new(clock, Some(spec(5, &[])));
        assert!(l.reserve(request("ghost", "m", 5, "x")).await.is_ok());
        assert!(l.reserve(request("ghost", "m", 1, "y")).await.is_err());
    }

    #[tokio::test]
    async fn month_rollover_restarts_spend() {
        let clock = Arc::new(TestClock(AtomicU64::new(DEC_31_2026_23H)));
        let l = ledger(clock.clone(), &[("acme", spec(100, &[]))]);
        let r = l.reserve(request("acme", "m", 100, "r1")).await.unwrap();
        l.settle(&r.id, event("acme", "r1", 100)).await.unwrap();
        assert!(l.reserve(request("acme", "m", 1, "r2")).await.is_err());
        clock.0.store(JAN_1_2027 - 1, Ordering::SeqCst);
        assert!(l.reserve(request("acme", "m", 1, "r3")).await.is_err());
        clock.0.store(JAN_1_2027, Ordering::SeqCst);
        let r4 = l.reserve(request("acme", "m", 100, "r4")).await.unwrap();
        assert_eq!(r4.remaining, Micros::ZERO);
        let b = &l.balance("acme").await.unwrap()[0];
        assert_eq!((b.period_start, b.spent), (JAN_1_2027, Micros::ZERO));
    }

    #[tokio::test]
    async fn expired_holds_are_charged_in_full_once() {
        let clock = Arc::new(TestClock(AtomicU64::new(1_000)));
        let l = ledger(clock.clone(), &[("acme", spec(100, &[]))]);
        let r = l.reserve(request("acme", "m", 40, "r1")).await.unwrap();
        assert_eq!(l.sweep_expired().await.unwrap(), 0);
        clock.0.store(1_060, Ordering::SeqCst);
        assert_eq!(l.sweep_expired().await.unwrap(), 1);
        assert_eq!(l.sweep_expired().await.unwrap(), 0);
        assert_eq!(
            l.settle(&r.id, event("acme", "r1", 5)).await.unwrap(),
            Settled::Already
        );
        let b = &l.balance("acme").await.unwrap()[0];
        assert_eq!((b.spent, b.reserved), (Micros(40), Micros::ZERO));
        assert_eq!(l.usage("acme", 0, 5).await.unwrap()[0].outcome, "expired");
    }

    #[tokio::test]
    async fn concurrent_reservations_never_exceed_the_limit() {
        let clock = Arc::new(TestClock(AtomicU64::new(0)));
        let l = Arc::new(ledger(clock, &[("acme", spec(1_000, &[]))]));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.reserve(request("acme", "m", 7 + i % 13, &format!("r{i}")))
                    .await
                    .map(|r| r.amount.0)
            }));
        }
        let mut held = 0;
        for t in tasks {
            if let Ok(amount) = t.await.unwrap() {
                held += amount;
            }
        }
        assert!(held <= 1_000, "held {held}");
        assert!(held > 1_000 - 20, "held {held}: the budget was left unused");
    }

    #[tokio::test]
    async fn set_budget_keeps_spend_and_holds() {
        let clock = Arc::new(TestClock(AtomicU64::new(DEC_31_2026_23H)));
        let l = ledger(clock, &[("acme", spec(100, &[]))]);
        let r = l.reserve(request("acme", "m", 30, "r1")).await.unwrap();
        l.settle(&r.id, event("acme", "r1", 30)).await.unwrap();
        l.reserve(request("acme", "m", 20, "r2")).await.unwrap();
        l.set_budget("acme", spec(60, &[])).await.unwrap();
        let b = &l.balance("acme").await.unwrap()[0];
        assert_eq!(
            (b.limit, b.spent, b.reserved, b.remaining),
            (Micros(60), Micros(30), Micros(20), Micros(10))
        );
        l.revoke_key("vk1").await.unwrap();
        assert!(l.is_revoked("vk1").await.unwrap());
        assert!(!l.is_revoked("vk2").await.unwrap());
    }
}

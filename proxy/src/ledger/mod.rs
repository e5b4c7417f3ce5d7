//! The budget ledger: where reservations are held and usage is recorded.
//!
//! [`Ledger`] is the one interface the egress proxy (and later the admin port) talks to. A call
//! reserves its worst-case cost before it leaves ([`Ledger::reserve`]), then settles exactly once
//! ([`Ledger::settle`] with the real cost, or [`Ledger::release`] when the provider never got the
//! request). Both are idempotent by reservation id, so a retry after an ambiguous failure never
//! charges twice. Every reservation has an expiry; one that outlives it (its process died) is
//! swept and charged in full, because the provider may have billed it.
//!
//! Backends: [`MemoryLedger`] (this process only: tests and single-replica use). The Postgres
//! backend shared by replicas is its own piece of work.

mod memory;
pub mod postgres;
pub mod spool;

use std::time::Duration;

use async_trait::async_trait;
use sentinel_policy::budget::{Period, Shortfall};
use sentinel_policy::llm::{Micros, Usage};
use serde::{Deserialize, Serialize};

use crate::blocks::Block;

pub use memory::MemoryLedger;

/// A budget as configured or set through the admin API.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSpec {
    pub limit: Micros,
    pub period: Period,
    /// Fraction of the limit (0..=1) past which spend is reported as near the limit.
    pub soft_threshold: f64,
    /// Narrower limits for single models, held in addition to the tenant's.
    pub models: Vec<(String, Micros)>,
}

/// Identifies one reservation; settling and releasing are idempotent by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ReservationId(pub String);

impl std::fmt::Display for ReservationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug)]
pub struct ReserveRequest {
    pub tenant: String,
    pub model: String,
    pub amount: Micros,
    /// Also the reservation's id: one request, one reservation.
    pub request_id: String,
    /// How long the hold lives without a settlement before the sweeper charges it.
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reservation {
    pub id: ReservationId,
    pub amount: Micros,
    /// What the tenant's budget has left after this hold.
    pub remaining: Micros,
    /// Spend is past the budget's soft threshold.
    pub near_limit: bool,
}

/// One call's record, written when it settles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub request_id: String,
    pub tenant: String,
    pub model: String,
    pub provider: String,
    pub usage: Usage,
    pub cost: Micros,
    /// How the call ended (`ok`, `upstream_error`, `client_gone`, …): a bounded label.
    pub outcome: String,
    /// True when the cost is Sentinel's bound rather than the provider's reported usage.
    pub estimated: bool,
    pub at_unix: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Now,
    /// It had been settled (or released, or swept) before: nothing changed.
    Already,
}

/// A budget scope's state: the tenant's, or the tenant's for one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Balance {
    /// `None` for the tenant-wide budget, the model for a narrowed one.
    pub model: Option<String>,
    pub limit: Micros,
    pub period: Period,
    pub period_start: u64,
    pub spent: Micros,
    pub reserved: Micros,
    pub remaining: Micros,
    pub near_limit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("tenant {tenant} has no LLM budget")]
    NoBudget { tenant: String },
    #[error(
        "budget{} exhausted: limit {}, spent {}, reserved {}, this call needs up to {}",
        scope.as_deref().map(|m| format!(" for model {m}")).unwrap_or_default(),
        short.limit, short.spent, short.reserved, short.requested
    )]
    Insufficient {
        /// The model of a narrowed budget, `None` for the tenant's.
        scope: Option<String>,
        short: Shortfall,
    },
    #[error("reservation {0} is unknown")]
    UnknownReservation(ReservationId),
    #[error("reservation {0} is already held")]
    DuplicateReservation(ReservationId),
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

impl LedgerError {
    /// A fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            LedgerError::NoBudget { .. } => "no_budget",
            LedgerError::Insufficient { .. } => "insufficient",
            LedgerError::UnknownReservation(_) => "unknown_reservation",
            LedgerError::DuplicateReservation(_) => "duplicate_reservation",
            LedgerError::Unavailable(_) => "unavailable",
        }
    }
}

/// Where budgets, holds and usage live. Implementations are shared across tasks (`Arc<dyn
/// Ledger>`) and make each operation atomic on their own.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Holds `amount` against the tenant's budget and any narrower one for the model, all or
    /// nothing.
    async fn reserve(&self, request: ReserveRequest) -> Result<Reservation, LedgerError>;

    /// Ends a hold and records the call's usage, charging `event.cost`. Idempotent by `id`.
    async fn settle(&self, id: &ReservationId, event: UsageEvent) -> Result<Settled, LedgerError>;

    /// Ends a hold without a charge: the provider never received the request. Idempotent.
    async fn release(&self, id: &ReservationId) -> Result<Settled, LedgerError>;

    /// The tenant's budget scopes; empty if it has none.
    async fn balance(&self, tenant: &str) -> Result<Vec<Balance>, LedgerError>;

    /// The tenant's usage events at or after `since` (unix seconds; a period's start, or 0),
    /// newest first, at most `limit`.
    async fn usage(
        &self,
        tenant: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, LedgerError>;

    /// Sets (or replaces) a tenant's budget; spend so far in the period is kept.
    async fn set_budget(&self, tenant: &str, spec: BudgetSpec) -> Result<(), LedgerError>;

    /// Charges and ends every hold past its expiry; returns how many.
    async fn sweep_expired(&self) -> Result<usize, LedgerError>;

    /// Marks a virtual key id revoked.
    async fn revoke_key(&self, key_id: &str) -> Result<(), LedgerError>;

    async fn is_revoked(&self, key_id: &str) -> Result<bool, LedgerError>;

    /// Blocks (`Some`) or unblocks a tenant for every replica sharing this ledger (the kill
    /// switch). A ledger of one process has nobody to tell.
    async fn set_block(&self, _tenant: &str, _block: Option<&Block>) -> Result<(), LedgerError> {
        Ok(())
    }
}

/// Reservation ids that have ended (the newest 100,000), so a repeated settlement of the same
/// call is answered [`Settled::Already`] rather than charged again.
#[derive(Default)]
pub(crate) struct Ended {
    set: std::collections::HashSet<ReservationId>,
    order: std::collections::VecDeque<ReservationId>,
}

impl Ended {
    const REMEMBERED: usize = 100_000;

    pub(crate) fn insert(&mut self, id: ReservationId) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
        }
        while self.order.len() > Self::REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub(crate) fn contains(&self, id: &ReservationId) -> bool {
        self.set.contains(id)
    }

    /// The answer to settling `id` again: `Already` if it ended, else unknown.
    pub(crate) fn again(&self, id: &ReservationId) -> Result<Settled, LedgerError> {
        if self.contains(id) {
            Ok(Settled::Already)
        } else {
            Err(LedgerError::UnknownReservation(id.clone()))
        }
    }
}

/// The clock the ledger reads: unix seconds. Injected so period rollover can be tested.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl BudgetSpec {
    /// The budget a validated `[llm.tenants.<id>]` (or `tenant_defaults`) describes.
    pub fn from_config(
        config: &crate::config::TenantLlmConfig,
        field: &str,
    ) -> Result<BudgetSpec, crate::config::ConfigError> {
        config.validate(field)?;
        let (limit, models) = config.limits(field)?;
        Ok(BudgetSpec {
            limit,
            period: config.period,
            soft_threshold: config.soft_threshold,
            models,
        })
    }
}

/// Charges holds nobody settled (their process or task died) once they expire.
pub struct Sweeper {
    ledger: std::sync::Arc<dyn Ledger>,
    every: Duration,
}

impl Sweeper {
    pub fn new(ledger: std::sync::Arc<dyn Ledger>, every: Duration) -> Sweeper {
        Sweeper { ledger, every }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(self.every);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.ledger.sweep_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(swept = n, "expired reservations charged in full"),
                    Err(e) => tracing::error!(error = %e, "sweeping expired reservations failed"),
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

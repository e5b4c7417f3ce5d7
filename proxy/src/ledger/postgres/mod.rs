//! The Postgres ledger: budgets shared by every replica, reservations served from leases.
//!
//! - A call whose model has no narrower budget is held against this replica's **lease** of the
//!   tenant's budget, in memory: no database round trip while the lease lasts. When it runs
//!   short, one `lease_take` grows it (see [`schema`]); the sum of every replica's leases never
//!   exceeds what the budget has left, because each grant is a conditional update.
//! - A call whose model has its own budget is held directly in the database (a one-call lease
//!   over both scopes, taken in scope order).
//! - Settled usage goes through the [`worker`]: appended to the local spool (fsync'd), recorded
//!   in the database (idempotent by request id), then cleared from the spool. While the database
//!   is away it accumulates there and is replayed when it is back.
//! - The worker also heartbeats leases (reporting what each may still owe), returns idle ones,
//!   sweeps expired ones of any replica, and keeps the revocation list fresh.

mod lease;
pub mod schema;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rand::Rng as _;
use sentinel_policy::budget::Shortfall;
use sentinel_policy::llm::Micros;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{
    Balance, BudgetSpec, Clock, Ended, Ledger, LedgerError, Reservation, ReservationId,
    ReserveRequest, Settled, UsageEvent,
};
use crate::blocks::{Block, Blocks};
use crate::config::{LedgerConfig, LedgerOutage};
use lease::LocalLease;

pub use worker::LedgerWorker;

/// Attempts of a statement that hit a deadlock or a serialization failure.
const RETRIES: u32 = 5;
/// Longest a call waits for the ledger to be ready at start.
const READY_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for one ledger statement.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The database counts as reachable this long after its last answer.
const HEALTHY_FOR: Duration = Duration::from_secs(3);

/// An owned statement parameter (kept across retries).
type Param = Box<dyn ToSql + Sync + Send>;

/// What the worker writes to the spool and then to the database.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Record {
    /// A settled call: its usage, and the lease its hold came from (`close`: a one-call lease).
    Usage {
        event: UsageEvent,
        lease: Option<String>,
        close: bool,
    },
    /// A one-call lease whose call never reached the provider.
    Release { lease: String },
}

/// Counters for the admin port.
#[derive(Default)]
pub struct LedgerStats {
    pub db_errors: AtomicU64,
    pub retries: AtomicU64,
    pub lease_hits: AtomicU64,
    pub db_reservations: AtomicU64,
    pub spool_depth: AtomicUsize,
    pub swept: AtomicU64,
}

pub struct PgLedger {
    inner: Arc<Inner>,
}

struct Inner {
    pool: deadpool_postgres::Pool,
    schema: String,
    tz: String,
    replica: String,
    clock: Arc<dyn Clock>,
    lease_ttl: Duration,
    outage: LedgerOutage,
    default_budget: Option<BudgetSpec>,
    state: Mutex<State>,
    /// One top-up at a time per tenant; others wait and then use what it brought.
    topups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    records: mpsc::UnboundedSender<Record>,
    /// Records settled but not yet in the spool (graceful shutdown waits for them).
    unspooled: AtomicUsize,
    /// Unix milliseconds of the database's last answer.
    last_ok: AtomicU64,
    revoked: RwLock<HashSet<String>>,
    /// The kill switch of this process, reloaded from the ledger with the revocations.
    blocks: OnceLock<Arc<Blocks>>,
    /// (tenant, model) pairs with a budget of their own.
    narrowed: RwLock<HashSet<(String, String)>>,
    /// True once the schema is migrated and the configured budgets are written.
    ready: tokio::sync::watch::Sender<bool>,
    pub stats: LedgerStats,
}

#[derive(Default)]
struct State {
    leases: HashMap<String, LocalLease>,
    holds: HashMap<ReservationId, Hold>,
    ended: Ended,
}

struct Hold {
    tenant: String,
    amount: u64,
    /// The lease the hold came from; for a one-call lease, its own id.
    lease: String,
    direct: bool,
}

impl State {
    fn end(&mut self, id: &ReservationId) -> Option<Hold> {
        let hold = self.holds.remove(id)?;
        self.ended.insert(id.clone());
        Some(hold)
    }

    fn already(&self, id: &ReservationId) -> Result<Settled, LedgerError> {
        self.ended.again(id)
    }
}

/// A `lease_take` request: grow `lease` (over `scopes`, in order) by at least `need`, at most
/// `want`, reporting that the lease may owe `owed`, valid until `expires`.
struct Slice<'a> {
    lease: &'a str,
    tenant: &'a str,
    scopes: &'a [String],
    need: u64,
    want: u64,
    owed: u64,
    expires: SystemTime,
}

/// What `lease_take` answered.
enum Take {
    Granted(u64),
    /// The lease was swept or closed meanwhile.
    LeaseGone,
    Short {
        scope: String,
        short: Option<Shortfall>,
    },
}

impl PgLedger {
    /// Connects (lazily: the pool opens connections as needed) and makes the worker that
    /// migrates, syncs the configured budgets, flushes usage and keeps leases alive. The spool
    /// is opened here, so a previous run's unrecorded usage is replayed first.
    pub fn new(
        config: &crate::config::Config,
        ledger: &LedgerConfig,
        secrets: &crate::secrets::Secrets,
        clock: Arc<dyn Clock>,
        budgets: Vec<(String, BudgetSpec)>,
        default_budget: Option<BudgetSpec>,
    ) -> anyhow::Result<(PgLedger, LedgerWorker)> {
        let pool = worker::pool(config, ledger, secrets)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let replica = replica_id();
        let narrowed = budgets
            .iter()
            .flat_map(|(t, spec)| spec.models.iter().map(move |(m, _)| (t.clone(), m.clone())))
            .collect();
        let outage = config
            .llm
            .as_ref()
            .map(|l| l.ledger_outage)
            .unwrap_or_default();
        let revoked = config
            .llm
            .as_ref()
            .map(|l| l.revoked_keys.iter().cloned().collect())
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            pool,
            schema: ledger.schema.clone(),
            tz: ledger.time_zone.clone(),
            replica,
            clock,
            lease_ttl: ledger.lease_ttl,
            outage,
            default_budget,
            state: Mutex::new(State::default()),
            topups: Mutex::new(HashMap::new()),
            records: tx,
            unspooled: AtomicUsize::new(0),
            last_ok: AtomicU64::new(0),
            revoked: RwLock::new(revoked),
            blocks: OnceLock::new(),
            narrowed: RwLock::new(narrowed),
            ready: tokio::sync::watch::channel(false).0,
            stats: LedgerStats::default(),
        });
        let worker = LedgerWorker::new(inner.clone(), rx, &ledger.spool_path, budgets)?;
        Ok((PgLedger { inner }, worker))
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.inner.stats
    }

    /// Settled usage not yet safe in the spool; graceful shutdown waits for 0.
    pub fn unspooled(&self) -> usize {
        self.inner.unspooled.load(Ordering::SeqCst)
    }
}

/// `<host>-<pid>-<random>`: unique per process, readable in the leases table.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sentinel".to_owned());
    let n: u32 = rand::thread_rng().r#gen();
    format!("{host}-{}-{n:08x}", std::process::id())
}

fn to_time(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

fn micros(v: i64) -> Micros {
    Micros(u64::try_from(v).unwrap_or(0))
}

fn signed(m: u64) -> i64 {
    i64::try_from(m).unwrap_or(i64::MAX)
}

impl Inner {
    fn now(&self) -> SystemTime {
        to_time(self.clock.now())
    }

    fn healthy(&self) -> bool {
        let last = self.last_ok.load(Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now.saturating_sub(last) <= HEALTHY_FOR.as_millis() as u64
    }

    /// Refuses work that needs the database while it does not answer (callers have waited
    /// for [`Inner::wait_ready`], so it has answered once).
    fn reachable(&self) -> Result<(), LedgerError> {
        if self.healthy() {
            Ok(())
        } else {
            Err(LedgerError::Unavailable(
                "the ledger database is unreachable".into(),
            ))
        }
    }

    fn mark_ok(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_ok.store(now, Ordering::Relaxed);
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) -> LedgerError {
        self.stats.db_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "ledger {what} failed");
        LedgerError::Unavailable(format!("{what}: {e}"))
    }

    /// Runs one statement on a pooled connection, retrying deadlocks and serialization
    /// failures with exponential backoff and jitter.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Row>, LedgerError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut attempt = 0;
        loop {
            let result = tokio::time::timeout(STATEMENT_TIMEOUT, async {
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| DbError::Ledger(self.failed(what, &e)))?;
                client.query(sql, &refs).await.map_err(DbError::Pg)
            })
            .await;
            match result {
                Ok(Ok(rows)) => {
                    self.mark_ok();
                    return Ok(rows);
                }
                Ok(Err(DbError::Ledger(e))) => return Err(e),
                Ok(Err(DbError::Pg(e))) => {
                    let retryable = e.code().is_some_and(|c| {
                        *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    });
                    if retryable && attempt < RETRIES {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        let backoff = Duration::from_millis(10 << attempt);
                        let jitter = rand::thread_rng().gen_range(0.5..=1.0);
                        tokio::time::sleep(backoff.mul_f64(jitter)).await;
                        attempt += 1;
                        continue;
                    }
                    if e.code().is_some() {
                        // The database answered: reachable, but the statement failed.
                        self.mark_ok();
                    }
                    return Err(self.failed(what, &error_text(&e)));
                }
                Err(_) => {
                    return Err(
                        self.failed(what, &format!("no answer within {STATEMENT_TIMEOUT:?}"))
                    );
                }
            }
        }
    }

    async fn lease_take(&self, slice: Slice<'_>) -> Result<Take, LedgerError> {
        let Slice {
            lease,
            tenant,
            scopes,
            need,
            want,
            owed,
            expires,
        } = slice;
        let sql = format!(
            "SELECT granted, short_scope, limit_micros, spent, reserved FROM {}.lease_take($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            self.schema
        );
        let params: Vec<Param> = vec![
            Box::new(lease.to_owned()),
            Box::new(tenant.to_owned()),
            Box::new(scopes.to_vec()),
            Box::new(self.replica.clone()),
            Box::new(signed(need)),
            Box::new(signed(want.max(need))),
            Box::new(signed(owed)),
            Box::new(self.now()),
            Box::new(expires),
            Box::new(self.tz.clone()),
        ];
        let rows = self.query("reservation", &sql, &params).await?;
        let row = rows
            .first()
            .ok_or_else(|| LedgerError::Unavailable("lease_take returned no row".into()))?;
        let granted: i64 = row.get(0);
        let scope: Option<String> = row.get(1);
        if granted > 0 {
            return Ok(Take::Granted(granted as u64));
        }
        let scope = scope.unwrap_or_default();
        if scope == "!lease" {
            return Ok(Take::LeaseGone);
        }
        let limit: Option<i64> = row.get(2);
        let short = limit.map(|limit| Shortfall {
            limit: micros(limit),
            spent: micros(row.get(3)),
            reserved: micros(row.get(4)),
            requested: Micros(need),
        });
        Ok(Take::Short { scope, short })
    }

    /// Creates the default budget for a tenant that has none, if there is a default.
    async fn adopt_default(&self, tenant: &str) -> Result<bool, LedgerError> {
        let Some(spec) = self.default_budget.clone() else {
            return Ok(false);
        };
        self.upsert_budget(tenant, &spec, false).await?;
        Ok(true)
    }

    /// Writes a tenant's budget rows. `replace`: an existing limit is overwritten (config,
    /// admin); otherwise only a missing row is created (a default budget).
    async fn upsert_budget(
        &self,
        tenant: &str,
        spec: &BudgetSpec,
        replace: bool,
    ) -> Result<(), LedgerError> {
        let conflict = if replace {
            "DO UPDATE SET limit_micros = EXCLUDED.limit_micros, period = EXCLUDED.period, soft_threshold = EXCLUDED.soft_threshold"
        } else {
            "DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO {}.budgets (tenant, scope, limit_micros, period, soft_threshold) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, scope) {conflict}",
            self.schema
        );
        let mut scopes = vec![(String::new(), spec.limit)];
        scopes.extend(spec.models.iter().cloned());
        for (scope, limit) in scopes {
            let params: Vec<Param> = vec![
                Box::new(tenant.to_owned()),
                Box::new(scope),
                Box::new(signed(limit.0)),
                Box::new(spec.period.label().to_owned()),
                Box::new(spec.soft_threshold),
            ];
            self.query("budget update", &sql, &params).await?;
        }
        let mut narrowed = self.narrowed.write();
        for (model, _) in &spec.models {
            narrowed.insert((tenant.to_owned(), model.clone()));
        }
        Ok(())
    }

    fn topup_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.topups
            .lock()
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// A hold from this replica's lease of the tenant's budget, topping the lease up when it
    /// runs short.
    async fn reserve_from_lease(
        &self,
        request: &ReserveRequest,
    ) -> Result<Reservation, LedgerError> {
        let id = ReservationId(request.request_id.clone());
        let amount = request.amount.0;
        let mut adopted = false;
        loop {
            let now = Instant::now();
            let (lease_id, need, want, owed) = {
                let mut state = self.state.lock();
                if state.holds.contains_key(&id) || state.ended.contains(&id) {
                    return Err(LedgerError::DuplicateReservation(id));
                }
                let ttl = self.lease_ttl;
                let lease = state
                    .leases
                    .entry(request.tenant.clone())
                    .or_insert_with(|| LocalLease::new(new_lease_id(), now, ttl));
                if lease.dead {
                    // Swept or closed in the database: its calls in flight record against what
                    // the sweep charged. New calls get a new lease.
                    *lease = LocalLease::new(new_lease_id(), now, ttl);
                }
                if (self.healthy() || self.outage == LedgerOutage::UseLease)
                    && lease.try_hold(amount, now)
                {
                    let remaining = Micros(lease.available());
                    let lease_id = lease.id.clone();
                    state.holds.insert(
                        id.clone(),
                        Hold {
                            tenant: request.tenant.clone(),
                            amount,
                            lease: lease_id,
                            direct: false,
                        },
                    );
                    self.stats.lease_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Reservation {
                        id,
                        amount: request.amount,
                        remaining,
                        near_limit: false,
                    });
                }
                // A lease past its local validity is renewed by the top-up below if the
                // database still has it live, or found swept (and replaced next time round).
                let need = amount.saturating_sub(lease.available()).max(1);
                (lease.id.clone(), need, lease.want(need), lease.owed())
            };
            self.reachable()?;
            let lock = self.topup_lock(&request.tenant);
            let _guard = lock.lock().await;
            // Someone else may have topped up while we waited.
            {
                let state = self.state.lock();
                if state.leases.get(&request.tenant).is_some_and(|l| {
                    l.id == lease_id && l.available() >= amount && l.usable(Instant::now())
                }) {
                    continue;
                }
            }
            let expires = to_time(self.clock.now()) + self.lease_ttl;
            let scopes = [String::new()];
            let slice = Slice {
                lease: &lease_id,
                tenant: &request.tenant,
                scopes: &scopes,
                need,
                want,
                owed,
                expires,
            };
            match self.lease_take(slice).await? {
                Take::Granted(granted) => {
                    let mut state = self.state.lock();
                    if let Some(lease) = state.leases.get_mut(&request.tenant)
                        && lease.id == lease_id
                    {
                        lease.amount += granted;
                        lease.renewed(Instant::now(), self.lease_ttl);
                    }
                }
                Take::LeaseGone => {
                    let mut state = self.state.lock();
                    if let Some(lease) = state.leases.get_mut(&request.tenant)
                        && lease.id == lease_id
                    {
                        lease.dead = true;
                    }
                }
                Take::Short { short: None, .. } if !adopted => {
                    adopted = true;
                    if !self.adopt_default(&request.tenant).await? {
                        return Err(LedgerError::NoBudget {
                            tenant: request.tenant.clone(),
                        });
                    }
                }
                Take::Short { short: None, .. } => {
                    return Err(LedgerError::NoBudget {
                        tenant: request.tenant.clone(),
                    });
                }
                Take::Short {
                    short: Some(short), ..
                } => {
                    // What this replica's lease still has counts as available too.
                    let short = Shortfall {
                        requested: request.amount,
                        ..short
                    };
                    return Err(LedgerError::Insufficient { scope: None, short });
                }
            }
        }
    }

    /// A hold straight in the database, over the tenant's and the model's budgets.
    async fn reserve_direct(&self, request: &ReserveRequest) -> Result<Reservation, LedgerError> {
        let id = ReservationId(request.request_id.clone());
        {
            let state = self.state.lock();
            if state.holds.contains_key(&id) || state.ended.contains(&id) {
                return Err(LedgerError::DuplicateReservation(id));
            }
        }
        self.reachable()?;
        let amount = request.amount.0;
        let scopes = [String::new(), request.model.clone()];
        let expires = to_time(self.clock.now()) + request.ttl;
        self.stats.db_reservations.fetch_add(1, Ordering::Relaxed);
        let slice = Slice {
            lease: &id.0,
            tenant: &request.tenant,
            scopes: &scopes,
            need: amount,
            want: amount,
            owed: amount,
            expires,
        };
        match self.lease_take(slice).await? {
            Take::Granted(_) => {
                self.state.lock().holds.insert(
                    id.clone(),
                    Hold {
                        tenant: request.tenant.clone(),
                        amount,
                        lease: id.0.clone(),
                        direct: true,
                    },
                );
                Ok(Reservation {
                    id,
                    amount: request.amount,
                    remaining: Micros::ZERO,
                    near_limit: false,
                })
            }
            Take::LeaseGone => Err(LedgerError::DuplicateReservation(id)),
            Take::Short { scope, short } => match short {
                None => Err(LedgerError::NoBudget {
                    tenant: request.tenant.clone(),
                }),
                Some(short) => Err(LedgerError::Insufficient {
                    scope: (!scope.is_empty()).then_some(scope),
                    short,
                }),
            },
        }
    }

    fn send(&self, record: Record) {
        self.unspooled.fetch_add(1, Ordering::SeqCst);
        if self.records.send(record).is_err() {
            self.unspooled.fetch_sub(1, Ordering::SeqCst);
            tracing::error!(
                "ledger worker gone: usage not recorded; the sweeper will charge the lease"
            );
        }
    }
}

fn new_lease_id() -> String {
    let n: u128 = rand::thread_rng().r#gen();
    format!("lease_{:024x}", n >> 32)
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

enum DbError {
    Pg(tokio_postgres::Error),
    Ledger(LedgerError),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

impl From<LedgerError> for DbError {
    fn from(e: LedgerError) -> Self {
        DbError::Ledger(e)
    }
}

impl Inner {
    /// Waits (briefly, at start) until the schema is migrated and the budgets are written.
    async fn wait_ready(&self) -> Result<(), LedgerError> {
        let mut ready = self.ready.subscribe();
        match tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LedgerError::Unavailable(
                "the ledger database is not ready (see the log for why)".into(),
            )),
        }
    }
}

#[async_trait]
impl Ledger for PgLedger {
    async fn reserve(&self, request: ReserveRequest) -> Result<Reservation, LedgerError> {
        self.inner.wait_ready().await?;
        let narrowed = self
            .inner
            .narrowed
            .read()
            .contains(&(request.tenant.clone(), request.model.clone()));
        if narrowed {
            self.inner.reserve_direct(&request).await
        } else {
            self.inner.reserve_from_lease(&request).await
        }
    }

    async fn settle(&self, id: &ReservationId, event: UsageEvent) -> Result<Settled, LedgerError> {
        let hold = {
            let mut state = self.inner.state.lock();
            let Some(hold) = state.end(id) else {
                return state.already(id);
            };
            if !hold.direct
                && let Some(lease) = state.leases.get_mut(&hold.tenant)
                && lease.id == hold.lease
            {
                lease.settle(id, hold.amount, event.cost.0);
            }
            hold
        };
        self.inner.send(Record::Usage {
            event,
            lease: Some(hold.lease),
            close: hold.direct,
        });
        Ok(Settled::Now)
    }

    async fn release(&self, id: &ReservationId) -> Result<Settled, LedgerError> {
        let hold = {
            let mut state = self.inner.state.lock();
            let Some(hold) = state.end(id) else {
                return state.already(id);
            };
            if !hold.direct
                && let Some(lease) = state.leases.get_mut(&hold.tenant)
                && lease.id == hold.lease
            {
                lease.release(hold.amount);
            }
            hold
        };
        if hold.direct {
            self.inner.send(Record::Release { lease: hold.lease });
        }
        Ok(Settled::Now)
    }

    async fn balance(&self, tenant: &str) -> Result<Vec<Balance>, LedgerError> {
        self.inner.wait_ready().await?;
        let s = &self.inner.schema;
        let sql = format!(
            "SELECT NULLIF(scope, ''), limit_micros, period, soft_threshold,
                    GREATEST(period_start, {s}.period_start(period, $2, $3)),
                    CASE WHEN period_start < {s}.period_start(period, $2, $3) THEN 0 ELSE spent END,
                    reserved
             FROM {s}.budgets WHERE tenant = $1 ORDER BY scope"
        );
        let params: Vec<Param> = vec![
            Box::new(tenant.to_owned()),
            Box::new(self.inner.now()),
            Box::new(self.inner.tz.clone()),
        ];
        let rows = self.inner.query("balance", &sql, &params).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let limit = micros(r.get(1));
                let spent = micros(r.get(5));
                let reserved = micros(r.get(6));
                let period: String = r.get(2);
                let soft: f64 = r.get(3);
                let start: SystemTime = r.get(4);
                Balance {
                    model: r.get(0),
                    limit,
                    period: match period.as_str() {
                        "day" => sentinel_policy::budget::Period::Day,
                        "month" => sentinel_policy::budget::Period::Month,
                        _ => sentinel_policy::budget::Period::Total,
                    },
                    period_start: start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    spent,
                    reserved,
                    remaining: limit.saturating_sub(spent).saturating_sub(reserved),
                    near_limit: limit.0 > 0 && spent.0 as f64 >= soft * limit.0 as f64,
                }
            })
            .collect())
    }

    async fn usage(
        &self,
        tenant: &str,
        since: u64,
        limit: usize,
    ) -> Result<Vec<UsageEvent>, LedgerError> {
        self.inner.wait_ready().await?;
        let sql = format!(
            "SELECT request_id, model, provider, input_tokens, cached_input_tokens,
                    cache_write_5m_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens,
                    cost, outcome, estimated, at
             FROM {}.usage_events WHERE tenant = $1 AND at >= $2 ORDER BY at DESC LIMIT $3",
            self.inner.schema
        );
        let params: Vec<Param> = vec![
            Box::new(tenant.to_owned()),
            Box::new(to_time(since)),
            Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
        ];
        let rows = self.inner.query("usage", &sql, &params).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
                let at: SystemTime = r.get(12);
                UsageEvent {
                    request_id: r.get(0),
                    tenant: tenant.to_owned(),
                    model: r.get(1),
                    provider: r.get(2),
                    usage: sentinel_policy::llm::Usage {
                        input: n(3),
                        cached_input: n(4),
                        cache_write_5m: n(5),
                        cache_write_1h: n(6),
                        output: n(7),
                        reasoning: n(8),
                    },
                    cost: Micros(n(9)),
                    outcome: r.get(10),
                    estimated: r.get(11),
                    at_unix: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                }
            })
            .collect())
    }

    async fn set_budget(&self, tenant: &str, spec: BudgetSpec) -> Result<(), LedgerError> {
        self.inner.wait_ready().await?;
        self.inner.upsert_budget(tenant, &spec, true).await
    }

    async fn sweep_expired(&self) -> Result<usize, LedgerError> {
        self.inner.sweep().await
    }

    async fn revoke_key(&self, key_id: &str) -> Result<(), LedgerError> {
        self.inner.wait_ready().await?;
        let sql = format!(
            "INSERT INTO {}.revoked_keys (key_id) VALUES ($1) ON CONFLICT DO NOTHING",
            self.inner.schema
        );
        let params: Vec<Param> = vec![Box::new(key_id.to_owned())];
        self.inner.query("revocation", &sql, &params).await?;
        self.inner.revoked.write().insert(key_id.to_owned());
        Ok(())
    }

    async fn is_revoked(&self, key_id: &str) -> Result<bool, LedgerError> {
        // The list is refreshed by the worker every few seconds: no round trip per call.
        Ok(self.inner.revoked.read().contains(key_id))
    }

    async fn set_block(&self, tenant: &str, block: Option<&Block>) -> Result<(), LedgerError> {
        self.inner.wait_ready().await?;
        let s = &self.inner.schema;
        let (sql, params): (String, Vec<Param>) = match block {
            Some(b) => (
                format!(
                    "INSERT INTO {s}.blocks (tenant, llm, db) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant) DO UPDATE SET llm = $2, db = $3, since = now()"
                ),
                vec![Box::new(tenant.to_owned()), Box::new(b.llm), Box::new(b.db)],
            ),
            None => (
                format!("DELETE FROM {s}.blocks WHERE tenant = $1"),
                vec![Box::new(tenant.to_owned())],
            ),
        };
        self.inner.query("block", &sql, &params).await?;
        Ok(())
    }
}

impl Inner {
    /// Sweeps expired leases of every replica in small batches; returns how many.
    async fn sweep(&self) -> Result<usize, LedgerError> {
        let sql = format!("SELECT {}.sweep($1, 50, $2)", self.schema);
        let mut total = 0;
        loop {
            let params: Vec<Param> = vec![Box::new(self.now()), Box::new(self.tz.clone())];
            let rows = self.query("sweep", &sql, &params).await?;
            let n: i32 = rows.first().map_or(0, |r| r.get(0));
            total += n as usize;
            if n < 50 {
                break;
            }
        }
        if total > 0 {
            self.stats.swept.fetch_add(total as u64, Ordering::Relaxed);
            tracing::warn!(
                swept = total,
                "expired leases charged what they owed and returned"
            );
        }
        Ok(total)
    }
}

impl PgLedger {
    /// Leases this replica still holds (graceful shutdown waits for them to be returned).
    pub fn leases_held(&self) -> usize {
        self.inner.state.lock().leases.len()
    }

    /// Keeps `blocks` in step with the blocks of the ledger (every few seconds).
    pub fn share_blocks(&self, blocks: Arc<Blocks>) {
        let _ = self.inner.blocks.set(blocks);
    }

    /// Leases held and the money they hold (micro-dollars), for the metrics.
    pub fn lease_totals(&self) -> (usize, u64) {
        let state = self.inner.state.lock();
        let held = state.leases.values().map(|l| l.amount).sum();
        (state.leases.len(), held)
    }

    /// Whether the ledger database has answered lately (the worker asks every few seconds).
    pub fn healthy(&self) -> bool {
        self.inner.healthy()
    }
}

/// `sentinel ledger migrate`: applies the migrations and returns the versions applied now.
pub async fn migrate(
    config: &crate::config::Config,
    ledger: &LedgerConfig,
    secrets: &crate::secrets::Secrets,
) -> anyhow::Result<Vec<i32>> {
    let pool = worker::pool(config, ledger, secrets)?;
    let mut client = pool.get().await?;
    Ok(schema::migrate(&mut client, &ledger.schema).await?)
}

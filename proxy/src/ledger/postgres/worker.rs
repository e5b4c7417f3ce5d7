//! The ledger's background work: migrate, sync the configured budgets, write usage (spool first,
//! then the database), heartbeat and return leases, sweep expired ones, refresh revocations.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use super::{Inner, Param, Record, STATEMENT_TIMEOUT, schema, signed, to_time};
use crate::blocks::Block;
use crate::config::{Config, LedgerConfig, UpstreamTls};
use crate::ledger::spool::Spool;
use crate::ledger::{BudgetSpec, ReservationId};
use crate::pg::client_tls::RustlsMakeConnect;
use crate::secrets::Secrets;

/// How often the worker wakes when no usage arrives.
const TICK: Duration = Duration::from_millis(100);
/// Usage records spooled in one append (one fsync) at most.
const BATCH: usize = 10_000;
const SWEEP_EVERY: Duration = Duration::from_secs(2);
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Usage statements sent together on one connection.
const PIPELINE: usize = 256;
/// Pipelines written per round of the worker, so new usage is spooled between them.
const PIPELINES_PER_ROUND: usize = 4;
/// A lease unused this long (and owing nothing) is given back.
const IDLE_LEASE: Duration = Duration::from_secs(2);

/// The connection pool to the ledger database (connections open on first use).
pub fn pool(config: &Config, ledger: &LedgerConfig, secrets: &Secrets) -> anyhow::Result<Pool> {
    let upstream = &config.postgres.upstream;
    let mut pg = tokio_postgres::Config::new();
    pg.host(ledger.host.as_deref().unwrap_or(&upstream.host))
        .port(ledger.port.unwrap_or(upstream.port))
        .dbname(ledger.database.as_deref().unwrap_or_default())
        .user(ledger.user.as_deref().unwrap_or_default())
        .application_name("sentinel-ledger")
        .connect_timeout(Duration::from_secs(5));
    if let Some(password) = secrets
        .read_password(&ledger.password())
        .map_err(|e| anyhow::anyhow!("ledger password: {e}"))?
    {
        pg.password(password.as_bytes());
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match ledger.tls.unwrap_or(upstream.tls) {
        UpstreamTls::Disable => Manager::from_config(pg, tokio_postgres::NoTls, manager_config),
        UpstreamTls::VerifyFull => {
            let ca = ledger
                .ca_file
                .as_deref()
                .or(upstream.ca_file.as_deref())
                .ok_or_else(|| anyhow::anyhow!("ledger: tls = \"verify-full\" needs a ca_file"))?;
            let tls = RustlsMakeConnect(crate::pg::tls::client_config(ca)?);
            Manager::from_config(pg, tls, manager_config)
        }
    };
    Ok(Pool::builder(manager).max_size(ledger.pool_size).build()?)
}

pub struct LedgerWorker {
    inner: Arc<Inner>,
    parts: Mutex<Option<Parts>>,
}

struct Parts {
    records: mpsc::UnboundedReceiver<Record>,
    /// Only the worker uses it; shared so its fsyncs can run on a blocking thread.
    spool: Arc<Mutex<Spool<Record>>>,
    /// Everything in the spool not yet recorded in the database, oldest first.
    unrecorded: Vec<Record>,
    budgets: Vec<(String, BudgetSpec)>,
}

impl LedgerWorker {
    pub(super) fn new(
        inner: Arc<Inner>,
        records: mpsc::UnboundedReceiver<Record>,
        spool_path: &Path,
        budgets: Vec<(String, BudgetSpec)>,
    ) -> anyhow::Result<LedgerWorker> {
        let (spool, unrecorded) =
            Spool::open(spool_path).map_err(|e| anyhow::anyhow!("ledger.spool_path: {e}"))?;
        if !unrecorded.is_empty() {
            tracing::warn!(records = unrecorded.len(), path = %spool_path.display(), "usage left in the spool by an earlier run: replaying");
        }
        inner
            .stats
            .spool_depth
            .store(unrecorded.len(), Ordering::Relaxed);
        Ok(LedgerWorker {
            inner,
            parts: Mutex::new(Some(Parts {
                records,
                spool: Arc::new(Mutex::new(spool)),
                unrecorded,
                budgets,
            })),
        })
    }

    /// Applies the migrations now (for `sentinel ledger migrate`).
    pub async fn migrate_now(&self) -> anyhow::Result<Vec<i32>> {
        let mut client = self.inner.pool.get().await?;
        Ok(schema::migrate(&mut client, &self.inner.schema).await?)
    }
}

#[async_trait]
impl BackgroundService for LedgerWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut parts) = self.parts.lock().take() else {
            return;
        };
        let inner = &self.inner;
        let mut ready = false;
        let mut draining = false;
        let mut watching = true;
        let mut last_setup_error = Instant::now() - Duration::from_secs(60);
        let heartbeat_every = inner.lease_ttl / 3;
        let mut last_heartbeat = Instant::now();
        let mut last_sweep = Instant::now();
        let mut last_refresh = Instant::now() - REFRESH_EVERY;
        let mut batch = Vec::new();
        let mut first = true;
        loop {
            if std::mem::take(&mut first) {
                // Set up at once rather than after the first tick.
            } else {
                // Written usage still queued: come back at once rather than after a tick.
                let wait = if parts.unrecorded.is_empty() {
                    TICK
                } else {
                    Duration::ZERO
                };
                tokio::select! {
                biased;
                record = parts.records.recv() => match record {
                    Some(r) => {
                        batch.push(r);
                        while batch.len() < BATCH {
                            match parts.records.try_recv() {
                                Ok(r) => batch.push(r),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep(wait) => {}
                changed = shutdown.changed(), if watching => match changed {
                    Ok(()) => draining = *shutdown.borrow(),
                    // No one can signal a shutdown any more: stop listening for one.
                    Err(_) => watching = false,
                },
                }
            }
            if !batch.is_empty() {
                let n = batch.len();
                let (spool, records) = (parts.spool.clone(), batch.clone());
                let appended =
                    tokio::task::spawn_blocking(move || spool.lock().append(&records)).await;
                if !matches!(appended, Ok(Ok(()))) {
                    tracing::error!(
                        ?appended,
                        "usage could not be spooled; writing it to the database only"
                    );
                }
                parts.unrecorded.append(&mut batch);
                inner.unspooled.fetch_sub(n, Ordering::SeqCst);
            }
            if !ready {
                match setup(inner, &parts.budgets).await {
                    Ok(applied) => {
                        ready = true;
                        inner.ready.send_replace(true);
                        if !applied.is_empty() {
                            tracing::info!(?applied, schema = %inner.schema, "ledger migrated");
                        }
                    }
                    Err(e) => {
                        if last_setup_error.elapsed() > Duration::from_secs(10) {
                            tracing::error!(error = %e, "ledger database not ready; LLM calls that need it are refused");
                            last_setup_error = Instant::now();
                        }
                        continue;
                    }
                }
            }
            if !parts.unrecorded.is_empty() {
                flush(inner, &mut parts).await;
            }
            // Renew our own leases before any sweep, so a sweep after an outage never takes
            // a lease this replica is still using.
            let sweep_due = last_sweep.elapsed() >= SWEEP_EVERY;
            if (draining || sweep_due || last_heartbeat.elapsed() >= heartbeat_every)
                && heartbeat(inner, draining).await
            {
                last_heartbeat = Instant::now();
            }
            if sweep_due {
                let _ = inner.sweep().await;
                last_sweep = Instant::now();
            }
            if last_refresh.elapsed() >= REFRESH_EVERY {
                refresh(inner).await;
                last_refresh = Instant::now();
            }
            if !inner.healthy() {
                let _ = inner.query("ping", "SELECT 1", &[]).await;
            }
        }
    }
}

/// Migrations, the time zone check, and the configured budgets.
async fn setup(inner: &Inner, budgets: &[(String, BudgetSpec)]) -> anyhow::Result<Vec<i32>> {
    let mut client = inner.pool.get().await?;
    let applied = schema::migrate(&mut client, &inner.schema).await?;
    client
        .query_one("SELECT now() AT TIME ZONE $1", &[&inner.tz])
        .await
        .map_err(|e| anyhow::anyhow!("ledger.time_zone {:?}: {e}", inner.tz))?;
    drop(client);
    for (tenant, spec) in budgets {
        inner.upsert_budget(tenant, spec, true).await?;
    }
    inner.mark_ok();
    Ok(applied)
}

/// Writes unrecorded records, [`PIPELINE`] statements at a time sent together on one connection
/// (pipelined: one round trip's wait for the lot), a few pipelines per round. Records the database confirmed are
/// applied to the local leases and leave the queue; the spool is cleared once all have.
async fn flush(inner: &Inner, parts: &mut Parts) {
    let s = &inner.schema;
    let record_sql = format!(
        "SELECT {s}.record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
    );
    let close_sql = format!("SELECT {s}.lease_return($1, 0, 0, true, $2, $2, $3)");
    for _ in 0..PIPELINES_PER_ROUND {
        if parts.unrecorded.is_empty() {
            break;
        }
        let n = parts.unrecorded.len().min(PIPELINE);
        let statements: Vec<(bool, Vec<Param>)> = parts.unrecorded[..n]
            .iter()
            .map(|record| statement(inner, record))
            .collect();
        let written = tokio::time::timeout(STATEMENT_TIMEOUT, async {
            let client = inner.pool.get().await.map_err(|e| e.to_string())?;
            let record = client
                .prepare_cached(&record_sql)
                .await
                .map_err(|e| e.to_string())?;
            let close = client
                .prepare_cached(&close_sql)
                .await
                .map_err(|e| e.to_string())?;
            let refs: Vec<Vec<&(dyn ToSql + Sync)>> = statements
                .iter()
                .map(|(_, p)| {
                    p.iter()
                        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                        .collect()
                })
                .collect();
            let queries = statements.iter().zip(&refs).map(|((usage, _), params)| {
                let stmt = if *usage { &record } else { &close };
                client.query(stmt, params)
            });
            Ok::<_, String>(
                futures_util::future::join_all(queries)
                    .await
                    .into_iter()
                    .map(|r| r.map_err(|e| e.to_string()))
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STATEMENT_TIMEOUT:?}")));
        let results = match written {
            Ok(results) => results,
            Err(e) => {
                inner.failed("usage record", &e);
                break;
            }
        };
        let mut failed = None;
        let mut kept = Vec::new();
        for (record, result) in parts.unrecorded.drain(..n).zip(results) {
            match result {
                Ok(_) => recorded_locally(inner, &record),
                Err(e) => {
                    failed = Some(e);
                    kept.push(record);
                }
            }
        }
        if let Some(e) = failed {
            inner.failed("usage record", &e);
            kept.append(&mut parts.unrecorded);
            parts.unrecorded = kept;
            break;
        }
        inner.mark_ok();
    }
    if parts.unrecorded.is_empty() {
        let spool = parts.spool.clone();
        let cleared = tokio::task::spawn_blocking(move || spool.lock().clear()).await;
        if !matches!(cleared, Ok(Ok(()))) {
            tracing::error!(
                ?cleared,
                "recorded usage could not be cleared from the spool; it will be replayed (harmlessly) later"
            );
        }
    }
    inner
        .stats
        .spool_depth
        .store(parts.unrecorded.len(), Ordering::Relaxed);
}

/// Renews live leases with what they may owe, gives back idle ones (all of them while
/// draining), forgets dead ones that owe nothing.
async fn heartbeat(inner: &Inner, draining: bool) -> bool {
    let mut all_ok = true;
    let now = Instant::now();
    let snapshot: Vec<(String, String, u64, bool, bool)> = {
        let mut state = inner.state.lock();
        // A dead lease (swept or closed in the database) owing nothing has nothing to return;
        // an empty one nobody can use either.
        state
            .leases
            .retain(|_, l| !(l.owed() == 0 && (l.dead || (l.amount == 0 && !l.usable(now)))));
        let super::State { leases, holds, .. } = &mut *state;
        leases
            .iter_mut()
            .map(|(tenant, l)| {
                let idle = l.owed() == 0 && (draining || l.idle(now, IDLE_LEASE));
                let lease_id = l.id.clone();
                let in_flight = holds
                    .iter()
                    .filter(|(_, h)| h.lease == lease_id)
                    .map(|(id, h)| (id.clone(), h.amount));
                let owed = l.report(in_flight);
                (tenant.clone(), l.id.clone(), owed, idle, l.dead)
            })
            .collect()
    };
    let s = &inner.schema;
    for (tenant, id, owed, idle, dead) in snapshot {
        if dead {
            continue;
        }
        let expires = to_time(inner.clock.now()) + inner.lease_ttl;
        if idle {
            let sql = format!("SELECT {s}.lease_return($1, 0, 0, true, $2, $3, $4)");
            let params: Vec<Param> = vec![
                Box::new(id.clone()),
                Box::new(inner.now()),
                Box::new(expires),
                Box::new(inner.tz.clone()),
            ];
            if inner.query("lease return", &sql, &params).await.is_ok() {
                let mut state = inner.state.lock();
                if state
                    .leases
                    .get(&tenant)
                    .is_some_and(|l| l.id == id && l.owed() == 0)
                {
                    state.leases.remove(&tenant);
                }
            } else {
                all_ok = false;
            }
            continue;
        }
        let sql = format!(
            "UPDATE {s}.leases SET expires_at = $2, owed = $3 WHERE id = $1 AND state = 'live' RETURNING amount"
        );
        let params: Vec<Param> = vec![
            Box::new(id.clone()),
            Box::new(expires),
            Box::new(signed(owed)),
        ];
        if let Ok(rows) = inner.query("lease heartbeat", &sql, &params).await {
            let mut state = inner.state.lock();
            if let Some(local) = state.leases.get_mut(&tenant)
                && local.id == id
            {
                if rows.is_empty() {
                    if local.amount > 0 {
                        tracing::warn!(lease = %id, "lease was swept by another replica; starting a new one");
                    }
                    local.dead = true;
                } else {
                    local.renewed(Instant::now(), inner.lease_ttl);
                }
            }
        } else {
            all_ok = false;
        }
    }
    all_ok
}

/// Reloads the revoked key ids and the (tenant, model) budgets from the database.
async fn refresh(inner: &Inner) {
    let s = &inner.schema;
    if let Ok(rows) = inner
        .query(
            "revocations",
            &format!("SELECT key_id FROM {s}.revoked_keys"),
            &[],
        )
        .await
    {
        let mut revoked = inner.revoked.write();
        revoked.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    if let Ok(rows) = inner
        .query(
            "budget scopes",
            &format!("SELECT tenant, scope FROM {s}.budgets WHERE scope <> ''"),
            &[],
        )
        .await
    {
        *inner.narrowed.write() = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    }
    if let Some(blocks) = inner.blocks.get()
        && let generation = blocks.generation()
        && let Ok(rows) = inner
            .query(
                "blocks",
                &format!(
                    "SELECT tenant, llm, db, extract(epoch FROM since)::bigint FROM {s}.blocks"
                ),
                &[],
            )
            .await
    {
        blocks.replace_all(
            generation,
            rows.iter()
                .map(|r| {
                    let since: i64 = r.get(3);
                    (
                        r.get(0),
                        Block {
                            llm: r.get(1),
                            db: r.get(2),
                            since: u64::try_from(since).unwrap_or(0),
                        },
                    )
                })
                .collect(),
        );
    }
}

/// The statement for one record: `(is usage, parameters)`.
fn statement(inner: &Inner, record: &Record) -> (bool, Vec<Param>) {
    match record {
        Record::Usage {
            event,
            lease,
            close,
        } => {
            let u = &event.usage;
            // What this call made the last heartbeat report as owed: the record takes it off.
            let id = ReservationId(event.request_id.clone());
            let reported = match (lease, close) {
                (Some(lease), false) => inner
                    .state
                    .lock()
                    .leases
                    .get(&event.tenant)
                    .filter(|l| &l.id == lease)
                    .map_or(0, |l| l.reported_of(&id)),
                _ => 0,
            };
            let params: Vec<Param> = vec![
                Box::new(event.request_id.clone()),
                Box::new(event.tenant.clone()),
                Box::new(event.model.clone()),
                Box::new(event.provider.clone()),
                Box::new(lease.clone()),
                Box::new(signed(u.input)),
                Box::new(signed(u.cached_input)),
                Box::new(signed(u.cache_write_5m)),
                Box::new(signed(u.cache_write_1h)),
                Box::new(signed(u.output)),
                Box::new(signed(u.reasoning)),
                Box::new(signed(event.cost.0)),
                Box::new(event.outcome.clone()),
                Box::new(event.estimated),
                Box::new(to_time(event.at_unix)),
                Box::new(inner.replica.clone()),
                Box::new(*close),
                Box::new(inner.tz.clone()),
                Box::new(signed(reported)),
            ];
            (true, params)
        }
        Record::Release { lease } => (
            false,
            vec![
                Box::new(lease.clone()),
                Box::new(inner.now()),
                Box::new(inner.tz.clone()),
            ],
        ),
    }
}

/// A recorded call's cost leaves its local lease, which stops reporting it as owed.
fn recorded_locally(inner: &Inner, record: &Record) {
    if let Record::Usage {
        event,
        lease: Some(lease),
        close: false,
    } = record
    {
        let mut state = inner.state.lock();
        if let Some(local) = state.leases.get_mut(&event.tenant)
            && &local.id == lease
        {
            local.recorded(&ReservationId(event.request_id.clone()), event.cost.0);
        }
    }
}

//! The Postgres budget ledger under load, against a throwaway Postgres 15 cluster this binary
//! starts (and removes) itself:
//!
//! 1. **Lease path**: one tenant with a large budget and no model budget; many tasks reserve
//!    and settle as fast as they can. Reservations are served from this replica's in-memory
//!    lease; the database is asked only when the lease runs short (`lease_take`).
//! 2. **Database path**: a tenant with a budget of its own for the reserved model, so every
//!    reservation is one `lease_take` round trip (a one-call lease over both scopes).
//! 3. **Contention**: four `PgLedger` replicas (one process, each with its own pool, spool and
//!    worker) share one ledger; hundreds of tasks reserve random amounts and settle each at its
//!    full amount until each has been refused once. What was charged (`usage_events.charged`,
//!    `budgets.spent`, read directly) over the limit must never exceed 1.
//!
//! Database round trips are counted by Postgres itself: `track_functions = 'pl'` on the ledger
//! database, `pg_stat_user_functions` read once a phase's connections have closed (a backend
//! flushes its counters when it exits). Each phase has its own schema, so its own counters.
//!
//! `cargo run --release -p sentinel-benches --bin ledger` (about 30 s). Prints Markdown.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use pingora::services::background::BackgroundService as _;
use rand::Rng as _;
use rand::rngs::OsRng;
use sentinel::config::Config;
use sentinel::ledger::postgres::PgLedger;
use sentinel::ledger::{
    BudgetSpec, Ledger as _, LedgerError, ReserveRequest, SystemClock, UsageEvent,
};
use sentinel::secrets::Secrets;
use sentinel_policy::budget::Period;
use sentinel_policy::keys::{EnvSalt, KeyId, Keyring};
use sentinel_policy::llm::{Micros, Usage};
use sentinel_tests::{PgCluster, TestDb};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MODEL: &str = "gpt-4o-mini";
/// How long each throughput run lasts.
const RUN: Duration = Duration::from_secs(4);
/// Concurrent tasks in the throughput runs.
const TASKS: usize = 64;
/// Replicas and tasks of the contention runs.
const REPLICAS: usize = 4;
const CONTENTION_TASKS: usize = 480;
/// The shared limit of the contention runs: about eight calls per task.
const CONTENTION_LIMIT: u64 = 100_000_000;
/// Random amounts of the contention runs, µ$.
const AMOUNTS: std::ops::RangeInclusive<u64> = 1_000..=50_000;
/// Longest any phase may take before it counts as stuck.
const PHASE_LIMIT: Duration = Duration::from_secs(40);
/// How long the usage backlog's write rate is sampled after a throughput run.
const DRAIN_SAMPLE: Duration = Duration::from_secs(2);
/// Longest wait for the workers to record every settled call.
const FLUSH_LIMIT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    let bench = Bench::start().await?;
    let version: String = bench
        .oracle
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    println!(
        "ledger bench: PostgreSQL {version}, {} CPUs, throughput runs {TASKS} tasks x {RUN:?}, \
         contention {REPLICAS} replicas x {} tasks\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        CONTENTION_TASKS / REPLICAS
    );

    let mut rows = Vec::new();
    rows.push(bench.throughput("lease", 4, false).await?);
    rows.push(bench.throughput("database", 4, true).await?);
    rows.push(bench.throughput("database", 16, true).await?);
    println!("### Throughput\n");
    println!(
        "| path | pool | reservations | reserve+settle/s | reserve p50 (µs) | reserve p99 (µs) \
         | lease hits | direct (DB) reservations | `lease_take` calls | round trips per reservation \
         | usage rows written during the run | not yet spooled at its end | usage rows/s after it \
         | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.6} | {} ({:.0}/s) | {} | {:.0} | {} |",
            r.path,
            r.pool,
            r.ops,
            r.ops as f64 / r.elapsed.as_secs_f64(),
            r.p50_us,
            r.p99_us,
            r.lease_hits,
            r.db_reservations,
            r.lease_takes,
            r.lease_takes as f64 / r.ops.max(1) as f64,
            r.recorded,
            r.recorded as f64 / r.elapsed.as_secs_f64(),
            r.unspooled,
            r.drain_rate,
            r.errors.as_deref().unwrap_or("0"),
        );
    }

    let mut contention = Vec::new();
    contention.push(bench.contention("lease", false).await?);
    contention.push(bench.contention("database", true).await?);
    println!("\n### Contention: {REPLICAS} replicas, one ledger\n");
    println!(
        "| path | tasks | limit ($) | granted | refused tasks | errors | settled (client) ($) \
         | charged, `usage_events` ($) | `budgets.spent` ($) | charged/limit | spent/limit \
         | `lease_take` calls | reserved after drain | retries | db errors | swept | time (s) |"
    );
    println!(
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut over = false;
    for c in &contention {
        over |= c.charged > c.limit || c.spent > c.limit;
        println!(
            "| {} | {} | {:.2} | {} | {} | {} | {:.6} | {:.6} | {:.6} | {:.6} | {:.6} | {} | {} | {} | {} | {} | {:.1} |",
            c.path,
            CONTENTION_TASKS,
            usd(c.limit),
            c.granted,
            c.refused,
            c.errors.as_deref().unwrap_or("0"),
            usd(c.settled),
            usd(c.charged),
            usd(c.spent),
            c.charged as f64 / c.limit as f64,
            c.spent as f64 / c.limit as f64,
            c.lease_takes,
            c.reserved_after
                .map_or("not 0 within 5 s".into(), |r| r.to_string()),
            c.retries,
            c.db_errors,
            c.swept,
            c.elapsed.as_secs_f64(),
        );
    }
    if over {
        bail!("the ledger charged more than the limit");
    }
    Ok(())
}

fn usd(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn event(request_id: &str, tenant: &str, cost: u64) -> UsageEvent {
    UsageEvent {
        request_id: request_id.to_owned(),
        tenant: tenant.to_owned(),
        model: MODEL.to_owned(),
        provider: "openai".to_owned(),
        usage: Usage::default(),
        cost: Micros(cost),
        outcome: "ok".to_owned(),
        estimated: false,
        at_unix: now_unix(),
    }
}

fn request(id: String, tenant: &str, amount: u64) -> ReserveRequest {
    ReserveRequest {
        tenant: tenant.to_owned(),
        model: MODEL.to_owned(),
        amount: Micros(amount),
        request_id: id,
        ttl: Duration::from_secs(60),
    }
}

fn budget(limit: u64, model_limit: Option<u64>) -> BudgetSpec {
    BudgetSpec {
        limit: Micros(limit),
        period: Period::Total,
        soft_threshold: 0.8,
        models: model_limit
            .map(|m| vec![(MODEL.to_owned(), Micros(m))])
            .unwrap_or_default(),
    }
}

struct Bench {
    // Field order is drop order: the oracle's connection goes before the cluster.
    oracle: tokio_postgres::Client,
    db: TestDb,
    secrets: Secrets,
    salt: String,
    dir: tempfile::TempDir,
    _cluster: PgCluster,
}

/// One `PgLedger` with its worker running.
struct Replica {
    ledger: Arc<PgLedger>,
    worker: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

struct Throughput {
    path: &'static str,
    pool: usize,
    ops: u64,
    elapsed: Duration,
    p50_us: f64,
    p99_us: f64,
    lease_hits: u64,
    db_reservations: u64,
    lease_takes: i64,
    recorded: i64,
    /// Settled calls not yet in the spool when the run ended.
    unspooled: usize,
    /// Usage rows written per second after the run, with no call competing.
    drain_rate: f64,
    errors: Option<String>,
}

struct Contention {
    path: &'static str,
    limit: u64,
    granted: u64,
    refused: usize,
    errors: Option<String>,
    settled: u64,
    charged: u64,
    spent: u64,
    lease_takes: i64,
    reserved_after: Option<i64>,
    retries: u64,
    db_errors: u64,
    swept: u64,
    elapsed: Duration,
}

impl Bench {
    async fn start() -> Result<Bench> {
        let cluster = PgCluster::start().await.context("starting Postgres")?;
        let db = cluster.test_db("ledgerbench").await?;
        // Count calls of the ledger's plpgsql functions (its write paths) per schema.
        cluster
            .connect_superuser("postgres")
            .await?
            .batch_execute(&format!(
                "ALTER DATABASE {} SET track_functions = 'pl'",
                db.name
            ))
            .await?;
        let oracle = db.connect().await?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("password"), &db.password)?;
        let keyring = Keyring::generate(KeyId::new("k1")?, &mut OsRng)?;
        let salt = EnvSalt::generate(&mut OsRng)?;
        let salt_text = salt.to_base64();
        Ok(Bench {
            oracle,
            db,
            secrets: Secrets::new(keyring, salt),
            salt: salt_text,
            dir,
            _cluster: cluster,
        })
    }

    fn config(&self, schema: &str, spool: &Path, pool: usize) -> Result<Config> {
        let text = format!(
            r#"
[keys]
salt = "{salt}"

[postgres.upstream]
host = "127.0.0.1"
port = {port}

[[postgres.users]]
name = "app"
auth = "trust"

[llm]
[[llm.providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
models = ["{MODEL}"]
api_key_env = "OPENAI_API_KEY"

[ledger]
host = "127.0.0.1"
port = {port}
database = "{db}"
user = "{role}"
password_file = "{password}"
schema = "{schema}"
spool_path = "{spool}"
pool_size = {pool}
"#,
            salt = self.salt,
            port = self.db.port,
            db = self.db.name,
            role = self.db.role,
            password = self.dir.path().join("password").display(),
            spool = spool.display(),
        );
        Ok(Config::parse(&text)?)
    }

    fn replica(
        &self,
        schema: &str,
        name: &str,
        pool: usize,
        budgets: Vec<(String, BudgetSpec)>,
    ) -> Result<Replica> {
        let spool = self.dir.path().join(format!("{schema}-{name}.spool"));
        let config = self.config(schema, &spool, pool)?;
        let ledger_config = config.ledger.clone().context("[ledger]")?;
        let (ledger, worker) = PgLedger::new(
            &config,
            &ledger_config,
            &self.secrets,
            Arc::new(SystemClock),
            budgets,
            None,
        )?;
        // The sender stays with the replica: a dropped one would end the watch.
        let (shutdown, watch) = watch::channel(false);
        let worker = tokio::spawn(async move { worker.start(watch).await });
        Ok(Replica {
            ledger: Arc::new(ledger),
            worker,
            shutdown,
        })
    }

    /// Stops the replicas' workers, closes their pools and waits until Postgres saw their
    /// connections end (and so flushed their function counters).
    async fn stop(&self, replicas: Vec<Replica>) -> Result<()> {
        for r in replicas {
            r.worker.abort();
            let _ = r.worker.await;
            drop(r.ledger);
        }
        let started = Instant::now();
        loop {
            let n: i64 = self
                .oracle
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'sentinel-ledger'",
                    &[&self.db.name],
                )
                .await?
                .get(0);
            if n == 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("{n} ledger connections still open 10 s after their pools were dropped");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The exiting backends' counters reach the shared stats a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    async fn function_calls(&self, schema: &str) -> Result<HashMap<String, i64>> {
        let rows = self
            .oracle
            .query(
                "SELECT funcname::text, calls FROM pg_stat_user_functions WHERE schemaname = $1",
                &[&schema],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn count_events(&self, schema: &str, tenant: &str) -> Result<i64> {
        Ok(self
            .oracle
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.usage_events WHERE tenant = $1 AND outcome = 'ok'"
                ),
                &[&tenant],
            )
            .await?
            .get(0))
    }

    /// Reserve + settle from `TASKS` tasks for `RUN`.
    async fn throughput(
        &self,
        path: &'static str,
        pool: usize,
        direct: bool,
    ) -> Result<Throughput> {
        let schema = format!("bench_{path}_{pool}");
        let tenant = format!("t_{path}");
        let big = 1_000_000_000_000; // $1M: never short.
        let spec = budget(big, direct.then_some(big));
        let replica = self.replica(&schema, "r0", pool, vec![(tenant.clone(), spec)])?;
        let ledger = replica.ledger.clone();
        // The first call waits for the worker's migration; it is not timed.
        let warm = ledger
            .reserve(request(format!("{schema}-warm"), &tenant, 1_000))
            .await
            .context("warm-up reservation")?;
        ledger
            .settle(&warm.id, event(&warm.id.0, &tenant, 1_000))
            .await?;
        let started = Instant::now();
        let deadline = started + RUN;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let ledger = ledger.clone();
            let tenant = tenant.clone();
            let schema = schema.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut error = None;
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let id = format!("{schema}-{t}-{i}");
                    i += 1;
                    let t0 = Instant::now();
                    match ledger.reserve(request(id.clone(), &tenant, 1_000)).await {
                        Ok(r) => {
                            latencies.push(t0.elapsed());
                            if let Err(e) = ledger.settle(&r.id, event(&id, &tenant, 1_000)).await {
                                error = Some(format!("settle: {e}"));
                                break;
                            }
                        }
                        Err(e) => {
                            error = Some(format!("reserve: {e}"));
                            break;
                        }
                    }
                    // A real call awaits its provider between the two: let others run.
                    tokio::task::yield_now().await;
                }
                (latencies, error)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = Vec::new();
        for task in tasks {
            let (l, e) = tokio::time::timeout(PHASE_LIMIT, task)
                .await
                .context("a throughput task is stuck")??;
            latencies.extend(l);
            errors.extend(e);
        }
        let elapsed = started.elapsed();
        let unspooled = ledger.unspooled();
        let recorded = (self.count_events(&schema, &tenant).await? - 1).max(0);
        // How fast the worker writes the backlog once no call competes with it.
        tokio::time::sleep(DRAIN_SAMPLE).await;
        let drained = self.count_events(&schema, &tenant).await? - 1 - recorded;
        let stats = ledger.stats();
        let lease_hits = stats.lease_hits.load(Ordering::Relaxed);
        let db_reservations = stats.db_reservations.load(Ordering::Relaxed);
        drop(ledger);
        self.stop(vec![replica]).await?;
        let calls = self.function_calls(&schema).await?;
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Ok(Throughput {
            path,
            pool,
            ops: latencies.len() as u64,
            elapsed,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            // The warm-up is in the ledger's counters and in `lease_take`'s.
            lease_hits: lease_hits.saturating_sub(u64::from(!direct)),
            db_reservations: db_reservations.saturating_sub(u64::from(direct)),
            lease_takes: calls.get("lease_take").copied().unwrap_or(0) - 1,
            recorded,
            unspooled,
            drain_rate: drained as f64 / DRAIN_SAMPLE.as_secs_f64(),
            errors: (!errors.is_empty()).then(|| format!("{}: {}", errors.len(), errors[0])),
        })
    }

    /// `REPLICAS` replicas, `CONTENTION_TASKS` tasks reserving random amounts against
    /// `CONTENTION_LIMIT` until each is refused once.
    async fn contention(&self, path: &'static str, direct: bool) -> Result<Contention> {
        let schema = format!("bench_shared_{path}");
        let tenant = format!("shared_{path}");
        let limit = CONTENTION_LIMIT;
        let spec = budget(limit, direct.then_some(limit));
        let mut replicas = Vec::new();
        for r in 0..REPLICAS {
            replicas.push(self.replica(
                &schema,
                &format!("r{r}"),
                4,
                vec![(tenant.clone(), spec.clone())],
            )?);
        }
        // Every replica migrated and wrote the budget before any spend: a tenant without a
        // budget is refused once each is ready.
        for (r, replica) in replicas.iter().enumerate() {
            match replica
                .ledger
                .reserve(request(format!("{schema}-ready-{r}"), "nobody", 1))
                .await
            {
                Err(LedgerError::NoBudget { .. }) => {}
                other => bail!("replica {r} warm-up: {other:?}"),
            }
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..CONTENTION_TASKS {
            let ledger = replicas[t % REPLICAS].ledger.clone();
            let tenant = tenant.clone();
            let schema = schema.clone();
            tasks.push(tokio::spawn(async move {
                let mut granted = 0u64;
                let mut settled = 0u64;
                for i in 0.. {
                    if started.elapsed() > PHASE_LIMIT {
                        return (granted, settled, Err("never refused".to_owned()));
                    }
                    let id = format!("{schema}-{t}-{i}");
                    let amount = rand::thread_rng().gen_range(AMOUNTS);
                    match ledger.reserve(request(id.clone(), &tenant, amount)).await {
                        Ok(r) => {
                            granted += 1;
                            if let Err(e) = ledger.settle(&r.id, event(&id, &tenant, amount)).await
                            {
                                return (granted, settled, Err(format!("settle: {e}")));
                            }
                            settled += amount;
                        }
                        Err(LedgerError::Insufficient { .. }) => break,
                        Err(e) => return (granted, settled, Err(format!("reserve: {e}"))),
                    }
                    tokio::task::yield_now().await;
                }
                (granted, settled, Ok(()))
            }));
        }
        let (mut granted, mut settled, mut refused) = (0, 0, 0);
        let mut errors = Vec::new();
        for task in tasks {
            let (g, s, outcome) = tokio::time::timeout(PHASE_LIMIT, task)
                .await
                .context("a contention task is stuck")??;
            granted += g;
            settled += s;
            match outcome {
                Ok(()) => refused += 1,
                Err(e) => errors.push(e),
            }
        }
        let elapsed = started.elapsed();
        // Wait until every settled call is recorded.
        let flush_started = Instant::now();
        loop {
            let n = self.count_events(&schema, &tenant).await?;
            if n as u64 == granted {
                break;
            }
            if flush_started.elapsed() > FLUSH_LIMIT {
                bail!(
                    "{path}: {n} usage events recorded of {granted} settled after {FLUSH_LIMIT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let row = self
            .oracle
            .query_one(
                &format!(
                    "SELECT (SELECT coalesce(sum(charged), 0)::bigint FROM {schema}.usage_events WHERE tenant = $1),
                            b.spent, b.limit_micros
                     FROM {schema}.budgets b WHERE b.tenant = $1 AND b.scope = ''"
                ),
                &[&tenant],
            )
            .await?;
        let (charged, spent, db_limit): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if db_limit as u64 != limit {
            bail!("{path}: the budget's limit is {db_limit}, {limit} configured");
        }
        let (mut retries, mut db_errors, mut swept) = (0, 0, 0);
        for r in &replicas {
            let s = r.ledger.stats();
            retries += s.retries.load(Ordering::Relaxed);
            db_errors += s.db_errors.load(Ordering::Relaxed);
            swept += s.swept.load(Ordering::Relaxed);
        }
        // Draining gives every lease back: nothing stays reserved.
        for r in &replicas {
            r.shutdown.send_replace(true);
        }
        let mut reserved_after = None;
        let drain_started = Instant::now();
        while drain_started.elapsed() < Duration::from_secs(5) {
            let reserved: i64 = self
                .oracle
                .query_one(
                    &format!(
                        "SELECT sum(reserved)::bigint FROM {schema}.budgets WHERE tenant = $1"
                    ),
                    &[&tenant],
                )
                .await?
                .get(0);
            if reserved == 0 {
                reserved_after = Some(0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop(replicas).await?;
        let calls = self.function_calls(&schema).await?;
        Ok(Contention {
            path,
            limit,
            granted,
            refused,
            errors: (!errors.is_empty()).then(|| format!("{}: {}", errors.len(), errors[0])),
            settled,
            charged: charged as u64,
            spent: spent as u64,
            // Minus the warm-up's (one per replica, for a tenant without a budget).
            lease_takes: calls.get("lease_take").copied().unwrap_or(0) - REPLICAS as i64,
            reserved_after,
            retries,
            db_errors,
            swept,
            elapsed,
        })
    }
}

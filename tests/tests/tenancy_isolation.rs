//! Isolation under load: 200 tenants × 4 concurrent clients each (800 client connections) on a
//! pool of 8 server connections per user, mixing every source (comment, set in an explicit
//! transaction, token, startup) and protocol (simple, extended, unnamed, prepared, pipelined).
//!
//! - Every row any client reads belongs to its own tenant, read with its own tenant as the
//!   server's setting; `current_setting('app.tenant_id', true)` inside each transaction is the
//!   client's tenant.
//! - Every row a client writes takes its `tenant_id` from the server's setting, so a context
//!   applied to the wrong transaction would put it into another tenant: the oracle checks each
//!   written row's tenant against the tenant named in its note, and each tenant's final count.
//! - Afterwards: no server connection is idle in a transaction (pg_stat_activity), and 8 clients
//!   with no tenant that each hold one of the 8 server connections in an open transaction all
//!   read an empty setting.
//!
//! Bounded: each client runs [`TX_PER_CLIENT`] transactions (6,400 in all; under 15 s here).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use sentinel_tests::clients::simple_rows;
use sentinel_tests::tenancy::{
    Op, Out, Proto, SEEDED_PER_TENANT, SetForm, StatementCache, TOKEN_USER, Tag, TagStyle,
    TenancyDb, describe_error, is_unset, run_ops, startup_options,
};
use sentinel_tests::{Auth, SentinelConfig, SentinelProcess, shared_cluster};
use tokio_postgres::Client;

const TENANT_COUNT: usize = 200;
const CLIENTS_PER_TENANT: usize = 4;
const TX_PER_CLIENT: usize = 8;
const POOL_SIZE: u32 = 8;
/// How many logins are in flight at once while the 800 clients connect.
const CONNECT_CONCURRENCY: usize = 32;
/// The whole load must finish within this (a hang is a failure, not a stuck test).
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);

const TRUST_USER: &str = "app_trust";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Comment,
    Set,
    Token,
    Startup,
}

const SOURCES: [Source; 4] = [Source::Comment, Source::Set, Source::Token, Source::Startup];

struct Worker {
    tenant: String,
    k: usize,
    source: Source,
    proto: Proto,
    client: Client,
}

fn tenant_name(i: usize) -> String {
    format!("t{i:03}")
}

/// The ops of a worker's `n`th transaction (two transactions for autocommit shapes).
fn tx_ops(source: Source, tenant: &str, note: &str, n: usize) -> Vec<Op> {
    let styles = [
        TagStyle::Leading,
        TagStyle::Trailing,
        TagStyle::TrailingEncoded,
    ];
    let tag = || Some(Tag::new(tenant, styles[n % styles.len()]));
    let insert = |tag| Op::Insert {
        tag,
        note: note.to_owned(),
    };
    let block = |mut middle: Vec<Op>| {
        let mut ops = vec![Op::ctl("BEGIN")];
        ops.append(&mut middle);
        ops.push(Op::Setting { tag: None });
        ops.push(Op::ctl("COMMIT"));
        ops
    };
    match source {
        Source::Comment if n.is_multiple_of(2) => vec![Op::Select { tag: tag() }, insert(tag())],
        Source::Comment => block(vec![Op::Select { tag: tag() }, insert(None)]),
        Source::Set => {
            let forms = [
                SetForm::SetLocal,
                SetForm::Set,
                SetForm::SetConfig { local: true },
                SetForm::SetSentinel,
                SetForm::SetConfig { local: false },
            ];
            block(vec![
                Op::SetCtx {
                    tenant: tenant.to_owned(),
                    form: forms[n % forms.len()],
                },
                Op::Select { tag: None },
                insert(None),
            ])
        }
        Source::Token | Source::Startup if n.is_multiple_of(2) => {
            vec![Op::Select { tag: None }, insert(None)]
        }
        Source::Token | Source::Startup => block(vec![Op::Select { tag: None }, insert(None)]),
    }
}

/// Checks one result; returns a problem description.
fn check(
    w: &Worker,
    n: usize,
    op: &Op,
    res: &Result<Out, tokio_postgres::Error>,
) -> Option<String> {
    let t = w.tenant.as_str();
    let who = format!(
        "[{t} client {} ({:?}, {:?}) tx {n}: {}]",
        w.k,
        w.source,
        w.proto,
        op.describe()
    );
    match res {
        Err(e) => Some(format!("{who} failed: {}", describe_error(e))),
        Ok(Out::Items(rows)) => {
            let bad: Vec<_> = rows
                .iter()
                .filter(|r| r.tenant_id != t || r.ctx.as_deref() != Some(t))
                .take(3)
                .collect();
            if !bad.is_empty() {
                Some(format!(
                    "{who} read rows of another tenant or context: {bad:?}"
                ))
            } else if rows.len() < SEEDED_PER_TENANT {
                Some(format!(
                    "{who} read {} rows, fewer than the {SEEDED_PER_TENANT} seeded",
                    rows.len()
                ))
            } else {
                None
            }
        }
        Ok(Out::Setting(v)) => (v.as_deref() != Some(t)).then(|| format!("{who} setting is {v:?}")),
        Ok(Out::Inserted(x)) => (x != t).then(|| format!("{who} inserted into {x:?}")),
        Ok(Out::SetConfigReply { values, .. }) => (values.as_slice() != [Some(t.to_owned())])
            .then(|| format!("{who} set_config answered {values:?}")),
        Ok(Out::Done) => None,
    }
}

async fn run_worker(w: &Worker) -> Vec<String> {
    let mut problems = Vec::new();
    let mut cache = StatementCache::default();
    for n in 0..TX_PER_CLIENT {
        let note = format!("iso-{}-{}-{n}", w.tenant, w.k);
        let ops = tx_ops(w.source, &w.tenant, &note, n);
        match run_ops(&w.client, w.proto, &ops, &mut cache).await {
            Err(e) => problems.push(format!("[{} client {}] tx {n}: {e:#}", w.tenant, w.k)),
            Ok(results) => {
                for (op, res) in ops.iter().zip(&results) {
                    problems.extend(check(w, n, op, res));
                }
                if results.len() < ops.len() {
                    let _ = w.client.batch_execute("ROLLBACK").await;
                }
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tenants_on_few_server_connections_stay_isolated() -> Result<()> {
    let started = Instant::now();
    let pg = shared_cluster().await?;
    let names: Vec<String> = (0..TENANT_COUNT).map(tenant_name).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let tdb = TenancyDb::create(pg, "teniso", &refs).await?;
    let cfg: SentinelConfig = tdb
        .config()
        .user(TRUST_USER, Auth::Trust, &tdb.db.role)
        .server_password(&tdb.db.password)
        .tenant_token_user_for(TOKEN_USER, &tdb.db)
        .pool_size(POOL_SIZE)
        .max_client_conn(1000)
        .pool_wait_timeout(Duration::from_secs(60));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let result = load_and_check(&tdb, &cfg, &sentinel, started).await;
    if result.is_err() {
        sentinel.print_log_tail("Sentinel", 40);
    }
    result
}

async fn load_and_check(
    tdb: &TenancyDb,
    cfg: &SentinelConfig,
    sentinel: &SentinelProcess,
    started: Instant,
) -> Result<()> {
    // Connect all 800 clients first, so they are all live at once.
    let plan: Vec<(usize, usize)> = (0..TENANT_COUNT)
        .flat_map(|i| (0..CLIENTS_PER_TENANT).map(move |k| (i, k)))
        .collect();
    let db = tdb.db.name.clone();
    let connects = futures::stream::iter(plan.into_iter().map(|(i, k)| {
        let tenant = tenant_name(i);
        let source = SOURCES[k % SOURCES.len()];
        let proto = Proto::ALL[(i + k) % Proto::ALL.len()];
        let db = db.clone();
        async move {
            let dsn = match source {
                Source::Comment | Source::Set => sentinel.dsn(TRUST_USER, "", &db),
                Source::Startup => format!(
                    "{} {}",
                    sentinel.dsn(TRUST_USER, "", &db),
                    startup_options(&tenant)
                ),
                Source::Token => sentinel.dsn(TOKEN_USER, &cfg.tenant_token(&tenant, None)?, &db),
            };
            let client = sentinel_tests::tenancy::connect(&dsn)
                .await
                .with_context(|| format!("client {k} of {tenant} ({source:?})"))?;
            anyhow::Ok(Worker {
                tenant,
                k,
                source,
                proto,
                client,
            })
        }
    }))
    .buffer_unordered(CONNECT_CONCURRENCY)
    .collect::<Vec<_>>()
    .await;
    let mut workers = Vec::with_capacity(connects.len());
    for w in connects {
        workers.push(w?);
    }
    ensure!(
        workers.len() == TENANT_COUNT * CLIENTS_PER_TENANT,
        "{} clients connected",
        workers.len()
    );
    let connected = started.elapsed();

    // The load: every client runs its transactions concurrently with all the others.
    let load = futures::future::join_all(workers.iter().map(run_worker));
    let problems: Vec<String> = tokio::time::timeout(LOAD_TIMEOUT, load)
        .await
        .map_err(|_| anyhow::anyhow!("the load did not finish within {LOAD_TIMEOUT:?}"))?
        .into_iter()
        .flatten()
        .collect();
    let loaded = started.elapsed();
    eprintln!(
        "isolation load: {} clients connected after {connected:?}, {} transactions done after {loaded:?}",
        workers.len(),
        workers.len() * TX_PER_CLIENT
    );
    drop(workers);

    let mut failures = Vec::new();
    if !problems.is_empty() {
        failures.push(format!(
            "{} problems during the load; the first ones:\n  {}",
            problems.len(),
            problems
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }

    // The oracle: every written row is in the tenant its note names; each tenant got exactly
    // its clients' rows.
    let su = tdb.oracle().await?;
    let misplaced = su
        .query(
            "SELECT v, tenant_id FROM items WHERE v LIKE 'iso-%' \
             AND split_part(v, '-', 2) <> tenant_id LIMIT 20",
            &[],
        )
        .await?;
    if !misplaced.is_empty() {
        let rows: Vec<(String, String)> = misplaced.iter().map(|r| (r.get(0), r.get(1))).collect();
        failures.push(format!(
            "rows written into the wrong tenant (note, tenant_id): {rows:?}"
        ));
    }
    let counts = tdb.oracle_counts().await?;
    let want = (SEEDED_PER_TENANT + CLIENTS_PER_TENANT * TX_PER_CLIENT) as i64;
    let wrong: Vec<(String, i64)> = (0..TENANT_COUNT)
        .map(tenant_name)
        .map(|t| {
            let n = counts.get(&t).copied().unwrap_or(0);
            (t, n)
        })
        .filter(|(_, n)| *n != want)
        .take(20)
        .collect();
    if !wrong.is_empty() {
        failures.push(format!("tenants whose row count is not {want}: {wrong:?}"));
    }
    let strays: Vec<String> = counts
        .keys()
        .filter(|t| !(0..TENANT_COUNT).map(tenant_name).any(|n| &n == *t))
        .cloned()
        .collect();
    if !strays.is_empty() {
        failures.push(format!("rows under tenant ids nobody used: {strays:?}"));
    }

    // No server connection is left idle in a transaction.
    // Give Sentinel a moment to return the last servers to the pool.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck = idle_in_tx(&su, tdb).await?;
    if !stuck.is_empty() {
        failures.push(format!(
            "server connections idle in transaction after the load: {stuck:?}"
        ));
    }

    // 8 clients with no tenant, each holding one of the 8 server connections in a transaction:
    // none inherits a tenant.
    let mut holders = Vec::new();
    for i in 0..POOL_SIZE {
        let c = sentinel_tests::tenancy::connect(&sentinel.dsn(TRUST_USER, "", &tdb.db.name))
            .await
            .with_context(|| format!("holder {i}"))?;
        holders.push(c);
    }
    let mut pids = BTreeSet::new();
    for (i, c) in holders.iter().enumerate() {
        let msgs = c
            .simple_query(
                "BEGIN; SELECT pg_backend_pid()::text, current_setting('app.tenant_id', true)",
            )
            .await
            .map_err(|e| anyhow::anyhow!("holder {i}: {}", describe_error(&e)))?;
        let row = simple_rows(&msgs).into_iter().next().context("no row")?;
        let pid = row.first().cloned().flatten().unwrap_or_default();
        let setting = row.get(1).cloned().flatten();
        if !is_unset(&setting) {
            failures.push(format!(
                "holder {i} (server pid {pid}) runs with app.tenant_id = {setting:?}"
            ));
        }
        pids.insert(pid);
    }
    if pids.len() != POOL_SIZE as usize {
        failures.push(format!(
            "the {POOL_SIZE} holders got {} distinct server connections: {pids:?}",
            pids.len()
        ));
    }
    for c in &holders {
        let _ = c.batch_execute("COMMIT").await;
    }
    drop(holders);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck = idle_in_tx(&su, tdb).await?;
    if !stuck.is_empty() {
        failures.push(format!(
            "server connections idle in transaction at the end: {stuck:?}"
        ));
    }
    eprintln!("isolation test total: {:?}", started.elapsed());
    ensure!(
        failures.is_empty(),
        "isolation failures:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// Server connections of the app role that are idle inside a transaction, per pg_stat_activity.
async fn idle_in_tx(su: &Client, tdb: &TenancyDb) -> Result<Vec<String>> {
    let rows = su
        .query(
            "SELECT pid, state, left(query, 80) FROM pg_stat_activity \
             WHERE datname = $1 AND usename = $2 AND state LIKE 'idle in transaction%'",
            &[&tdb.db.name, &tdb.db.role],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?}",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect())
}

//! The Postgres wire protocol through Sentinel, checked against Postgres itself.
//!
//! Every test gets its own role and database on the shared throwaway cluster and its own Sentinel
//! with a small pool (usually one or two server connections), so several clients must share
//! server connections and Sentinel's transaction pooling, statement mapping, parameter syncing
//! and cancel routing are exercised for real. Where it makes sense, what a client sees through
//! Sentinel is compared with what the same client sees on a direct connection (the "oracle"):
//! either with tokio-postgres, or with [`RawConn`] (`sentinel_tests::raw`), a protocol client
//! that sends exactly the bytes a test specifies and records every reply, so message-level
//! sequences (ParseComplete, PortalSuspended, ReadyForQuery status, ...) can be compared one to
//! one.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use sentinel_tests::clients::{connect_dsn, db_message, simple_rows, sqlstate};
use sentinel_tests::pg::pg_bin_dir;
use sentinel_tests::raw::{
    RawConn, Reply, Step, Until, Wire, decode, first_difference, first_error, q, step,
};
use sentinel_tests::{
    Auth, PgCluster, PoolMode, SentinelConfig, SentinelProcess, TestDb, free_port, shared_cluster,
};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

/// How long one protocol step may take before the test calls it hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(8);

// === environment ===

/// A test database on the shared cluster and a Sentinel in front of it whose only user is the
/// database's role, logging in with the role's own password.
struct Env {
    pg: &'static PgCluster,
    db: TestDb,
    sentinel: SentinelProcess,
}

impl Env {
    async fn start(
        prefix: &str,
        configure: impl FnOnce(SentinelConfig) -> SentinelConfig,
    ) -> Result<Env> {
        let pg = shared_cluster().await?;
        let db = pg.test_db(prefix).await?;
        let cfg = configure(SentinelConfig::new(pg).user_for(&db, Auth::Scram(&db.password)));
        let sentinel = SentinelProcess::start_with(&cfg).await?;
        Ok(Env { pg, db, sentinel })
    }

    /// Connection string through Sentinel, with extra `key=value` pairs.
    fn dsn(&self, extra: &str) -> String {
        format!(
            "{} {extra}",
            self.sentinel
                .dsn(&self.db.role, &self.db.password, &self.db.name)
        )
    }

    /// Connection string straight to Postgres, with extra `key=value` pairs.
    fn direct_dsn(&self, extra: &str) -> String {
        format!("{} {extra}", self.db.dsn())
    }

    async fn client(&self) -> Result<Client> {
        self.client_with("").await
    }

    async fn client_with(&self, extra: &str) -> Result<Client> {
        within("connecting through Sentinel", connect_dsn(&self.dsn(extra)))
            .await?
            .with_context(|| format!("connecting through Sentinel with {extra:?}"))
    }

    async fn direct(&self) -> Result<Client> {
        self.direct_with("").await
    }

    async fn direct_with(&self, extra: &str) -> Result<Client> {
        connect_dsn(&self.direct_dsn(extra))
            .await
            .with_context(|| format!("connecting directly with {extra:?}"))
    }

    async fn raw(&self) -> Result<RawConn> {
        self.raw_to(self.sentinel.port())
            .await
            .context("raw connection through Sentinel")
    }

    async fn raw_direct(&self) -> Result<RawConn> {
        self.raw_to(self.pg.port())
            .await
            .context("raw connection straight to Postgres")
    }

    async fn raw_to(&self, port: u16) -> Result<RawConn> {
        let params = [("user", self.db.role.as_str()), ("database", &self.db.name)];
        RawConn::connect(port, &params, &self.db.password, STEP_TIMEOUT).await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.sentinel.print_log_tail("Sentinel", 40);
    }
}

// === small helpers ===

/// Fails with `what` if `fut` takes longer than [`STEP_TIMEOUT`].
async fn within<F: Future>(what: &str, fut: F) -> Result<F::Output> {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {STEP_TIMEOUT:?} (hung)"))
}

/// The error of `res`, which must have failed with `code`.
fn expect_err<T>(
    what: &str,
    res: Result<T, tokio_postgres::Error>,
    code: &str,
) -> Result<tokio_postgres::Error> {
    match res {
        Ok(_) => bail!("{what}: expected SQLSTATE {code}, but it succeeded"),
        Err(e) => {
            ensure!(
                sqlstate(&e) == code,
                "{what}: expected SQLSTATE {code}, got {}: {e:?}",
                sqlstate(&e)
            );
            Ok(e)
        }
    }
}

async fn backend_pid(c: &Client) -> Result<i32> {
    let row = within(
        "select pg_backend_pid()",
        c.query_one("select pg_backend_pid()", &[]),
    )
    .await?
    .context("select pg_backend_pid()")?;
    Ok(row.get(0))
}

/// The first column of the first row of a simple query.
async fn scalar(c: &Client, sql: &str) -> Result<Option<String>> {
    let msgs = within(sql, c.simple_query(sql))
        .await?
        .with_context(|| sql.to_owned())?;
    Ok(simple_rows(&msgs)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .flatten())
}

async fn scalar_str(c: &Client, sql: &str) -> Result<String> {
    scalar(c, sql)
        .await?
        .with_context(|| format!("{sql} returned no value"))
}

/// Polls `check` every 20 ms until it yields a value; fails after `timeout`.
async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            bail!("{what}: not reached within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a server backend of this database (other than `direct`'s own) runs a query whose
/// text is `query`; returns its pid.
async fn wait_for_running(direct: &Client, query: &str) -> Result<i32> {
    poll_until(
        &format!("a backend running {query:?}"),
        Duration::from_secs(10),
        || async {
            let rows = direct
                .query(
                    "select pid from pg_stat_activity where datname = current_database() \
                     and pid <> pg_backend_pid() and state = 'active' and query = $1",
                    &[&query],
                )
                .await?;
            Ok(rows.first().map(|r| r.get::<_, i32>(0)))
        },
    )
    .await
}

/// tokio-postgres keeps a statement's name private; its Debug output shows it.
fn stmt_name(s: &Statement) -> Result<String> {
    let dbg = format!("{s:?}");
    let start = dbg
        .find("name: \"")
        .map(|i| i + "name: \"".len())
        .with_context(|| format!("no name in {dbg}"))?;
    let len = dbg[start..]
        .find('"')
        .with_context(|| format!("unterminated name in {dbg}"))?;
    Ok(dbg[start..start + len].to_owned())
}

/// Resident set size of a process, from /proc.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()?;
    Ok(kb * 1024)
}

/// A tokio-postgres connection whose notices and notifications are collected, plus the values
/// of `params` the server reported at login (ParameterStatus).
async fn connect_collecting(
    dsn: &str,
    params: &[&str],
) -> Result<(
    Client,
    tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
    BTreeMap<String, Option<String>>,
)> {
    let (client, mut connection) = within("connecting", tokio_postgres::connect(dsn, NoTls))
        .await?
        .context("connecting")?;
    let reported = params
        .iter()
        .map(|p| (p.to_string(), connection.parameter(p).map(str::to_owned)))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(m) => {
                    let _ = tx.send(m);
                }
                Err(e) => {
                    eprintln!("connection closed with an error: {e}");
                    break;
                }
            }
        }
    });
    Ok((client, rx, reported))
}

async fn next_notification(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
) -> Result<tokio_postgres::Notification> {
    loop {
        match within("waiting for a notification", rx.recv()).await? {
            Some(AsyncMessage::Notification(n)) => return Ok(n),
            Some(_) => continue,
            None => bail!("connection closed while waiting for a notification"),
        }
    }
}

fn drain_notices(rx: &mut tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let AsyncMessage::Notice(n) = m {
            out.push(format!(
                "{} {} {}",
                n.severity(),
                n.code().code(),
                n.message()
            ));
        }
    }
    out
}

// === comparing raw transcripts ===

/// Runs each script on a fresh raw connection through Sentinel and on one straight to
/// Postgres; returns a description of every script whose replies differ (errors and notices
/// compared by SQLSTATE and message).
async fn oracle_mismatches(env: &Env, scripts: &[(&str, Vec<Step>)]) -> Result<Vec<String>> {
    let mut mismatches = Vec::new();
    for (name, steps) in scripts {
        let needs_other = steps.iter().any(|s| s.other.is_some());
        let via = async {
            let mut c = env.raw().await?;
            let mut other = match needs_other {
                true => Some(env.raw().await?),
                false => None,
            };
            c.run_with(other.as_mut(), steps).await
        }
        .await;
        let mut d = env.raw_direct().await?;
        let mut other = match needs_other {
            true => Some(env.raw_direct().await?),
            false => None,
        };
        let direct = d
            .run_with(other.as_mut(), steps)
            .await
            .with_context(|| format!("script {name:?} straight to Postgres"))?;
        match via {
            Err(e) => mismatches.push(format!(
                "- {name}: through Sentinel: {e:#}\n    Postgres replied: {direct:?}"
            )),
            Ok(via) => {
                if let Some(diff) = first_difference(&via, &direct, |r| Some(r.code_and_message()))
                {
                    mismatches.push(format!("- {name}: {diff}"));
                }
            }
        }
    }
    Ok(mismatches)
}

// === simple query protocol ===

#[tokio::test(flavor = "multi_thread")]
async fn simple_queries_match_postgres() -> Result<()> {
    let env = Env::start("simpleq", |c| c.pool_size(1)).await?;
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "one row of several types",
            vec![q(
                "select 1 as a, 'x'::text as b, null::int as c, 1.5::float8 as d, true as e, \
                 'é ✓'::varchar as f",
            )],
        ),
        (
            "several statements in one query",
            vec![q("select 1; select 2, 3; values (4), (5)")],
        ),
        (
            "error in the middle of a batch",
            vec![q("select 1; select 1/0; select 2"), q("select 3")],
        ),
        ("empty queries", vec![q(""), q(";"), q("-- nothing\n")]),
        ("syntax error", vec![q("selec 1"), q("select 'after'")]),
        (
            "many rows",
            vec![q("select g, md5(g::text) from generate_series(1, 3000) g")],
        ),
        (
            "ddl and dml in one batch",
            vec![q(
                "create table simple_t (x int); insert into simple_t values (1), (2); \
                 update simple_t set x = x + 1; select * from simple_t order by x; \
                 delete from simple_t; drop table simple_t",
            )],
        ),
        (
            "a failed batch is one implicit transaction",
            vec![
                q("create table simple_u (x int)"),
                q("insert into simple_u values (1); select 1/0; insert into simple_u values (2)"),
                q("select count(*) from simple_u"),
                q("drop table simple_u"),
            ],
        ),
        (
            "explicit transaction in one batch",
            vec![q("begin; select 1; commit"), q("select 2")],
        ),
        (
            "failed transaction",
            vec![
                q("begin"),
                q("select 1/0"),
                q("select 1"),
                q("commit"),
                q("select 2"),
            ],
        ),
        (
            "savepoints",
            vec![
                q("begin"),
                q("savepoint a"),
                q("select 1/0"),
                q("rollback to savepoint a"),
                q("select 'recovered'"),
                q("release savepoint a"),
                q("commit"),
            ],
        ),
        (
            "notices",
            vec![q(
                "do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$",
            )],
        ),
        (
            "set and show",
            vec![
                q("set application_name = 'raw_app'"),
                q("show application_name"),
                q("set datestyle = 'German'; select '2024-03-01'::date"),
            ],
        ),
    ];
    let mismatches = oracle_mismatches(&env, &scripts).await?;
    ensure!(
        mismatches.is_empty(),
        "simple-query replies through Sentinel differ from Postgres's:\n{}",
        mismatches.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_errors_and_reuse_with_tokio_postgres() -> Result<()> {
    let env = Env::start("batches", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    let a = env.client().await?;
    let b = env.client().await?;

    a.batch_execute(
        "create table batch_t (id int primary key, v text); \
         insert into batch_t values (1, 'one'), (2, 'two'); \
         insert into batch_t select g, 'n' || g from generate_series(3, 50) g",
    )
    .await?;
    let count = scalar_str(&direct, "select count(*) from batch_t").await?;
    ensure!(count == "50", "direct sees {count} rows, want 50");

    // simple_query results equal what Postgres returns directly.
    let sql = "select id, v from batch_t where id <= 3 order by id; select count(*), max(id) from batch_t";
    let via = simple_rows(&b.simple_query(sql).await?);
    let oracle = simple_rows(&direct.simple_query(sql).await?);
    ensure!(via == oracle, "simple_query: {via:?} vs direct {oracle:?}");

    // An error mid-batch: the whole batch is one transaction, nothing of it stays.
    let err = a
        .batch_execute(
            "insert into batch_t values (100, 'x'); select 1/0; insert into batch_t values (101, 'y')",
        )
        .await;
    expect_err("error mid-batch", err, "22012")?;
    let count = scalar_str(&direct, "select count(*) from batch_t").await?;
    ensure!(
        count == "50",
        "after a failed batch direct sees {count} rows, want 50"
    );
    // Duplicate key, then usable again.
    expect_err(
        "duplicate key",
        a.batch_execute("insert into batch_t values (1, 'again')")
            .await,
        "23505",
    )?;
    // Both clients keep working on the single server connection after errors.
    for i in 0..5 {
        let va = scalar_str(&a, &format!("select {i} + 1")).await?;
        let vb = scalar_str(&b, &format!("select v from batch_t where id = {}", i + 1)).await?;
        ensure!(va == (i + 1).to_string(), "a got {va}");
        let want = scalar_str(
            &direct,
            &format!("select v from batch_t where id = {}", i + 1),
        )
        .await?;
        ensure!(vb == want, "b got {vb}, direct {want}");
    }
    ensure!(
        backend_pid(&a).await? == backend_pid(&b).await?,
        "pool_size 1 but two server pids"
    );
    Ok(())
}

// === extended protocol ===

/// Extended-protocol message sequences, replies compared one to one with Postgres's.
#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_matches_postgres() -> Result<()> {
    let env = Env::start("extended", |c| c.pool_size(1)).await?;
    let w = Wire::new;
    let r1 = Until::Ready(1);
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "unnamed statement with parameters",
            vec![step(
                w().parse("", "select $1::int + $2::int as sum, $3::text as t", &[])
                    .bind("", "", &[Some("1"), Some("2"), None])
                    .describe_portal("")
                    .execute("", 0)
                    .sync(),
                r1,
            )],
        ),
        (
            "named statement described and executed twice",
            vec![
                step(
                    w().parse("st", "select $1::text || 'x' as v", &[25])
                        .describe_statement("st")
                        .bind("", "st", &[Some("a")])
                        .execute("", 0)
                        .bind("", "st", &[Some("b")])
                        .execute("", 0)
                        .sync(),
                    r1,
                ),
                step(w().bind("", "st", &[Some("c")]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "row limit and portal suspension",
            vec![step(
                w().parse("", "select generate_series(1, 5)", &[])
                    .bind("", "", &[])
                    .execute("", 2)
                    .execute("", 2)
                    .execute("", 2)
                    .sync(),
                r1,
            )],
        ),
        (
            "bind error skips to sync",
            vec![
                step(
                    w().parse("pe", "select $1::int", &[])
                        .bind("", "pe", &[Some("abc")])
                        .execute("", 0)
                        .parse("", "select 1", &[])
                        .sync(),
                    r1,
                ),
                step(w().bind("", "pe", &[Some("7")]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "pipelined syncs with an error in the middle",
            vec![step(
                w().parse("", "select 1", &[])
                    .bind("", "", &[])
                    .execute("", 0)
                    .sync()
                    .parse("", "select 1/0", &[])
                    .bind("", "", &[])
                    .execute("", 0)
                    .sync()
                    .parse("", "select 3", &[])
                    .bind("", "", &[])
                    .execute("", 0)
                    .sync(),
                Until::Ready(3),
            )],
        ),
        (
            "close of unknown statement and portal",
            vec![step(
                w().close_statement("never_there")
                    .close_portal("nope")
                    .sync(),
                r1,
            )],
        ),
        (
            "unknown statement",
            vec![
                step(
                    w().bind("", "never_prepared", &[]).execute("", 0).sync(),
                    r1,
                ),
                step(w().describe_statement("never_prepared").sync(), r1),
            ],
        ),
        (
            "flush before sync",
            vec![
                step(
                    w().parse("fl", "select 42", &[]).flush(),
                    Until::Messages(1),
                ),
                step(
                    w().bind("", "fl", &[]).execute("", 0).flush(),
                    Until::Messages(3),
                ),
                step(w().sync(), r1),
            ],
        ),
        (
            "describe a statement with parameters",
            vec![step(
                w().parse(
                    "dp",
                    "select $1::int8 as a, $2::bool as b, $3::bytea as c",
                    &[],
                )
                .describe_statement("dp")
                .sync(),
                r1,
            )],
        ),
        (
            "empty query",
            vec![step(
                w().parse("", "", &[])
                    .bind("", "", &[])
                    .describe_portal("")
                    .execute("", 0)
                    .sync(),
                r1,
            )],
        ),
        (
            "transaction across syncs with a named portal",
            vec![
                step(
                    w().parse("", "begin", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                    r1,
                ),
                step(
                    w().parse("gs", "select generate_series(1, 4)", &[])
                        .bind("p1", "gs", &[])
                        .execute("p1", 1)
                        .sync(),
                    r1,
                ),
                step(w().execute("p1", 2).sync(), r1),
                step(w().close_portal("p1").execute("p1", 1).sync(), r1),
                q("rollback"),
            ],
        ),
        (
            "failed transaction",
            vec![
                q("begin"),
                step(
                    w().parse("", "select 1/0", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                    r1,
                ),
                step(
                    w().parse("", "select 1", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                    r1,
                ),
                q("rollback"),
                step(
                    w().parse("", "select 1", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                    r1,
                ),
            ],
        ),
        (
            "unnamed statement used again after another client used the server",
            vec![
                step(w().parse("", "select $1::int * 2", &[]).sync(), r1),
                step(w().bind("", "", &[Some("21")]).execute("", 0).sync(), r1)
                    .after_other(w().query("select 'other client'")),
                step(w().bind("", "", &[Some("5")]).execute("", 0).sync(), r1).after_other(
                    w().parse("", "select 'other unnamed'", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                ),
            ],
        ),
        (
            "unnamed statement is dropped by a simple query",
            vec![
                step(w().parse("", "select 1", &[]).sync(), r1),
                q("select 2"),
                step(w().bind("", "", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "simple query right after an extended batch",
            vec![step(
                w().parse("mix", "select 1", &[])
                    .bind("", "mix", &[])
                    .execute("", 0)
                    .sync()
                    .query("select 2"),
                Until::Ready(2),
            )],
        ),
    ];
    let mismatches = oracle_mismatches(&env, &scripts).await?;
    ensure!(
        mismatches.is_empty(),
        "extended-protocol replies through Sentinel differ from Postgres's:\n{}",
        mismatches.join("\n")
    );
    Ok(())
}

/// When a named statement exists and when it does not, as Postgres decides it: failed and
/// duplicate Parse, Parse in an aborted transaction, Close, reuse of a name.
#[tokio::test(flavor = "multi_thread")]
async fn statement_lifecycle_matches_postgres() -> Result<()> {
    let env = Env::start("stmtlife", |c| c.pool_size(1)).await?;
    let w = Wire::new;
    let r1 = Until::Ready(1);
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "closed statement is gone",
            vec![
                step(w().parse("cs", "select 1", &[]).sync(), r1),
                step(w().close_statement("cs").sync(), r1),
                step(w().bind("", "cs", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "failed parse leaves no statement behind",
            vec![
                step(w().parse("bad", "selec 1", &[]).sync(), r1),
                step(w().bind("", "bad", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "duplicate statement name",
            vec![
                step(w().parse("dup", "select 1", &[]).sync(), r1),
                step(w().parse("dup", "select 2", &[]).sync(), r1),
                step(w().bind("", "dup", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "name reused after close",
            vec![step(
                w().parse("re", "select 'first'", &[])
                    .bind("", "re", &[])
                    .execute("", 0)
                    .close_statement("re")
                    .parse("re", "select 'second'", &[])
                    .bind("", "re", &[])
                    .execute("", 0)
                    .sync(),
                r1,
            )],
        ),
        (
            "same statement name, different text, in two clients",
            vec![
                step(w().parse("nm", "select 'mine'", &[]).sync(), r1),
                step(w().bind("", "nm", &[]).execute("", 0).sync(), r1).after_other(
                    w().parse("nm", "select 'theirs'", &[])
                        .bind("", "nm", &[])
                        .execute("", 0)
                        .sync(),
                ),
                step(
                    w().describe_statement("nm")
                        .bind("", "nm", &[])
                        .execute("", 0)
                        .sync(),
                    r1,
                )
                .after_other(w().close_statement("nm").sync()),
            ],
        ),
        (
            "statement prepared in a rolled-back transaction survives",
            vec![
                q("begin"),
                step(w().parse("txs", "select 'kept'", &[]).sync(), r1),
                q("rollback"),
                step(w().bind("", "txs", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "parse in an aborted transaction, text known to the server",
            vec![
                // Another client prepares the text first (on the only server).
                q("begin").after_other(
                    w().parse("pre", "select 'shared text'", &[])
                        .bind("", "pre", &[])
                        .execute("", 0)
                        .sync(),
                ),
                q("select 1/0"),
                step(w().parse("ab", "select 'shared text'", &[]).sync(), r1),
                q("rollback"),
                step(w().bind("", "ab", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "another client's unnamed statement is out of reach",
            vec![
                step(w().bind("", "", &[]).execute("", 0).sync(), r1).after_other(
                    w().parse("", "select 'secret of the other client'", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                ),
                step(w().describe_statement("").sync(), r1),
            ],
        ),
        (
            "an error Sentinel raises fails the transaction as Postgres's would",
            vec![
                q("begin"),
                step(
                    w().parse("dupb", "select 1", &[])
                        .parse("dupb", "select 2", &[])
                        .sync(),
                    r1,
                ),
                q("commit"),
            ],
        ),
        (
            "parse and close skipped after an error leave the statements as they were",
            vec![
                step(w().parse("keep", "select 2", &[]).sync(), r1).after_other(
                    w().parse("o", "select 2", &[])
                        .bind("", "o", &[])
                        .execute("", 0)
                        .sync(),
                ),
                step(
                    w().parse("x", "select 1/0", &[])
                        .bind("", "x", &[])
                        .execute("", 0)
                        .parse("later", "select 2", &[])
                        .close_statement("keep")
                        .sync(),
                    r1,
                ),
                step(w().parse("later", "select 2", &[]).sync(), r1),
                step(w().bind("", "keep", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "deallocate inside a transaction",
            vec![
                q("begin"),
                step(w().parse("dt", "select 1", &[]).sync(), r1),
                q("deallocate dt"),
                q("commit"),
                step(w().bind("", "dt", &[]).execute("", 0).sync(), r1),
            ],
        ),
    ];
    let mismatches = oracle_mismatches(&env, &scripts).await?;
    ensure!(
        mismatches.is_empty(),
        "statement lifecycle through Sentinel differs from Postgres's:\n{}",
        mismatches.join("\n")
    );
    Ok(())
}

/// DEALLOCATE and DISCARD in the forms Sentinel does not answer itself (quoted names, inside
/// multi-statement queries, through the extended protocol) and SQL-level PREPARE.
#[tokio::test(flavor = "multi_thread")]
async fn deallocate_and_discard_forms_match_postgres() -> Result<()> {
    let env = Env::start("deallocf", |c| c.pool_size(1)).await?;
    let w = Wire::new;
    let r1 = Until::Ready(1);
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "deallocate a statement by its quoted name",
            vec![
                step(w().parse("Mixed Case", "select 1", &[]).sync(), r1),
                q("deallocate \"Mixed Case\""),
                step(w().bind("", "Mixed Case", &[]).execute("", 0).sync(), r1),
                q("deallocate \"Mixed Case\""),
            ],
        ),
        (
            "deallocate all, then use a statement",
            vec![
                step(w().parse("da", "select 1", &[]).sync(), r1),
                q("deallocate all"),
                step(w().bind("", "da", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "deallocate all inside a multi-statement query",
            vec![
                step(w().parse("dm", "select 1", &[]).sync(), r1),
                q("select 1; deallocate all"),
                step(w().bind("", "dm", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "discard all through the extended protocol",
            vec![
                step(w().parse("keep", "select 1", &[]).sync(), r1),
                step(
                    w().parse("", "discard all", &[])
                        .bind("", "", &[])
                        .execute("", 0)
                        .sync(),
                    r1,
                ),
                step(w().bind("", "keep", &[]).execute("", 0).sync(), r1),
            ],
        ),
        (
            "sql-level prepare and execute in one transaction",
            vec![
                q("begin"),
                q("prepare sq (int) as select $1 * 3"),
                q("execute sq(5)"),
                q("deallocate sq"),
                q("execute sq(5)"),
                q("rollback"),
            ],
        ),
    ];
    let mismatches = oracle_mismatches(&env, &scripts).await?;
    ensure!(
        mismatches.is_empty(),
        "DEALLOCATE / DISCARD through Sentinel differ from Postgres's:\n{}",
        mismatches.join("\n")
    );
    Ok(())
}

/// Several clients prepare the same and different statements and run them many times,
/// interleaved, so statements keep landing on server connections that never saw them.
async fn interleaved_prepared_statements(pool_size: u32) -> Result<()> {
    let env = Env::start("interleave", |c| c.pool_size(pool_size)).await?;
    env.direct()
        .await?
        .batch_execute(
            "create table items (id int primary key, name text); \
             insert into items select g, 'item-' || g from generate_series(1, 100) g",
        )
        .await?;
    let mut tasks = Vec::new();
    for i in 0..6i32 {
        let client = env.client().await?;
        tasks.push(tokio::spawn(async move {
            client_workload(&client, i)
                .await
                .with_context(|| format!("client {i}"))
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(40), task)
            .await
            .context("interleaved workload hung")???;
    }
    Ok(())
}

async fn client_workload(client: &Client, i: i32) -> Result<()> {
    let common = client.prepare("select $1::int4 * 2").await?;
    let own = client
        .prepare(&format!("select $1::text || '-client{i}'"))
        .await?;
    let lookup = client
        .prepare("select name from items where id = $1")
        .await?;
    let typed = client
        .prepare_typed("select $1 + $2", &[Type::INT8, Type::INT8])
        .await?;
    for n in 0..30i32 {
        let v: i32 = client.query_one(&common, &[&n]).await?.get(0);
        ensure!(v == n * 2, "common: {v}");
        let s: String = client.query_one(&own, &[&format!("n{n}")]).await?.get(0);
        ensure!(s == format!("n{n}-client{i}"), "own: {s}");
        let id = (n * 7 + i) % 100 + 1;
        let name: String = client.query_one(&lookup, &[&id]).await?.get(0);
        ensure!(name == format!("item-{id}"), "lookup {id}: {name}");
        let sum: i64 = client
            .query_one(&typed, &[&i64::from(n), &(i64::from(i) * 1000)])
            .await?
            .get(0);
        ensure!(sum == i64::from(n) + i64::from(i) * 1000, "typed: {sum}");
        // Prepared and closed again by tokio-postgres at every call.
        let v: i64 = client
            .query_one("select $1::int8 - 1", &[&i64::from(n)])
            .await?
            .get(0);
        ensure!(v == i64::from(n) - 1, "one-off: {v}");
        if n % 10 == 9 {
            // A statement prepared and dropped (Close) mid-run, and a short transaction.
            let fresh = client
                .prepare(&format!("select $1::int4 + {i} + {n}"))
                .await?;
            let v: i32 = client.query_one(&fresh, &[&n]).await?.get(0);
            ensure!(v == n + i + n, "fresh: {v}");
            drop(fresh);
            client.batch_execute("begin").await?;
            let v: i32 = client.query_one(&common, &[&(n + 1)]).await?.get(0);
            ensure!(v == (n + 1) * 2, "in transaction: {v}");
            let name: String = client.query_one(&lookup, &[&1i32]).await?.get(0);
            ensure!(name == "item-1", "in transaction: {name}");
            client.batch_execute("commit").await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_interleave_on_one_server() -> Result<()> {
    interleaved_prepared_statements(1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_interleave_on_two_servers() -> Result<()> {
    interleaved_prepared_statements(2).await
}

#[derive(Debug, PartialEq)]
struct Typed {
    a: i16,
    b: i32,
    c: i64,
    d: f32,
    e: f64,
    f: bool,
    g: String,
    h: Vec<u8>,
    i: Vec<i32>,
    j: Vec<String>,
    k: Option<i32>,
    l: String,
    m: u32,
}

async fn typed_roundtrip(c: &Client, st: &Statement) -> Result<Typed> {
    let texts = vec!["a,b".to_owned(), "\"q\"".to_owned(), String::new()];
    let row = c
        .query_one(
            st,
            &[
                &-7i16,
                &123_456i32,
                &-9_000_000_000i64,
                &1.5f32,
                &-2.25e10f64,
                &true,
                &"héllo ✓ 'quoted'",
                &vec![0u8, 1, 2, 255],
                &vec![1i32, -2, 3],
                &texts,
                &None::<i32>,
                &"varchar",
                &42u32,
            ],
        )
        .await?;
    Ok(Typed {
        a: row.get(0),
        b: row.get(1),
        c: row.get(2),
        d: row.get(3),
        e: row.get(4),
        f: row.get(5),
        g: row.get(6),
        h: row.get(7),
        i: row.get(8),
        j: row.get(9),
        k: row.get(10),
        l: row.get(11),
        m: row.get(12),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn parameters_of_several_types_match_postgres() -> Result<()> {
    let env = Env::start("types", |c| c.pool_size(2)).await?;
    let sql = "select $1::int2, $2::int4, $3::int8, $4::float4, $5::float8, $6::bool, $7::text, \
               $8::bytea, $9::int4[], $10::text[], $11::int4, $12::varchar, $13::oid";
    let direct = env.direct().await?;
    let dst = direct.prepare(sql).await?;
    let oracle = typed_roundtrip(&direct, &dst).await?;
    let want = Typed {
        a: -7,
        b: 123_456,
        c: -9_000_000_000,
        d: 1.5,
        e: -2.25e10,
        f: true,
        g: "héllo ✓ 'quoted'".into(),
        h: vec![0, 1, 2, 255],
        i: vec![1, -2, 3],
        j: vec!["a,b".into(), "\"q\"".into(), String::new()],
        k: None,
        l: "varchar".into(),
        m: 42,
    };
    ensure!(oracle == want, "direct: {oracle:?}");

    let a = env.client().await?;
    let b = env.client().await?;
    let sa = a.prepare(sql).await?;
    let sb = b.prepare(sql).await?;
    for round in 0..5 {
        let va = typed_roundtrip(&a, &sa).await?;
        ensure!(
            va == oracle,
            "round {round}, client a: {va:?} vs direct {oracle:?}"
        );
        let vb = typed_roundtrip(&b, &sb).await?;
        ensure!(
            vb == oracle,
            "round {round}, client b: {vb:?} vs direct {oracle:?}"
        );
    }
    // Statement parameter types as Postgres inferred them, through Sentinel's Describe.
    ensure!(
        sa.params() == dst.params(),
        "{:?} vs {:?}",
        sa.params(),
        dst.params()
    );
    // Unnamed statements with explicit types (query_typed: Parse "" with types).
    let row = a
        .query_typed_one(
            "select $1 + 1, $2 || '!'",
            &[(&41i32, Type::INT4), (&"hi", Type::TEXT)],
        )
        .await?;
    ensure!(row.get::<_, i32>(0) == 42 && row.get::<_, String>(1) == "hi!");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_follows_its_client_across_server_connections() -> Result<()> {
    let env = Env::start("stmtmove", |c| c.pool_size(2)).await?;
    let a = env.client().await?;
    let b = env.client().await?;
    let c = env.client().await?;
    let sql = "select $1::int4 * 10 + 7, pg_backend_pid()";

    // A prepares on X inside a transaction; B, while X is busy, prepares the same text on Y.
    a.batch_execute("begin").await?;
    let x = backend_pid(&a).await?;
    let sa = a.prepare(sql).await?;
    b.batch_execute("begin").await?;
    let y = backend_pid(&b).await?;
    ensure!(x != y, "pool_size 2 but both transactions on server {x}");
    let sb = b.prepare(sql).await?;
    a.batch_execute("commit").await?;
    // C takes X, the only idle server.
    c.batch_execute("begin").await?;
    ensure!(backend_pid(&c).await? == x, "C did not land on X");
    b.batch_execute("commit").await?;

    // A's statement now runs on Y, where only B prepared that text.
    a.batch_execute("begin").await?;
    let row = a.query_one(&sa, &[&5i32]).await?;
    ensure!(row.get::<_, i32>(0) == 57, "{:?}", row.get::<_, i32>(0));
    ensure!(row.get::<_, i32>(1) == y, "A's transaction is not on Y");
    // A prepares a new statement on Y.
    let su = a
        .prepare("select $1::text || '-u', pg_backend_pid()")
        .await?;
    let row = a.query_one(&su, &[&"in-y"]).await?;
    ensure!(row.get::<_, String>(0) == "in-y-u");
    a.batch_execute("commit").await?;
    // B takes Y; C frees X: A's next statement lands on X, which never saw `su`.
    b.batch_execute("begin").await?;
    ensure!(backend_pid(&b).await? == y, "B did not land on Y");
    c.batch_execute("commit").await?;
    let row = a.query_one(&su, &[&"in-x"]).await?;
    ensure!(
        row.get::<_, String>(0) == "in-x-u",
        "{:?}",
        row.get::<_, String>(0)
    );
    ensure!(row.get::<_, i32>(1) == x, "A's statement did not run on X");
    let row = a.query_one(&sa, &[&6i32]).await?;
    ensure!(row.get::<_, i32>(0) == 67 && row.get::<_, i32>(1) == x);
    // B's statement on Y still works.
    let row = b.query_one(&sb, &[&1i32]).await?;
    ensure!(row.get::<_, i32>(0) == 17 && row.get::<_, i32>(1) == y);
    b.batch_execute("commit").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn deallocate_and_discard_drop_only_that_clients_statements() -> Result<()> {
    let env = Env::start("dealloc", |c| c.pool_size(1)).await?;
    let a = env.client().await?;
    let b = env.client().await?;
    let direct = env.direct().await?;
    let sql = "select $1::int4 + 100";

    let sa = a.prepare(sql).await?;
    let sb = b.prepare(sql).await?;
    let other = a.prepare("select 'other'::text").await?;
    for st in [(&a, &sa), (&b, &sb)] {
        ensure!(st.0.query_one(st.1, &[&1i32]).await?.get::<_, i32>(0) == 101);
    }

    // The oracle: what Postgres says after DEALLOCATE of a protocol-level statement.
    let sd = direct.prepare(sql).await?;
    direct
        .simple_query(&format!("deallocate {}", stmt_name(&sd)?))
        .await?;
    let direct_err = expect_err(
        "direct, after DEALLOCATE",
        direct.query_one(&sd, &[&1i32]).await,
        "26000",
    )?;
    ensure!(
        db_message(&direct_err)
            == format!("prepared statement \"{}\" does not exist", stmt_name(&sd)?),
        "{}",
        db_message(&direct_err)
    );

    // DEALLOCATE name.
    let name = stmt_name(&sa)?;
    a.simple_query(&format!("DEALLOCATE {name}")).await?;
    let err = expect_err(
        "A's statement after DEALLOCATE",
        a.query_one(&sa, &[&1i32]).await,
        "26000",
    )?;
    ensure!(
        db_message(&err) == format!("prepared statement \"{name}\" does not exist"),
        "{}",
        db_message(&err)
    );
    ensure!(b.query_one(&sb, &[&2i32]).await?.get::<_, i32>(0) == 102);
    ensure!(a.query_one(&other, &[]).await?.get::<_, String>(0) == "other");

    // DEALLOCATE PREPARE name, lower case, with a semicolon.
    let s2 = a.prepare(sql).await?;
    a.simple_query(&format!("deallocate prepare {};", stmt_name(&s2)?))
        .await?;
    expect_err(
        "after DEALLOCATE PREPARE",
        a.query_one(&s2, &[&1i32]).await,
        "26000",
    )?;

    // DEALLOCATE ALL.
    let s3 = a.prepare(sql).await?;
    a.batch_execute("DEALLOCATE ALL").await?;
    expect_err(
        "after DEALLOCATE ALL",
        a.query_one(&s3, &[&1i32]).await,
        "26000",
    )?;
    expect_err(
        "other statement after DEALLOCATE ALL",
        a.query_one(&other, &[]).await,
        "26000",
    )?;
    ensure!(b.query_one(&sb, &[&3i32]).await?.get::<_, i32>(0) == 103);

    // DISCARD ALL.
    let s4 = a.prepare(sql).await?;
    ensure!(a.query_one(&s4, &[&4i32]).await?.get::<_, i32>(0) == 104);
    a.batch_execute("DISCARD ALL").await?;
    expect_err(
        "after DISCARD ALL",
        a.query_one(&s4, &[&1i32]).await,
        "26000",
    )?;
    ensure!(b.query_one(&sb, &[&5i32]).await?.get::<_, i32>(0) == 105);
    // DISCARD ALL inside a transaction block is refused, as by Postgres.
    let via = a.batch_execute("begin; discard all").await;
    let oracle = direct.batch_execute("begin; discard all").await;
    let via_code = expect_err("DISCARD ALL in a transaction", via, "25001")?;
    expect_err("direct DISCARD ALL in a transaction", oracle, "25001")?;
    ensure!(db_message(&via_code).contains("DISCARD ALL"));
    a.batch_execute("rollback").await?;
    direct.batch_execute("rollback").await?;

    // The client can prepare the same text again and use it.
    let s5 = a.prepare(sql).await?;
    ensure!(a.query_one(&s5, &[&6i32]).await?.get::<_, i32>(0) == 106);
    ensure!(b.query_one(&sb, &[&7i32]).await?.get::<_, i32>(0) == 107);
    Ok(())
}

/// After `ALTER TABLE` changes what `select *` returns, Postgres refuses to run the old prepared
/// statement (0A000, "cached plan must not change result type") until it is prepared again.
/// Through Sentinel too: the old statement keeps failing (never silently returning the new
/// shape), a client that prepares the text again gets the new shape, and so does another
/// client's fresh prepare (after at most one 0A000, see below).
#[tokio::test(flavor = "multi_thread")]
async fn changed_result_type_behaves_like_postgres() -> Result<()> {
    let env = Env::start("replan", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    direct
        .batch_execute(
            "create table planned (id int, v text); \
             insert into planned values (1, 'one'), (2, 'two')",
        )
        .await?;
    let sql = "select * from planned order by id";
    let w = Wire::new;
    let row = |vals: &[&str]| Reply::Row(vals.iter().map(|v| Some(v.to_string())).collect());
    // Client A speaks the protocol itself, so every reply can be checked.
    let mut a = env.raw().await?;
    let first = a
        .run(&[step(
            w().parse("st", sql, &[])
                .bind("", "st", &[])
                .execute("", 0)
                .sync(),
            Until::Ready(1),
        )])
        .await?;
    let want = vec![
        Reply::ParseComplete,
        Reply::BindComplete,
        row(&["1", "one"]),
        row(&["2", "two"]),
        Reply::Complete("SELECT 2".into()),
        Reply::Ready('I'),
    ];
    ensure!(first[0] == want, "{:?}", first[0]);
    // Client C (tokio-postgres) prepared the text before the change too.
    let c = env.client().await?;
    c.prepare(sql).await?;
    let oracle = env.direct().await?;
    let ost = oracle.prepare(sql).await?;
    oracle.query(&ost, &[]).await?;

    direct
        .batch_execute("alter table planned add column extra int default 7")
        .await?;
    // Postgres itself refuses the old statement now.
    expect_err(
        "direct, after ALTER TABLE",
        oracle.query(&ost, &[]).await,
        "0A000",
    )?;

    let mut problems = Vec::new();
    // A fresh prepare of the same text by another client sees the new shape. Sentinel answers
    // a Parse of a text its server already holds without asking the server, so the first
    // fresh prepare after the change may meet the stale statement once (0A000); that moves
    // the text to a new server statement, and the next prepare is as fresh as Postgres's.
    let b = env.client().await?;
    let mut fresh = None;
    for attempt in 0..2 {
        match within("B prepares", b.prepare(sql)).await? {
            Ok(sb) => {
                fresh = Some(sb);
                break;
            }
            Err(e) if attempt == 0 && sqlstate(&e) == "0A000" => {}
            Err(e) => problems.push(format!(
                "another client's fresh prepare (Parse+Describe) of the same text failed: {} {} \
                 (directly a fresh prepare works)",
                sqlstate(&e),
                db_message(&e)
            )),
        }
    }
    if let Some(sb) = fresh {
        if sb.columns().len() != 3 {
            problems.push(format!(
                "a fresh prepare through Sentinel describes {} columns, Postgres 3",
                sb.columns().len()
            ));
        }
        match within("B executes", b.query(&sb, &[])).await? {
            Ok(rows) if rows.len() == 2 && rows[0].get::<_, i32>(2) == 7 => {}
            Ok(rows) => problems.push(format!("fresh statement returned {rows:?}")),
            Err(e) => problems.push(format!(
                "a freshly prepared statement failed: {} {}",
                sqlstate(&e),
                db_message(&e)
            )),
        }
    }
    // A's old statement keeps failing with 0A000, as it does directly: running it with the
    // table's new shape would hand A rows it did not describe.
    for attempt in 0..3 {
        let replies = a
            .run(&[step(
                w().bind("", "st", &[]).execute("", 0).sync(),
                Until::Ready(1),
            )])
            .await?
            .remove(0);
        match replies.first() {
            Some(Reply::Error(e)) if e.code == "0A000" => {}
            _ => problems.push(format!(
                "A's attempt {attempt} got {replies:?}, Postgres 0A000"
            )),
        }
    }
    // C prepares the text again, as a client does after 0A000: the new shape.
    match within("C prepares again", c.prepare(sql)).await? {
        Ok(st) => match within("C executes", c.query(&st, &[])).await? {
            Ok(rows) if rows.len() == 2 && rows[1].get::<_, i32>(2) == 7 => {}
            Ok(rows) => problems.push(format!("C's new statement returned {rows:?}")),
            Err(e) => problems.push(format!("C's new statement failed: {e}")),
        },
        Err(e) => problems.push(format!("C's new prepare failed: {e}")),
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_queries_on_one_client() -> Result<()> {
    let env = Env::start("pipeline", |c| c.pool_size(1)).await?;
    let a = env.client().await?;
    let b = env.client().await?;
    let sa = a.prepare("select $1::int4 * 3").await?;
    let sb = b.prepare("select $1::text || '!'").await?;

    // tokio-postgres pipelines concurrent queries on one connection.
    // 2000 queries are 6000 replies outstanding at once, more than Sentinel keeps track of
    // before it stops reading the client.
    let fa = futures::future::try_join_all((0..2000i32).map(|i| {
        let (a, sa) = (&a, &sa);
        async move {
            Ok::<_, tokio_postgres::Error>((i, a.query_one(sa, &[&i]).await?.get::<_, i32>(0)))
        }
    }));
    let fb = futures::future::try_join_all((0..100i32).map(|i| {
        let (b, sb) = (&b, &sb);
        async move {
            let s = i.to_string();
            Ok::<_, tokio_postgres::Error>((i, b.query_one(sb, &[&s]).await?.get::<_, String>(0)))
        }
    }));
    let (ra, rb) = within("pipelined queries", futures::future::try_join(fa, fb)).await??;
    for (i, v) in ra {
        ensure!(v == i * 3, "a[{i}] = {v}");
    }
    for (i, v) in rb {
        ensure!(v == format!("{i}!"), "b[{i}] = {v}");
    }

    // Simple and extended queries pipelined together, and an error in the middle of a
    // pipeline, compared with the same pipeline on a direct connection.
    let direct = env.direct().await?;
    let div = "select 10 / $1::int4";
    async fn mixed(c: &Client, div: &str) -> Result<Vec<String>> {
        let st = c.prepare(div).await?;
        let (r1, r2, r3, r4) = futures::join!(
            c.query_one(&st, &[&2i32]),
            c.query_one(&st, &[&0i32]),
            c.simple_query("select 'simple'"),
            c.query_one(&st, &[&5i32]),
        );
        let show = |r: Result<tokio_postgres::Row, tokio_postgres::Error>| match r {
            Ok(row) => row.get::<_, i32>(0).to_string(),
            Err(e) => sqlstate(&e),
        };
        Ok(vec![
            show(r1),
            show(r2),
            r3.map(|m| format!("{:?}", simple_rows(&m)))
                .unwrap_or_else(|e| sqlstate(&e)),
            show(r4),
        ])
    }
    let via = within("mixed pipeline", mixed(&a, div)).await??;
    let oracle = mixed(&direct, div).await?;
    ensure!(
        via == oracle,
        "pipeline through Sentinel {via:?}, direct {oracle:?}"
    );
    ensure!(via[1] == "22012", "{via:?}");
    Ok(())
}

// === transactions ===

#[tokio::test(flavor = "multi_thread")]
async fn transactions_commit_rollback_and_savepoints() -> Result<()> {
    let env = Env::start("tx", |c| {
        c.pool_size(1).pool_wait_timeout(Duration::from_millis(300))
    })
    .await?;
    let direct = env.direct().await?;
    direct.batch_execute("create table txt (x int)").await?;
    let mut a = env.client().await?;
    let count = |sql: &'static str| {
        let direct = &direct;
        async move { scalar_str(direct, sql).await }
    };

    let tx = a.transaction().await?;
    tx.execute("insert into txt values (1)", &[]).await?;
    ensure!(
        count("select count(*) from txt").await? == "0",
        "uncommitted row visible"
    );
    tx.commit().await?;
    ensure!(count("select count(*) from txt").await? == "1");

    let tx = a.transaction().await?;
    tx.execute("insert into txt values (2)", &[]).await?;
    tx.rollback().await?;
    ensure!(count("select count(*) from txt").await? == "1");

    a.batch_execute(
        "begin; insert into txt values (10); savepoint s; insert into txt values (20); \
         rollback to savepoint s; insert into txt values (30); release savepoint s; commit",
    )
    .await?;
    ensure!(count("select string_agg(x::text, ',' order by x) from txt").await? == "1,10,30");

    // Nested transaction API (savepoints through tokio-postgres).
    let mut tx = a.transaction().await?;
    tx.execute("insert into txt values (40)", &[]).await?;
    {
        let sp = tx.savepoint("inner_sp").await?;
        sp.execute("insert into txt values (50)", &[]).await?;
        sp.rollback().await?;
    }
    tx.commit().await?;
    ensure!(count("select string_agg(x::text, ',' order by x) from txt").await? == "1,10,30,40");

    // A failed transaction: status E, statements refused until ROLLBACK, which ends it.
    let mut raw = env.raw().await?;
    let mut oracle = env.raw_direct().await?;
    for conn in [&mut raw, &mut oracle] {
        let statuses = async {
            let mut seen = Vec::new();
            for sql in [
                "begin",
                "insert into txt values (99)",
                "select 1/0",
                "select 1",
                "rollback",
            ] {
                let replies = conn.query(sql).await?;
                let status = replies.last().cloned();
                let code = first_error(&replies).map(|e| e.code.clone());
                seen.push(format!("{sql}: {status:?} {code:?}"));
            }
            Ok::<_, anyhow::Error>(seen)
        }
        .await?;
        let want = vec![
            "begin: Some(Ready('T')) None",
            "insert into txt values (99): Some(Ready('T')) None",
            "select 1/0: Some(Ready('E')) Some(\"22012\")",
            "select 1: Some(Ready('E')) Some(\"25P02\")",
            "rollback: Some(Ready('I')) None",
        ];
        ensure!(statuses == want, "{statuses:#?}");
    }
    ensure!(count("select count(*) from txt where x = 99").await? == "0");

    // While a client sits in a failed transaction it still holds the only server.
    let b = env.client().await?;
    a.batch_execute("begin").await?;
    expect_err(
        "a failed statement",
        a.batch_execute("select 1/0").await,
        "22012",
    )?;
    expect_err(
        "another client during A's failed transaction",
        b.simple_query("select 1").await,
        "53300",
    )?;
    expect_err(
        "in failed transaction",
        a.simple_query("select 1").await,
        "25P02",
    )?;
    a.batch_execute("rollback").await?;
    ensure!(scalar_str(&b, "select 'b works'").await? == "b works");
    ensure!(scalar_str(&a, "select 'a works'").await? == "a works");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_server_is_shared_between_transactions_not_within_one() -> Result<()> {
    let wait = Duration::from_millis(500);
    let env = Env::start("txpool", |c| c.pool_size(1).pool_wait_timeout(wait)).await?;
    let direct = env.direct().await?;
    direct
        .batch_execute("create table shared_t (x int)")
        .await?;
    let a = env.client().await?;
    let b = env.client().await?;

    let pid_a = backend_pid(&a).await?;
    let pid_b = backend_pid(&b).await?;
    ensure!(pid_a == pid_b, "pool_size 1 but pids {pid_a} and {pid_b}");

    a.batch_execute("begin; insert into shared_t values (1)")
        .await?;
    ensure!(backend_pid(&a).await? == pid_a);
    // During A's transaction B cannot get the server: it waits pool_wait_timeout, then 53300.
    let started = Instant::now();
    let err = expect_err(
        "B's simple query during A's transaction",
        b.simple_query("select 1").await,
        "53300",
    )?;
    ensure!(
        started.elapsed() >= wait - Duration::from_millis(50),
        "53300 after {:?}, before pool_wait_timeout {wait:?}: {err}",
        started.elapsed()
    );
    expect_err(
        "B's extended query during A's transaction",
        b.query_one("select $1::int4", &[&1i32]).await,
        "53300",
    )?;
    a.batch_execute("insert into shared_t values (2); commit")
        .await?;

    // Between A's transactions B uses the same server, and sees A's committed rows.
    let row = b
        .query_one("select count(*)::int4, pg_backend_pid() from shared_t", &[])
        .await?;
    ensure!(
        row.get::<_, i32>(0) == 2,
        "B sees {} rows",
        row.get::<_, i32>(0)
    );
    ensure!(row.get::<_, i32>(1) == pid_a, "B ran on another server");
    for round in 0..3 {
        a.batch_execute("begin").await?;
        ensure!(backend_pid(&a).await? == pid_a, "round {round}");
        a.batch_execute("commit").await?;
        ensure!(backend_pid(&b).await? == pid_a, "round {round}");
    }
    Ok(())
}

// === COPY ===

fn copy_rows(n: i32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(format!("{i}\tname-{i}\t{i}.5\n").as_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_round_trip() -> Result<()> {
    let env = Env::start("copy", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    direct
        .batch_execute("create table copied (id int primary key, name text, score float8)")
        .await?;
    let a = env.client().await?;
    let b = env.client().await?;

    let data = copy_rows(5000);
    let sink = a
        .copy_in("copy copied (id, name, score) from stdin")
        .await?;
    let mut sink = pin!(sink);
    for chunk in data.chunks(10_000) {
        sink.send(Bytes::copy_from_slice(chunk)).await?;
    }
    let n = within("finishing COPY IN", sink.as_mut().finish()).await??;
    ensure!(n == 5000, "COPY reported {n} rows");
    let check = scalar_str(
        &direct,
        "select count(*) || ' ' || sum(id) || ' ' || sum(score) from copied",
    )
    .await?;
    ensure!(check == "5000 12502500 12505000", "direct sees {check}");
    // Another client in between, on the same single server connection.
    ensure!(scalar_str(&b, "select count(*) from copied").await? == "5000");

    for sql in [
        "copy (select * from copied order by id) to stdout",
        "copy (select * from copied where id % 7 = 0 order by id) to stdout with (format csv, header)",
    ] {
        let via: Vec<Bytes> = within(sql, a.copy_out(sql).await?.try_collect())
            .await?
            .context(sql)?;
        let oracle: Vec<Bytes> = direct.copy_out(sql).await?.try_collect().await?;
        ensure!(
            via.concat() == oracle.concat(),
            "{sql}: {} bytes through Sentinel, {} directly",
            via.concat().len(),
            oracle.concat().len()
        );
    }
    let first = a
        .copy_out("copy (select * from copied order by id limit 1) to stdout")
        .await?
        .try_collect::<Vec<Bytes>>()
        .await?
        .concat();
    ensure!(
        first == b"1\tname-1\t1.5\n",
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    ensure!(scalar_str(&b, "select 'b still fine'").await? == "b still fine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_copy_leaves_the_connection_usable() -> Result<()> {
    let env = Env::start("copyfail", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    direct
        .batch_execute("create table copied (id int primary key, name text, score float8)")
        .await?;
    let a = env.client().await?;
    let b = env.client().await?;

    // Bad data in the middle of a few thousand rows.
    let mut data = copy_rows(1500);
    data.extend_from_slice(b"oops\tnot a number\tx\n");
    data.extend_from_slice(&copy_rows(3000)[1500 * 20..]);
    let result = async {
        let sink = a
            .copy_in("copy copied (id, name, score) from stdin")
            .await?;
        let mut sink = pin!(sink);
        for chunk in data.chunks(8192) {
            sink.send(Bytes::copy_from_slice(chunk)).await?;
        }
        sink.as_mut().finish().await
    };
    let result = within("COPY with bad data", result).await?;
    expect_err("COPY with bad data", result, "22P02")?;
    ensure!(scalar_str(&direct, "select count(*) from copied").await? == "0");
    ensure!(within("A after the failed COPY", scalar_str(&a, "select 'a ok'")).await?? == "a ok");
    ensure!(within("B after A's failed COPY", scalar_str(&b, "select 'b ok'")).await?? == "b ok");

    // A COPY the client abandons (the sink is dropped: CopyFail).
    {
        let sink = a
            .copy_in("copy copied (id, name, score) from stdin")
            .await?;
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from_static(b"1\tone\t1\n")).await?;
        sink.flush().await?;
    }
    ensure!(
        within(
            "A after an abandoned COPY",
            scalar_str(&a, "select 'a again'")
        )
        .await??
            == "a again"
    );
    ensure!(
        within(
            "B after A's abandoned COPY",
            scalar_str(&b, "select 'b again'")
        )
        .await??
            == "b again"
    );
    ensure!(scalar_str(&direct, "select count(*) from copied").await? == "0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_protocol_matches_postgres() -> Result<()> {
    let env = Env::start("copyraw", |c| c.pool_size(1)).await?;
    env.direct()
        .await?
        .batch_execute("create table copy_raw (x int)")
        .await?;
    let w = Wire::new;
    let extended_copy = || {
        w().parse("", "copy copy_raw (x) from stdin", &[])
            .bind("", "", &[])
            .execute("", 0)
            .sync()
    };
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "simple-query COPY in, bad data, COPY out",
            vec![
                q("truncate copy_raw"),
                step(w().query("copy copy_raw (x) from stdin"), Until::CopyIn),
                step(w().copy_data(b"1\n2\n").copy_done(), Until::Ready(1)),
                step(w().query("copy copy_raw (x) from stdin"), Until::CopyIn),
                step(w().copy_data(b"3\nx\n").copy_done(), Until::Ready(1)),
                q("copy copy_raw to stdout"),
                q("select count(*) from copy_raw"),
            ],
        ),
        (
            "extended-protocol COPY in",
            vec![
                q("truncate copy_raw"),
                step(extended_copy(), Until::CopyIn),
                step(
                    w().copy_data(b"1\n2\n3\n").copy_done().sync(),
                    Until::Ready(1),
                ),
                q("select count(*) from copy_raw"),
            ],
        ),
        (
            "extended-protocol COPY in, client sends CopyFail",
            vec![
                q("truncate copy_raw"),
                step(extended_copy(), Until::CopyIn),
                step(
                    w().copy_data(b"1\n").copy_fail("client gave up").sync(),
                    Until::Ready(1),
                ),
                q("select count(*) from copy_raw"),
            ],
        ),
        (
            "extended-protocol COPY in, error while the client is still sending",
            vec![
                q("truncate copy_raw"),
                step(extended_copy(), Until::CopyIn),
                // The server reports the bad row at once; the client has not finished yet.
                step(w().copy_data(b"1\nbad\n").flush(), Until::Messages(1)),
                step(w().copy_data(b"3\n").copy_done().sync(), Until::Ready(1)),
                q("select count(*) from copy_raw"),
            ],
        ),
    ];
    let mismatches = oracle_mismatches(&env, &scripts).await?;
    // Whatever happened above, another client must still get a working server connection.
    let after = async {
        let c = env.client().await?;
        scalar_str(&c, "select 'fresh client ok'").await
    };
    let after = tokio::time::timeout(STEP_TIMEOUT, after).await;
    let mut problems = mismatches;
    match after {
        Ok(Ok(v)) if v == "fresh client ok" => {}
        Ok(Ok(v)) => problems.push(format!("- a fresh client got {v:?}")),
        Ok(Err(e)) => problems.push(format!("- a fresh client failed: {e:#}")),
        Err(_) => problems.push(
            "- a fresh client's `select 1` hung: the pooled server connection is stuck".into(),
        ),
    }
    ensure!(
        problems.is_empty(),
        "COPY through Sentinel differs from Postgres:\n{}",
        problems.join("\n")
    );
    Ok(())
}

// === cancel ===

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_running_query() -> Result<()> {
    let env = Env::start("cancel", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    let a = env.client().await?;
    let token = a.cancel_token();
    let sql = "select pg_sleep(30)";
    let started = Instant::now();
    let running = tokio::spawn(async move {
        let r = a.simple_query(sql).await;
        (a, r)
    });
    wait_for_running(&direct, sql).await?;
    token.cancel_query(NoTls).await?;
    let (a, r) = within("the cancelled query", running).await??;
    expect_err("cancelled query", r, "57014")?;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    ensure!(scalar_str(&a, "select 'after cancel'").await? == "after cancel");
    // Nothing is left sleeping on the server (the backend reports itself idle right after it
    // sends the error, so allow it a moment).
    poll_until(
        "no backend running pg_sleep(30)",
        Duration::from_secs(2),
        || async {
            let left = scalar_str(
                &direct,
                "select count(*) from pg_stat_activity where datname = current_database() \
                 and state = 'active' and query = 'select pg_sleep(30)'",
            )
            .await?;
            Ok((left == "0").then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_clients_cancel_does_not_hit_another_clients_query() -> Result<()> {
    let env = Env::start("cancelx", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    let a = env.client().await?;
    let b = env.client().await?;
    // A has used the only server; now A is idle and B runs on that same server.
    let pid_a = backend_pid(&a).await?;
    let token_a = a.cancel_token();
    let sql = "select pg_sleep(2)::text, pg_backend_pid()";
    let running = tokio::spawn(async move {
        let started = Instant::now();
        let r = b.query_one(sql, &[]).await;
        (b, r, started.elapsed())
    });
    let server = wait_for_running(&direct, sql).await?;
    ensure!(
        server == pid_a,
        "B runs on {server}, not on A's former server {pid_a}"
    );
    token_a.cancel_query(NoTls).await?;
    let (b, r, took) = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .context("B's query hung")??;
    let row = r.map_err(|e| {
        anyhow!(
            "B's query failed ({}): A's cancel key reached B's query: {e}",
            sqlstate(&e)
        )
    })?;
    ensure!(row.get::<_, i32>(1) == pid_a);
    ensure!(
        took >= Duration::from_millis(1900),
        "B's pg_sleep(2) took {took:?}"
    );
    ensure!(scalar_str(&b, "select 'b'").await? == "b");
    ensure!(scalar_str(&a, "select 'a'").await? == "a");
    Ok(())
}

// === notices and notifications ===

#[tokio::test(flavor = "multi_thread")]
async fn notices_reach_the_client() -> Result<()> {
    let env = Env::start("notice", |c| c.pool_size(1)).await?;
    let sql = "do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$";
    let (via, mut via_rx, _) = connect_collecting(&env.dsn(""), &[]).await?;
    let (direct, mut direct_rx, _) = connect_collecting(&env.direct_dsn(""), &[]).await?;
    within("DO block", via.batch_execute(sql)).await??;
    direct.batch_execute(sql).await?;
    let got = drain_notices(&mut via_rx);
    let want = drain_notices(&mut direct_rx);
    ensure!(
        want == ["NOTICE 00000 hello 42", "WARNING 01000 careful"],
        "direct: {want:?}"
    );
    ensure!(got == want, "through Sentinel: {got:?}, directly: {want:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_notify_in_session_mode() -> Result<()> {
    let env = Env::start("notify", |c| c.pool_mode(PoolMode::Session).pool_size(2)).await?;
    let (listener, mut rx, _) = connect_collecting(&env.dsn(""), &[]).await?;
    listener.batch_execute("listen sentinel_chan").await?;
    let listener_pid = backend_pid(&listener).await?;
    let notifier = env.client().await?;
    notifier
        .batch_execute("notify sentinel_chan, 'first'")
        .await?;
    notifier
        .batch_execute("begin; notify sentinel_chan, 'in-tx'; commit")
        .await?;
    notifier
        .simple_query("select pg_notify('sentinel_chan', 'via-function')")
        .await?;
    // The listener is idle: the notifications arrive on their own.
    for want in ["first", "in-tx", "via-function"] {
        let n = next_notification(&mut rx).await?;
        ensure!(
            n.channel() == "sentinel_chan" && n.payload() == want,
            "got {}:{} want {want}",
            n.channel(),
            n.payload()
        );
    }
    // Once the listener is gone, the next client of its server connection does not get its
    // notifications: it listens on another channel, and the notifications for the old one,
    // sent first, must not arrive before the one for its own.
    drop(listener);
    let (next, mut next_rx, _) = poll_until(
        "a client on the listener's old server",
        Duration::from_secs(10),
        || async {
            match connect_collecting(&env.dsn(""), &[]).await {
                Ok(c) => Ok(Some(c)),
                Err(_) => Ok(None),
            }
        },
    )
    .await?;
    ensure!(
        backend_pid(&next).await? == listener_pid,
        "the new session did not get the old listener's server"
    );
    next.batch_execute("listen other_chan").await?;
    notifier
        .batch_execute("notify sentinel_chan, 'stale'; notify other_chan, 'fresh'")
        .await?;
    let n = next_notification(&mut next_rx).await?;
    ensure!(
        n.channel() == "other_chan" && n.payload() == "fresh",
        "the next session got {}:{}, a notification for the previous session's LISTEN",
        n.channel(),
        n.payload()
    );
    Ok(())
}

// === parameters ===

/// (application_name, search_path, schema of the `marker` table the search path finds, pid).
async fn settings(c: &Client) -> Result<(String, String, String, i32)> {
    let row = within(
        "settings",
        c.query_one(
            "select current_setting('application_name'), current_setting('search_path'), \
             coalesce((select n.nspname::text from pg_class r join pg_namespace n \
                       on n.oid = r.relnamespace where r.oid = to_regclass('marker')), '<none>'), \
             pg_backend_pid()",
            &[],
        ),
    )
    .await?
    .context("reading settings")?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_parameters_follow_each_client() -> Result<()> {
    let env = Env::start("params", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    direct
        .batch_execute(
            "create schema sch_a; create schema sch_b; \
             create table sch_a.marker (v text); insert into sch_a.marker values ('a'); \
             create table sch_b.marker (v text); insert into sch_b.marker values ('b')",
        )
        .await?;
    let default_work_mem = scalar_str(&direct, "show work_mem").await?;
    let a_params = "application_name=app_a options='-c search_path=sch_a'";
    let b_params = "application_name=app_b options='-c search_path=sch_b'";
    // What Postgres makes of the same startup parameters.
    let oracle_a = settings(&env.direct_with(a_params).await?).await?;
    let oracle_b = settings(&env.direct_with(b_params).await?).await?;
    ensure!(
        oracle_a.2 == "sch_a" && oracle_b.2 == "sch_b",
        "{oracle_a:?} {oracle_b:?}"
    );

    let (a, _, reported_a) = connect_collecting(&env.dsn(a_params), &["application_name"]).await?;
    let (b, _, reported_b) = connect_collecting(&env.dsn(b_params), &["application_name"]).await?;
    ensure!(
        reported_a["application_name"].as_deref() == Some("app_a")
            && reported_b["application_name"].as_deref() == Some("app_b"),
        "reported at login: {reported_a:?} {reported_b:?}"
    );
    let mut shared_pid = None;
    for round in 0..4 {
        for (name, c, oracle) in [("a", &a, &oracle_a), ("b", &b, &oracle_b)] {
            let got = settings(c).await?;
            ensure!(
                (&got.0, &got.1, &got.2) == (&oracle.0, &oracle.1, &oracle.2),
                "round {round}, client {name}: through Sentinel (application_name, search_path, \
                 marker) = {:?}, directly {:?}",
                (&got.0, &got.1, &got.2),
                (&oracle.0, &oracle.1, &oracle.2)
            );
            ensure!(
                *shared_pid.get_or_insert(got.3) == got.3,
                "pool_size 1 but two servers"
            );
        }
    }

    // A SET of a reported setting follows the client to its next transactions; a SET of
    // another setting never reaches the other client.
    a.batch_execute("set application_name = 'app_a2'; set work_mem = '77MB'")
        .await?;
    for round in 0..2 {
        let (app_b, ..) = settings(&b).await?;
        ensure!(
            app_b == "app_b",
            "round {round}: B sees application_name {app_b}"
        );
        let wm = scalar_str(&b, "show work_mem").await?;
        ensure!(wm == default_work_mem, "A's work_mem leaked to B: {wm}");
        let (app_a, path_a, marker_a, _) = settings(&a).await?;
        ensure!(
            app_a == "app_a2" && path_a == oracle_a.1 && marker_a == "sch_a",
            "round {round}: A sees {app_a} {path_a} {marker_a}"
        );
    }
    Ok(())
}

/// A list-valued setting in the startup `options` means what it means to Postgres: the
/// search path `sch_a,public` is two schemas, not one schema named "sch_a,public".
#[tokio::test(flavor = "multi_thread")]
async fn startup_search_path_list_matches_postgres() -> Result<()> {
    let env = Env::start("pathlist", |c| c.pool_size(1)).await?;
    env.direct()
        .await?
        .batch_execute(
            "create schema sch_a; create table sch_a.marker (v text); \
             create table public.only_public (v text)",
        )
        .await?;
    let params = "options='-c search_path=sch_a,public'";
    let sql = "select current_setting('search_path'), \
               to_regclass('marker') is not null, to_regclass('only_public') is not null";
    let mut seen = Vec::new();
    for c in [
        env.client_with(params).await?,
        env.direct_with(params).await?,
    ] {
        let row = within(sql, c.query_one(sql, &[])).await??;
        seen.push((
            row.get::<_, String>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
        ));
    }
    ensure!(
        seen[1] == ("sch_a,public".to_owned(), true, true),
        "directly: {:?}",
        seen[1]
    );
    ensure!(
        seen[0] == seen[1],
        "(search_path, sch_a.marker visible, public.only_public visible): through Sentinel {:?}, \
         directly {:?}",
        seen[0],
        seen[1]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_and_discard_restore_startup_values_like_postgres() -> Result<()> {
    let env = Env::start("resetall", |c| c.pool_size(1)).await?;
    let params = "application_name=startup_app options='-c search_path=startup_path'";
    let mut problems = Vec::new();
    for reset in [
        "reset all",
        "discard all",
        "reset application_name; reset search_path",
    ] {
        let mut seen = Vec::new();
        for via in [true, false] {
            let c = if via {
                env.client_with(params).await?
            } else {
                env.direct_with(params).await?
            };
            c.batch_execute("set application_name = 'changed'; set search_path = changed_path")
                .await?;
            c.batch_execute(reset).await?;
            let app = scalar_str(&c, "show application_name").await?;
            let path = scalar_str(&c, "show search_path").await?;
            // The same inside an explicit transaction, where the server connection is held
            // and the server itself runs the RESET. (A read in the same multi-statement query
            // as the RESET still sees the server's defaults through Sentinel: changing what
            // runs inside one query string needs the SQL parser the tenancy work brings.)
            c.batch_execute("set application_name = 'again'; set search_path = again_path")
                .await?;
            c.batch_execute("begin").await?;
            let same_tx = match c.batch_execute(reset).await {
                Ok(()) => {
                    let msgs = c
                        .simple_query("show application_name; show search_path")
                        .await?;
                    c.batch_execute("commit").await?;
                    format!("{:?}", simple_rows(&msgs))
                }
                Err(e) => {
                    c.batch_execute("rollback").await?;
                    sqlstate(&e)
                }
            };
            seen.push((app, path, same_tx));
        }
        if seen[0] != seen[1] {
            problems.push(format!(
                "after {reset:?}: through Sentinel (application_name, search_path, \
                 in one transaction) = {:?}, directly {:?}",
                seen[0], seen[1]
            ));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn parameter_status_matches_postgres() -> Result<()> {
    let env = Env::start("pstatus", |c| c.pool_size(1)).await?;
    let names = [
        "server_version",
        "server_encoding",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
        "application_name",
        "is_superuser",
        "session_authorization",
        "default_transaction_read_only",
    ];
    // A client with other settings uses the server first.
    let other = env
        .client_with("application_name=other options='-c DateStyle=German -c TimeZone=Asia/Tokyo'")
        .await?;
    other.simple_query("select 1").await?;
    let extra = "application_name=ps_app";
    let (_via, _, via) = connect_collecting(&env.dsn(extra), &names).await?;
    let (_direct, _, direct) = connect_collecting(&env.direct_dsn(extra), &names).await?;
    ensure!(
        direct.values().all(Option::is_some),
        "Postgres did not report all of {names:?}: {direct:?}"
    );
    ensure!(
        via == direct,
        "reported through Sentinel {via:?}\ndirectly {direct:?}"
    );
    Ok(())
}

// === large results ===

/// What a reader of the large result has seen so far.
#[derive(Default)]
struct Progress {
    rows: u64,
    complete: Option<Reply>,
    ready: bool,
}

impl Progress {
    /// Takes every whole message out of the connection's buffer.
    fn consume(&mut self, raw: &mut RawConn) -> Result<()> {
        while let Some((tag, body)) = raw.buffered_frame()? {
            match tag {
                b'D' => {
                    ensure!(body.len() == 2 + 4 + 1000, "row of {} bytes", body.len());
                    self.rows += 1;
                }
                b'T' => {}
                b'C' => self.complete = Some(decode(tag, &body)?),
                b'Z' => self.ready = true,
                _ => bail!("unexpected reply {:?}", decode(tag, &body)?),
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_result_to_a_slow_reader_is_backpressured() -> Result<()> {
    const ROWS: u64 = 200_000;
    const SQL: &str = "select repeat('x', 1000) from generate_series(1, 200000)";
    let env = Env::start("slowread", |c| c.pool_size(1)).await?;
    let direct = env.direct().await?;
    let pid = env.sentinel.pid();
    // DataRow: tag, length, column count, value length, value.
    let result_bytes = ROWS * (1 + 4 + 2 + 4 + 1000);
    let limit = result_bytes / 2;

    let mut raw = env.raw().await?;
    let rss_before = rss_bytes(pid)?;
    raw.write(&Wire::new().query(SQL)).await?;
    // The client reads nothing: Postgres must end up blocked writing to Sentinel.
    let blocked = poll_until(
        "the query to block or finish",
        Duration::from_secs(20),
        || async {
            let rows = direct
                .query(
                    "select wait_event, state from pg_stat_activity \
                 where datname = current_database() and pid <> pg_backend_pid() and query = $1",
                    &[&SQL],
                )
                .await?;
            Ok(rows.first().and_then(|r| {
                let wait: Option<String> = r.get(0);
                let state: Option<String> = r.get(1);
                if wait.as_deref() == Some("ClientWrite") {
                    Some(true)
                } else if state.as_deref() != Some("active") {
                    Some(false)
                } else {
                    None
                }
            }))
        },
    )
    .await?;
    let rss_blocked = rss_bytes(pid)?;
    ensure!(
        rss_blocked < limit,
        "Sentinel's RSS grew from {rss_before} to {rss_blocked} bytes while the client read \
         nothing (result is {result_bytes} bytes)"
    );
    ensure!(
        blocked,
        "Postgres finished sending the whole result while the client read nothing: Sentinel \
         buffered it (RSS {rss_blocked} bytes)"
    );

    // Read slowly for a while, then at full speed; RSS stays low all along.
    let mut progress = Progress::default();
    let mut max_rss = rss_blocked;
    for i in 0..150u32 {
        raw.read_some(32 * 1024).await?;
        progress.consume(&mut raw)?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        if i.is_multiple_of(10) {
            max_rss = max_rss.max(rss_bytes(pid)?);
        }
    }
    let mut chunks = 0u64;
    while !progress.ready {
        raw.read_some(1 << 20).await?;
        progress.consume(&mut raw)?;
        chunks += 1;
        if chunks.is_multiple_of(16) {
            max_rss = max_rss.max(rss_bytes(pid)?);
        }
    }
    let Progress { rows, complete, .. } = progress;
    eprintln!(
        "Sentinel RSS: {rss_before} before, {rss_blocked} with Postgres blocked, {max_rss} at \
         most; result {result_bytes} bytes"
    );
    ensure!(rows == ROWS, "read {rows} rows, want {ROWS}");
    ensure!(
        complete == Some(Reply::Complete(format!("SELECT {ROWS}"))),
        "{complete:?}"
    );
    ensure!(
        max_rss < limit,
        "Sentinel's RSS reached {max_rss} bytes for a {result_bytes}-byte result"
    );
    Ok(())
}

// === session mode ===

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_keeps_the_server_and_resets_it_at_disconnect() -> Result<()> {
    let env = Env::start("session", |c| {
        c.pool_mode(PoolMode::Session)
            .pool_size(1)
            .pool_wait_timeout(Duration::from_millis(500))
    })
    .await?;
    let direct = env.direct().await?;
    let default_work_mem = scalar_str(&direct, "show work_mem").await?;
    let a = env.client().await?;
    let pid_a = backend_pid(&a).await?;
    for round in 0..3 {
        a.batch_execute("begin; select 1; commit").await?;
        ensure!(
            backend_pid(&a).await? == pid_a,
            "round {round}: session changed server"
        );
    }
    a.batch_execute(
        "set work_mem = '77MB'; create temp table session_tmp (x int); listen session_chan; \
         prepare sql_stmt as select 42",
    )
    .await?;
    // Session state lives on across transactions within the session.
    ensure!(scalar_str(&a, "show work_mem").await? == "77MB");
    ensure!(scalar_str(&a, "execute sql_stmt").await? == "42");
    ensure!(scalar_str(&a, "select count(*) from session_tmp").await? == "0");

    // The only server belongs to A's session: another client waits, then gets 53300.
    let refused = connect_dsn(&env.dsn("")).await;
    expect_err(
        "a second session while A holds the only server",
        refused,
        "53300",
    )?;

    drop(a);
    let b = poll_until("a client after A left", Duration::from_secs(10), || async {
        match connect_dsn(&env.dsn("")).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if sqlstate(&e) == "53300" => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    ensure!(backend_pid(&b).await? == pid_a, "the server was not reused");
    let wm = scalar_str(&b, "show work_mem").await?;
    ensure!(wm == default_work_mem, "A's work_mem leaked: {wm}");
    let tmp = scalar(&b, "select to_regclass('pg_temp.session_tmp')::text").await?;
    ensure!(tmp.is_none(), "A's temp table is visible: {tmp:?}");
    let listening = scalar_str(&b, "select count(*) from pg_listening_channels()").await?;
    ensure!(listening == "0", "A's LISTEN survived");
    let prepared = scalar_str(
        &b,
        "select count(*) from pg_prepared_statements where from_sql",
    )
    .await?;
    ensure!(prepared == "0", "A's SQL PREPARE survived");
    Ok(())
}

// === authentication and limits ===

#[tokio::test(flavor = "multi_thread")]
async fn scram_auth_failures_match_postgres() -> Result<()> {
    let env = Env::start("auth", |c| c).await?;
    let ok = env.client().await?;
    ensure!(scalar_str(&ok, "select current_user").await? == env.db.role);

    let wrong = |port: u16, user: &str| {
        sentinel_tests::clients::dsn("127.0.0.1", port, user, "not-the-password", &env.db.name)
    };
    let unknown = format!("nosuch_{}", env.db.role);
    for (what, user) in [
        ("wrong password", env.db.role.as_str()),
        ("unknown user", &unknown),
    ] {
        let via = connect_dsn(&wrong(env.sentinel.port(), user)).await;
        let direct = connect_dsn(&wrong(env.pg.port(), user)).await;
        let via = expect_err(what, via, "28P01")?;
        let direct = expect_err(&format!("{what}, directly"), direct, "28P01")?;
        ensure!(
            db_message(&via) == db_message(&direct),
            "{what}: Sentinel says {:?}, Postgres {:?}",
            db_message(&via),
            db_message(&direct)
        );
    }
    // A failed login does not disturb connected clients.
    ensure!(scalar_str(&ok, "select 'still here'").await? == "still here");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_user_only_from_trust_networks() -> Result<()> {
    let pg = shared_cluster().await?;
    let db = pg.test_db("trust").await?;
    let outside = SentinelConfig::new(pg)
        .user_for(&db, Auth::Scram(&db.password))
        .user("trusty", Auth::Trust, &db.role)
        .server_password(&db.password)
        .trust_networks(&["10.0.0.0/8"]);
    let inside = SentinelConfig::new(pg)
        .user("trusty", Auth::Trust, &db.role)
        .server_password(&db.password);
    let s_out = SentinelProcess::start_with(&outside).await?;
    let s_in = SentinelProcess::start_with(&inside).await?;

    let refused = connect_dsn(&s_out.dsn("trusty", "", &db.name)).await;
    let err = expect_err(
        "trust user from 127.0.0.1 outside 10.0.0.0/8",
        refused,
        "28000",
    )?;
    ensure!(db_message(&err).contains("trusty"), "{}", db_message(&err));
    // SCRAM users are unaffected by trust_networks.
    let scram = connect_dsn(&s_out.dsn(&db.role, &db.password, &db.name)).await?;
    ensure!(scalar_str(&scram, "select 1").await? == "1");
    // From inside the trusted network the same user gets in without a password.
    let trusted = connect_dsn(&s_in.dsn("trusty", "", &db.name)).await?;
    ensure!(scalar_str(&trusted, "select current_user").await? == db.role);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_client_conn_refuses_extra_clients() -> Result<()> {
    let env = Env::start("maxconn", |c| c.max_client_conn(2)).await?;
    let a = env.client().await?;
    let b = env.client().await?;
    let third = connect_dsn(&env.dsn("")).await;
    expect_err("a third client with max_client_conn = 2", third, "53300")?;
    ensure!(scalar_str(&a, "select 'a'").await? == "a");
    ensure!(scalar_str(&b, "select 'b'").await? == "b");
    drop(a);
    let c = poll_until(
        "a slot after a client left",
        Duration::from_secs(10),
        || async {
            match connect_dsn(&env.dsn("")).await {
                Ok(c) => Ok(Some(c)),
                Err(e) if sqlstate(&e) == "53300" => Ok(None),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;
    ensure!(scalar_str(&c, "select 'c'").await? == "c");
    Ok(())
}

// === TLS ===

async fn psql_conninfo(conninfo: &str, password: &str, sql: &str) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(pg_bin_dir().join("psql"));
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
        "-c",
        sql,
    ])
    .env("PGPASSWORD", password)
    .env_remove("PGSSLMODE")
    .env_remove("PGSSLROOTCERT")
    .env_remove("PGSERVICE")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    within("psql", cmd.output()).await?.context("running psql")
}

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_clients() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = tokio::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .await
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pg = shared_cluster().await?;
    let db = pg.test_db("tls").await?;
    let base = SentinelConfig::new(pg).user_for(&db, Auth::Scram(&db.password));
    let with_tls = base
        .clone()
        .option("postgres.tls", "cert_file", &toml_path(&cert))
        .option("postgres.tls", "key_file", &toml_path(&key));
    let tls = SentinelProcess::start_with(&with_tls).await?;
    // Its own port: `base` and `with_tls` share the one `SentinelConfig::new` picked.
    let plain = SentinelProcess::start_with(&base.listen_port(free_port())).await?;
    let conninfo = |port: u16, mode: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={port} user={} dbname={} sslmode={mode} \
             sslrootcert={} connect_timeout=10",
            db.role,
            db.name,
            cert.display()
        )
    };

    // verify-full: the certificate is ours and the session is encrypted.
    let out = psql_conninfo(
        &conninfo(tls.port(), "verify-full"),
        &db.password,
        "select 'over tls'",
    )
    .await?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "over tls",
        "psql sslmode=verify-full: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql_conninfo(&conninfo(tls.port(), "require"), &db.password, "\\conninfo").await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("SSL connection"),
        "psql sslmode=require \\conninfo: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain connections still work against the TLS-enabled Sentinel.
    let out = psql_conninfo(
        &conninfo(tls.port(), "disable"),
        &db.password,
        "select 'plain'",
    )
    .await?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "plain",
        "psql sslmode=disable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without [postgres.tls] Sentinel declines SSL, so sslmode=require fails.
    let out = psql_conninfo(&conninfo(plain.port(), "require"), &db.password, "select 1").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("SSL"),
        "sslmode=require against a Sentinel without TLS: status {}, stderr {stderr}",
        out.status
    );
    let out = psql_conninfo(
        &conninfo(plain.port(), "prefer"),
        &db.password,
        "select 'fallback'",
    )
    .await?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "fallback",
        "sslmode=prefer falls back to plain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

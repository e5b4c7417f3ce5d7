//! Fault injection against Sentinel's Postgres front, black box: clients that vanish mid
//! transaction, an upstream restart under load, an exhausted pool, query and
//! idle-in-transaction timeouts, malformed and oversized protocol messages, SIGTERM draining,
//! and the pool's idle/lifetime/minimum maintenance.
//!
//! Every test has its own TestDb and its own Sentinel; what Postgres really did is checked
//! through a direct "oracle" connection (superuser, bypassing Sentinel). Every wait is bounded,
//! so a hung proxy fails a test instead of hanging the run.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sentinel_tests::pg::{PgCluster, TestDb, shared_cluster};
use sentinel_tests::{Auth, SentinelConfig, SentinelProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Upper bound for any single step that should be quick (a query, a login).
const STEP: Duration = Duration::from_secs(10);

// === helpers: bounded waits, tokio-postgres with a visible connection task ===

/// Awaits `f`, failing after `limit` with a message naming `what`.
async fn bounded<F: Future>(limit: Duration, what: &str, f: F) -> Result<F::Output> {
    tokio::time::timeout(limit, f)
        .await
        .with_context(|| format!("{what}: no answer within {limit:?} (hang)"))
}

/// The connection task of a tokio-postgres client: its result carries the error the server
/// (here: Sentinel) closed the connection with, e.g. a FATAL 57P01 sent while the client idles.
type ConnTask = JoinHandle<Result<(), tokio_postgres::Error>>;

async fn try_connect(dsn: &str) -> Result<(Client, ConnTask), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

async fn connect(dsn: &str) -> Result<(Client, ConnTask)> {
    bounded(STEP, "connecting", try_connect(dsn))
        .await?
        .with_context(|| format!("connecting with {}", redact(dsn)))
}

fn redact(dsn: &str) -> String {
    dsn.split(' ')
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(SqlState::code)
}

/// Waits for a connection task to end and returns the error it ended with.
async fn closed_with(task: ConnTask, limit: Duration, what: &str) -> Result<tokio_postgres::Error> {
    match bounded(limit, what, task)
        .await?
        .context("connection task panicked")?
    {
        Ok(()) => bail!("{what}: the connection ended without an error"),
        Err(e) => Ok(e),
    }
}

/// First column of the first row of a simple query, as text (NULL as `None`).
async fn scalar(client: &Client, sql: &str) -> Result<Option<String>> {
    let rows = bounded(STEP, sql, client.simple_query(sql))
        .await?
        .with_context(|| sql.to_owned())?;
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .with_context(|| format!("{sql}: no row"))
}

async fn text(client: &Client, sql: &str) -> Result<String> {
    scalar(client, sql)
        .await?
        .with_context(|| format!("{sql}: NULL"))
}

async fn int(client: &Client, sql: &str) -> Result<i64> {
    let s = text(client, sql).await?;
    s.parse()
        .with_context(|| format!("{sql}: {s:?} is not an integer"))
}

/// Runs `sql`; it must fail with an ErrorResponse. Returns the SQLSTATE.
async fn fails_with_code(client: &Client, sql: &str) -> Result<String> {
    match bounded(STEP, sql, client.simple_query(sql)).await? {
        Ok(_) => bail!("{sql}: succeeded, expected an error"),
        Err(e) => Ok(code(&e)
            .with_context(|| format!("{sql}: failed without a SQLSTATE: {e:?}"))?
            .to_owned()),
    }
}

/// Polls `check` every 50 ms until it returns true; fails after `limit`.
async fn poll_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{what}: not the case within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TestDb on the shared cluster and the superuser "oracle" connected to its database.
async fn shared_db(prefix: &str) -> Result<(&'static PgCluster, TestDb, Client)> {
    let pg = shared_cluster().await?;
    let db = pg.test_db(prefix).await?;
    let oracle = pg.connect_superuser(&db.name).await?;
    Ok((pg, db, oracle))
}

/// Sentinel in front of `pg` for the TestDb's role; clients log in with trust (no password).
fn config(pg: &PgCluster, db: &TestDb) -> SentinelConfig {
    SentinelConfig::new(pg).user_for(db, Auth::Trust)
}

fn dsn(sentinel: &SentinelProcess, db: &TestDb) -> String {
    sentinel.dsn(&db.role, "unused-trust", &db.name)
}

/// How many backends the role has (the oracle is the superuser, so it never counts itself).
async fn backends_of(oracle: &Client, role: &str) -> Result<i64> {
    let row = bounded(
        STEP,
        "counting backends",
        oracle.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        ),
    )
    .await??;
    Ok(row.get(0))
}

async fn pid_alive(oracle: &Client, pid: i32) -> Result<bool> {
    let row = bounded(
        STEP,
        "looking up a backend",
        oracle.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        ),
    )
    .await??;
    Ok(row.get::<_, i64>(0) > 0)
}

fn vm_status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()
        .context("parsing a /proc status value")
}

// === a raw protocol client, for what real drivers never send ===

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608_i32.to_be_bytes().to_vec(); // protocol 3.0
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The fields of an ErrorResponse / NoticeResponse body, by field type byte.
fn error_fields(body: &[u8]) -> HashMap<u8, String> {
    let mut out = HashMap::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        out.insert(kind, String::from_utf8_lossy(&tail[..end]).into_owned());
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

/// The SQLSTATEs of all ErrorResponses among `msgs`.
fn error_codes(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| error_fields(body).remove(&b'C').unwrap_or_default())
        .collect()
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut cols = Vec::new();
    let Some(n) = body.get(..2) else {
        return cols;
    };
    let n = i16::from_be_bytes([n[0], n[1]]);
    let mut at = 2;
    for _ in 0..n {
        let Some(len) = body.get(at..at + 4) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            cols.push(None);
        } else {
            let len = usize::try_from(len).unwrap_or(0);
            let value = body.get(at..at + len).unwrap_or_default();
            cols.push(Some(String::from_utf8_lossy(value).into_owned()));
            at += len;
        }
    }
    cols
}

#[derive(Debug, Default)]
struct RawResult {
    rows: Vec<Vec<Option<String>>>,
    errors: Vec<HashMap<u8, String>>,
    status: u8,
}

struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = bounded(STEP, "raw connect", TcpStream::connect(addr)).await??;
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }

    /// Connects and logs in (trust: no password exchange) up to the first ReadyForQuery.
    async fn login(addr: SocketAddr, db: &TestDb) -> Result<Self> {
        let mut raw = Self::connect(addr).await?;
        raw.send(&startup_packet(&[
            ("user", &db.role),
            ("database", &db.name),
        ]))
        .await?;
        loop {
            match raw.recv(STEP).await? {
                Some((b'Z', _)) => return Ok(raw),
                Some((b'E', body)) => bail!("login refused: {:?}", error_fields(&body)),
                Some((b'R', body)) if body.get(..4) != Some(&[0, 0, 0, 0][..]) => {
                    bail!("Sentinel asked for a password from a trust user")
                }
                Some(_) => {}
                None => bail!("connection closed during login"),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next message, or `None` once the peer closed (or reset) the connection.
    async fn recv(&mut self, limit: Duration) -> Result<Option<(u8, Vec<u8>)>> {
        bounded(limit, "reading from Sentinel", async {
            let mut header = [0u8; 5];
            match self.stream.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if is_closed(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let len = usize::try_from(len).context("negative length from Sentinel")?;
            ensure!((4..=1 << 20).contains(&len), "implausible length {len}");
            let mut body = vec![0u8; len - 4];
            match self.stream.read_exact(&mut body).await {
                Ok(_) => Ok(Some((header[0], body))),
                Err(e) if is_closed(&e) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?
    }

    /// Everything Sentinel sends until it closes the connection; fails if it does not close
    /// within `limit`.
    async fn until_closed(&mut self, limit: Duration) -> Result<Vec<(u8, Vec<u8>)>> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .recv(left)
                .await
                .context("Sentinel did not close the connection")?
            {
                Some(m) => out.push(m),
                None => return Ok(out),
            }
        }
    }

    async fn query(&mut self, sql: &str) -> Result<RawResult> {
        self.send(&query_message(sql)).await?;
        let mut result = RawResult::default();
        loop {
            match self.recv(STEP).await? {
                Some((b'D', body)) => result.rows.push(data_row(&body)),
                Some((b'E', body)) => result.errors.push(error_fields(&body)),
                Some((b'Z', body)) => {
                    result.status = body.first().copied().unwrap_or(0);
                    return Ok(result);
                }
                Some(_) => {}
                None => bail!("{sql}: connection closed; so far {result:?}"),
            }
        }
    }

    /// Closes the socket with a RST (SO_LINGER 0): the most abrupt way a client can vanish.
    fn vanish(self) -> Result<()> {
        self.stream.set_zero_linger()?;
        drop(self.stream);
        Ok(())
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
    )
}

// === clients that vanish mid-transaction ===

/// A client (pool_size 1) leaves session state and an open transaction behind and vanishes by
/// having its connection task aborted (its socket closes). The next client gets the very same
/// backend and must find none of it.
#[tokio::test]
async fn client_killed_mid_transaction_leaves_nothing_behind() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_vanish").await?;
    let owner = db.connect().await?;
    owner.batch_execute("CREATE TABLE t (v text)").await?;
    let default_work_mem = text(&oracle, "SHOW work_mem").await?;
    assert_ne!(default_work_mem, "7MB");
    let sentinel = SentinelProcess::start_with(&config(pg, &db).pool_size(1)).await?;

    // A: session-level state committed in a first transaction, then a second transaction left
    // open, all in one simple Query so the server connection is held throughout.
    let (a, a_task) = connect(&dsn(&sentinel, &db)).await?;
    let setup = "BEGIN; SET work_mem = '7MB'; SET application_name = 'vanished_a'; \
                 SELECT pg_advisory_lock(42); CREATE TEMP TABLE tmp_a (x int); COMMIT; \
                 BEGIN; SET LOCAL statement_timeout = '123s'; SELECT pg_advisory_lock(43); \
                 INSERT INTO t VALUES ('from A'); CREATE TEMP TABLE tmp_b (x int)";
    bounded(STEP, "A's setup", a.batch_execute(setup)).await??;
    let a_pid: i32 = text(&a, "SELECT pg_backend_pid()").await?.parse()?;
    // The premise: A's backend really holds all of that right now.
    assert_eq!(text(&a, "SHOW work_mem").await?, "7MB");
    assert_eq!(text(&a, "SHOW statement_timeout").await?, "123s");
    let held: i64 = oracle
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 \
             AND objid IN (42, 43) AND granted",
            &[&a_pid],
        )
        .await?
        .get(0);
    assert_eq!(held, 2, "A's backend should hold advisory locks 42 and 43");
    let state: String = oracle
        .query_one(
            "SELECT state FROM pg_stat_activity WHERE pid = $1",
            &[&a_pid],
        )
        .await?
        .get(0);
    assert_eq!(state, "idle in transaction");

    // A vanishes without COMMIT.
    a_task.abort();
    drop(a);

    // B gets the only server connection: the same backend, clean.
    let (b, _b_task) = connect(&dsn(&sentinel, &db)).await?;
    let b_pid: i32 = text(&b, "SELECT pg_backend_pid()").await?.parse()?;
    assert_eq!(b_pid, a_pid, "pool_size 1: B should reuse A's backend");
    assert_eq!(
        text(&b, "SELECT (now() = statement_timestamp())::text").await?,
        "true",
        "B's statement runs inside a transaction that started earlier"
    );
    assert_eq!(
        scalar(&b, "SELECT txid_current_if_assigned()::text").await?,
        None,
        "B runs inside A's transaction (it has A's xid)"
    );
    assert_eq!(text(&b, "SHOW work_mem").await?, default_work_mem);
    assert_eq!(text(&b, "SHOW statement_timeout").await?, "0");
    assert_ne!(text(&b, "SHOW application_name").await?, "vanished_a");
    assert_eq!(
        scalar(&b, "SELECT to_regclass('tmp_a')::text").await?,
        None,
        "A's temp table is visible to B"
    );
    assert_eq!(scalar(&b, "SELECT to_regclass('tmp_b')::text").await?, None);
    assert_eq!(
        int(&b, "SELECT count(*) FROM t WHERE v = 'from A'").await?,
        0
    );
    // An explicit transaction starts and ends normally.
    bounded(
        STEP,
        "B's transaction",
        b.batch_execute("BEGIN; SELECT 1; COMMIT"),
    )
    .await??;

    // The oracle agrees.
    let locks: i64 = oracle
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
            &[&a_pid],
        )
        .await?
        .get(0);
    assert_eq!(locks, 0, "A's advisory locks are still held by the backend");
    assert_eq!(
        text(&oracle, "SELECT pg_try_advisory_lock(42)::text").await?,
        "true",
        "advisory lock 42 is still taken"
    );
    oracle
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await?;
    assert_eq!(
        int(&oracle, "SELECT count(*) FROM t WHERE v = 'from A'").await?,
        0,
        "A's uncommitted insert became visible"
    );
    let temp: i64 = oracle
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't' \
             AND relname IN ('tmp_a', 'tmp_b')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(temp, 0, "A's temp tables still exist");
    let row = oracle
        .query_one(
            "SELECT state, application_name, backend_xid IS NULL FROM pg_stat_activity \
             WHERE pid = $1",
            &[&a_pid],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "idle");
    assert_ne!(row.get::<_, String>(1), "vanished_a");
    assert!(row.get::<_, bool>(2), "the backend still has an xid");
    Ok(())
}

/// Like the above, with the role switched (`SET ROLE`) and a `LISTEN` left on the connection,
/// and the client vanishing with a TCP reset. B must be itself again, listening to nothing.
#[tokio::test]
async fn client_killed_after_set_role_and_listen_leaves_no_role_behind() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_role").await?;
    let other = sentinel_tests::names::unique_name("fault_other");
    oracle
        .batch_execute(&format!(
            "CREATE ROLE {other} NOLOGIN; GRANT {other} TO {}",
            db.role
        ))
        .await?;
    let sentinel = SentinelProcess::start_with(&config(pg, &db).pool_size(1)).await?;

    let mut a = RawClient::login(sentinel.addr(), &db).await?;
    let pid = a.query("SELECT pg_backend_pid()").await?;
    let a_pid: i32 = pid.rows[0][0].as_deref().unwrap_or_default().parse()?;
    // Committed session state (role, LISTEN), then an open transaction.
    let r = a
        .query(&format!(
            "BEGIN; SET ROLE {other}; LISTEN fault_channel; COMMIT; BEGIN; SELECT current_user"
        ))
        .await?;
    match r.errors.first() {
        // A policy that refuses SET ROLE outright (42501) is as good as a cleanup.
        Some(e) => assert_eq!(e.get(&b'C').map(String::as_str), Some("42501"), "{e:?}"),
        None => {
            assert_eq!(r.status, b'T', "{r:?}");
            assert_eq!(r.rows.last(), Some(&vec![Some(other.clone())]), "{r:?}");
            let listening = a
                .query("SELECT count(*) FROM pg_listening_channels()")
                .await?;
            assert_eq!(listening.rows, vec![vec![Some("1".to_owned())]]);
        }
    }
    a.vanish()?;

    let (b, _b_task) = connect(&dsn(&sentinel, &db)).await?;
    assert_eq!(
        text(&b, "SELECT pg_backend_pid()").await?.parse::<i32>()?,
        a_pid,
        "pool_size 1: B should reuse A's backend"
    );
    assert_eq!(text(&b, "SELECT current_user").await?, db.role);
    assert_eq!(text(&b, "SELECT session_user").await?, db.role);
    assert_eq!(
        int(&b, "SELECT count(*) FROM pg_listening_channels()").await?,
        0,
        "A's LISTEN is still active for B"
    );
    assert_eq!(
        scalar(&b, "SELECT txid_current_if_assigned()::text").await?,
        None
    );
    let row = oracle
        .query_one(
            "SELECT usename::text, state FROM pg_stat_activity WHERE pid = $1",
            &[&a_pid],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), db.role);
    assert_eq!(row.get::<_, String>(1), "idle");
    Ok(())
}

// === upstream restart ===

#[derive(Debug)]
struct Sample {
    at: Duration,
    ok: bool,
    what: String,
}

/// Runs short queries in a loop through Sentinel until `stop`, reconnecting when Sentinel closed
/// the connection; records every outcome. A query or login that hangs is recorded as such.
async fn load_worker(id: usize, dsn: String, stop: Arc<AtomicBool>, t0: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut client: Option<(Client, ConnTask)> = None;
    let limit = Duration::from_secs(4);
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            match tokio::time::timeout(limit, try_connect(&dsn)).await {
                Ok(Ok(c)) => client = Some(c),
                Ok(Err(e)) => {
                    samples.push(Sample {
                        at: t0.elapsed(),
                        ok: false,
                        what: format!("connect: {e}"),
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => {
                    samples.push(Sample {
                        at: t0.elapsed(),
                        ok: false,
                        what: "HANG: connect".into(),
                    });
                    continue;
                }
            }
        }
        let Some((c, _)) = client.as_ref() else {
            continue;
        };
        let sql = format!("SELECT {id} + 1");
        let sample = match tokio::time::timeout(limit, c.simple_query(&sql)).await {
            Ok(Ok(rows)) => {
                let got = rows.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                let want = (id + 1).to_string();
                Sample {
                    at: t0.elapsed(),
                    ok: got.as_deref() == Some(want.as_str()),
                    what: format!("result {got:?}"),
                }
            }
            Ok(Err(e)) => Sample {
                at: t0.elapsed(),
                ok: false,
                what: format!("query: {e}"),
            },
            Err(_) => Sample {
                at: t0.elapsed(),
                ok: false,
                what: "HANG: query".into(),
            },
        };
        samples.push(sample);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples
}

/// Postgres restarts while 8 clients run queries through Sentinel: queries in flight may fail
/// (promptly, never hang); a few seconds later everything works again, including a client
/// that was connected (and idle) across the restart, without restarting Sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_recovers() -> Result<()> {
    const WORKERS: usize = 8;
    const RECOVERY: Duration = Duration::from_secs(3);
    let pg = PgCluster::start().await?;
    let db = pg.test_db("fault_restart").await?;
    let cfg = config(&pg, &db)
        .pool_size(8)
        .pool_wait_timeout(Duration::from_secs(2))
        .server_connect_timeout(Duration::from_secs(2));
    let mut sentinel = SentinelProcess::start_with(&cfg).await?;
    let dsn = dsn(&sentinel, &db);

    let (idle, idle_task) = connect(&dsn).await?;
    assert_eq!(text(&idle, "SELECT 'before'").await?, "before");

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(load_worker(i, dsn.clone(), stop.clone(), t0)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restart_began = t0.elapsed();
    pg.restart().await?;
    let restarted = t0.elapsed();
    tokio::time::sleep(RECOVERY + Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.push(bounded(Duration::from_secs(10), "a load worker", w).await??);
    }

    let mut failures_total = 0;
    for (i, samples) in all.iter().enumerate() {
        let hangs: Vec<_> = samples
            .iter()
            .filter(|s| s.what.starts_with("HANG"))
            .collect();
        assert!(hangs.is_empty(), "worker {i} hung: {hangs:?}");
        assert!(
            samples.iter().any(|s| s.ok && s.at < restart_began),
            "worker {i}: no successful query before the restart: {samples:?}"
        );
        assert!(
            samples.iter().any(|s| s.ok && s.at > restarted),
            "worker {i}: no successful query after the restart: {samples:?}"
        );
        let late: Vec<_> = samples
            .iter()
            .filter(|s| !s.ok && s.at > restarted + RECOVERY)
            .collect();
        assert!(
            late.is_empty(),
            "worker {i}: failures more than {RECOVERY:?} after the restart ended at {restarted:?}: {late:?}"
        );
        failures_total += samples.iter().filter(|s| !s.ok).count();
    }
    eprintln!(
        "restart under load: restart took {:?}, {failures_total} failed operations in total",
        restarted - restart_began
    );

    // A client connected across the restart (idle meanwhile) keeps its connection and works.
    assert!(
        !idle.is_closed(),
        "the idle client was disconnected: {:?}",
        idle_task.is_finished()
    );
    assert_eq!(text(&idle, "SELECT 'after'").await?, "after");
    // And a brand-new client works.
    let (fresh, _fresh_task) = connect(&dsn).await?;
    assert_eq!(text(&fresh, "SELECT 'fresh'").await?, "fresh");
    assert!(
        sentinel.is_running(),
        "Sentinel exited:\n{}",
        sentinel.logs()
    );
    Ok(())
}

// === pool exhaustion ===

/// pool_size 1, pool_wait_timeout 300 ms: while A holds the only server connection, B's query
/// fails with 53300 after about 300 ms and B stays usable; once A commits, B works again.
#[tokio::test]
async fn pool_exhausted_fails_with_53300_and_recovers() -> Result<()> {
    let (pg, db, _oracle) = shared_db("fault_pool").await?;
    let cfg = config(pg, &db)
        .pool_size(1)
        .pool_wait_timeout(Duration::from_millis(300));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let (a, _a_task) = connect(&dsn(&sentinel, &db)).await?;
    let (b, _b_task) = connect(&dsn(&sentinel, &db)).await?;
    bounded(STEP, "A's BEGIN", a.batch_execute("BEGIN; SELECT 1")).await??;

    let started = Instant::now();
    let sqlstate = fails_with_code(&b, "SELECT 1").await?;
    let waited = started.elapsed();
    assert_eq!(sqlstate, "53300");
    assert!(
        (Duration::from_millis(250)..Duration::from_secs(3)).contains(&waited),
        "B waited {waited:?}, expected about 300 ms"
    );
    assert!(!b.is_closed(), "B was disconnected by a pool timeout");

    // The extended protocol gets the same answer and the session stays in step.
    let started = Instant::now();
    let err = bounded(
        STEP,
        "B's extended query",
        b.query("SELECT $1::int", &[&5i32]),
    )
    .await?
    .err()
    .context("B's extended query succeeded while the pool is exhausted")?;
    assert_eq!(code(&err), Some("53300"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A new client's login needs a server too: refused with 53300, not hung.
    let started = Instant::now();
    let refused = bounded(STEP, "C's login", try_connect(&dsn(&sentinel, &db))).await?;
    match refused {
        Ok(_) => bail!("C logged in while the only server connection is held"),
        Err(e) => assert_eq!(code(&e), Some("53300"), "{e:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    bounded(STEP, "A's COMMIT", a.batch_execute("COMMIT")).await??;
    assert_eq!(text(&b, "SELECT 'b works'").await?, "b works");
    let row = bounded(
        STEP,
        "B's extended query",
        b.query_one("SELECT $1::int", &[&7i32]),
    )
    .await??;
    assert_eq!(row.get::<_, i32>(0), 7);
    assert_eq!(text(&a, "SELECT 'a works'").await?, "a works");
    Ok(())
}

// === query timeout ===

/// query_timeout 500 ms: a long query is cancelled with 57014 well before it would end; the
/// client goes on; the server connection the cancel went to is not handed to anyone else, so a
/// late cancel can never hit another client's query.
#[tokio::test]
async fn query_timeout_cancels_and_never_hits_another_client() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_qtimeout").await?;
    let cfg = config(pg, &db)
        .pool_size(1)
        .query_timeout(Duration::from_millis(500));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let (a, _a_task) = connect(&dsn(&sentinel, &db)).await?;
    let (b, _b_task) = connect(&dsn(&sentinel, &db)).await?;

    let first_pid: i32 = text(&a, "SELECT pg_backend_pid()").await?.parse()?;
    let started = Instant::now();
    let sqlstate = fails_with_code(&a, "SELECT pg_sleep(5)").await?;
    let took = started.elapsed();
    assert_eq!(sqlstate, "57014");
    assert!(
        (Duration::from_millis(400)..Duration::from_millis(2500)).contains(&took),
        "cancelled after {took:?}, expected about 500 ms"
    );
    assert_eq!(text(&a, "SELECT 'a goes on'").await?, "a goes on");

    // The cancelled backend is retired, not reused.
    let next_pid: i32 = text(&b, "SELECT pg_backend_pid()").await?.parse()?;
    assert_ne!(
        next_pid, first_pid,
        "the server connection a cancel was sent to was handed to another client"
    );
    poll_until(
        Duration::from_secs(5),
        "the cancelled backend closes",
        || async { Ok(!pid_alive(&oracle, first_pid).await?) },
    )
    .await?;

    // Races: A's query ends right around the timeout, B runs right after on the same pool.
    // Whatever happened to A, B's queries are never cancelled.
    let mut a_cancelled = 0;
    let rounds = 8;
    for round in 0..rounds {
        let sleep = format!("SELECT pg_sleep({})", 0.490 + 0.005 * f64::from(round));
        match bounded(STEP, "A's racing query", a.simple_query(&sleep)).await? {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(code(&e), Some("57014"), "round {round}: {e:?}");
                a_cancelled += 1;
            }
        }
        for _ in 0..3 {
            let r = bounded(
                STEP,
                "B's query",
                b.simple_query("SELECT pg_sleep(0.05), 1"),
            )
            .await?;
            if let Err(e) = r {
                bail!("round {round}: B's query failed (a stray cancel?): {e:?}");
            }
        }
    }
    eprintln!("query_timeout races: A was cancelled in {a_cancelled} of {rounds} rounds");
    assert_eq!(text(&b, "SELECT 'b fine'").await?, "b fine");
    Ok(())
}

// === idle in transaction ===

/// idle_transaction_timeout 500 ms: a client idle in a transaction is rolled back and
/// disconnected (25P03); the single server connection serves another client meanwhile, with no
/// transaction left open.
#[tokio::test]
async fn idle_transaction_timeout_rolls_back_and_frees_the_server() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_idletx").await?;
    let owner = db.connect().await?;
    owner.batch_execute("CREATE TABLE t (v text)").await?;
    let cfg = config(pg, &db)
        .pool_size(1)
        .idle_transaction_timeout(Duration::from_millis(500));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let (a, a_task) = connect(&dsn(&sentinel, &db)).await?;
    let (b, _b_task) = connect(&dsn(&sentinel, &db)).await?;

    bounded(
        STEP,
        "A's transaction",
        a.batch_execute("BEGIN; INSERT INTO t VALUES ('idle A')"),
    )
    .await??;
    let began = Instant::now();

    // B waits for the only server connection, which A's timeout frees.
    assert_eq!(
        scalar(&b, "SELECT txid_current_if_assigned()::text").await?,
        None,
        "B ran inside A's transaction"
    );
    let b_done = began.elapsed();
    assert!(
        b_done < Duration::from_millis(1800),
        "B got the server only after {b_done:?}; A's idle transaction should have been ended \
         after 500 ms"
    );
    assert_eq!(int(&b, "SELECT count(*) FROM t").await?, 0);

    // A was told why and disconnected.
    let err = closed_with(a_task, Duration::from_secs(3), "A's connection").await?;
    assert_eq!(code(&err), Some("25P03"), "{err:?}");
    let left = Duration::from_secs(2).saturating_sub(began.elapsed());
    tokio::time::sleep(left).await;
    let next = bounded(STEP, "A's next query", a.simple_query("SELECT 1")).await?;
    assert!(
        next.is_err(),
        "A's connection still works after the timeout"
    );

    assert_eq!(
        int(&oracle, "SELECT count(*) FROM t").await?,
        0,
        "A's insert was committed"
    );
    let idle_in_tx: i64 = oracle
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
             AND state LIKE 'idle in transaction%'",
            &[&db.role],
        )
        .await?
        .get(0);
    assert_eq!(
        idle_in_tx, 0,
        "a backend of the role is still idle in transaction"
    );
    assert_eq!(text(&b, "SELECT 'b still fine'").await?, "b still fine");
    Ok(())
}

// === malformed and oversized input ===

/// After login, sends `bytes` and expects a FATAL 08P01 and the connection closed.
async fn expect_protocol_error(
    addr: SocketAddr,
    db: &TestDb,
    what: &str,
    bytes: &[u8],
) -> Result<()> {
    let mut raw = RawClient::login(addr, db).await?;
    raw.send(bytes).await?;
    let msgs = raw
        .until_closed(Duration::from_secs(5))
        .await
        .with_context(|| what.to_owned())?;
    let codes = error_codes(&msgs);
    assert_eq!(codes, vec!["08P01".to_owned()], "{what}: errors {codes:?}");
    Ok(())
}

/// Before login, sends `bytes` instead of a startup packet: the connection must be closed, with
/// an 08P01 if Sentinel says anything at all.
async fn expect_startup_refused(addr: SocketAddr, what: &str, bytes: &[u8]) -> Result<()> {
    let mut raw = RawClient::connect(addr).await?;
    raw.send(bytes).await?;
    let msgs = raw
        .until_closed(Duration::from_secs(5))
        .await
        .with_context(|| what.to_owned())?;
    let codes = error_codes(&msgs);
    assert!(
        codes.iter().all(|c| c == "08P01"),
        "{what}: unexpected errors {codes:?}"
    );
    assert!(
        msgs.iter().all(|(tag, _)| *tag == b'E'),
        "{what}: Sentinel answered with something other than an error: {:?}",
        msgs.iter().map(|(t, _)| char::from(*t)).collect::<String>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_get_08p01_and_sentinel_carries_on() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_malformed").await?;
    let owner = db.connect().await?;
    owner.batch_execute("CREATE TABLE t (v text)").await?;
    let cfg = config(pg, &db).pool_size(2).max_message_bytes(64 * 1024);
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let addr = sentinel.addr();
    // A client connected all along must be unaffected.
    let (bystander, _bystander_task) = connect(&dsn(&sentinel, &db)).await?;
    assert_eq!(text(&bystander, "SELECT 'ok'").await?, "ok");

    // (a) length field 3, sent inside a transaction that must then be rolled back.
    let mut raw = RawClient::login(addr, &db).await?;
    let r = raw
        .query("BEGIN; INSERT INTO t VALUES ('before garbage')")
        .await?;
    assert!(r.errors.is_empty() && r.status == b'T', "{r:?}");
    raw.send(&[b'Q', 0, 0, 0, 3]).await?;
    let msgs = raw.until_closed(Duration::from_secs(5)).await?;
    assert_eq!(error_codes(&msgs), vec!["08P01".to_owned()]);
    poll_until(
        Duration::from_secs(5),
        "the server connection is clean",
        || async {
            let n: i64 = oracle
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 \
                 AND state LIKE 'idle in transaction%'",
                    &[&db.role],
                )
                .await?
                .get(0);
            Ok(n == 0)
        },
    )
    .await?;
    assert_eq!(
        int(&oracle, "SELECT count(*) FROM t").await?,
        0,
        "the insert of a client that broke the protocol was committed"
    );

    // (b) a declared length over max_message_bytes: refused from the header, no body needed.
    let mut over = vec![b'Q'];
    over.extend_from_slice(&(1i32 << 20).to_be_bytes());
    over.extend_from_slice(b"SELECT ");
    expect_protocol_error(addr, &db, "(b) length over max_message_bytes", &over).await?;

    // (c) an unknown message type.
    expect_protocol_error(addr, &db, "(c) unknown type byte", &message(b'z', b"")).await?;
    // (c') a Query whose text is not NUL-terminated.
    expect_protocol_error(
        addr,
        &db,
        "(c') unterminated Query",
        &message(b'Q', b"SELECT 1"),
    )
    .await?;

    // (d) a startup packet declaring 20000 bytes.
    let mut long_startup = 20_000i32.to_be_bytes().to_vec();
    long_startup.extend_from_slice(&196_608i32.to_be_bytes());
    long_startup.extend_from_slice(b"user\0x\0\0");
    expect_startup_refused(addr, "(d) startup packet of 20000 bytes", &long_startup).await?;

    // (e) garbage instead of a startup packet.
    expect_startup_refused(
        addr,
        "(e) HTTP instead of a startup packet",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await?;
    expect_startup_refused(addr, "(e') length field 3", &[0, 0, 0, 3, 0, 0, 0, 0]).await?;

    // Sentinel carries on: the bystander and new clients work.
    assert_eq!(text(&bystander, "SELECT 'still ok'").await?, "still ok");
    let (fresh, _fresh_task) = connect(&dsn(&sentinel, &db)).await?;
    assert_eq!(text(&fresh, "SELECT 'fresh'").await?, "fresh");
    let mut raw = RawClient::login(addr, &db).await?;
    let r = raw.query("SELECT 40 + 2").await?;
    assert_eq!(r.rows, vec![vec![Some("42".to_owned())]]);
    Ok(())
}

/// Declared lengths of about 2 GiB, after login and in the startup packet, from several
/// clients at once: refused without Sentinel allocating them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_lengths_do_not_grow_memory() -> Result<()> {
    const CLIENTS: usize = 8;
    let (pg, db, _oracle) = shared_db("fault_rss").await?;
    let cfg = config(pg, &db).max_message_bytes(64 * 1024);
    let mut sentinel = SentinelProcess::start_with(&cfg).await?;
    let addr = sentinel.addr();
    let pid = sentinel.pid();
    // Warm up (allocator arenas, pools) before measuring.
    for _ in 0..CLIENTS {
        let mut raw = RawClient::login(addr, &db).await?;
        raw.query("SELECT 1").await?;
    }
    let rss_before = vm_status_kb(pid, "VmRSS:")?;
    let size_before = vm_status_kb(pid, "VmSize:")?;

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let huge = 0x7fff_fff0i32.to_be_bytes();
            if i % 2 == 0 {
                let mut raw = RawClient::login(addr, &db).await?;
                let mut bytes = vec![b'Q'];
                bytes.extend_from_slice(&huge);
                bytes.extend_from_slice(&[b'x'; 1024]);
                raw.send(&bytes).await?;
                let msgs = raw.until_closed(Duration::from_secs(5)).await?;
                ensure!(
                    error_codes(&msgs) == vec!["08P01".to_owned()],
                    "huge message: {:?}",
                    error_codes(&msgs)
                );
            } else {
                let mut raw = RawClient::connect(addr).await?;
                let mut bytes = huge.to_vec();
                bytes.extend_from_slice(&196_608i32.to_be_bytes());
                bytes.extend_from_slice(&[b'x'; 1024]);
                raw.send(&bytes).await?;
                let msgs = raw.until_closed(Duration::from_secs(5)).await?;
                ensure!(
                    error_codes(&msgs).iter().all(|c| c == "08P01"),
                    "huge startup packet: {:?}",
                    error_codes(&msgs)
                );
            }
            Ok(())
        }));
    }
    for t in tasks {
        bounded(STEP, "a huge-length client", t).await???;
    }
    let rss_after = vm_status_kb(pid, "VmRSS:")?;
    let size_after = vm_status_kb(pid, "VmSize:")?;
    eprintln!(
        "huge lengths: VmRSS {rss_before} -> {rss_after} kB, VmSize {size_before} -> {size_after} kB"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "VmRSS grew from {rss_before} kB to {rss_after} kB"
    );
    assert!(
        size_after < size_before + 512 * 1024,
        "VmSize grew from {size_before} kB to {size_after} kB: the declared lengths were reserved"
    );
    let mut raw = RawClient::login(addr, &db).await?;
    let r = raw.query("SELECT 'alive'").await?;
    assert_eq!(r.rows, vec![vec![Some("alive".to_owned())]]);
    assert!(sentinel.is_running());
    Ok(())
}

// === SIGTERM ===

/// SIGTERM with shutdown_grace 3 s: idle clients are told 57P01 at once, new connections are
/// refused, a client inside a transaction may finish it (and its commit is durable), one still
/// inside a transaction at the end of the grace period gets 57P01, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_transactions_then_exits() -> Result<()> {
    const GRACE: Duration = Duration::from_secs(3);
    let (pg, db, oracle) = shared_db("fault_drain").await?;
    let owner = db.connect().await?;
    owner.batch_execute("CREATE TABLE drain (v text)").await?;
    let cfg = config(pg, &db).pool_size(4).shutdown_grace(GRACE);
    let mut sentinel = SentinelProcess::start_with(&cfg).await?;
    let dsn = dsn(&sentinel, &db);

    let (a, a_task) = connect(&dsn).await?;
    let (b, b_task) = connect(&dsn).await?;
    let (c, c_task) = connect(&dsn).await?;
    bounded(
        STEP,
        "A's BEGIN",
        a.batch_execute("BEGIN; INSERT INTO drain VALUES ('a1')"),
    )
    .await??;
    bounded(
        STEP,
        "C's BEGIN",
        c.batch_execute("BEGIN; INSERT INTO drain VALUES ('c1')"),
    )
    .await??;
    assert_eq!(text(&b, "SELECT 'b idle'").await?, "b idle");

    sentinel.signal(libc::SIGTERM)?;
    let t0 = Instant::now();

    // B, idle, is told at once.
    let err = closed_with(b_task, Duration::from_secs(2), "idle B after SIGTERM").await?;
    assert_eq!(code(&err), Some("57P01"), "{err:?}");
    let b_told = t0.elapsed();
    assert!(b.is_closed());

    // New connections are refused (connection refused, or a 57P01 at login).
    match bounded(
        Duration::from_secs(5),
        "a login during drain",
        try_connect(&dsn),
    )
    .await?
    {
        Ok(_) => bail!("a new client logged in while Sentinel drains"),
        Err(e) => assert!(
            code(&e).is_none() || code(&e) == Some("57P01"),
            "new connection during drain: {e:?}"
        ),
    }

    // A finishes its transaction within the grace period.
    bounded(
        STEP,
        "A's insert during drain",
        a.batch_execute("INSERT INTO drain VALUES ('a2')"),
    )
    .await??;
    assert_eq!(int(&a, "SELECT count(*) FROM drain").await?, 2);
    bounded(STEP, "A's COMMIT during drain", a.batch_execute("COMMIT")).await??;
    let committed = t0.elapsed();
    assert!(
        committed < GRACE,
        "A's commit only finished after {committed:?}"
    );
    let rows: Vec<String> = oracle
        .query("SELECT v FROM drain ORDER BY v", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec!["a1", "a2"], "A's commit is not durable");
    // Its transaction over, A is let go too.
    let err = closed_with(a_task, Duration::from_secs(2), "A after its commit").await?;
    assert_eq!(code(&err), Some("57P01"), "{err:?}");

    // C is still in its transaction at the end of the grace period.
    let err = closed_with(
        c_task,
        GRACE + Duration::from_secs(2),
        "C at the end of grace",
    )
    .await?;
    assert_eq!(code(&err), Some("57P01"), "{err:?}");
    let c_told = t0.elapsed();
    assert!(
        c_told >= GRACE - Duration::from_millis(300),
        "C was disconnected after {c_told:?}, before the grace period ended"
    );
    let rows: Vec<String> = oracle
        .query("SELECT v FROM drain ORDER BY v", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        rows,
        vec!["a1", "a2"],
        "C's unfinished transaction was committed"
    );

    let exit_limit = (GRACE + Duration::from_secs(5)).saturating_sub(t0.elapsed());
    let status = sentinel.wait_exit(exit_limit).await?;
    let exited = t0.elapsed();
    assert!(
        status.success(),
        "Sentinel exited with {status} after SIGTERM:\n{}",
        sentinel.logs()
    );
    eprintln!(
        "drain: B told after {b_told:?}, A committed after {committed:?}, C told after \
         {c_told:?}, exit after {exited:?}"
    );
    Ok(())
}

// === pool maintenance ===

/// server_idle_timeout 1 s: the backends a burst of clients opened are kept for reuse, then
/// closed once idle, while the clients stay connected and keep working.
#[tokio::test]
async fn idle_server_connections_are_closed_after_server_idle_timeout() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_idle").await?;
    let cfg = config(pg, &db)
        .pool_size(4)
        .server_idle_timeout(Duration::from_secs(1));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&dsn(&sentinel, &db)).await?);
    }
    let sleep = "SELECT pg_sleep(0.3)";
    let (r1, r2, r3) = bounded(STEP, "the burst", async {
        tokio::join!(
            clients[0].0.simple_query(sleep),
            clients[1].0.simple_query(sleep),
            clients[2].0.simple_query(sleep)
        )
    })
    .await?;
    r1?;
    r2?;
    r3?;
    let right_after = backends_of(&oracle, &db.role).await?;
    assert_eq!(
        right_after, 3,
        "the pool should keep the burst's 3 backends for reuse"
    );
    let took = poll_until(Duration::from_secs(6), "idle backends closed", || async {
        Ok(backends_of(&oracle, &db.role).await? == 0)
    })
    .await?;
    eprintln!("server_idle_timeout 1s: backends gone after {took:?}");
    for (c, _) in &clients {
        assert_eq!(text(c, "SELECT 'again'").await?, "again");
    }
    Ok(())
}

/// server_lifetime 1 s: a connection older than its lifetime is closed (idle) or not handed
/// out again (busy), so a client running queries in a loop moves to new backends.
#[tokio::test]
async fn server_connections_are_retired_after_server_lifetime() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_lifetime").await?;
    let cfg = config(pg, &db)
        .pool_size(2)
        .server_lifetime(Duration::from_secs(1));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let (c, _task) = connect(&dsn(&sentinel, &db)).await?;
    let first: i32 = text(&c, "SELECT pg_backend_pid()").await?.parse()?;
    // Idle: closed by maintenance once older than the lifetime.
    poll_until(Duration::from_secs(5), "the old backend closes", || async {
        Ok(!pid_alive(&oracle, first).await?)
    })
    .await?;
    // Busy: a client querying in a loop for 2.5 s sees its backend replaced.
    let mut pids = BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        pids.insert(text(&c, "SELECT pg_backend_pid()").await?.parse::<i32>()?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pids.contains(&first));
    assert!(
        pids.len() >= 2,
        "one backend served 2.5 s of queries with server_lifetime 1 s: {pids:?}"
    );
    Ok(())
}

/// min_pool_size 2 (server_idle_timeout short so maintenance is exercised): once Sentinel
/// knows the pool, it keeps two backends open although the only client used one and left.
#[tokio::test]
async fn min_pool_size_keeps_backends_open() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_minpool").await?;
    let cfg = config(pg, &db)
        .pool_size(4)
        .min_pool_size(2)
        .server_idle_timeout(Duration::from_secs(1));
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    let (c, task) = connect(&dsn(&sentinel, &db)).await?;
    assert_eq!(text(&c, "SELECT 1").await?, "1");
    drop(c);
    let _ = bounded(STEP, "the client's connection task", task).await?;
    poll_until(Duration::from_secs(5), "two backends open", || async {
        Ok(backends_of(&oracle, &db.role).await? == 2)
    })
    .await?;
    // Past several idle timeouts, the pool is still (or again) at its minimum.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    poll_until(
        Duration::from_secs(3),
        "still two backends open",
        || async { Ok(backends_of(&oracle, &db.role).await? == 2) },
    )
    .await?;
    Ok(())
}

/// min_pool_size 2 with no client at all: Sentinel opens two backends for the configured user
/// (its database defaults to the user's name, as in Postgres) within a few seconds.
#[tokio::test]
async fn min_pool_size_opens_backends_without_any_client() -> Result<()> {
    let (pg, db, oracle) = shared_db("fault_prewarm").await?;
    let cfg = config(pg, &db).pool_size(4).min_pool_size(2);
    let _sentinel = SentinelProcess::start_with(&cfg).await?;
    poll_until(
        Duration::from_secs(5),
        "two backends open without clients",
        || async { Ok(backends_of(&oracle, &db.role).await? == 2) },
    )
    .await?;
    Ok(())
}

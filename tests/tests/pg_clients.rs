//! Real command-line clients through Sentinel: `psql` (simple queries, `\copy` both ways, errors
//! inside COPY, multi-statement `-c`, `ON_ERROR_STOP` scripts) and `pgbench` (more clients than
//! pool slots in the simple, extended and prepared protocols, and the read-write TPC-B-like
//! script whose bookkeeping invariant is checked through a direct connection).
//!
//! The clients run as child processes with `PGPASSWORD` in their environment and
//! `host=127.0.0.1`, exactly as an operator would run them. Every expected output is compared
//! either with a literal or with what the same client prints when it talks to Postgres directly.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sentinel_tests::pg::pg_bin_dir;
use sentinel_tests::{Auth, PgCluster, SentinelConfig, SentinelProcess, TestDb, shared_cluster};
use tokio::io::AsyncWriteExt as _;

/// No single client run here should take longer; a hang is a failure, not a stuck test binary.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(240);

/// A test database and a Sentinel in front of the shared cluster, with one SCRAM user for it.
struct Setup {
    pg: &'static PgCluster,
    db: TestDb,
    sentinel: SentinelProcess,
}

async fn setup(prefix: &str, pool_size: u32) -> Result<Setup> {
    let pg = shared_cluster().await?;
    let db = pg.test_db(prefix).await?;
    let cfg = SentinelConfig::new(pg)
        .user_for(&db, Auth::Scram(&db.password))
        .pool_size(pool_size);
    let sentinel = SentinelProcess::start_with(&cfg).await?;
    Ok(Setup { pg, db, sentinel })
}

/// A client binary: `/usr/lib/postgresql/15/bin/<name>` (or `$SENTINEL_PG_BIN`), else
/// `/usr/bin/<name>`.
fn client_binary(name: &str) -> PathBuf {
    let versioned = pg_bin_dir().join(name);
    if versioned.is_file() {
        versioned
    } else {
        PathBuf::from("/usr/bin").join(name)
    }
}

/// A client command aimed at 127.0.0.1:`port` as the test role, password in `PGPASSWORD`.
fn client_command(name: &str, port: u16, db: &TestDb) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(client_binary(name));
    cmd.arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .arg("-U")
        .arg(&db.role)
        .env("PGPASSWORD", &db.password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "sentinel-pg-clients")
        .env("LC_ALL", "C")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSSLMODE")
        .env_remove("PGDATABASE")
        .kill_on_drop(true);
    cmd
}

/// Runs a command to completion with `stdin` fed to it (or /dev/null), within [`CLIENT_TIMEOUT`].
async fn run(mut cmd: tokio::process::Command, stdin: Option<Vec<u8>>) -> Result<Output> {
    let what = format!("{:?}", cmd.as_std());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => Some(tokio::spawn(async move {
            // The client may exit (on error) before it read everything: a broken pipe is fine.
            let _ = pipe.write_all(&data).await;
            let _ = pipe.shutdown().await;
        })),
        _ => None,
    };
    let out = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {CLIENT_TIMEOUT:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    if let Some(feeder) = feeder {
        feeder.await.context("the stdin feeder panicked")?;
    }
    Ok(out)
}

/// `psql -X -q -A -t [args] <db>` against `port`.
async fn psql(port: u16, db: &TestDb, args: &[&str], stdin: Option<Vec<u8>>) -> Result<Output> {
    let mut cmd = client_command("psql", port, db);
    cmd.args(["-X", "-q", "-A", "-t"])
        .args(args)
        .arg("-d")
        .arg(&db.name);
    run(cmd, stdin).await
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails with the client's output unless it exited 0.
fn ensure_ok(out: &Output, what: &str) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
    Ok(())
}

/// `psql -c <sql>` with `ON_ERROR_STOP=1`; must succeed; returns stdout.
async fn psql_ok(port: u16, db: &TestDb, sql: &str) -> Result<String> {
    let out = psql(port, db, &["-v", "ON_ERROR_STOP=1", "-c", sql], None).await?;
    ensure_ok(&out, &format!("psql -c {sql:?} on port {port}"))?;
    Ok(stdout(&out))
}

/// A scalar through a direct tokio-postgres connection (the oracle), as text.
async fn direct_scalar(db: &TestDb, sql: &str) -> Result<String> {
    let client = db.connect().await?;
    let rows = client.simple_query(sql).await.context(sql.to_owned())?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .with_context(|| format!("{sql} returned no row"))
}

// ---------------------------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_create_insert_select() -> Result<()> {
    let s = setup("psqlbasic", 4).await?;
    let port = s.sentinel.port();

    let out = psql_ok(
        port,
        &s.db,
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(8,2))",
    )
    .await?;
    assert_eq!(out, "", "CREATE TABLE printed something with -q");
    psql_ok(
        port,
        &s.db,
        "INSERT INTO items VALUES (1, 'apple', 1.25), (2, 'pear', 0.5), (3, 'quince', NULL)",
    )
    .await?;
    let out = psql_ok(
        port,
        &s.db,
        "SELECT id, name, coalesce(price::text, 'null') FROM items ORDER BY id",
    )
    .await?;
    assert_eq!(out, "1|apple|1.25\n2|pear|0.50\n3|quince|null\n");

    // Session facts psql sees through Sentinel are the server's.
    let out = psql_ok(port, &s.db, "SELECT current_user, current_database()").await?;
    assert_eq!(out, format!("{}|{}\n", s.db.role, s.db.name));

    // The rows really are in Postgres.
    assert_eq!(
        direct_scalar(&s.db, "SELECT string_agg(name, ',' ORDER BY id) FROM items").await?,
        "apple,pear,quince"
    );
    Ok(())
}

/// Rows with the cases COPY text format must carry exactly: NULLs, escaped tabs, newlines and
/// backslashes, non-ASCII text, empty strings.
fn copy_rows(n: usize) -> String {
    let mut data = String::new();
    for i in 1..=n {
        let name = match i % 7 {
            0 => "\\N".to_owned(),
            1 => format!("tab\\there {i}"),
            2 => format!("line\\nbreak {i}"),
            3 => format!("back\\\\slash {i}"),
            4 => format!("ünïcødé ✓ {i}"),
            5 => String::new(),
            _ => format!("plain row number {i}"),
        };
        let amount = if i % 11 == 0 {
            "\\N".to_owned()
        } else {
            format!("{}.{:02}", i * 3, i % 100)
        };
        data.push_str(&format!("{i}\t{name}\t{amount}\n"));
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_in_and_out_match_direct() -> Result<()> {
    const ROWS: usize = 5000;
    let s = setup("psqlcopy", 2).await?;
    let port = s.sentinel.port();
    psql_ok(
        port,
        &s.db,
        "CREATE TABLE t (id int PRIMARY KEY, name text, amount numeric)",
    )
    .await?;

    // COPY FROM STDIN through Sentinel, data from psql's own stdin.
    let data = copy_rows(ROWS);
    let out = psql(
        port,
        &s.db,
        &["-v", "ON_ERROR_STOP=1", "-c", "\\copy t from pstdin"],
        Some(data.clone().into_bytes()),
    )
    .await?;
    ensure_ok(&out, "\\copy t from pstdin through Sentinel")?;
    assert_eq!(
        direct_scalar(&s.db, "SELECT count(*) FROM t").await?,
        ROWS.to_string()
    );
    assert_eq!(
        direct_scalar(&s.db, "SELECT count(*) FROM t WHERE name IS NULL").await?,
        (ROWS / 7).to_string()
    );
    assert_eq!(
        direct_scalar(&s.db, "SELECT name FROM t WHERE id = 1").await?,
        "tab\there 1"
    );
    assert_eq!(
        direct_scalar(&s.db, "SELECT name FROM t WHERE id = 2").await?,
        "line\nbreak 2"
    );

    // COPY TO STDOUT, through Sentinel and directly: byte for byte the same, and the data that
    // went in.
    let copy_out = ["-v", "ON_ERROR_STOP=1", "-c", "\\copy t to stdout"];
    let via = psql(port, &s.db, &copy_out, None).await?;
    ensure_ok(&via, "\\copy t to stdout through Sentinel")?;
    let direct = psql(s.pg.port(), &s.db, &copy_out, None).await?;
    ensure_ok(&direct, "\\copy t to stdout directly")?;
    assert!(
        via.stdout == direct.stdout,
        "COPY TO STDOUT differs through Sentinel ({} bytes) and directly ({} bytes)",
        via.stdout.len(),
        direct.stdout.len()
    );
    let via_text = stdout(&via);
    let mut sorted: Vec<&str> = via_text.lines().collect();
    sorted.sort_by_key(|l| l.split('\t').next().and_then(|id| id.parse::<u64>().ok()));
    let expected: Vec<&str> = data.lines().collect();
    assert_eq!(sorted.len(), expected.len());
    // numeric keeps the scale it was given and text escapes are canonical, so every row
    // round-trips byte for byte.
    assert!(
        sorted == expected,
        "COPY TO STDOUT through Sentinel does not give back what COPY FROM STDIN stored"
    );

    // A larger result (~10 MB) streamed out of a query, compared with the direct run.
    let big = [
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "\\copy (SELECT g, md5(g::text), repeat('x', 80) FROM generate_series(1, 100000) g) to stdout",
    ];
    let via = psql(port, &s.db, &big, None).await?;
    ensure_ok(&via, "large \\copy to stdout through Sentinel")?;
    let direct = psql(s.pg.port(), &s.db, &big, None).await?;
    ensure_ok(&direct, "large \\copy to stdout directly")?;
    assert_eq!(stdout(&via).lines().count(), 100_000);
    assert!(
        via.stdout == direct.stdout,
        "large COPY TO STDOUT differs through Sentinel ({} bytes) and directly ({} bytes)",
        via.stdout.len(),
        direct.stdout.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_of_bad_data_fails_and_psql_continues() -> Result<()> {
    let s = setup("psqlcopybad", 2).await?;
    let port = s.sentinel.port();
    psql_ok(port, &s.db, "CREATE TABLE t (id int PRIMARY KEY, v text)").await?;

    // A script on stdin without ON_ERROR_STOP: the bad COPY fails, the rest still runs on the
    // same connection.
    let script = "\\copy t from stdin\n\
                  1\tone\n\
                  2\ttwo\n\
                  notanint\tthree\n\
                  4\tfour\n\
                  \\.\n\
                  SELECT 'after copy', count(*) FROM t;\n\
                  \\copy t from stdin\n\
                  10\tten\n\
                  10\tagain\n\
                  \\.\n\
                  INSERT INTO t VALUES (5, 'five');\n\
                  \\copy t from stdin\n\
                  6\tsix\n\
                  7\tseven\n\
                  \\.\n\
                  SELECT string_agg(id::text, ',' ORDER BY id) FROM t;\n";
    let out = psql(port, &s.db, &[], Some(script.as_bytes().to_vec())).await?;
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "psql without ON_ERROR_STOP exits 0 after errors, got {}: {err}",
        out.status
    );
    assert!(
        err.contains("ERROR:  invalid input syntax for type integer: \"notanint\""),
        "stderr lacks the Postgres COPY error:\n{err}"
    );
    assert!(
        err.contains("CONTEXT:  COPY t, line 3, column id: \"notanint\""),
        "stderr lacks the COPY context:\n{err}"
    );
    assert!(
        err.contains("ERROR:  duplicate key value violates unique constraint \"t_pkey\""),
        "stderr lacks the unique violation raised during COPY:\n{err}"
    );
    assert_eq!(
        err.matches("ERROR:").count(),
        2,
        "expected exactly two errors:\n{err}"
    );
    assert_eq!(stdout(&out), "after copy|0\n5,6,7\n");

    // And Postgres agrees.
    assert_eq!(
        direct_scalar(&s.db, "SELECT string_agg(id::text, ',' ORDER BY id) FROM t").await?,
        "5,6,7"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_multi_statement_command_string() -> Result<()> {
    let s = setup("psqlmulti", 2).await?;
    let port = s.sentinel.port();

    // One -c string is one simple Query with several statements; psql 15 prints every result.
    let out = psql_ok(
        port,
        &s.db,
        "CREATE TABLE m (x int); INSERT INTO m VALUES (1), (2), (3); \
         SELECT sum(x) FROM m; SELECT 'done', count(*) FROM m",
    )
    .await?;
    assert_eq!(out, "6\ndone|3\n");

    // A multi-statement Query is one implicit transaction: an error in the middle undoes the
    // statements before it and skips those after it.
    let out = psql(
        port,
        &s.db,
        &[
            "-c",
            "INSERT INTO m VALUES (4); SELECT 1/0; INSERT INTO m VALUES (5)",
        ],
        None,
    )
    .await?;
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR:  division by zero"),
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(
        direct_scalar(&s.db, "SELECT string_agg(x::text, ',' ORDER BY x) FROM m").await?,
        "1,2,3"
    );

    // The pooled server connection is clean afterwards: a new client sees no aborted
    // transaction and the same rows.
    let out = psql_ok(port, &s.db, "SELECT count(*) FROM m; SELECT 'ok'").await?;
    assert_eq!(out, "3\nok\n");

    // Explicit transaction blocks inside one -c string.
    let out = psql_ok(
        port,
        &s.db,
        "BEGIN; INSERT INTO m VALUES (10); ROLLBACK; BEGIN; INSERT INTO m VALUES (20); COMMIT; \
         SELECT string_agg(x::text, ',' ORDER BY x) FROM m",
    )
    .await?;
    assert_eq!(out, "1,2,3,20\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_on_error_stop_script_exits_3() -> Result<()> {
    let s = setup("psqlstop", 2).await?;
    let port = s.sentinel.port();
    let dir = tempfile::tempdir()?;
    let script_path = dir.path().join("migrate.sql");
    std::fs::write(
        &script_path,
        "CREATE TABLE s (id int PRIMARY KEY, v text);\n\
         INSERT INTO s VALUES (1, 'a'), (2, 'b');\n\
         SELECT 'before', count(*) FROM s;\n\
         INSERT INTO s SELECT id, v FROM no_such_table;\n\
         CREATE TABLE after_error (id int);\n\
         SELECT 'after';\n",
    )?;
    let script = script_path.to_str().context("temp path is not UTF-8")?;
    let out = psql(port, &s.db, &["-v", "ON_ERROR_STOP=1", "-f", script], None).await?;
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "psql -v ON_ERROR_STOP=1 -f with a failing statement must exit 3; stderr:\n{err}"
    );
    assert!(
        err.contains(&format!(
            "psql:{script}:4: ERROR:  relation \"no_such_table\" does not exist"
        )),
        "stderr lacks the error with its script line:\n{err}"
    );
    assert_eq!(stdout(&out), "before|2\n", "statements after the error ran");
    assert_eq!(err.matches("ERROR:").count(), 1, "{err}");

    // What ran before the error is committed, nothing after it ran.
    assert_eq!(direct_scalar(&s.db, "SELECT count(*) FROM s").await?, "2");
    assert_eq!(
        direct_scalar(&s.db, "SELECT to_regclass('after_error') IS NULL").await?,
        "t"
    );

    // Same script with --single-transaction: everything rolls back, still exit 3.
    let db2 = s.pg.test_db("psqlstop").await?;
    let cfg = SentinelConfig::new(s.pg)
        .user_for(&db2, Auth::Scram(&db2.password))
        .pool_size(2);
    let sentinel2 = SentinelProcess::start_with(&cfg).await?;
    let out = psql(
        sentinel2.port(),
        &db2,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-f",
            script,
        ],
        None,
    )
    .await?;
    assert_eq!(out.status.code(), Some(3), "stderr:\n{}", stderr(&out));
    assert_eq!(
        direct_scalar(&db2, "SELECT to_regclass('s') IS NULL").await?,
        "t",
        "--single-transaction did not roll back the table created before the error"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------------

/// `pgbench -i -s 1` straight to Postgres.
async fn pgbench_init(s: &Setup) -> Result<()> {
    let mut cmd = client_command("pgbench", s.pg.port(), &s.db);
    cmd.args(["-i", "-s", "1", "-q"]).arg(&s.db.name);
    let out = run(cmd, None).await?;
    ensure_ok(&out, "pgbench -i -s 1 (direct)")
}

/// What a pgbench run reported.
#[derive(Debug)]
struct PgbenchReport {
    processed: u64,
    expected: u64,
    failed: u64,
    /// Most server connections of the test role Postgres showed at once during the run.
    max_server_conns: i64,
}

fn parse_number_after(text: &str, prefix: &str) -> Result<String> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .with_context(|| format!("pgbench output lacks {prefix:?}:\n{text}"))?;
    Ok(line.trim().to_owned())
}

/// Runs pgbench through Sentinel with `args`, watching from a superuser connection how many
/// server connections the test role has while it runs.
async fn pgbench_via_sentinel(s: &Setup, args: &[&str]) -> Result<PgbenchReport> {
    let mut cmd = client_command("pgbench", s.sentinel.port(), &s.db);
    cmd.args(args).arg(&s.db.name);
    let what = format!("pgbench {}", args.join(" "));

    let oracle = s.pg.connect_superuser("postgres").await?;
    let role = s.db.role.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(async move {
        let mut max = 0i64;
        loop {
            let n: i64 = oracle
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                    &[&role],
                )
                .await?
                .get(0);
            max = max.max(n);
            tokio::select! {
                _ = &mut stop_rx => return anyhow::Ok(max),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });

    let started = Instant::now();
    let out = run(cmd, None).await;
    let _ = stop_tx.send(());
    let max_server_conns = watcher.await.context("the watcher panicked")??;
    let out = out?;
    ensure_ok(&out, &what).with_context(|| format!("Sentinel's log:\n{}", s.sentinel.logs()))?;
    let text = stdout(&out);
    eprintln!(
        "{what}: {:?}, at most {max_server_conns} server connections\n{text}",
        started.elapsed()
    );

    let processed = parse_number_after(&text, "number of transactions actually processed:")?;
    let (done, wanted) = processed
        .split_once('/')
        .with_context(|| format!("unexpected processed line {processed:?}"))?;
    let failed = parse_number_after(&text, "number of failed transactions:")?;
    let failed = failed
        .split_whitespace()
        .next()
        .context("empty failed-transactions line")?;
    let report = PgbenchReport {
        processed: done.parse().context("processed count")?,
        expected: wanted.parse().context("expected count")?,
        failed: failed.parse().context("failed count")?,
        max_server_conns,
    };
    if !stderr(&out).trim().is_empty() {
        // pgbench reports client aborts on stderr; show them with the failure below.
        eprintln!("{what} stderr:\n{}", stderr(&out));
    }
    Ok(report)
}

async fn pgbench_select_only(mode: &str) -> Result<()> {
    const CLIENTS: u64 = 12;
    const TXNS: u64 = 300;
    const POOL: i64 = 3;
    let s = setup(&format!("bench{mode}"), POOL as u32).await?;
    pgbench_init(&s).await?;
    let report = pgbench_via_sentinel(
        &s,
        &[
            "-n",
            "-S",
            "-M",
            mode,
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
            "-t",
            &TXNS.to_string(),
        ],
    )
    .await?;
    assert_eq!(report.failed, 0, "{report:?}\n{}", s.sentinel.logs());
    assert_eq!(report.expected, CLIENTS * TXNS, "{report:?}");
    assert_eq!(report.processed, CLIENTS * TXNS, "{report:?}");
    assert!(
        (1..=POOL).contains(&report.max_server_conns),
        "Postgres saw {} connections of the role with pool_size {POOL}",
        report.max_server_conns
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_simple_protocol() -> Result<()> {
    pgbench_select_only("simple").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_extended_protocol() -> Result<()> {
    pgbench_select_only("extended").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_prepared_statements() -> Result<()> {
    pgbench_select_only("prepared").await
}

/// The default TPC-B-like script (`BEGIN; UPDATE accounts; SELECT; UPDATE tellers; UPDATE
/// branches; INSERT history; END`) with prepared statements, 8 clients on a pool of 3, then the
/// bookkeeping invariant through a direct connection. `jobs`: pgbench threads (`None`: pgbench's
/// default, one thread for all clients).
async fn pgbench_read_write(prefix: &str, jobs: Option<u32>) -> Result<()> {
    const CLIENTS: u64 = 8;
    const TXNS: u64 = 200;
    const POOL: i64 = 3;
    let s = setup(prefix, POOL as u32).await?;
    pgbench_init(&s).await?;
    let clients = CLIENTS.to_string();
    let txns = TXNS.to_string();
    let mut args = vec!["-n", "-M", "prepared", "-c", &clients, "-t", &txns];
    let jobs = jobs.map(|j| j.to_string());
    if let Some(jobs) = &jobs {
        args.extend(["-j", jobs]);
    }
    let report = pgbench_via_sentinel(&s, &args).await?;
    assert_eq!(report.failed, 0, "{report:?}\n{}", s.sentinel.logs());
    assert_eq!(report.expected, CLIENTS * TXNS, "{report:?}");
    assert_eq!(report.processed, CLIENTS * TXNS, "{report:?}");
    assert!(
        (1..=POOL).contains(&report.max_server_conns),
        "Postgres saw {} connections of the role with pool_size {POOL}",
        report.max_server_conns
    );

    // The script moves money: every delta lands once in an account, a teller, the branch and
    // the history.
    let history_rows = direct_scalar(&s.db, "SELECT count(*) FROM pgbench_history").await?;
    assert_eq!(history_rows, (CLIENTS * TXNS).to_string());
    let sums = direct_scalar(
        &s.db,
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts)::text || ',' || \
                (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers)::text || ',' || \
                (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches)::text || ',' || \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::text",
    )
    .await?;
    let parts: Vec<&str> = sums.split(',').collect();
    let [accounts, tellers, branches, history] = parts[..] else {
        bail!("unexpected sums {sums:?}");
    };
    assert_eq!(
        accounts, history,
        "sum(abalance) != sum(delta) of history ({sums})"
    );
    assert_eq!(tellers, history, "sum(tbalance) != sum(delta) ({sums})");
    assert_eq!(branches, history, "sum(bbalance) != sum(delta) ({sums})");
    Ok(())
}

/// One pgbench thread per client: a client blocked in a synchronous call blocks only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_read_write_keeps_balances_consistent() -> Result<()> {
    pgbench_read_write("benchrw", Some(8)).await
}

/// pgbench's default single thread drives all 8 clients. pgbench prepares each statement with a
/// synchronous `PQprepare` (Parse + Sync) the first time a client runs it, so the `BEGIN` of a
/// client's first transaction is prepared while the thread's other clients sit inside open
/// transactions holding all pool slots. Postgres (and a client per connection) copes; a pooler
/// that needs a free server connection to answer that Parse waits for slots that can only be
/// freed by the very thread it blocks, until `pool_wait_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_read_write_one_thread_for_all_clients() -> Result<()> {
    pgbench_read_write("benchrw1", None).await
}

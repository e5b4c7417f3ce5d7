//! Real clients, through Sentinel and directly.
//!
//! Tests compare what a client sees through Sentinel with what Postgres says directly (the
//! "oracle" connection), so both paths use the same helpers. tokio-postgres is the in-process
//! client; [`psql`] runs the real `psql` binary for the cases where a stock libpq client matters.

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::names::conninfo_quote;
use crate::pg::{PgCluster, pg_bin_dir};
use crate::sentinel::SentinelProcess;

/// How long a connection attempt may take before it fails (so a hung proxy fails a test instead
/// of hanging it).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A `key=value` connection string, values quoted, with a connect timeout.
pub fn dsn(host: &str, port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={port} user={} password={} dbname={} connect_timeout={}",
        conninfo_quote(host),
        conninfo_quote(user),
        conninfo_quote(password),
        conninfo_quote(db),
        CONNECT_TIMEOUT.as_secs()
    )
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task on the current runtime;
/// a connection error after login is printed to stderr, where the test output shows it. Returns
/// the driver's own error so tests can assert on SQLSTATEs of failed logins.
pub async fn connect_dsn(dsn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("sentinel-tests: connection closed with an error: {e}");
        }
    });
    Ok(client)
}

/// Connects through Sentinel's Postgres port.
pub async fn try_connect_via_sentinel(
    sentinel: &SentinelProcess,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_dsn(&sentinel.dsn(user, password, db)).await
}

/// Connects through Sentinel's Postgres port; the error says where it tried.
pub async fn connect_via_sentinel(
    sentinel: &SentinelProcess,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client> {
    try_connect_via_sentinel(sentinel, user, password, db)
        .await
        .with_context(|| {
            format!(
                "connecting through Sentinel ({}) as {user} to {db}",
                sentinel.addr()
            )
        })
}

/// Connects straight to Postgres, bypassing Sentinel.
pub async fn try_connect_direct(
    pg: &PgCluster,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_dsn(&dsn("127.0.0.1", pg.port(), user, password, db)).await
}

/// Connects straight to Postgres, bypassing Sentinel; the error says where it tried.
pub async fn connect_direct(
    pg: &PgCluster,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client> {
    try_connect_direct(pg, user, password, db)
        .await
        .with_context(|| {
            format!(
                "connecting directly to port {} as {user} to {db}",
                pg.port()
            )
        })
}

/// The SQLSTATE of a driver error, or a description of why there is none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("<no SQLSTATE: {e}>"))
}

/// The server's message of a driver error (or the error itself).
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// Rows of a simple-query reply, as text.
pub fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Runs `psql -X -A -t -v ON_ERROR_STOP=1 -c <sql>` against 127.0.0.1:`port` and returns its
/// output (check `status`; `stdout` has unaligned, tuples-only rows).
pub async fn psql(port: u16, user: &str, password: &str, db: &str, sql: &str) -> Result<Output> {
    run_psql(&["-t"], port, user, password, db, sql).await
}

/// Like [`psql`], with the column names as the first line of `stdout`.
pub async fn psql_with_headers(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> Result<Output> {
    run_psql(&["-P", "footer=off"], port, user, password, db, sql).await
}

async fn run_psql(
    extra: &[&str],
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    sql: &str,
) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(pg_bin_dir().join("psql"));
    cmd.args(["-X", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args(extra)
        .arg("-p")
        .arg(port.to_string())
        .arg("-U")
        .arg(user)
        .arg("-d")
        .arg(db)
        .arg("-c")
        .arg(sql)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd.output().await.context("running psql")
}

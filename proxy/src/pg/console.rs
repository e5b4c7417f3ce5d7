//! The admin console: the virtual database `sentinel`, opened by one of `[admin]
//! console_users`, answers PgBouncer-style commands (`SHOW POOLS`, `RELOAD`, `PAUSE`, …) with
//! PgBouncer's column names where they overlap, so existing habits and exporters work. Simple
//! queries only; nothing here reaches Postgres.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rand::RngCore;
use sentinel_wire::{FrontendMessage, TransactionStatus, encode};

use super::PgShared;
use super::clients::ClientInfo;
use super::conn::Conn;
use crate::admin::views;
use pingora::server::ShutdownWatch;

/// The console's database name.
pub const DATABASE: &str = "sentinel";

const HELP: &str = "the console knows SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, \
                    SHOW TENANTS, SHOW VERSION, RELOAD, PAUSE and RESUME";

/// Runs a console session until the client leaves.
pub async fn serve(
    shared: Arc<PgShared>,
    mut conn: Conn,
    user: &str,
    info: &ClientInfo,
    mut shutdown: ShutdownWatch,
) {
    tracing::info!("admin console opened");
    let mut out = BytesMut::new();
    for (name, value) in [
        ("server_version", "15.0 (Sentinel console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        encode::parameter_status(&mut out, name, value);
    }
    let mut secret = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut secret);
    encode::backend_key_data(&mut out, 0, &secret);
    encode::ready_for_query(&mut out, TransactionStatus::Idle);
    conn.wbuf.extend_from_slice(&out);
    if conn.flush().await.is_err() {
        return;
    }
    // After an error in an extended batch, messages up to Sync are skipped, as Postgres does.
    let mut skipping = false;
    loop {
        let frame = tokio::select! {
            frame = conn.read_frame() => match frame {
                Ok(f) => f,
                Err(_) => return,
            },
            _ = shutdown.changed() => {
                encode::error_response(&mut conn.wbuf, "FATAL", "57P01", "Sentinel is shutting down", None);
                conn.shutdown().await;
                return;
            }
        };
        // A reload may have taken the user off the list: its open session ends too.
        if !shared
            .live()
            .config
            .admin
            .console_users
            .iter()
            .any(|u| u == user)
        {
            encode::error_response(
                &mut conn.wbuf,
                "FATAL",
                "42501",
                "no longer a console user ([admin] console_users)",
                None,
            );
            conn.shutdown().await;
            return;
        }
        let msg = match FrontendMessage::parse(&frame) {
            Ok(m) => m,
            Err(e) => {
                encode::error_response(&mut conn.wbuf, "FATAL", "08P01", &e.to_string(), None);
                conn.shutdown().await;
                return;
            }
        };
        info.requested();
        match msg {
            FrontendMessage::Terminate => return,
            FrontendMessage::Query { sql } => {
                let mut out = BytesMut::new();
                run(&shared, sql, &mut out).await;
                encode::ready_for_query(&mut out, TransactionStatus::Idle);
                conn.wbuf.extend_from_slice(&out);
            }
            FrontendMessage::Sync => {
                skipping = false;
                encode::ready_for_query(&mut conn.wbuf, TransactionStatus::Idle);
            }
            FrontendMessage::Flush => {}
            _ if skipping => {}
            _ => {
                skipping = true;
                encode::error_response(
                    &mut conn.wbuf,
                    "ERROR",
                    "0A000",
                    "the console answers simple queries only",
                    None,
                );
            }
        }
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Runs one command (several, separated by `;`), writing its replies to `out`.
async fn run(shared: &PgShared, sql: &str, out: &mut BytesMut) {
    let commands: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        encode::empty_query_response(out);
        return;
    }
    for command in commands {
        let words: Vec<String> = command
            .split_whitespace()
            .map(str::to_ascii_uppercase)
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let result = match words.as_slice() {
            ["SHOW", what] => show(shared, what, out),
            ["RELOAD"] => reload(shared, out).await,
            ["PAUSE"] => {
                shared.pause.set(true);
                tracing::warn!("console: PAUSE (new transactions wait)");
                encode::command_complete(out, "PAUSE");
                Ok(())
            }
            ["RESUME"] => {
                shared.pause.set(false);
                tracing::warn!("console: RESUME");
                encode::command_complete(out, "RESUME");
                Ok(())
            }
            _ => Err(("42601", format!("unknown command; {HELP}"))),
        };
        if let Err((code, message)) = result {
            encode::error_response(out, "ERROR", code, &message, None);
            return;
        }
    }
}

type Rows = Vec<Vec<Option<String>>>;

fn table(out: &mut BytesMut, columns: &[&str], rows: Rows) {
    encode::row_description_text(out, columns);
    let count = rows.len();
    for row in rows {
        let values: Vec<Option<&[u8]>> = row
            .iter()
            .map(|v| v.as_deref().map(str::as_bytes))
            .collect();
        encode::data_row(out, &values);
    }
    encode::command_complete(out, &format!("SHOW {count}"));
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn show(shared: &PgShared, what: &str, out: &mut BytesMut) -> Result<(), (&'static str, String)> {
    match what {
        "POOLS" => {
            let rows = views::pools(shared)
                .into_iter()
                .map(|p| {
                    vec![
                        s(p.database),
                        s(p.user),
                        s(p.cl_active),
                        s(p.cl_waiting),
                        s(p.sv_active),
                        s(p.sv_idle),
                        s(p.pool_mode),
                        s(p.pool_size),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "database",
                    "user",
                    "cl_active",
                    "cl_waiting",
                    "sv_active",
                    "sv_idle",
                    "pool_mode",
                    "pool_size",
                ],
                rows,
            );
        }
        "CLIENTS" => {
            let rows = views::clients(shared)
                .into_iter()
                .map(|c| {
                    vec![
                        s("C"),
                        c.user,
                        c.database,
                        s(c.state),
                        c.addr,
                        c.port.map(|p| p.to_string()),
                        c.local_addr,
                        c.local_port.map(|p| p.to_string()),
                        s(c.connect_time),
                        c.request_time,
                        s(c.tls),
                        s(c.id),
                        c.server_pid.map(|p| p.to_string()),
                        c.tenant,
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "type",
                    "user",
                    "database",
                    "state",
                    "addr",
                    "port",
                    "local_addr",
                    "local_port",
                    "connect_time",
                    "request_time",
                    "tls",
                    "id",
                    "server_pid",
                    "tenant",
                ],
                rows,
            );
        }
        "SERVERS" => {
            let rows = views::servers(shared)
                .into_iter()
                .map(|v| {
                    vec![
                        s("S"),
                        s(v.user),
                        s(v.database),
                        s(v.state),
                        s(v.addr),
                        s(v.port),
                        v.connect_time,
                        s(v.remote_pid),
                        v.client_id.map(|c| c.to_string()),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "type",
                    "user",
                    "database",
                    "state",
                    "addr",
                    "port",
                    "connect_time",
                    "remote_pid",
                    "client_id",
                ],
                rows,
            );
        }
        "STATS" => {
            let m = &shared.metrics.pg;
            let micros = |h: &crate::metrics::Histogram| {
                let (sum, count, _) = h.snapshot();
                ((sum * 1e6) as u64, count)
            };
            let (xact_time, xacts) = micros(&m.transaction_duration);
            let (query_time, queries) = micros(&m.query_duration);
            let (wait_time, waits) = micros(&m.pool_wait);
            let avg = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
            let rows = vec![vec![
                s("*"),
                s(m.transactions.load(Ordering::Relaxed)),
                s(m.queries.load(Ordering::Relaxed)),
                s(xact_time),
                s(query_time),
                s(wait_time),
                s(avg(xact_time, xacts)),
                s(avg(query_time, queries)),
                s(avg(wait_time, waits)),
            ]];
            table(
                out,
                &[
                    "database",
                    "total_xact_count",
                    "total_query_count",
                    "total_xact_time",
                    "total_query_time",
                    "total_wait_time",
                    "avg_xact_time",
                    "avg_query_time",
                    "avg_wait_time",
                ],
                rows,
            );
        }
        "TENANTS" => {
            let blocks = shared.blocks.all();
            let mut tenants: std::collections::BTreeMap<String, (u64, u64)> = shared
                .metrics
                .llm_tenants
                .snapshot()
                .into_iter()
                .map(|(t, requests, cost)| (t, (requests, cost)))
                .collect();
            for tenant in blocks.keys() {
                tenants.entry(tenant.clone()).or_default();
            }
            let rows = tenants
                .into_iter()
                .map(|(tenant, (requests, cost))| {
                    let blocked = match blocks.get(&tenant) {
                        Some(b) if b.db => "llm,db",
                        Some(_) => "llm",
                        None => "",
                    };
                    let refusals: u64 = shared.metrics.tenant_refusals(&tenant).values().sum();
                    vec![s(&tenant), s(blocked), s(requests), s(cost), s(refusals)]
                })
                .collect();
            table(
                out,
                &[
                    "tenant",
                    "blocked",
                    "llm_requests",
                    "llm_cost_microdollars",
                    "llm_refusals",
                ],
                rows,
            );
        }
        "VERSION" => table(
            out,
            &["version"],
            vec![vec![s(format!("Sentinel {}", env!("CARGO_PKG_VERSION")))]],
        ),
        _ => return Err(("42601", format!("unknown SHOW; {HELP}"))),
    }
    Ok(())
}

async fn reload(shared: &PgShared, out: &mut BytesMut) -> Result<(), (&'static str, String)> {
    let Some(admin) = shared.admin() else {
        return Err(("55000", "reload is not available yet".to_owned()));
    };
    match admin.reloader.reload().await {
        Ok(report) => {
            if !report.restart_required.is_empty() {
                encode::notice_response(
                    out,
                    "WARNING",
                    "01000",
                    &format!(
                        "changed but applied only after a restart: {}",
                        report.restart_required.join(", ")
                    ),
                );
            }
            encode::command_complete(out, "RELOAD");
            Ok(())
        }
        Err(reason) => Err((
            "F0000",
            format!("reload refused, the running config stays: {reason}"),
        )),
    }
}

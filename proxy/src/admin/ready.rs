//! `/readyz`: whether this replica should get traffic. Ready when the upstream Postgres accepts
//! connections, the ledger database has answered lately (with the Postgres ledger), and no
//! shutdown has begun.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::Admin;

/// A connect to the upstream taking longer than this counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// (ready, reason when not, the checks).
pub async fn readiness(admin: &Admin) -> (bool, Option<String>, Value) {
    let upstream = admin.pg.pools.upstream();
    let target = (upstream.host.as_str(), upstream.port);
    let postgres =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "upstream Postgres {}:{} unreachable: {e}",
                upstream.host, upstream.port
            )),
            Err(_) => Err(format!(
                "upstream Postgres {}:{} did not accept a connection within {CONNECT_TIMEOUT:?}",
                upstream.host, upstream.port
            )),
        };
    let ledger = match &admin.pg_ledger {
        Some(l) if !l.healthy() => Err("the ledger database has not answered lately".to_owned()),
        _ => Ok(()),
    };
    let draining = admin.draining.load(Ordering::Relaxed);
    let status = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "failing" };
    let checks = json!({
        "config": "ok",
        "postgres": status(&postgres),
        "ledger": if admin.pg_ledger.is_some() { status(&ledger) } else { "not used" },
        "draining": draining,
    });
    let reason = match (postgres, ledger) {
        _ if draining => Some("shutting down".to_owned()),
        (Err(e), _) | (_, Err(e)) => Some(e),
        _ => None,
    };
    (reason.is_none(), reason, checks)
}

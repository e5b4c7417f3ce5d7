//! `/readyz`: whether this replica should get traffic. Ready when the upstream Postgres accepts
//! connections, the ledger database has answered lately (with the Postgres ledger), and no
//! shutdown has begun.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Admin;

/// A connect to the upstream taking longer than this counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes within this long of the last one get its answer: a probe loop on an exposed port
/// must not become a connection storm on the database.
const CACHED_FOR: Duration = Duration::from_secs(1);

/// (ready, reason when not, the checks).
pub type Readiness = (bool, Option<String>, Value);

/// The last answer, and when it was made.
pub type ReadyCache = tokio::sync::Mutex<Option<(Instant, Readiness)>>;

pub async fn readiness(admin: &Admin) -> Readiness {
    // One probe at a time; the others wait for its answer.
    let mut cache = admin.ready_cache.lock().await;
    if let Some((at, answer)) = cache.as_ref()
        && at.elapsed() < CACHED_FOR
        && !admin.draining.load(Ordering::Relaxed)
    {
        return answer.clone();
    }
    let answer = check(admin).await;
    *cache = Some((Instant::now(), answer.clone()));
    answer
}

async fn check(admin: &Admin) -> Readiness {
    let upstream = admin.pg.pools.upstream();
    let target = (upstream.host.as_str(), upstream.port);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target));
    // The address stays in the log: the answer is for anyone who can reach the port.
    let postgres = match connected.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(host = %upstream.host, port = upstream.port, error = %e, "not ready: upstream Postgres unreachable");
            Err("upstream Postgres unreachable".to_owned())
        }
        Err(_) => {
            tracing::warn!(host = %upstream.host, port = upstream.port, "not ready: upstream Postgres did not accept a connection in time");
            Err(format!(
                "upstream Postgres did not accept a connection within {CONNECT_TIMEOUT:?}"
            ))
        }
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

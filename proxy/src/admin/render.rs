//! `GET /metrics`: every counter, gauge and histogram of the process, read at scrape time.
//! Names and labels are listed in docs/admin.md.

use std::sync::atomic::Ordering;

use prometheus_client::registry::Unit;

use super::Admin;
use crate::metrics::Families;
use crate::pg::ClientState;

fn micros() -> Option<Unit> {
    Some(Unit::Other("microdollars".to_owned()))
}

fn label(name: &'static str, value: impl Into<String>) -> Vec<(&'static str, String)> {
    vec![(name, value.into())]
}

fn labelled<V>(
    name: &'static str,
    values: impl IntoIterator<Item = (impl Into<String>, V)>,
) -> Vec<(Vec<(&'static str, String)>, V)> {
    values
        .into_iter()
        .map(|(k, v)| (label(name, k), v))
        .collect()
}

pub fn render(admin: &Admin) -> String {
    let mut f = Families::default();
    let m = &admin.metrics;
    f.gauges(
        "sentinel_build_info",
        "Sentinel's version (the value is always 1).",
        None,
        vec![(label("version", env!("CARGO_PKG_VERSION")), 1)],
    );
    f.counters(
        "sentinel_config_reloads",
        "Config reloads tried, by result.",
        None,
        labelled(
            "result",
            [
                ("ok", m.reloads_ok.load(Ordering::Relaxed)),
                ("error", m.reloads_failed.load(Ordering::Relaxed)),
            ],
        ),
    );
    pg(&mut f, admin);
    tenancy(&mut f, admin);
    f.counters(
        "sentinel_blocked",
        "Calls and statements refused by the admin kill switch, by service.",
        None,
        labelled(
            "service",
            [
                ("llm", m.blocked_llm.load(Ordering::Relaxed)),
                ("db", m.blocked_db.load(Ordering::Relaxed)),
            ],
        ),
    );
    llm(&mut f, admin);
    ledger(&mut f, admin);
    f.encode()
}

fn pg(f: &mut Families, admin: &Admin) {
    let pg = &admin.pg;
    let m = &admin.metrics.pg;
    let counts = pg.registry.counts();
    f.gauges(
        "sentinel_pg_clients",
        "Client connections now, by state.",
        None,
        labelled(
            "state",
            ClientState::ALL.map(|s| (s.label(), counts[s as usize] as i64)),
        ),
    );
    f.counters(
        "sentinel_pg_client_logins",
        "Client logins, by result (ok, or the refusal's kind).",
        None,
        labelled("result", m.logins()),
    );
    let pools = pg.pools.all();
    let pool_labels = |p: &crate::pg::Pool, extra: Option<(&'static str, &str)>| {
        let mut l = vec![
            ("database", p.key.database.clone()),
            ("user", p.key.server_user.clone()),
        ];
        if let Some((k, v)) = extra {
            l.push((k, v.to_owned()));
        }
        l
    };
    let mut servers = Vec::new();
    let mut connects = Vec::new();
    let mut waits = Vec::new();
    let mut timeouts = Vec::new();
    for p in &pools {
        let s = &p.stats;
        servers.push((
            pool_labels(p, Some(("state", "idle"))),
            p.idle_count() as i64,
        ));
        servers.push((
            pool_labels(p, Some(("state", "active"))),
            p.active_count() as i64,
        ));
        connects.push((
            pool_labels(p, Some(("result", "ok"))),
            s.connects.load(Ordering::Relaxed),
        ));
        connects.push((
            pool_labels(p, Some(("result", "error"))),
            s.connect_failures.load(Ordering::Relaxed),
        ));
        waits.push((pool_labels(p, None), s.waits.load(Ordering::Relaxed)));
        timeouts.push((
            pool_labels(p, None),
            s.wait_timeouts.load(Ordering::Relaxed),
        ));
    }
    f.gauges(
        "sentinel_pg_servers",
        "Server connections now, by pool and state.",
        None,
        servers,
    );
    f.counters(
        "sentinel_pg_server_connects",
        "Connections opened to Postgres, by pool and result.",
        None,
        connects,
    );
    f.counters(
        "sentinel_pg_pool_waits",
        "Checkouts that found no free server connection and waited.",
        None,
        waits,
    );
    f.counters(
        "sentinel_pg_pool_wait_timeouts",
        "Waits for a server connection that ended in 53300.",
        None,
        timeouts,
    );
    f.histogram(
        "sentinel_pg_pool_wait",
        "Time from asking for a server connection to having one.",
        &m.pool_wait,
    );
    f.counter(
        "sentinel_pg_queries",
        "Statements forwarded (simple Query and Execute messages).",
        m.queries.load(Ordering::Relaxed),
    );
    f.counter(
        "sentinel_pg_transactions",
        "Transactions finished (the server back to idle).",
        m.transactions.load(Ordering::Relaxed),
    );
    f.histogram(
        "sentinel_pg_query_duration",
        "From forwarding a request to its ReadyForQuery.",
        &m.query_duration,
    );
    f.histogram(
        "sentinel_pg_transaction_duration",
        "From a transaction's first request to its end.",
        &m.transaction_duration,
    );
    f.histogram(
        "sentinel_pg_added_latency",
        "Time Sentinel spends on a statement before it is written to the server (checks, \
         injection; not the pool wait).",
        &m.added_latency,
    );
}

fn tenancy(f: &mut Families, admin: &Admin) {
    let counters = &admin.pg.tenancy_counters;
    f.counters(
        "sentinel_tenancy_refusals",
        "Statements refused for missing or forbidden tenant context, by reason.",
        None,
        labelled("reason", counters.refusals()),
    );
    f.counters(
        "sentinel_tenancy_would_refuse",
        "Report-only mode (enforce = false): statements that would have been refused, by reason.",
        None,
        labelled("reason", counters.would_refuse()),
    );
    let (hits, misses) = counters.cache(&admin.pg.live().tenancy);
    f.counters(
        "sentinel_tenancy_verdict_cache",
        "Policy verdict cache lookups, by result.",
        None,
        labelled("result", [("hit", hits), ("miss", misses)]),
    );
    f.counter(
        "sentinel_tenancy_bypass_statements",
        "Statements of bypass users (not checked).",
        counters.bypassed.load(Ordering::Relaxed),
    );
}

fn llm(f: &mut Families, admin: &Admin) {
    let Some(egress) = &admin.egress else {
        return;
    };
    let s = &egress.stats;
    f.counters(
        "sentinel_llm_requests",
        "LLM calls finished, by outcome.",
        None,
        labelled("outcome", s.outcomes()),
    );
    f.gauge(
        "sentinel_llm_in_flight",
        "LLM calls being served.",
        s.in_flight.load(Ordering::Relaxed) as i64,
    );
    f.counters(
        "sentinel_llm_tokens",
        "Tokens charged, by kind (input excludes cached input and cache writes).",
        None,
        labelled(
            "kind",
            [
                ("input", s.input_tokens.load(Ordering::Relaxed)),
                (
                    "cached_input",
                    s.cached_input_tokens.load(Ordering::Relaxed),
                ),
                ("cache_write", s.cache_write_tokens.load(Ordering::Relaxed)),
                ("output", s.output_tokens.load(Ordering::Relaxed)),
            ],
        ),
    );
    f.counters(
        "sentinel_llm_cost",
        "Cost charged.",
        micros(),
        vec![(Vec::new(), s.charged_micros.load(Ordering::Relaxed))],
    );
    f.counters(
        "sentinel_llm_reserved",
        "Worst-case cost reserved before calls left.",
        micros(),
        vec![(Vec::new(), s.reserved_micros.load(Ordering::Relaxed))],
    );
    f.histogram(
        "sentinel_llm_added_latency",
        "Time Sentinel spends before a call leaves for the provider.",
        &admin.metrics.llm_added_latency,
    );
    let tenants = admin.metrics.llm_tenants.snapshot();
    f.counters(
        "sentinel_llm_tenant_requests",
        "LLM calls charged, per tenant (tenants past [admin] tenant_label_cap under \"other\").",
        None,
        tenants
            .iter()
            .map(|(t, requests, _)| (label("tenant", t.clone()), *requests))
            .collect(),
    );
    f.counters(
        "sentinel_llm_tenant_cost",
        "Cost charged, per tenant (tenants past [admin] tenant_label_cap under \"other\").",
        micros(),
        tenants
            .iter()
            .map(|(t, _, cost)| (label("tenant", t.clone()), *cost))
            .collect(),
    );
}

fn ledger(f: &mut Families, admin: &Admin) {
    let Some(egress) = &admin.egress else {
        return;
    };
    let outcomes = egress.stats.outcomes();
    let refused = outcomes.get("over_budget").copied().unwrap_or(0);
    let unavailable = outcomes.get("ledger_unavailable").copied().unwrap_or(0);
    let (lease, database) = match &admin.pg_ledger {
        Some(l) => (
            l.stats().lease_hits.load(Ordering::Relaxed),
            l.stats().db_reservations.load(Ordering::Relaxed),
        ),
        // The in-memory ledger holds every reservation itself.
        None => (0, egress.stats.reservations.load(Ordering::Relaxed)),
    };
    f.counters(
        "sentinel_ledger_reservations",
        "Reservations, by how they were served: from a lease held in memory, in the database, \
         refused (402), or the ledger unavailable (503).",
        None,
        labelled(
            "outcome",
            [
                ("lease", lease),
                ("database", database),
                ("refused", refused),
                ("unavailable", unavailable),
            ],
        ),
    );
    let Some(l) = &admin.pg_ledger else {
        return;
    };
    let (leases, held) = l.lease_totals();
    f.gauge(
        "sentinel_ledger_leases",
        "Budget leases this process holds.",
        leases as i64,
    );
    f.gauges(
        "sentinel_ledger_lease_held",
        "Money held by those leases.",
        micros(),
        vec![(Vec::new(), i64::try_from(held).unwrap_or(i64::MAX))],
    );
    f.gauge(
        "sentinel_ledger_spool_records",
        "Usage records not yet written to the ledger database.",
        l.stats().spool_depth.load(Ordering::Relaxed) as i64,
    );
    let s = l.stats();
    f.counter(
        "sentinel_ledger_errors",
        "Ledger database errors.",
        s.db_errors.load(Ordering::Relaxed),
    );
    f.counter(
        "sentinel_ledger_retries",
        "Ledger statements retried (deadlock, serialization failure, lost connection).",
        s.retries.load(Ordering::Relaxed),
    );
    f.counter(
        "sentinel_ledger_swept",
        "Expired leases swept by this process.",
        s.swept.load(Ordering::Relaxed),
    );
}

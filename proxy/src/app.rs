//! Assembles the process: one pingora server hosting Sentinel's services, so they share
//! signals, graceful shutdown and configuration.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::Config;
use crate::drain::DrainWatcher;
use crate::ledger::{BudgetSpec, Ledger, MemoryLedger, Sweeper, SystemClock};
use crate::llm::{Egress, EgressShared};
use crate::pg::{PgService, PgShared, PoolMaintenance};
use crate::secrets::Secrets;

/// How often holds past their expiry are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Seconds pingora waits for runtimes to stop after the grace period.
const RUNTIME_SHUTDOWN_SECS: u64 = 2;

/// Starts every service and runs until a signal ends the process (SIGTERM: graceful). `secrets`
/// is the keyring and salt, already proven to open every sealed value of `config`.
pub fn run(config: Config, secrets: Arc<Secrets>) -> anyhow::Result<std::convert::Infallible> {
    let config = Arc::new(config);
    let conf = ServerConf {
        threads: config.process.threads,
        // Sessions close their clients at the end of shutdown_grace; pingora then needs a
        // moment to let them say goodbye before it stops the runtimes.
        grace_period_seconds: Some(config.process.shutdown_grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let pg = Arc::new(PgShared::new(config.clone(), secrets.clone())?);
    let mut pg_service = Service::new("postgres".to_owned(), PgService::new(pg.clone()));
    pg_service.add_tcp(&config.postgres.listen.to_string());
    server.add_service(pg_service);
    server.add_service(background_service(
        "pool maintenance",
        PoolMaintenance::new(pg.clone()),
    ));
    let egress = match &config.llm {
        Some(llm) => {
            let ledger = memory_ledger(&config)?;
            let shared = Arc::new(EgressShared::new(
                config.clone(),
                secrets.clone(),
                ledger.clone(),
            )?);
            let mut service = pingora::proxy::http_proxy_service_with_name(
                &server.configuration,
                Egress::new(shared.clone()),
                "llm egress",
            );
            if let Some(proxy) = service.app_logic_mut() {
                // HTTP/2 without TLS too (prior knowledge), for clients that pool one
                // connection for many concurrent calls.
                let mut options = pingora::apps::HttpServerOptions::default();
                options.h2c = true;
                proxy.server_options = Some(options);
            }
            service.add_tcp(&llm.listen.to_string());
            server.add_service(service);
            server.add_service(background_service(
                "reservation sweeper",
                Sweeper::new(ledger, SWEEP_EVERY),
            ));
            tracing::info!(llm.listen = %llm.listen, providers = llm.providers.len(), "llm egress enabled");
            Some(shared)
        }
        None => None,
    };
    let in_flight = Arc::new(move || {
        pg.clients.load(Ordering::Relaxed)
            + egress
                .as_ref()
                .map_or(0, |e| e.stats.in_flight.load(Ordering::Relaxed))
    });
    server.add_service(background_service(
        "drain watcher",
        DrainWatcher::new(in_flight),
    ));

    tracing::info!(postgres.listen = %config.postgres.listen, "sentinel starting");
    server.run_forever()
}

/// The in-memory ledger with the configured budgets and revocations.
fn memory_ledger(config: &Config) -> anyhow::Result<Arc<dyn Ledger>> {
    let Some(llm) = &config.llm else {
        anyhow::bail!("no [llm] section");
    };
    let default = llm
        .tenant_defaults
        .as_ref()
        .map(|t| BudgetSpec::from_config(t, "llm.tenant_defaults"))
        .transpose()?;
    let budgets = llm
        .tenants
        .iter()
        .map(|(tenant, t)| {
            BudgetSpec::from_config(t, &format!("llm.tenants.{tenant}"))
                .map(|s| (tenant.clone(), s))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(
        MemoryLedger::new(Arc::new(SystemClock), default)
            .with_budgets(budgets)
            .with_revoked(llm.revoked_keys.iter().cloned()),
    ))
}

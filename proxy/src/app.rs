//! Assembles the process: one pingora server hosting Sentinel's services, so they share
//! signals, graceful shutdown and configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pingora::server::Server;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::{Admin, AdminHttp, Blocks, Reloader, SighupReload};
use crate::config::{Config, LedgerBackend};
use crate::drain::DrainWatcher;
use crate::ledger::postgres::PgLedger;
use crate::ledger::{BudgetSpec, Ledger, MemoryLedger, Sweeper, SystemClock};
use crate::llm::{Egress, EgressShared};
use crate::metrics::Metrics;
use crate::pg::{PgService, PgShared, PoolMaintenance};
use crate::secrets::Secrets;

/// How often holds past their expiry are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Seconds pingora waits for runtimes to stop after the grace period.
const RUNTIME_SHUTDOWN_SECS: u64 = 2;

/// How the process was started.
pub struct RunOptions {
    /// The config file (read again on reload).
    pub config_path: PathBuf,
    /// Take the listening sockets from a running Sentinel (zero-downtime upgrade).
    pub upgrade: bool,
}

/// Starts every service and runs until a signal ends the process (SIGTERM: graceful; SIGQUIT:
/// hand the listening sockets to a new process, then graceful; SIGHUP: reload). `secrets` is
/// the keyring and salt, already proven to open every sealed value of `config`.
pub fn run(
    config: Config,
    secrets: Arc<Secrets>,
    options: RunOptions,
) -> anyhow::Result<std::convert::Infallible> {
    let config = Arc::new(config);
    let conf = ServerConf {
        upgrade_sock: config.process.upgrade_socket.display().to_string(),
        threads: config.process.threads,
        // Sessions close their clients at the end of shutdown_grace; pingora then needs a
        // moment to let them say goodbye before it stops the runtimes.
        grace_period_seconds: Some(config.process.shutdown_grace.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECS),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let metrics = Arc::new(Metrics::new(config.admin.tenant_label_cap));
    let blocks = Arc::new(Blocks::default());
    let pg = Arc::new(PgShared::new(
        config.clone(),
        secrets.clone(),
        metrics.clone(),
        blocks.clone(),
    )?);
    let mut pg_service = Service::new("postgres".to_owned(), PgService::new(pg.clone()));
    pg_service.add_tcp(&config.postgres.listen.to_string());
    server.add_service(pg_service);
    server.add_service(background_service(
        "pool maintenance",
        PoolMaintenance::new(pg.clone()),
    ));
    let mut ledger_pending: Option<Arc<PgLedger>> = None;
    let egress = match &config.llm {
        Some(llm) => {
            let ledger: Arc<dyn Ledger> = match config.ledger.as_ref().map(|l| (l.backend, l)) {
                Some((LedgerBackend::Postgres, ledger_config)) => {
                    let (budgets, default) = configured_budgets(&config)?;
                    let (ledger, worker) = PgLedger::new(
                        &config,
                        ledger_config,
                        &secrets,
                        Arc::new(SystemClock),
                        budgets,
                        default,
                    )?;
                    server.add_service(background_service("ledger", worker));
                    ledger.share_blocks(blocks.clone());
                    let ledger = Arc::new(ledger);
                    ledger_pending = Some(ledger.clone());
                    ledger
                }
                _ => {
                    let ledger = memory_ledger(&config)?;
                    server.add_service(background_service(
                        "reservation sweeper",
                        Sweeper::new(ledger.clone(), SWEEP_EVERY),
                    ));
                    ledger
                }
            };
            let shared = Arc::new(EgressShared::new(
                config.clone(),
                secrets.clone(),
                ledger.clone(),
                blocks.clone(),
                metrics.clone(),
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
            tracing::info!(llm.listen = %llm.listen, providers = llm.providers.len(), "llm egress enabled");
            Some(shared)
        }
        None => None,
    };
    let reloader = Arc::new(Reloader::new(
        options.config_path,
        config.clone(),
        secrets.clone(),
        pg.clone(),
        egress.clone(),
        metrics.clone(),
    )?);
    let admin = Arc::new(Admin {
        pg: pg.clone(),
        egress: egress.clone(),
        pg_ledger: ledger_pending.clone(),
        metrics,
        blocks,
        reloader: reloader.clone(),
        started: std::time::SystemTime::now(),
        draining: AtomicBool::new(false),
        ready_cache: Default::default(),
    });
    pg.set_admin(&admin);
    let mut admin_service = Service::new("admin".to_owned(), AdminHttp::new(admin.clone()));
    admin_service.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin_service);
    server.add_service(background_service(
        "reload on SIGHUP",
        SighupReload::new(reloader),
    ));

    let in_flight = Arc::new(move || {
        pg.clients.load(Ordering::Relaxed)
            + egress
                .as_ref()
                .map_or(0, |e| e.stats.in_flight.load(Ordering::Relaxed))
            // Usage not yet safe in the spool, and leases not yet given back.
            + ledger_pending
                .as_ref()
                .map_or(0, |l| l.unspooled() + l.leases_held())
    });
    server.add_service(background_service(
        "drain watcher",
        DrainWatcher::new(in_flight, admin),
    ));

    tracing::info!(
        postgres.listen = %config.postgres.listen,
        admin.listen = %config.admin.listen,
        upgrade = options.upgrade,
        "sentinel starting"
    );
    server.run_forever()
}

/// The budgets of `[llm.tenants]`, and `[llm.tenant_defaults]`.
type Budgets = (Vec<(String, BudgetSpec)>, Option<BudgetSpec>);

fn configured_budgets(config: &Config) -> anyhow::Result<Budgets> {
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
    Ok((budgets, default))
}

/// The in-memory ledger with the configured budgets and revocations.
fn memory_ledger(config: &Config) -> anyhow::Result<Arc<dyn Ledger>> {
    let (budgets, default) = configured_budgets(config)?;
    let revoked = config
        .llm
        .iter()
        .flat_map(|l| l.revoked_keys.iter().cloned());
    Ok(Arc::new(
        MemoryLedger::new(Arc::new(SystemClock), default)
            .with_budgets(budgets)
            .with_revoked(revoked),
    ))
}

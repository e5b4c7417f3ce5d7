//! The Postgres front: a pingora service that accepts clients, authenticates them, and runs
//! each one's session against pooled server connections.

pub mod auth;
mod cancel;
pub(crate) mod client_tls;
mod clients;
mod conn;
mod console;
pub mod error;
mod handshake;
mod io;
mod params;
mod pause;
mod pool;
mod server;
mod service;
mod session;
mod statements;
pub mod tenancy;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, Weak};

use anyhow::Context;
use arc_swap::ArcSwap;
use rand::RngCore;

use crate::admin::{Admin, Blocks};
use crate::config::{Config, UpstreamTls};
use crate::metrics::Metrics;
use crate::secrets::Secrets;
pub use clients::{ClientInfo, ClientRegistry, ClientState};
pub use pause::Pause;
pub use pool::Pool;
pub use service::{PgService, PoolMaintenance};

/// Largest message accepted from Postgres: its own limit for a value is 1 GB, and what the
/// server sends is bounded by what it was asked for, unlike what a client sends.
const SERVER_MAX_MESSAGE: usize = (1 << 30) + (1 << 20);

/// What a reload replaces: the config and what is built from it. A client takes the current one
/// when it connects and keeps it until it disconnects.
pub struct PgLive {
    pub config: Arc<Config>,
    pub users: handshake::Users,
    /// Tenant context enforcement: rules and verdict cache.
    pub tenancy: Arc<tenancy::Tenancy>,
}

impl PgLive {
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<Secrets>,
        counters: Arc<tenancy::TenancyCounters>,
    ) -> anyhow::Result<PgLive> {
        let mut users = HashMap::new();
        for user in &config.postgres.users {
            let verifier = match &user.scram_verifier {
                Some(v) => Some(v.parse().with_context(|| format!("user {}", user.name))?),
                None => None,
            };
            users.insert(
                user.name.clone(),
                Arc::new(handshake::UserEntry {
                    config: user.clone(),
                    verifier,
                }),
            );
        }
        let tenancy =
            Arc::new(tenancy::Tenancy::new(&config.tenancy, secrets, counters).context("tenancy")?);
        Ok(PgLive {
            config,
            users,
            tenancy,
        })
    }
}

/// The pool settings a config asks for.
pub fn pool_settings(config: &Config) -> pool::PoolSettings {
    let pg = &config.postgres;
    pool::PoolSettings {
        size: pg.pool_size,
        min_size: pg.min_pool_size,
        wait_timeout: pg.pool_wait_timeout,
        lifetime: pg.server_lifetime,
        idle_timeout: pg.server_idle_timeout,
    }
}

/// What every session of the Postgres front shares. Built once from the config and passed down;
/// nothing here is global.
pub struct PgShared {
    live: ArcSwap<PgLive>,
    pub pools: pool::Pools,
    pub cancels: Arc<cancel::CancelRegistry>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Clients connected now (for max_client_conn).
    pub clients: AtomicUsize,
    /// Seeds the fake SCRAM verifiers of unknown users; random per process.
    pub fake_secret: [u8; 32],
    /// Keys the names of prepared statements on servers; random per process.
    pub statement_key: [u8; 32],
    /// The master keyring and environment salt (sealed upstream passwords; tenant tokens).
    pub secrets: Arc<Secrets>,
    /// Refusals and verdict cache lookups, kept across reloads.
    pub tenancy_counters: Arc<tenancy::TenancyCounters>,
    pub metrics: Arc<Metrics>,
    /// Connected clients, for the admin views.
    pub registry: ClientRegistry,
    /// Tenants whose statements are refused (the admin kill switch).
    pub blocks: Arc<Blocks>,
    /// Set by the console's PAUSE: new transactions wait until RESUME.
    pub pause: Pause,
    /// The admin side, for the console (set once it is built, after this).
    admin: OnceLock<Weak<Admin>>,
}

impl PgShared {
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<Secrets>,
        metrics: Arc<Metrics>,
        blocks: Arc<Blocks>,
    ) -> anyhow::Result<PgShared> {
        let pg = &config.postgres;
        let tls = match &pg.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(&t.cert_file, &t.key_file).context("postgres.tls")?,
            )),
            None => None,
        };
        let upstream_tls = match pg.upstream.tls {
            UpstreamTls::Disable => None,
            UpstreamTls::VerifyFull => {
                let ca = pg
                    .upstream
                    .ca_file
                    .as_deref()
                    .context("postgres.upstream.ca_file")?;
                let name = rustls::pki_types::ServerName::try_from(pg.upstream.host.clone())
                    .context("postgres.upstream.host is not a valid TLS server name")?;
                Some((
                    tls::client_config(ca).context("postgres.upstream.ca_file")?,
                    name,
                ))
            }
        };
        let upstream = server::Upstream {
            host: pg.upstream.host.clone(),
            port: pg.upstream.port,
            tls: upstream_tls,
            connect_timeout: pg.server_connect_timeout,
            max_message: SERVER_MAX_MESSAGE,
            secrets: secrets.clone(),
        };
        let settings = pool_settings(&config);
        let mut fake_secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut fake_secret);
        let mut statement_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut statement_key);
        let pools = pool::Pools::new(upstream, settings);
        if pg.min_pool_size > 0 {
            for user in &pg.users {
                for database in user.prewarm_databases() {
                    pools.get(&server::Login {
                        database,
                        user: user.server_user().to_owned(),
                        password: user.server_password(),
                    });
                }
            }
        }
        let tenancy_counters = Arc::new(tenancy::TenancyCounters::default());
        let live = PgLive::new(config.clone(), secrets.clone(), tenancy_counters.clone())?;
        Ok(PgShared {
            live: ArcSwap::from_pointee(live),
            tenancy_counters,
            metrics,
            registry: ClientRegistry::default(),
            blocks,
            pause: Pause::default(),
            admin: OnceLock::new(),
            pools,
            cancels: Arc::default(),
            tls,
            clients: AtomicUsize::new(0),
            fake_secret,
            statement_key,
            secrets,
        })
    }

    pub fn set_admin(&self, admin: &Arc<Admin>) {
        let _ = self.admin.set(Arc::downgrade(admin));
    }

    pub fn admin(&self) -> Option<Arc<Admin>> {
        self.admin.get().and_then(Weak::upgrade)
    }

    /// The config and what is built from it, as of now.
    pub fn live(&self) -> Arc<PgLive> {
        self.live.load_full()
    }

    /// Swaps in a reloaded config: new clients get it, pools take its sizes and timeouts now.
    pub fn reload(&self, live: PgLive) {
        let users = &live.config.postgres.users;
        self.pools
            .reconfigure(pool_settings(&live.config), |server_user| {
                users
                    .iter()
                    .find(|u| u.server_user() == server_user)
                    .map(|u| u.server_password())
            });
        let old = self.live.swap(Arc::new(live));
        self.tenancy_counters.retire(&old.tenancy);
    }
}

//! Pools, clients and servers as rows: what `GET /v1/pools`, `GET /v1/clients` and the
//! console's SHOW commands print.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use humantime_serde::re::humantime::format_rfc3339_seconds;
use serde::Serialize;

use crate::config::PoolMode;
use crate::pg::{ClientState, PgShared};

#[derive(Debug, Serialize)]
pub struct PoolView {
    pub database: String,
    pub user: String,
    pub pool_mode: &'static str,
    pub pool_size: usize,
    /// Clients holding a server connection of this pool.
    pub cl_active: usize,
    /// Clients waiting for one.
    pub cl_waiting: usize,
    pub sv_active: usize,
    pub sv_idle: usize,
    pub checkouts: u64,
    pub waits: u64,
    pub wait_timeouts: u64,
    pub server_connects: u64,
    pub server_connect_failures: u64,
    pub servers_closed_dirty: u64,
}

#[derive(Debug, Serialize)]
pub struct ClientView {
    pub id: u64,
    pub user: Option<String>,
    pub database: Option<String>,
    pub state: &'static str,
    pub addr: Option<String>,
    pub port: Option<u16>,
    pub local_addr: Option<String>,
    pub local_port: Option<u16>,
    pub connect_time: String,
    pub request_time: Option<String>,
    pub tls: bool,
    pub tenant: Option<String>,
    /// Process id of the server connection it holds.
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub database: String,
    pub user: String,
    pub state: &'static str,
    pub addr: String,
    pub port: u16,
    pub remote_pid: u32,
    /// The client holding it (active ones).
    pub client_id: Option<u64>,
    pub connect_time: Option<String>,
}

pub fn time(t: SystemTime) -> String {
    format_rfc3339_seconds(t).to_string()
}

pub fn pools(pg: &PgShared) -> Vec<PoolView> {
    let clients = pg.registry.snapshot();
    let mode = match pg.live().config.postgres.pool_mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    };
    pg.pools
        .all()
        .into_iter()
        .map(|pool| {
            let of_pool = |state: ClientState| {
                clients
                    .iter()
                    .filter(|c| c.state() == state)
                    .filter(|c| {
                        c.login().is_some_and(|l| {
                            l.database == pool.key.database && l.server_user == pool.key.server_user
                        })
                    })
                    .count()
            };
            let s = &pool.stats;
            PoolView {
                database: pool.key.database.clone(),
                user: pool.key.server_user.clone(),
                pool_mode: mode,
                pool_size: pool.settings().size,
                cl_active: of_pool(ClientState::Active),
                cl_waiting: of_pool(ClientState::Waiting),
                sv_active: pool.active_count(),
                sv_idle: pool.idle_count(),
                checkouts: s.checkouts.load(Ordering::Relaxed),
                waits: s.waits.load(Ordering::Relaxed),
                wait_timeouts: s.wait_timeouts.load(Ordering::Relaxed),
                server_connects: s.connects.load(Ordering::Relaxed),
                server_connect_failures: s.connect_failures.load(Ordering::Relaxed),
                servers_closed_dirty: s.closed_dirty.load(Ordering::Relaxed),
            }
        })
        .collect()
}

pub fn clients(pg: &PgShared) -> Vec<ClientView> {
    pg.registry
        .snapshot()
        .into_iter()
        .map(|c| {
            let login = c.login();
            ClientView {
                id: c.id,
                user: login.map(|l| l.user.clone()),
                database: login.map(|l| l.database.clone()),
                state: c.state().label(),
                addr: c.addr.map(|a| a.ip().to_string()),
                port: c.addr.map(|a| a.port()),
                local_addr: c.local.map(|a| a.ip().to_string()),
                local_port: c.local.map(|a| a.port()),
                connect_time: time(c.connected_at),
                request_time: c.request_at().map(time),
                tls: login.is_some_and(|l| l.tls),
                tenant: c.tenant().map(|t| t.to_string()),
                server_pid: c.server_pid(),
            }
        })
        .collect()
}

pub fn servers(pg: &PgShared) -> Vec<ServerView> {
    let upstream = pg.pools.upstream();
    let clients = pg.registry.snapshot();
    let now = std::time::Instant::now();
    let wall = SystemTime::now();
    let mut out = Vec::new();
    for pool in pg.pools.all() {
        for client in &clients {
            let (Some(pid), Some(login)) = (client.server_pid(), client.login()) else {
                continue;
            };
            if login.database == pool.key.database && login.server_user == pool.key.server_user {
                out.push(ServerView {
                    database: pool.key.database.clone(),
                    user: pool.key.server_user.clone(),
                    state: "active",
                    addr: upstream.host.clone(),
                    port: upstream.port,
                    remote_pid: pid,
                    client_id: Some(client.id),
                    connect_time: None,
                });
            }
        }
        for (pid, created, _) in pool.idle_servers() {
            let age = now.saturating_duration_since(created.into_std());
            out.push(ServerView {
                database: pool.key.database.clone(),
                user: pool.key.server_user.clone(),
                state: "idle",
                addr: upstream.host.clone(),
                port: upstream.port,
                remote_pid: pid,
                client_id: None,
                connect_time: wall.checked_sub(age).map(time),
            });
        }
    }
    out
}

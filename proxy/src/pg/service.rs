//! The pingora side: one task per accepted client, and a background task keeping pools trim.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::Instrument;

use super::clients::{ClientInfo, ClientLoginInfo};
use super::error::PgError;
use super::handshake::{self, Accepted};
use super::server::Login;
use super::session::Session;
use super::{PgShared, console};

pub struct PgService {
    shared: Arc<PgShared>,
}

impl PgService {
    pub fn new(shared: Arc<PgShared>) -> Self {
        PgService { shared }
    }
}

/// Counts a connected client for max_client_conn; uncounts it when dropped.
struct ClientSlot<'a>(&'a PgShared);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ServerApp for PgService {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let peer_addr = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let local_addr = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let entry = self.shared.registry.register(peer_addr, local_addr);
        let span = tracing::info_span!(
            "client",
            client.id = entry.info.id,
            client.ip = peer_addr.map(|p| p.ip().to_string()).unwrap_or_default(),
            user = tracing::field::Empty,
            database = tracing::field::Empty,
            tenant = tracing::field::Empty,
        );
        self.serve(
            Box::new(stream),
            peer_addr.map(|a| a.ip()),
            entry.info.clone(),
            shutdown.clone(),
        )
        .instrument(span)
        .await;
        None
    }
}

impl PgService {
    async fn serve(
        &self,
        stream: super::conn::BoxStream,
        peer: Option<IpAddr>,
        info: Arc<ClientInfo>,
        shutdown: ShutdownWatch,
    ) {
        let shared = &self.shared;
        let live = shared.live();
        let pg = &live.config.postgres;
        let count = shared.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let _slot = ClientSlot(shared);
        let accepted = tokio::time::timeout(
            pg.client_login_timeout,
            handshake::accept(stream, peer, shared, &live),
        )
        .await
        .unwrap_or(Err(PgError::LoginTimeout));
        let login = match accepted {
            Ok(Accepted::Login(login)) => login,
            Ok(Accepted::Cancel {
                process_id,
                secret_key,
            }) => {
                if let Some(target) = shared.cancels.request(process_id, &secret_key) {
                    tracing::info!(server.pid = target.process_id, "forwarding cancel request");
                    if let Err(e) = shared.pools.upstream().cancel(&target).await {
                        tracing::warn!(error = %e, "cannot forward cancel request");
                    }
                }
                return;
            }
            Err(e) => {
                // The handshake has already told the client why.
                log_refusal(&e);
                self.shared.metrics.pg.login(e.kind());
                return;
            }
        };
        let mut login = *login;
        let span = tracing::Span::current();
        span.record("user", login.user.as_str());
        span.record("database", login.database.as_str());

        let refuse = if count > pg.max_client_conn {
            Some(PgError::TooManyClients(pg.max_client_conn))
        } else if *shutdown.borrow() {
            Some(PgError::ShuttingDown)
        } else {
            None
        };
        if let Some(e) = refuse {
            log_refusal(&e);
            self.shared.metrics.pg.login(e.kind());
            e.encode(&mut login.conn.wbuf, "FATAL");
            login.conn.shutdown().await;
            return;
        }
        self.shared.metrics.pg.login("ok");
        info.logged_in(ClientLoginInfo {
            user: login.user.clone(),
            database: login.database.clone(),
            server_user: login.server_user.clone(),
            tls: login.tls,
        });
        if login.database == console::DATABASE
            && live.config.admin.console_users.contains(&login.user)
        {
            console::serve(shared.clone(), login.conn, &login.user, &info, shutdown).await;
            return;
        }
        let user = live.users.get(&login.user);
        let password = user
            .map(|u| u.config.server_password())
            .unwrap_or(crate::config::PasswordSource::None);
        let pool = shared.pools.get(&Login {
            database: login.database.clone(),
            user: login.server_user.clone(),
            password,
        });
        tracing::debug!("client logged in");
        let session = Session::new(shared.clone(), live, login, pool, info, shutdown);
        match session.run().await {
            Ok(()) => tracing::debug!("client disconnected"),
            Err(PgError::ClientIo(e)) => tracing::debug!(error = %e, "client connection lost"),
            Err(e) => tracing::info!(error = %e, kind = e.kind(), "session ended"),
        }
    }
}

fn log_refusal(e: &PgError) {
    match e {
        PgError::ClientIo(_) => tracing::debug!(error = %e, "client left during login"),
        _ => tracing::info!(error = %e, kind = e.kind(), "client refused"),
    }
}

/// Closes idle and expired server connections and keeps min_pool_size open, once a second.
pub struct PoolMaintenance {
    shared: Arc<PgShared>,
}

impl PoolMaintenance {
    pub fn new(shared: Arc<PgShared>) -> Self {
        PoolMaintenance { shared }
    }
}

#[async_trait]
impl BackgroundService for PoolMaintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for pool in self.shared.pools.all() {
                        pool.maintain().await;
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(60) {
                        self.shared.live().tenancy.log_stats();
                    }
                }
                _ = shutdown.changed() => {
                    self.shared.live().tenancy.log_stats();
                    return;
                }
            }
        }
    }
}

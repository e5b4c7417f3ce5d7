//! Server connection pools, one per (database, server user). A semaphore bounds the
//! connections of a pool; idle ones are reused newest first so the oldest age out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sentinel_wire::encode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::{PgError, PgResult};
use super::server::{Login, ServerConn, Upstream};
use super::statements::Generations;
use crate::config::PasswordSource;

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    pub wait_timeout: Duration,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: String,
    pub server_user: String,
}

#[derive(Default)]
pub struct PoolStats {
    /// Clients waiting for a connection right now.
    pub waiting: AtomicUsize,
    pub checkouts: AtomicU64,
    /// Checkouts that found no free slot and waited.
    pub waits: AtomicU64,
    pub wait_timeouts: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub closed_dirty: AtomicU64,
}

pub struct Pool {
    pub key: PoolKey,
    /// How servers log in; a reload may change the password source.
    login: Mutex<Login>,
    upstream: Upstream,
    /// Sizes and timeouts; a reload swaps them.
    settings: ArcSwap<PoolSettings>,
    /// Slots in all (`settings.size`, once a shrink has taken its slots back).
    size: AtomicUsize,
    idle: Mutex<Vec<ServerConn>>,
    slots: Arc<Semaphore>,
    /// Counters for the admin port and metrics (read by the admin work to come).
    pub stats: PoolStats,
    /// Plan generations of the statements prepared on this pool's servers.
    pub generations: Generations,
    /// Server statement names that some server of this pool has prepared successfully.
    known_statements: Mutex<HashSet<Arc<str>>>,
}

/// Statements remembered per pool at most; past this, Parse of new texts needs a server.
const MAX_KNOWN_STATEMENTS: usize = 10_000;

/// A server connection lent to one client. Hand it back with [`Checkout::release`] when clean,
/// or [`Checkout::discard`] when its state is unknown; dropping it discards it.
pub struct Checkout {
    pub server: Option<ServerConn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
    pub fn server(&mut self) -> &mut ServerConn {
        self.server
            .as_mut()
            .expect("a checkout holds its server until released")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a clean connection (ready, no transaction open) for the next client.
    pub fn release(mut self) {
        if let Some(mut server) = self.server.take() {
            server.last_used = Instant::now();
            if server.created.elapsed() < self.pool.settings.load().lifetime {
                self.pool.idle.lock().push(server);
            } else {
                close(server);
            }
        }
    }

    /// Closes a connection that must not be reused.
    pub fn discard(mut self) {
        if let Some(server) = self.server.take() {
            self.pool.stats.closed_dirty.fetch_add(1, Ordering::Relaxed);
            close(server);
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.pool.stats.closed_dirty.fetch_add(1, Ordering::Relaxed);
            close(server);
        }
    }
}

/// Says goodbye to the server without making anyone wait for it.
fn close(mut server: ServerConn) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            encode::terminate(&mut server.conn.wbuf);
            let _ = tokio::time::timeout(Duration::from_secs(1), server.conn.shutdown()).await;
        });
    }
}

impl Pool {
    pub fn new(key: PoolKey, login: Login, upstream: Upstream, settings: PoolSettings) -> Self {
        Pool {
            key,
            login: Mutex::new(login),
            upstream,
            slots: Arc::new(Semaphore::new(settings.size)),
            size: AtomicUsize::new(settings.size),
            settings: ArcSwap::from_pointee(settings),
            idle: Mutex::new(Vec::new()),
            stats: PoolStats::default(),
            generations: Generations::default(),
            known_statements: Mutex::new(HashSet::new()),
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Waits up to `pool_wait_timeout` for a slot, then reuses an idle connection or opens one.
    pub async fn checkout(self: &Arc<Self>) -> PgResult<Checkout> {
        // A free slot needs no timer; only a wait does.
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_slot().await?,
        };
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        let reused = self.take_idle();
        let server = match reused {
            Some(server) => server,
            None => self.open().await?,
        };
        Ok(Checkout {
            server: Some(server),
            pool: self.clone(),
            _permit: permit,
        })
    }

    async fn wait_for_slot(&self) -> PgResult<OwnedSemaphorePermit> {
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.stats.waits.fetch_add(1, Ordering::Relaxed);
        let wait_timeout = self.settings.load().wait_timeout;
        let permit = tokio::time::timeout(wait_timeout, self.slots.clone().acquire_owned()).await;
        self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(PgError::ShuttingDown),
            Err(_) => {
                self.stats.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(PgError::PoolTimeout(wait_timeout))
            }
        }
    }

    fn take_idle(&self) -> Option<ServerConn> {
        let lifetime = self.settings.load().lifetime;
        let mut idle = self.idle.lock();
        while let Some(server) = idle.pop() {
            if server.created.elapsed() < lifetime {
                return Some(server);
            }
            close(server);
        }
        None
    }

    async fn open(&self) -> PgResult<ServerConn> {
        let login = self.login.lock().clone();
        match self.upstream.connect(&login).await {
            Ok(server) => {
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                Ok(server)
            }
            Err(e) => {
                self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Closes connections idle or alive too long and opens connections up to `min_pool_size`.
    pub async fn maintain(&self) {
        let settings = self.settings.load_full();
        {
            let mut idle = self.idle.lock();
            let mut total = idle.len() + self.active_count();
            let mut kept = Vec::with_capacity(idle.len());
            for server in idle.drain(..) {
                let expired = server.created.elapsed() >= settings.lifetime;
                // Idle ones go only down to min_pool_size; expired ones go regardless.
                let unused = server.last_used.elapsed() >= settings.idle_timeout
                    && total > settings.min_size;
                if expired || unused {
                    total -= 1;
                    close(server);
                } else {
                    kept.push(server);
                }
            }
            *idle = kept;
        }
        while self.idle_count() + self.active_count() < settings.min_size {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            match self.open().await {
                Ok(server) => self.idle.lock().push(server),
                Err(e) => {
                    tracing::warn!(
                        pool.database = %self.key.database,
                        pool.user = %self.key.server_user,
                        error = %e,
                        "cannot open a min_pool_size connection"
                    );
                    break;
                }
            }
            drop(permit);
        }
    }

    /// Whether a statement (by server name) has been prepared without error before.
    pub fn is_known(&self, server_name: &str) -> bool {
        self.known_statements.lock().contains(server_name)
    }

    pub fn remember(&self, server_name: Arc<str>) {
        let mut known = self.known_statements.lock();
        if known.len() < MAX_KNOWN_STATEMENTS {
            known.insert(server_name);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    pub fn active_count(&self) -> usize {
        self.size
            .load(Ordering::Relaxed)
            .saturating_sub(self.slots.available_permits())
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Takes new sizes and timeouts. A larger pool gets its slots at once; a smaller one takes
    /// slots back as connections are returned, never closing one in use.
    fn reconfigure(self: &Arc<Self>, settings: PoolSettings, password: Option<PasswordSource>) {
        if let Some(password) = password {
            self.login.lock().password = password;
        }
        let old = self.settings.swap(Arc::new(settings.clone()));
        if settings.size > old.size {
            self.slots.add_permits(settings.size - old.size);
            self.size
                .fetch_add(settings.size - old.size, Ordering::Relaxed);
        } else if settings.size < old.size {
            let surplus = old.size - settings.size;
            let pool = self.clone();
            tokio::spawn(async move {
                let Ok(surplus) = u32::try_from(surplus) else {
                    return;
                };
                if let Ok(permits) = pool.slots.clone().acquire_many_owned(surplus).await {
                    permits.forget();
                    pool.size.fetch_sub(surplus as usize, Ordering::Relaxed);
                }
            });
        }
    }

    /// Server connections open now, with their process ids and ages: the idle ones.
    pub fn idle_servers(&self) -> Vec<(u32, Instant, Instant)> {
        self.idle
            .lock()
            .iter()
            .map(|s| (s.cancel.process_id, s.created, s.last_used))
            .collect()
    }

    /// Closes every idle connection (used when the upstream has been seen to restart).
    pub fn close_idle(&self) {
        let drained: Vec<_> = self.idle.lock().drain(..).collect();
        drained.into_iter().for_each(close);
    }
}

/// All pools, created on first use.
pub struct Pools {
    upstream: Upstream,
    settings: Mutex<PoolSettings>,
    map: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    pub fn new(upstream: Upstream, settings: PoolSettings) -> Self {
        Pools {
            upstream,
            settings: Mutex::new(settings),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, login: &Login) -> Arc<Pool> {
        let key = PoolKey {
            database: login.database.clone(),
            server_user: login.user.clone(),
        };
        self.map
            .lock()
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pool::new(
                    key,
                    login.clone(),
                    self.upstream.clone(),
                    self.settings.lock().clone(),
                ))
            })
            .clone()
    }

    /// Every pool, ordered by database and user.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        let mut all: Vec<_> = self.map.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            (&a.key.database, &a.key.server_user).cmp(&(&b.key.database, &b.key.server_user))
        });
        all
    }

    /// New sizes and timeouts for every pool, existing and future; `password` gives the
    /// password source of a server user (None: unchanged).
    pub fn reconfigure(
        &self,
        settings: PoolSettings,
        password: impl Fn(&str) -> Option<PasswordSource>,
    ) {
        *self.settings.lock() = settings.clone();
        for pool in self.all() {
            pool.reconfigure(settings.clone(), password(&pool.key.server_user));
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

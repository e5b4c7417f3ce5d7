//! The connected clients, for `GET /v1/clients`, `SHOW CLIENTS` and the client gauges. A
//! session updates its own entry with plain atomic stores; readers take a snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Authenticating.
    Login = 0,
    /// Logged in, holding no server connection.
    Idle = 1,
    /// Holding a server connection.
    Active = 2,
    /// Waiting for a server connection.
    Waiting = 3,
}

impl ClientState {
    pub const ALL: [ClientState; 4] = [
        ClientState::Login,
        ClientState::Idle,
        ClientState::Active,
        ClientState::Waiting,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ClientState::Login => "login",
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Idle,
            2 => ClientState::Active,
            3 => ClientState::Waiting,
            _ => ClientState::Login,
        }
    }
}

/// Who a client is once logged in.
#[derive(Debug, Clone)]
pub struct ClientLoginInfo {
    pub user: String,
    pub database: String,
    /// The server user its pool logs in as.
    pub server_user: String,
    pub tls: bool,
}

#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub connected_at: SystemTime,
    login: OnceLock<ClientLoginInfo>,
    state: AtomicU8,
    /// Unix microseconds of the last request (0: none yet).
    request_at: AtomicU64,
    /// Process id of the server connection held now (0: none).
    server_pid: AtomicU32,
    tenant: Mutex<Option<Arc<str>>>,
}

impl ClientInfo {
    pub fn logged_in(&self, login: ClientLoginInfo) {
        let _ = self.login.set(login);
        self.set_state(ClientState::Idle);
    }

    pub fn login(&self) -> Option<&ClientLoginInfo> {
        self.login.get()
    }

    pub fn set_state(&self, state: ClientState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn requested(&self) {
        self.request_at
            .store(unix_micros(SystemTime::now()), Ordering::Relaxed);
    }

    /// When the last request arrived.
    pub fn request_at(&self) -> Option<SystemTime> {
        match self.request_at.load(Ordering::Relaxed) {
            0 => None,
            us => Some(UNIX_EPOCH + std::time::Duration::from_micros(us)),
        }
    }

    pub fn set_server(&self, pid: Option<u32>) {
        self.server_pid.store(pid.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn server_pid(&self) -> Option<u32> {
        match self.server_pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Records the tenant the client's statements run as now; true when it changed.
    pub fn set_tenant(&self, tenant: &str) -> bool {
        let mut current = self.tenant.lock();
        if current.as_deref() == Some(tenant) {
            return false;
        }
        *current = Some(Arc::from(tenant));
        true
    }

    pub fn tenant(&self) -> Option<Arc<str>> {
        self.tenant.lock().clone()
    }
}

pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    /// Adds a client; it is removed when the returned guard drops.
    pub fn register(&self, addr: Option<SocketAddr>, local: Option<SocketAddr>) -> ClientEntry<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            addr,
            local,
            connected_at: SystemTime::now(),
            login: OnceLock::new(),
            state: AtomicU8::new(ClientState::Login as u8),
            request_at: AtomicU64::new(0),
            server_pid: AtomicU32::new(0),
            tenant: Mutex::new(None),
        });
        self.clients.lock().insert(id, info.clone());
        ClientEntry {
            registry: self,
            info,
        }
    }

    /// Every connected client, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        let mut all: Vec<_> = self.clients.lock().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Clients by state.
    pub fn counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for c in self.clients.lock().values() {
            counts[c.state() as usize] += 1;
        }
        counts
    }
}

/// A registered client; leaves the registry when dropped.
pub struct ClientEntry<'a> {
    registry: &'a ClientRegistry,
    pub info: Arc<ClientInfo>,
}

impl Drop for ClientEntry<'_> {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_leave_the_registry_when_their_entry_drops() {
        let registry = ClientRegistry::default();
        let a = registry.register(None, None);
        let b = registry.register(None, None);
        b.info.logged_in(ClientLoginInfo {
            user: "app".into(),
            database: "db".into(),
            server_user: "app".into(),
            tls: false,
        });
        b.info.set_state(ClientState::Active);
        assert_eq!(registry.counts(), [1, 0, 1, 0]);
        drop(a);
        let snap = registry.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].login().map(|l| l.user.as_str()), Some("app"));
        drop(b);
        assert!(registry.snapshot().is_empty());
    }
}

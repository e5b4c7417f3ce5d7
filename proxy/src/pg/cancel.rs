//! Cancel keys. Each client gets Sentinel's own BackendKeyData; a CancelRequest carrying it is
//! forwarded to the server connection that runs that client's query at that moment and to no
//! other. A server connection that a cancel was forwarded to during a client's hold is closed
//! instead of being handed to the next client, so a late-arriving cancel can never hit someone
//! else's query.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::server::CancelTarget;

pub const CLIENT_KEY_LEN: usize = 4;

struct Entry {
    secret: [u8; CLIENT_KEY_LEN],
    target: Option<CancelTarget>,
    cancelled: bool,
}

/// Clients by process id. The map is locked only to register, unregister and look up a
/// CancelRequest; a session attaching and detaching servers locks only its own entry.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<u32, Arc<Mutex<Entry>>>>,
}

/// A client's registration; removed when dropped.
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    entry: Arc<Mutex<Entry>>,
    pub process_id: u32,
    pub secret: [u8; CLIENT_KEY_LEN],
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut rng = rand::thread_rng();
        let mut secret = [0u8; CLIENT_KEY_LEN];
        rng.fill_bytes(&mut secret);
        let mut map = self.map.lock();
        let process_id = loop {
            let pid = rng.next_u32() & 0x7fff_ffff;
            if pid != 0 && !map.contains_key(&pid) {
                break pid;
            }
        };
        let entry = Arc::new(Mutex::new(Entry {
            secret,
            target: None,
            cancelled: false,
        }));
        map.insert(process_id, entry.clone());
        CancelHandle {
            registry: self.clone(),
            entry,
            process_id,
            secret,
        }
    }

    /// Looks up a CancelRequest. Returns where to forward it, if the key is right and the
    /// client is running something on a server right now.
    pub fn request(&self, process_id: u32, secret: &[u8]) -> Option<CancelTarget> {
        let entry = self.map.lock().get(&process_id)?.clone();
        let mut entry = entry.lock();
        if !bool::from(entry.secret.ct_eq(secret)) {
            return None;
        }
        let target = entry.target.clone()?;
        entry.cancelled = true;
        Some(target)
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CancelHandle {
    /// The client now runs on this server connection.
    pub fn attach(&self, target: CancelTarget) {
        let mut entry = self.entry.lock();
        entry.target = Some(target);
        entry.cancelled = false;
    }

    /// The client no longer holds a server. Returns true when a cancel was forwarded to it
    /// meanwhile: then the connection must not be reused.
    pub fn detach(&self) -> bool {
        let mut entry = self.entry.lock();
        entry.target = None;
        std::mem::take(&mut entry.cancelled)
    }

    /// Cancels the client's own running query (query_timeout).
    pub fn cancel_own(&self) -> Option<CancelTarget> {
        let mut entry = self.entry.lock();
        let target = entry.target.clone()?;
        entry.cancelled = true;
        Some(target)
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map.lock().remove(&self.process_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: u32) -> CancelTarget {
        CancelTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            process_id: pid,
            secret_key: bytes::Bytes::from_static(&[9, 9, 9, 9]),
        }
    }

    #[test]
    fn cancel_reaches_only_the_attached_server() {
        let registry = Arc::new(CancelRegistry::default());
        let client = registry.register();
        assert!(
            registry
                .request(client.process_id, &client.secret)
                .is_none(),
            "nothing attached"
        );
        client.attach(target(42));
        let mut wrong = client.secret;
        wrong[0] ^= 1;
        assert!(
            registry.request(client.process_id, &wrong).is_none(),
            "wrong secret"
        );
        let hit = registry
            .request(client.process_id, &client.secret)
            .expect("forwarded");
        assert_eq!(hit.process_id, 42);
        assert!(client.detach(), "a cancelled server is not reused");
        assert!(
            registry
                .request(client.process_id, &client.secret)
                .is_none(),
            "detached"
        );
        client.attach(target(43));
        assert!(!client.detach(), "no cancel this time");
    }

    #[test]
    fn keys_are_unregistered_on_drop() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register();
        let b = registry.register();
        assert_ne!(a.process_id, b.process_id);
        drop(a);
        assert_eq!(registry.len(), 1);
    }
}

//! The kill switch: tenants whose LLM calls (and, when asked, database statements) are refused
//! until an operator lifts the block. Checked on every call and statement, so the common case
//! (nobody blocked) is one atomic load. With the Postgres ledger, blocks are shared by every
//! replica: the admin API writes them there, and each replica reloads them every few seconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use parking_lot::RwLock;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Block {
    pub llm: bool,
    pub db: bool,
    /// Unix seconds.
    pub since: u64,
}

#[derive(Default)]
pub struct Blocks {
    any: AtomicBool,
    tenants: RwLock<BTreeMap<String, Block>>,
}

impl Blocks {
    /// Blocks the tenant's LLM calls, and its database statements with `db`. Idempotent; a
    /// second call replaces the first.
    pub fn block(&self, tenant: &str, db: bool) -> Block {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let block = Block {
            llm: true,
            db,
            since,
        };
        self.tenants
            .write()
            .insert(tenant.to_owned(), block.clone());
        self.any.store(true, Ordering::Release);
        block
    }

    /// Lifts a block; false when there was none.
    pub fn unblock(&self, tenant: &str) -> bool {
        let mut tenants = self.tenants.write();
        let removed = tenants.remove(tenant).is_some();
        self.any.store(!tenants.is_empty(), Ordering::Release);
        removed
    }

    pub fn get(&self, tenant: &str) -> Option<Block> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.tenants.read().get(tenant).cloned()
    }

    pub fn llm_blocked(&self, tenant: &str) -> bool {
        self.get(tenant).is_some_and(|b| b.llm)
    }

    pub fn db_blocked(&self, tenant: &str) -> bool {
        self.get(tenant).is_some_and(|b| b.db)
    }

    pub fn all(&self) -> BTreeMap<String, Block> {
        self.tenants.read().clone()
    }

    /// Replaces every block with those the ledger holds.
    pub fn replace_all(&self, blocks: BTreeMap<String, Block>) {
        let mut tenants = self.tenants.write();
        *tenants = blocks;
        self.any.store(!tenants.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_per_tenant_and_service() {
        let blocks = Blocks::default();
        assert!(!blocks.llm_blocked("acme"));
        blocks.block("acme", false);
        blocks.block("globex", true);
        assert!(blocks.llm_blocked("acme") && !blocks.db_blocked("acme"));
        assert!(blocks.llm_blocked("globex") && blocks.db_blocked("globex"));
        assert!(!blocks.llm_blocked("initech"));
        assert!(blocks.unblock("acme"));
        assert!(!blocks.unblock("acme"));
        assert!(!blocks.llm_blocked("acme"));
        assert!(blocks.unblock("globex"));
        assert!(blocks.all().is_empty());
    }
}

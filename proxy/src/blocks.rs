//! The kill switch: tenants whose LLM calls (and, when asked, database statements) are refused
//! until an operator lifts the block. Checked on every call and statement, so the common case
//! (nobody blocked) is one atomic load. With the Postgres ledger, blocks are shared by every
//! replica: the admin API writes them there, and each replica reloads them every few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Bumped by every block and unblock here, so a reload from the ledger read before one
    /// does not undo it.
    generation: AtomicU64,
    /// Blocked here while the ledger could not be told: kept over reloads from the ledger
    /// until unblocked (a kill switch fails closed).
    pinned: RwLock<BTreeSet<String>>,
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
        self.generation.fetch_add(1, Ordering::AcqRel);
        block
    }

    /// Keeps a block that the ledger does not hold over reloads from it.
    pub fn pin(&self, tenant: &str) {
        self.pinned.write().insert(tenant.to_owned());
    }

    /// Lifts a block; false when there was none.
    pub fn unblock(&self, tenant: &str) -> bool {
        let mut tenants = self.tenants.write();
        let removed = tenants.remove(tenant).is_some();
        self.any.store(!tenants.is_empty(), Ordering::Release);
        self.pinned.write().remove(tenant);
        self.generation.fetch_add(1, Ordering::AcqRel);
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

    /// Where local changes stand; pass it to [`Blocks::replace_all`] with what was read after.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the blocks with those the ledger holds (read after `generation`), keeping the
    /// pinned ones; does nothing if a block or unblock happened here since.
    pub fn replace_all(&self, generation: u64, mut blocks: BTreeMap<String, Block>) {
        let mut tenants = self.tenants.write();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        for tenant in self.pinned.read().iter() {
            if let Some(block) = tenants.get(tenant) {
                blocks
                    .entry(tenant.clone())
                    .or_insert_with(|| block.clone());
            }
        }
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

    #[test]
    fn a_reload_read_before_a_local_change_is_dropped_and_pins_survive() {
        let blocks = Blocks::default();
        let before = blocks.generation();
        blocks.block("acme", false);
        blocks.replace_all(before, BTreeMap::new());
        assert!(blocks.llm_blocked("acme"), "a stale reload lifted a block");
        blocks.pin("acme");
        blocks.replace_all(blocks.generation(), BTreeMap::new());
        assert!(blocks.llm_blocked("acme"), "a reload lifted a pinned block");
        blocks.unblock("acme");
        let mut from_ledger = BTreeMap::new();
        from_ledger.insert(
            "globex".to_owned(),
            Block {
                llm: true,
                db: false,
                since: 0,
            },
        );
        blocks.replace_all(blocks.generation(), from_ledger);
        assert!(blocks.llm_blocked("globex") && !blocks.llm_blocked("acme"));
    }
}

//! The block cache: decoded data blocks shared by all tables, within a memory budget.
//!
//! Sixteen independently locked shards, so concurrent readers rarely contend; each evicts by
//! CLOCK (second chance), an approximation of LRU with O(1) hits.
//! Law: the bytes charged in a shard never exceed its budget after an insert returns (a block
//! larger than the whole shard budget is simply not cached).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::block::Block;

const SHARDS: usize = 16;

/// (table file number, block offset).
type CacheKey = (u64, u64);

struct Slot {
    key: CacheKey,
    block: Arc<Block>,
    /// Set on every hit; the clock hand clears it once before evicting (second chance).
    referenced: bool,
}

/// One shard: a CLOCK approximation of LRU, O(1) per hit.
struct Shard {
    map: HashMap<CacheKey, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    used: usize,
}

impl Shard {
    fn evict_one(&mut self) -> bool {
        if self.map.is_empty() {
            return false;
        }
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            if let Some(slot) = self.slots[i].take() {
                self.map.remove(&slot.key);
                self.used -= slot.block.charge();
                self.free.push(i);
            }
            return true;
        }
    }
}

/// A byte-budgeted cache of blocks.
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
    pub(crate) hits: crate::stats::Sharded,
    pub(crate) misses: crate::stats::Sharded,
    /// Misses of cache-only reads that the OS's page cache answered without waiting.
    pub(crate) page_cache_reads: AtomicU64,
}

impl BlockCache {
    pub(crate) fn new(budget: usize) -> BlockCache {
        BlockCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        slots: Vec::new(),
                        free: Vec::new(),
                        hand: 0,
                        used: 0,
                    })
                })
                .collect(),
            shard_budget: budget / SHARDS,
            hits: Default::default(),
            misses: Default::default(),
            page_cache_reads: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: CacheKey) -> std::sync::MutexGuard<'_, Shard> {
        let h = key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (key.1 >> 9);
        let i = (h ^ (h >> 29)) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, table: u64, offset: u64) -> Option<Arc<Block>> {
        let mut s = self.shard((table, offset));
        let found = match s.map.get(&(table, offset)).copied() {
            Some(i) => s.slots[i].as_mut().map(|slot| {
                slot.referenced = true;
                slot.block.clone()
            }),
            None => None,
        };
        drop(s);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.add(1);
        found
    }

    pub(crate) fn insert(&self, table: u64, offset: u64, block: Arc<Block>) {
        let charge = block.charge();
        if charge > self.shard_budget {
            return;
        }
        let key = (table, offset);
        let mut s = self.shard(key);
        if s.map.contains_key(&key) {
            return; // another reader loaded it meanwhile
        }
        while s.used + charge > self.shard_budget && s.evict_one() {}
        let slot = Slot {
            key,
            block,
            referenced: false,
        };
        let i = match s.free.pop() {
            Some(i) => {
                s.slots[i] = Some(slot);
                i
            }
            None => {
                s.slots.push(Some(slot));
                s.slots.len() - 1
            }
        };
        s.map.insert(key, i);
        s.used += charge;
    }

    /// Bytes currently held.
    pub(crate) fn used(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).used)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockBuilder;

    fn block(n: usize) -> Arc<Block> {
        let mut b = BlockBuilder::new(16);
        for i in 0..n {
            b.add(format!("{i:08}").as_bytes(), Some(&[0u8; 100]));
        }
        Arc::new(Block::new(b.finish()).unwrap())
    }

    #[test]
    fn stays_within_budget_and_evicts_least_recent() {
        let c = BlockCache::new(16 * 10_000);
        let b = block(30); // about 3.5 KB
        for t in 0..200 {
            c.insert(t, 0, b.clone());
            assert!(c.used() <= 16 * 10_000);
        }
        assert!(c.get(199, 0).is_some());
        assert!(c.get(0, 0).is_none());
        assert!(c.hits.get() == 1 && c.misses.get() == 1);
        // A block that is hit keeps its place while new ones stream through its shard.
        let c = BlockCache::new(16 * 10_000);
        c.insert(1000, 0, b.clone());
        for t in 0..2000 {
            assert!(c.get(1000, 0).is_some(), "evicted after {t} inserts");
            c.insert(t, 0, b.clone());
        }
    }
}

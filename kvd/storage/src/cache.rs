//! The block cache: decoded data blocks shared by all tables, within a memory budget.
//!
//! Sixteen independently locked LRU shards, so concurrent readers rarely contend.
//! Law: the bytes charged in a shard never exceed its budget after an insert returns (a block
//! larger than the whole shard budget is simply not cached).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::block::Block;

const SHARDS: usize = 16;

/// (table file number, block offset).
type CacheKey = (u64, u64);

struct Shard {
    map: HashMap<CacheKey, (Arc<Block>, u64)>,
    /// Recency order: tick -> key; the smallest tick is evicted first.
    lru: BTreeMap<u64, CacheKey>,
    used: usize,
    tick: u64,
}

/// A byte-budgeted LRU cache of blocks.
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_budget: usize,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
}

impl BlockCache {
    pub(crate) fn new(budget: usize) -> BlockCache {
        BlockCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        lru: BTreeMap::new(),
                        used: 0,
                        tick: 0,
                    })
                })
                .collect(),
            shard_budget: budget / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: CacheKey) -> std::sync::MutexGuard<'_, Shard> {
        let h = key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (key.1 >> 9);
        let i = (h ^ (h >> 29)) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, table: u64, offset: u64) -> Option<Arc<Block>> {
        let key = (table, offset);
        let mut s = self.shard(key);
        s.tick += 1;
        let tick = s.tick;
        let Some((block, old)) = s.map.get_mut(&key) else {
            drop(s);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let prev = std::mem::replace(old, tick);
        let block = block.clone();
        s.lru.remove(&prev);
        s.lru.insert(tick, key);
        drop(s);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(block)
    }

    pub(crate) fn insert(&self, table: u64, offset: u64, block: Arc<Block>) {
        let charge = block.charge();
        if charge > self.shard_budget {
            return;
        }
        let key = (table, offset);
        let mut s = self.shard(key);
        s.tick += 1;
        let tick = s.tick;
        if let Some((old, old_tick)) = s.map.insert(key, (block, tick)) {
            s.used -= old.charge();
            s.lru.remove(&old_tick);
        }
        s.lru.insert(tick, key);
        s.used += charge;
        while s.used > self.shard_budget {
            let Some((_, victim)) = s.lru.pop_first() else {
                break;
            };
            if let Some((b, _)) = s.map.remove(&victim) {
                s.used -= b.charge();
            }
        }
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
        assert!(c.hits.load(Ordering::Relaxed) == 1 && c.misses.load(Ordering::Relaxed) == 1);
    }
}

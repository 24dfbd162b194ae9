//! Engine statistics for `/metrics`: plain numbers, cheap to read.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters updated on the hot paths (relaxed atomics: they are statistics, not state).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) wal_syncs: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) flush_bytes: AtomicU64,
    pub(crate) compactions: AtomicU64,
    pub(crate) trivial_moves: AtomicU64,
    pub(crate) compaction_bytes_read: AtomicU64,
    pub(crate) compaction_bytes_written: AtomicU64,
    pub(crate) stall_micros: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) slowdowns: AtomicU64,
    pub(crate) gets: Sharded,
    pub(crate) range_skips: Sharded,
    pub(crate) bloom_checks: Sharded,
    pub(crate) bloom_skips: Sharded,
    pub(crate) bloom_false_positives: Sharded,
    pub(crate) no_space_refusals: AtomicU64,
    pub(crate) no_space_retries: AtomicU64,
}

/// Shards of a [`Sharded`] counter.
const SHARDS: usize = 8;

/// A counter of the read path, which every request's thread adds to: one cache line per
/// shard, each thread adding to its own, summed when read. One atomic shared by the worker
/// threads made each of their increments take its line from the other core.
#[derive(Default)]
pub(crate) struct Sharded([Padded; SHARDS]);

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

thread_local! {
    /// This thread's shard of every [`Sharded`] counter.
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) as usize % SHARDS
    };
}

impl Sharded {
    pub(crate) fn add(&self, n: u64) {
        self.0[SHARD.with(|s| *s)].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A snapshot of the engine's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Bytes of table files per level (index = level).
    pub level_bytes: Vec<u64>,
    /// Number of tables per level.
    pub level_tables: Vec<usize>,
    /// Total number of live tables.
    pub table_count: usize,
    /// Approximate bytes in the active memtable.
    pub memtable_bytes: usize,
    /// Immutable memtables waiting to be flushed.
    pub immutable_memtables: usize,
    /// Write batches acknowledged.
    pub writes: u64,
    /// Commit groups written (each one write and at most one fsync of the commit log).
    pub write_groups: u64,
    /// Fsyncs of the commit log.
    pub wal_syncs: u64,
    /// Key and value bytes written by callers.
    pub user_bytes_written: u64,
    /// Bytes appended to the commit log.
    pub wal_bytes_written: u64,
    /// Memtable flushes to level 0.
    pub flushes: u64,
    /// Table bytes written by flushes.
    pub flush_bytes_written: u64,
    /// Compactions run (trivial moves included).
    pub compactions: u64,
    /// Compactions that moved a table down a level without rewriting it.
    pub trivial_moves: u64,
    /// Table bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// Table bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// (flush + compaction bytes written) / user bytes written; 0 before any write.
    pub write_amplification: f64,
    /// Total time writers spent waiting because flushing or compaction fell behind.
    pub stall_micros: u64,
    /// Writes that waited (stop condition).
    pub stalls: u64,
    /// Writes delayed by a millisecond (slowdown condition).
    pub slowdowns: u64,
    /// Point lookups.
    pub gets: u64,
    /// Table lookups skipped because the key is outside the table's key range.
    pub range_skips: u64,
    /// Bloom filter probes.
    pub bloom_checks: u64,
    /// Table lookups skipped because the bloom filter excluded the key.
    pub bloom_skips: u64,
    /// Bloom filter passed but the table did not hold the key.
    pub bloom_false_positives: u64,
    /// Block cache hits.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// hits / (hits + misses); 0 before any lookup.
    pub cache_hit_ratio: f64,
    /// Block cache misses of memory-only reads ([`crate::Engine::get_cached`]) that the
    /// OS's page cache answered, without waiting for the disk.
    pub page_cache_reads: u64,
    /// Bytes held by the block cache.
    pub cache_bytes: usize,
    /// Writes refused because the disk was full (their append failed for lack of space, the
    /// flush they would wait for could not run, or free space was below the reserve).
    pub no_space_refusals: u64,
    /// Flushes and compactions that failed for lack of space (each is retried a second
    /// later).
    pub no_space_retries: u64,
    /// Why writes are refused for lack of disk space now, if they are (see `Engine::no_space`).
    pub no_space: Option<String>,
    /// Free space kept back for flushes and compactions (see `Options::reserve_bytes`).
    pub reserve_bytes: u64,
    /// Free bytes of the file system holding the engine's directory, when it says.
    pub disk_free_bytes: Option<u64>,
}

//! Engine options: durability, sizes of the memtable, tables, levels and cache.

use std::sync::Arc;
use std::time::Duration;

/// When a write is acknowledged relative to the fsync of its commit-log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// No write is acknowledged before its commit-log record is fsynced (group commit shares
    /// one fsync among concurrent writers).
    Always,
    /// A background thread fsyncs the commit log at least every `Options::sync_interval`;
    /// a crash of the machine may lose the writes of the last interval.
    Interval,
    /// The commit log is written to the OS but never fsynced by the write path.
    None,
}

impl SyncMode {
    /// Parses `always`, `interval` or `none`.
    pub fn parse(s: &str) -> Option<SyncMode> {
        match s {
            "always" => Some(SyncMode::Always),
            "interval" => Some(SyncMode::Interval),
            "none" => Some(SyncMode::None),
            _ => None,
        }
    }
}

/// What opening does with a commit-log record that fails its checksum (or does not decode)
/// while whole, valid records follow it: damage in the middle of the log, not a torn tail.
/// (A torn tail, garbage with nothing valid after it, is the unfinished last write of a crash
/// and is always cut.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogRecovery {
    /// Refuse to open, naming the segment and offset: the records around the damage may
    /// hold acknowledged writes, and dropping them silently is not for the engine to decide.
    #[default]
    Strict,
    /// Skip each damaged stretch, replay every whole record around it, and report what was
    /// skipped (RocksDB's `kSkipAnyCorruptedRecords`): for a replica whose lost writes
    /// anti-entropy brings back from the others.
    SkipDamaged,
}

impl LogRecovery {
    /// Parses `strict` or `skip-damaged`.
    pub fn parse(s: &str) -> Option<LogRecovery> {
        match s {
            "strict" => Some(LogRecovery::Strict),
            "skip-damaged" => Some(LogRecovery::SkipDamaged),
            _ => None,
        }
    }
}

/// Decides, at the last level, whether a stored value is a tombstone past its grace period that
/// compaction may drop. Arguments: key, value.
pub type PurgePredicate = Arc<dyn Fn(&[u8], &[u8]) -> bool + Send + Sync>;

/// Engine configuration. `Options::default()` is a sensible server setting.
#[derive(Clone)]
pub struct Options {
    /// Durability of acknowledged writes.
    pub sync: SyncMode,
    /// Fsync period for `SyncMode::Interval`.
    pub sync_interval: Duration,
    /// Size at which the memtable turns immutable and is flushed to a table.
    pub memtable_bytes: usize,
    /// How many immutable memtables may wait for flushing before writers stall.
    pub max_immutable_memtables: usize,
    /// Memory budget of the block cache (decompressed data blocks).
    pub block_cache_bytes: usize,
    /// Put the data blocks of each table a flush writes into the block cache as they are
    /// written. The newest writes are the likeliest to be read next (in kvd every write reads
    /// its key's state first, from memory only on the async path), and without this each
    /// block of a new table misses the cache once, a disk read, after every flush.
    pub cache_flushed_blocks: bool,
    /// Compress data blocks with LZ4.
    pub compression: bool,
    /// Bloom filter bits per key (10 gives about 1% false positives); 0 disables filters.
    pub bloom_bits_per_key: usize,
    /// Target size of an uncompressed data block.
    pub block_bytes: usize,
    /// Keys between restart points of the prefix compression.
    pub block_restart_interval: usize,
    /// Target size of a table written by compaction.
    pub table_bytes: u64,
    /// Number of level-0 tables that triggers a level-0 compaction.
    pub l0_compaction_trigger: usize,
    /// Number of level-0 tables at which each write is delayed by a millisecond.
    pub l0_slowdown_trigger: usize,
    /// Number of level-0 tables at which writes wait for compaction.
    pub l0_stop_trigger: usize,
    /// Target size of level 1; each further level is `level_multiplier` times larger.
    pub level1_bytes: u64,
    /// Size ratio between adjacent levels.
    pub level_multiplier: u64,
    /// Number of levels (level 0 included).
    pub num_levels: usize,
    /// Run flushes and compactions on background threads. When false, `flush`/`compact` must be
    /// called explicitly (useful for deterministic tests).
    pub background_work: bool,
    /// Nice value of the flush and compaction threads (Linux: per thread; 0 leaves them at
    /// the process's). Foreground requests then take the CPU first when it is short, and the
    /// background work uses what they leave; writes still wait when it falls too far behind
    /// (`l0_stop_trigger`, `max_immutable_memtables`), so it is slowed, never starved.
    pub background_nice: i32,
    /// Flush the memtable to a table on `close`, so the next open has nothing to replay.
    pub flush_on_close: bool,
    /// What opening does with damage in the middle of the commit log.
    pub log_recovery: LogRecovery,
    /// Largest accepted key.
    pub max_key_bytes: usize,
    /// Largest accepted value.
    pub max_value_bytes: usize,
    /// See [`PurgePredicate`]; `None` keeps every value.
    pub tombstone_purge: Option<PurgePredicate>,
    /// Free space kept back on the data dir's file system for flushes and compactions, which
    /// write their tables before they delete what those replace. Once the file system has less
    /// free than this, writes are refused ([`crate::Error::NoSpace`]) except batches that free
    /// space ([`crate::WriteBatch::frees_space`]), while flushing and compaction go on using
    /// the reserve; writes are accepted again once free space is back above it. `None`: 5% of
    /// the file system's size, at most 1 GiB ([`default_reserve`]); `Some(0)`: no reserve
    /// (writes go on until the disk itself refuses them).
    pub reserve_bytes: Option<u64>,
}

/// The reserve of a file system of `size` bytes when none is set: 5%, at most 1 GiB (the
/// share Elasticsearch's flood-stage watermark leaves; 1 GiB holds the flush of a 64 MiB
/// memtable and a level-0 compaction many times over).
pub fn default_reserve(size: u64) -> u64 {
    (size / 20).min(1 << 30)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(100),
            memtable_bytes: 64 << 20,
            max_immutable_memtables: 2,
            block_cache_bytes: 64 << 20,
            cache_flushed_blocks: true,
            compression: true,
            bloom_bits_per_key: 10,
            block_bytes: 4096,
            block_restart_interval: 16,
            table_bytes: 8 << 20,
            background_nice: 10,
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 20,
            l0_stop_trigger: 36,
            level1_bytes: 64 << 20,
            level_multiplier: 10,
            num_levels: 7,
            background_work: true,
            flush_on_close: true,
            log_recovery: LogRecovery::Strict,
            max_key_bytes: 64 << 10,
            max_value_bytes: 1 << 20,
            tombstone_purge: None,
            reserve_bytes: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("sync", &self.sync)
            .field("memtable_bytes", &self.memtable_bytes)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .field("cache_flushed_blocks", &self.cache_flushed_blocks)
            .field("compression", &self.compression)
            .field("bloom_bits_per_key", &self.bloom_bits_per_key)
            .field("table_bytes", &self.table_bytes)
            .field("num_levels", &self.num_levels)
            .field("log_recovery", &self.log_recovery)
            .field("tombstone_purge", &self.tombstone_purge.is_some())
            .field("reserve_bytes", &self.reserve_bytes)
            .finish_non_exhaustive()
    }
}

//! kvd-storage: the LSM engine every replica persists through (re-exported as `kvd::storage`).
//!
//! Synchronous, self-contained, usable without the network. Map of the modules, following a
//! write and then a read:
//! - [`batch`]: `WriteBatch`, the unit of atomicity, and its record encoding;
//! - `commit_log`: framed, checksummed records in numbered segments, replayed on open;
//! - `engine`: group commit, memtable rotation, the read path, flush and compaction threads,
//!   recovery;
//! - `memtable`: the ordered in-memory map of recent writes;
//! - `sstable`, `block`, `bloom`: immutable sorted tables with prefix-compressed blocks, an
//!   index, a bloom filter and checksums everywhere;
//! - `cache`: the block cache with a memory budget;
//! - `manifest`, `version`: the durable, atomically replaced set of live tables per level;
//! - `compaction`: leveled compaction;
//! - `iter`: merging iterators and [`Scan`];
//! - [`bench`]: db_bench-style workloads;
//! - `fuzzing`: hidden entry points into the readers for the fuzz targets in `tests/fuzz`.
//! - `testing`: hidden helpers for tests of the engine and of what runs on it (page-cache eviction).
//!
//! ```
//! use std::ops::Bound;
//! use kvd_storage::{Engine, Options, WriteBatch};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), Options::default())?;
//! let mut batch = WriteBatch::new();
//! batch.put("apple", "red");
//! batch.put("banana", "yellow");
//! batch.delete("cherry");
//! engine.write(batch)?; // durable (fsynced) when it returns, with SyncMode::Always
//! assert_eq!(engine.get(b"apple")?, Some(b"red".to_vec()));
//! let keys: Vec<Vec<u8>> = engine
//!     .scan(Bound::Included(b"a".as_slice()), Bound::Unbounded)?
//!     .map(|r| r.map(|(k, _)| k))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(keys, vec![b"apple".to_vec(), b"banana".to_vec()]);
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod batch;
pub mod bench;

mod block;
mod bloom;
mod cache;
mod coding;
mod commit_log;
mod compaction;
mod engine;
mod error;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod iter;
mod manifest;
mod memtable;
mod options;
mod sstable;
mod stats;
mod version;

#[doc(hidden)]
pub mod testing;
pub use batch::{WriteBatch, WriteOp};
pub use engine::{Checkpoint, Engine, RecoveryReport, SkippedDamage, Ticket, TornTail};
pub use error::{Error, Result};
pub use iter::Scan;
pub use options::{default_reserve, LogRecovery, Options, PurgePredicate, SyncMode};
pub use stats::Stats;

/// Decoders fed arbitrary bytes must return errors, never panic or loop.
#[cfg(test)]
mod decoder_fuzz {
    use std::sync::Arc;

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn batch_decode_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = crate::batch::WriteBatch::decode(&bytes);
        }

        #[test]
        fn manifest_decode_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = crate::manifest::ManifestData::decode(std::path::Path::new("MANIFEST"), &bytes);
        }

        #[test]
        fn block_iteration_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600), target in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok(block) = crate::block::Block::new(bytes) {
                let block = Arc::new(block);
                let mut it = block.iter();
                let mut n = 0;
                while let Ok(true) = it.advance() {
                    n += 1;
                    prop_assert!(n < 10_000);
                }
                let _ = block.iter().seek(&target);
            }
        }

        #[test]
        fn commit_log_replay_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("000001.log");
            std::fs::write(&p, &bytes).unwrap();
            let r = crate::commit_log::replay_segment(&p, false, |_| {}).unwrap();
            prop_assert!(r.records == 0 || r.cut.is_none() || r.cut.as_ref().is_some_and(|(o, _)| *o > 0));
        }
    }
}

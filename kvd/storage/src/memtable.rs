//! The memtable: an ordered in-memory map of the newest writes, readable while written.
//!
//! A `BTreeMap` behind an `RwLock`: readers share the lock, the single group-commit leader
//! takes it briefly per group. At the size threshold the engine stops writing to it (it becomes
//! immutable) and a fresh one takes writes, so a flush reads it without contention.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::batch::{WriteBatch, WriteOp};

/// Per-entry bookkeeping cost counted on top of key and value bytes.
const ENTRY_OVERHEAD: usize = 48;

/// A value as stored in memtables and tables: `None` is the engine's own tombstone.
pub(crate) type Entry = Option<Vec<u8>>;

/// Result of a point lookup in one layer of the LSM tree.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The newest version in this layer is a value.
    Found(Vec<u8>),
    /// The newest version in this layer is a tombstone: stop looking in older layers.
    Deleted,
    /// This layer knows nothing of the key.
    Absent,
}

/// One memtable, tied to the commit-log segment its writes went to.
pub(crate) struct Memtable {
    map: RwLock<BTreeMap<Vec<u8>, Entry>>,
    bytes: AtomicUsize,
    /// Commit-log segment holding exactly this memtable's writes.
    pub(crate) segment: u64,
}

impl Memtable {
    pub(crate) fn new(segment: u64) -> Memtable {
        Memtable {
            map: RwLock::new(BTreeMap::new()),
            bytes: AtomicUsize::new(0),
            segment,
        }
    }

    /// Approximate memory used.
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated in a way readers
        // would misread (BTreeMap ops are not interrupted midway by our code), so poisoning
        // is ignored.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a batch, consuming it (no copies of keys or values).
    pub(crate) fn apply_owned(&self, batch: WriteBatch) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut added = 0usize;
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    added += k.len() + v.len() + ENTRY_OVERHEAD;
                    map.insert(k, Some(v));
                }
                WriteOp::Delete(k) => {
                    added += k.len() + ENTRY_OVERHEAD;
                    map.insert(k, None);
                }
            }
        }
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, key: &[u8]) -> Lookup {
        match self.read().get(key) {
            Some(Some(v)) => Lookup::Found(v.clone()),
            Some(None) => Lookup::Deleted,
            None => Lookup::Absent,
        }
    }

    /// A copy of the entries in the range, in key order (a snapshot for scans).
    pub(crate) fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Vec<(Vec<u8>, Entry)> {
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
            (start, end)
        {
            if s > e {
                return Vec::new();
            }
        }
        self.read()
            .range::<[u8], _>((start, end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Calls `f` on every entry in key order (used by flush on an immutable memtable).
    pub(crate) fn for_each<E>(
        &self,
        mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        for (k, v) in self.read().iter() {
            f(k, v.as_deref())?;
        }
        Ok(())
    }
}

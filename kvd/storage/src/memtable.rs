//! The memtable: an ordered in-memory map of the newest writes, readable while written.
//!
//! A skiplist with one writer at a time (writers serialize on an internal mutex; in the engine
//! only the group-commit leader writes) and lock-free readers. Every operation gets a sequence
//! number; nodes are ordered by key ascending, then sequence descending, so the first node of a
//! key is its newest version. Overwrites add nodes; nothing is removed until the whole memtable
//! is dropped (after its flush), which is what makes lock-free reading safe.
//!
//! Laws:
//! - A node is fully built before it is linked (Release store); readers load links with
//!   Acquire, so a reader never sees a partly built node.
//! - Nodes are freed only in `Drop`, when no reader can hold the memtable (readers hold an
//!   `Arc<Memtable>`).
//! - `visible` is advanced after a whole batch is linked, and readers ignore nodes with a
//!   higher sequence: a batch becomes visible all at once.

use std::ops::Bound;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::batch::{WriteBatch, WriteOp};

/// Per-entry bookkeeping cost counted on top of key and value bytes.
const ENTRY_OVERHEAD: usize = 64;
const MAX_HEIGHT: usize = 12;

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

struct Node {
    key: Vec<u8>,
    value: Entry,
    seq: u64,
    next: Box<[AtomicPtr<Node>]>,
}

impl Node {
    fn new(key: Vec<u8>, value: Entry, seq: u64, height: usize) -> Node {
        Node {
            key,
            value,
            seq,
            next: (0..height)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
        }
    }

    /// Orders before the target (key, seq): smaller key, or same key and newer.
    fn before(&self, key: &[u8], seq: u64) -> bool {
        match self.key.as_slice().cmp(key) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.seq > seq,
            std::cmp::Ordering::Greater => false,
        }
    }
}

struct Writer {
    rng: u64,
    next_seq: u64,
}

/// One memtable, tied to the commit-log segment its writes went to.
pub(crate) struct Memtable {
    /// Sentinel of full height; its key is never compared.
    head: Box<Node>,
    height: AtomicUsize,
    writer: Mutex<Writer>,
    /// Highest sequence number readers may see.
    visible: AtomicU64,
    bytes: AtomicUsize,
    /// Commit-log segment holding exactly this memtable's writes.
    pub(crate) segment: u64,
}

impl Drop for Memtable {
    fn drop(&mut self) {
        let mut p = self.head.next[0].swap(ptr::null_mut(), Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: every linked node came from Box::into_raw in `insert`, is linked exactly
            // once at level 0, and `&mut self` proves no reader holds this memtable.
            let node = unsafe { Box::from_raw(p) };
            p = node.next[0].load(Ordering::Relaxed);
        }
    }
}

impl Memtable {
    pub(crate) fn new(segment: u64) -> Memtable {
        Memtable {
            head: Box::new(Node::new(Vec::new(), None, 0, MAX_HEIGHT)),
            height: AtomicUsize::new(1),
            writer: Mutex::new(Writer {
                rng: 0x2545_F491_4F6C_DD1D ^ segment,
                next_seq: 1,
            }),
            visible: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            segment,
        }
    }

    /// Approximate memory used.
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.next[0].load(Ordering::Acquire).is_null()
    }

    /// First node not ordered before (key, seq), or null; fills `prev` with the last node
    /// before it on each level when asked.
    fn seek(
        &self,
        key: &[u8],
        seq: u64,
        mut prev: Option<&mut [*const Node; MAX_HEIGHT]>,
    ) -> *const Node {
        let mut x: *const Node = &*self.head;
        let mut level = self.height.load(Ordering::Acquire) - 1;
        loop {
            // SAFETY: `x` is the head or a linked node; linked nodes live until Drop.
            let next = unsafe { (*x).next[level].load(Ordering::Acquire) };
            // SAFETY: a non-null link points at a fully built node (Release/Acquire).
            if !next.is_null() && unsafe { (*next).before(key, seq) } {
                x = next;
            } else {
                if let Some(p) = prev.as_deref_mut() {
                    p[level] = x;
                }
                if level == 0 {
                    return next;
                }
                level -= 1;
            }
        }
    }

    fn insert(&self, w: &mut Writer, key: Vec<u8>, value: Entry) {
        let seq = w.next_seq;
        w.next_seq += 1;
        let mut height = 1;
        loop {
            w.rng ^= w.rng << 13;
            w.rng ^= w.rng >> 7;
            w.rng ^= w.rng << 17;
            if height < MAX_HEIGHT && w.rng & 3 == 0 {
                height += 1;
            } else {
                break;
            }
        }
        let head: *const Node = &*self.head;
        let mut prev = [head; MAX_HEIGHT];
        self.seek(&key, seq, Some(&mut prev));
        let cur = self.height.load(Ordering::Relaxed);
        if height > cur {
            // prev[cur..height] already hold the head. Readers seeing the new height before
            // the links simply find null at those levels and descend.
            self.height.store(height, Ordering::Release);
        }
        let node = Box::into_raw(Box::new(Node::new(key, value, seq, height)));
        for (i, p) in prev.iter().enumerate().take(height) {
            // SAFETY: `node` is ours until published; `p` is the head or a linked node.
            unsafe {
                let succ = (**p).next[i].load(Ordering::Relaxed);
                (*node).next[i].store(succ, Ordering::Relaxed);
                (**p).next[i].store(node, Ordering::Release);
            }
        }
    }

    /// Applies a batch, consuming it (keys and values are moved, not copied); the batch
    /// becomes visible to readers at once.
    pub(crate) fn apply_owned(&self, batch: WriteBatch) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut added = 0usize;
        for op in batch.ops {
            let (k, v) = match op {
                WriteOp::Put(k, v) => (k, Some(v)),
                WriteOp::Delete(k) => (k, None),
            };
            added += k.len() + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD;
            self.insert(&mut w, k, v);
        }
        self.visible.store(w.next_seq - 1, Ordering::Release);
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, key: &[u8]) -> Lookup {
        let snap = self.visible.load(Ordering::Acquire);
        let n = self.seek(key, snap, None);
        if n.is_null() {
            return Lookup::Absent;
        }
        // SAFETY: non-null links point at live, fully built nodes.
        let n = unsafe { &*n };
        if n.key != key {
            return Lookup::Absent;
        }
        match &n.value {
            Some(v) => Lookup::Found(v.clone()),
            None => Lookup::Deleted,
        }
    }

    /// An iterator over the newest visible version of each key from `start` on, fixed to the
    /// writes visible now.
    pub(crate) fn iter(self: &Arc<Self>, start: Bound<&[u8]>) -> MemIter {
        let snap = self.visible.load(Ordering::Acquire);
        let first = match start {
            Bound::Included(s) | Bound::Excluded(s) => self.seek(s, u64::MAX, None),
            Bound::Unbounded => self.head.next[0].load(Ordering::Acquire),
        };
        MemIter {
            _mem: self.clone(),
            node: first,
            snap,
            last_key: None,
        }
    }

    /// Calls `f` on the newest version of every key in order (used by flush on an immutable
    /// memtable).
    pub(crate) fn for_each<E>(
        self: &Arc<Self>,
        mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut it = self.iter(Bound::Unbounded);
        while let Some(n) = it.next_node() {
            f(&n.key, n.value.as_deref())?;
        }
        Ok(())
    }
}

/// Walks a memtable in key order at a fixed sequence snapshot.
pub(crate) struct MemIter {
    /// Keeps the nodes alive.
    _mem: Arc<Memtable>,
    node: *const Node,
    snap: u64,
    /// Key of the last node returned, to skip its older versions.
    last_key: Option<*const Node>,
}

// SAFETY: the raw pointers point into `mem`, which the iterator keeps alive, and nodes are
// immutable once linked; moving the iterator to another thread is therefore sound.
unsafe impl Send for MemIter {}
// SAFETY: as above; shared access only reads immutable nodes.
unsafe impl Sync for MemIter {}

impl MemIter {
    fn next_node(&mut self) -> Option<&Node> {
        loop {
            if self.node.is_null() {
                return None;
            }
            // SAFETY: non-null links point at live nodes kept alive by `self._mem`.
            let n = unsafe { &*self.node };
            self.node = n.next[0].load(Ordering::Acquire);
            if n.seq > self.snap {
                continue; // written after the snapshot
            }
            if let Some(last) = self.last_key {
                // SAFETY: as above.
                if unsafe { &(*last).key } == &n.key {
                    continue; // an older version of the key just returned
                }
            }
            self.last_key = Some(n as *const Node);
            return Some(n);
        }
    }

    /// The next entry, copied.
    pub(crate) fn next_owned(&mut self) -> Option<(Vec<u8>, Entry)> {
        self.next_node().map(|n| (n.key.clone(), n.value.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ops: &[(&str, Option<&str>)]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in ops {
            match v {
                Some(v) => b.put(*k, *v),
                None => b.delete(*k),
            }
        }
        b
    }

    #[test]
    fn newest_version_wins_and_iteration_is_ordered() {
        let m = Arc::new(Memtable::new(1));
        m.apply_owned(batch(&[
            ("b", Some("1")),
            ("a", Some("1")),
            ("b", Some("2")),
        ]));
        m.apply_owned(batch(&[("c", None), ("a", Some("3"))]));
        assert_eq!(m.get(b"a"), Lookup::Found(b"3".to_vec()));
        assert_eq!(m.get(b"b"), Lookup::Found(b"2".to_vec()));
        assert_eq!(m.get(b"c"), Lookup::Deleted);
        assert_eq!(m.get(b"d"), Lookup::Absent);
        let mut it = m.iter(Bound::Unbounded);
        let mut got = Vec::new();
        while let Some(e) = it.next_owned() {
            got.push(e);
        }
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), Some(b"3".to_vec())),
                (b"b".to_vec(), Some(b"2".to_vec())),
                (b"c".to_vec(), None)
            ]
        );
    }

    #[test]
    fn an_iterator_does_not_see_later_writes() {
        let m = Arc::new(Memtable::new(1));
        m.apply_owned(batch(&[("a", Some("1")), ("c", Some("1"))]));
        let mut it = m.iter(Bound::Included(b"a"));
        m.apply_owned(batch(&[("b", Some("2")), ("a", Some("2"))]));
        assert_eq!(it.next_owned(), Some((b"a".to_vec(), Some(b"1".to_vec()))));
        assert_eq!(it.next_owned(), Some((b"c".to_vec(), Some(b"1".to_vec()))));
        assert_eq!(it.next_owned(), None);
    }

    #[test]
    fn readers_run_while_one_writer_inserts() {
        let m = Arc::new(Memtable::new(1));
        let n = 20_000u32;
        let w = {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    m.apply_owned(batch(&[(
                        &format!("{:08}", i * 7919 % n),
                        Some(&i.to_string()),
                    )]));
                }
            })
        };
        let mut seen = 0;
        while seen < n as usize {
            // Every scan is ordered and its count never shrinks.
            let mut it = m.iter(Bound::Unbounded);
            let mut prev: Option<Vec<u8>> = None;
            let mut count = 0;
            while let Some((k, _)) = it.next_owned() {
                assert!(prev.as_ref().is_none_or(|p| *p < k));
                prev = Some(k);
                count += 1;
            }
            assert!(count >= seen);
            seen = count;
        }
        w.join().unwrap();
    }
}

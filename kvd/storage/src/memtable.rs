//! The memtable: an ordered in-memory map of the newest writes, readable while written.
//!
//! A skiplist of keys with one writer at a time (writers serialize on an internal mutex; in the
//! engine only the group-commit leader writes) and lock-free readers. Nodes (header, links, key
//! and value) are laid out together in an arena of 4 MiB chunks, so a search step touches one
//! or two cache lines and an insert costs no allocation. Every operation gets a sequence number.
//! The first write of a key in this memtable makes its key node (linked into the skiplist
//! later, see below); each later write of the key makes a version node (header and value only)
//! pushed on the key node's version chain, newest first. Nothing is removed until the whole memtable is dropped (after
//! its flush), which is what makes lock-free reading safe.
//!
//! Writes do not search the skiplist: a search visits some 30 nodes of a full memtable, each a
//! likely cache miss, and was the node's largest user-space cost under a write load. A hash
//! index of fixed size (buckets of key-node chains linked through each key node's hash link)
//! finds a key's node in one or two node visits, for point lookups (exact for absent keys too)
//! and for overwrites. A new key's node enters its hash bucket at once and the skiplist later:
//! the writer keeps the nodes not yet linked, and whoever next walks the skiplist (an
//! iterator, the flush) first links them all, in key order, without holding up the writer. Sorted, they are ordered by their
//! first eight bytes without touching the nodes, and each search shares most of its path with
//! the one before, so the links cost a fraction of the searches the writes would have made
//! (after a flush, every key of a write load is new to the fresh memtable).
//!
//! Laws:
//! - A node is fully built before it is linked (Release store); readers load links with
//!   Acquire, so a reader never sees a partly built node.
//! - Arena chunks are freed only when the memtable is dropped, when no reader can hold it
//!   (readers and iterators hold an `Arc<Memtable>`).
//! - `visible` is advanced after a whole batch is linked, and readers ignore nodes with a
//!   higher sequence: a batch becomes visible all at once.
//! - An iterator's snapshot is the `visible` read when it took the writer's list of unlinked
//!   key nodes (under the writer's mutex, so no batch was half applied); it links them before
//!   walking, so every key node of its snapshot is in the skiplist. Linkers take turns on
//!   their own mutex; they are the skiplist's only writers.
//! - A key node enters its hash bucket, and a version node its key's chain, by a Release store
//!   after the node's own link there is set and before `visible` covers it; version chains only
//!   grow at their head, by the one writer, in sequence order, so the first version with a
//!   visible sequence (the key node itself last) is the newest visible one.

use std::ops::Bound;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::batch::{WriteBatch, WriteOp};

const MAX_HEIGHT: usize = 12;
/// Arena chunk size; a larger entry gets a chunk of its own.
const CHUNK_BYTES: usize = 4 << 20;
/// Node header: seq u64, key length u32, value tag u32 (0 = tombstone, else length + 1),
/// height u32, padding u32, hash link u64, version link u64; then `height` link words, then key
/// bytes, then value bytes. A version node has height 0 and no key bytes.
const HEADER: usize = 40;
/// Offset of the hash link of a key node: the next key node in the same hash bucket.
const HASH_LINK: usize = 24;
/// Offset of the version link: on a key node the newest later version (null: none); on a
/// version node the next older version (null: the key node is next).
const VERSION_LINK: usize = 32;
/// Bytes of an entry of the writer's list of key nodes not yet in the skiplist.
const UNLINKED_ENTRY: usize = std::mem::size_of::<(u64, NodeRef)>();
/// Hash buckets per memtable (2 MiB of pointers, touched as used): about one entry per bucket
/// in a full 64 MiB memtable of small entries.
const INDEX_BUCKETS: usize = 1 << 18;

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

/// A node in the arena. Law: the pointer is null or points at a node fully written by
/// `Memtable::insert` into an arena chunk of a memtable that is still alive.
#[derive(Clone, Copy)]
struct NodeRef(*const u8);

impl NodeRef {
    fn is_null(self) -> bool {
        self.0.is_null()
    }
    fn u32_at(self, off: usize) -> u32 {
        // SAFETY: header fields lie inside the node (law above); chunks are 8-aligned and
        // the offsets are multiples of 4.
        unsafe { *(self.0.add(off) as *const u32) }
    }
    fn seq(self) -> u64 {
        // SAFETY: as above; offset 0 is 8-aligned.
        unsafe { *(self.0 as *const u64) }
    }
    fn height(self) -> usize {
        self.u32_at(16) as usize
    }
    fn link(self, level: usize) -> &'static AtomicPtr<u8> {
        debug_assert!(level < self.height());
        // SAFETY: link words follow the header, 8-aligned, inside the node; the arena outlives
        // every NodeRef use (callers hold the memtable), so the 'static is never observed
        // past the memtable's life.
        unsafe { &*(self.0.add(HEADER + 8 * level) as *const AtomicPtr<u8>) }
    }
    fn next(self, level: usize) -> NodeRef {
        NodeRef(self.link(level).load(Ordering::Acquire))
    }
    fn hash_link(self) -> &'static AtomicPtr<u8> {
        // SAFETY: as `link`: an 8-aligned word of the header, inside the node.
        unsafe { &*(self.0.add(HASH_LINK) as *const AtomicPtr<u8>) }
    }
    fn version_link(self) -> &'static AtomicPtr<u8> {
        // SAFETY: as `link`: an 8-aligned word of the header, inside the node.
        unsafe { &*(self.0.add(VERSION_LINK) as *const AtomicPtr<u8>) }
    }
    /// The newest version of this key node's key with a sequence up to `snap`, if any.
    fn visible_version(self, snap: u64) -> Option<NodeRef> {
        let mut v = NodeRef(self.version_link().load(Ordering::Acquire));
        while !v.is_null() {
            if v.seq() <= snap {
                return Some(v);
            }
            v = NodeRef(v.version_link().load(Ordering::Acquire));
        }
        (self.seq() <= snap).then_some(self)
    }
    fn key<'a>(self) -> &'a [u8] {
        let off = HEADER + 8 * self.height();
        // SAFETY: the key bytes follow the links inside the node.
        unsafe { std::slice::from_raw_parts(self.0.add(off), self.u32_at(8) as usize) }
    }
    fn value<'a>(self) -> Option<&'a [u8]> {
        let tag = self.u32_at(12) as usize;
        if tag == 0 {
            return None;
        }
        let off = HEADER + 8 * self.height() + self.u32_at(8) as usize;
        // SAFETY: the value bytes follow the key inside the node.
        Some(unsafe { std::slice::from_raw_parts(self.0.add(off), tag - 1) })
    }
    /// Orders before the target (key, seq): smaller key, or same key and newer.
    fn before(self, key: &[u8], seq: u64) -> bool {
        match crate::coding::compare_keys(self.key(), key) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.seq() > seq,
            std::cmp::Ordering::Greater => false,
        }
    }
}

/// Bump allocator; chunks are never moved or freed before the memtable is dropped.
struct Arena {
    chunks: Vec<Box<[u64]>>,
    /// Next free byte in the last chunk, and its end.
    ptr: *mut u8,
    end: *mut u8,
}

impl Arena {
    fn alloc(&mut self, bytes: usize) -> *mut u8 {
        let bytes = bytes.next_multiple_of(8);
        let room = self.end as usize - self.ptr as usize;
        if bytes > room {
            let size = bytes.max(CHUNK_BYTES);
            let mut chunk = vec![0u64; size / 8].into_boxed_slice();
            let p = chunk.as_mut_ptr() as *mut u8;
            self.chunks.push(chunk);
            if size == CHUNK_BYTES || self.chunks.len() == 1 {
                self.ptr = p;
                // SAFETY: p..p+size is the chunk just allocated.
                self.end = unsafe { p.add(size) };
            } else {
                // An oversized entry: keep bump-allocating in the current chunk afterwards.
                return p;
            }
        }
        let p = self.ptr;
        // SAFETY: bytes <= room, so the result stays within the chunk.
        self.ptr = unsafe { p.add(bytes) };
        p
    }
}

struct Writer {
    arena: Arena,
    rng: u64,
    next_seq: u64,
    /// Key nodes in their hash buckets but not yet in the skiplist, with their first eight
    /// bytes as a big-endian integer (zero-padded) to sort them by.
    unlinked: Vec<(u64, NodeRef)>,
}

/// One memtable, tied to the commit-log segment its writes went to.
pub(crate) struct Memtable {
    /// Sentinel of full height; its key is never compared.
    head: NodeRef,
    height: AtomicUsize,
    writer: Mutex<Writer>,
    /// Held while key nodes are linked into the skiplist: the only changes made to it. The
    /// writer no longer touches the skiplist, so linking holds up no write.
    linking: Mutex<()>,
    /// Highest sequence number readers may see.
    visible: AtomicU64,
    bytes: AtomicUsize,
    /// Hash buckets: the newest node of each chain (see the module's laws).
    index: Box<[AtomicPtr<u8>]>,
    /// Commit-log segment holding exactly this memtable's writes.
    pub(crate) segment: u64,
}

// SAFETY: the raw pointers point into arena chunks owned by `writer`; nodes are immutable once
// linked except their links, which are atomics; chunks are freed only with the memtable.
unsafe impl Send for Memtable {}
// SAFETY: as above; concurrent readers only perform atomic loads and read immutable bytes,
// and the single writer is serialized by the `writer` mutex.
unsafe impl Sync for Memtable {}

/// Writes a node into the arena and returns it (not yet linked).
fn build_node(
    arena: &mut Arena,
    seq: u64,
    height: usize,
    key: &[u8],
    value: Option<&[u8]>,
) -> NodeRef {
    let vlen = value.map_or(0, <[u8]>::len);
    let size = HEADER + 8 * height + key.len() + vlen;
    let p = arena.alloc(size);
    // SAFETY: p points at `size` fresh, 8-aligned, zeroed bytes of the arena that no reader can
    // reach until the node is linked.
    unsafe {
        *(p as *mut u64) = seq;
        *(p.add(8) as *mut u32) = key.len() as u32;
        *(p.add(12) as *mut u32) = value.map_or(0, |v| v.len() as u32 + 1);
        *(p.add(16) as *mut u32) = height as u32;
        let kp = p.add(HEADER + 8 * height);
        std::ptr::copy_nonoverlapping(key.as_ptr(), kp, key.len());
        if let Some(v) = value {
            std::ptr::copy_nonoverlapping(v.as_ptr(), kp.add(key.len()), v.len());
        }
    }
    NodeRef(p)
}

impl Memtable {
    pub(crate) fn new(segment: u64) -> Memtable {
        Memtable::with_buckets(segment, INDEX_BUCKETS)
    }

    /// A memtable whose hash index has `buckets` buckets (a power of two; tests use few, to
    /// make long chains).
    fn with_buckets(segment: u64, buckets: usize) -> Memtable {
        debug_assert!(buckets.is_power_of_two());
        let mut arena = Arena {
            chunks: Vec::new(),
            ptr: std::ptr::null_mut(),
            end: std::ptr::null_mut(),
        };
        let head = build_node(&mut arena, 0, MAX_HEIGHT, &[], None);
        Memtable {
            head,
            height: AtomicUsize::new(1),
            linking: Mutex::new(()),
            writer: Mutex::new(Writer {
                arena,
                rng: 0x2545_F491_4F6C_DD1D ^ segment,
                next_seq: 1,
                unlinked: Vec::new(),
            }),
            visible: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            index: (0..buckets)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            segment,
        }
    }

    fn bucket(&self, key: &[u8]) -> &AtomicPtr<u8> {
        let h = xxhash_rust::xxh3::xxh3_64(key) as usize;
        &self.index[h & (self.index.len() - 1)]
    }

    /// Memory used by entries (arena bytes, links and headers included).
    pub(crate) fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        // Every write adds bytes, linked into the skiplist or not yet.
        self.approximate_bytes() == 0
    }

    /// First node not ordered before (key, seq), or null; fills `prev` with the last node
    /// before it on each level when asked.
    fn seek(&self, key: &[u8], seq: u64, mut prev: Option<&mut [NodeRef; MAX_HEIGHT]>) -> NodeRef {
        let mut x = self.head;
        let mut level = self.height.load(Ordering::Acquire) - 1;
        loop {
            let next = x.next(level);
            if !next.is_null() && next.before(key, seq) {
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

    /// The key node of `key`, if the key was written to this memtable (visible or not).
    fn key_node(&self, key: &[u8]) -> Option<NodeRef> {
        let mut n = NodeRef(self.bucket(key).load(Ordering::Acquire));
        while !n.is_null() {
            if n.key() == key {
                return Some(n);
            }
            n = NodeRef(n.hash_link().load(Ordering::Acquire));
        }
        None
    }

    fn insert(&self, w: &mut Writer, key: &[u8], value: Option<&[u8]>) -> usize {
        let seq = w.next_seq;
        w.next_seq += 1;
        if let Some(k) = self.key_node(key) {
            // An overwrite: a version node on the key's chain, no skiplist search.
            let v = build_node(&mut w.arena, seq, 0, &[], value);
            v.version_link()
                .store(k.version_link().load(Ordering::Relaxed), Ordering::Relaxed);
            k.version_link().store(v.0 as *mut u8, Ordering::Release);
            return HEADER + value.map_or(0, <[u8]>::len);
        }
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
        let node = build_node(&mut w.arena, seq, height, key, value);
        let bucket = self.bucket(key);
        node.hash_link()
            .store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
        bucket.store(node.0 as *mut u8, Ordering::Release);
        let mut first = [0u8; 8];
        let n = key.len().min(8);
        first[..n].copy_from_slice(&key[..n]);
        w.unlinked.push((u64::from_be_bytes(first), node));
        // Its entry on the unlinked list is counted as well: with small values a memtable
        // holds many keys, and the list would otherwise take memory beyond the budget.
        HEADER + 8 * height + key.len() + value.map_or(0, <[u8]>::len) + UNLINKED_ENTRY
    }

    /// Links every key node the writer has written so far into the skiplist, in key order,
    /// and gives the sequence number they are visible up to: a snapshot whose keys are all
    /// in the skiplist. The writer is held only to take its list.
    fn link_written(&self) -> u64 {
        let _linking = self.linking.lock().unwrap_or_else(|e| e.into_inner());
        let (mut nodes, snap) = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            (
                std::mem::take(&mut w.unlinked),
                self.visible.load(Ordering::Acquire),
            )
        };
        // By the first eight bytes, which decide nearly every pair without a node visit; a
        // key has one key node per memtable, so no two are equal.
        nodes.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| crate::coding::compare_keys(a.1.key(), b.1.key()))
        });
        let mut prev = [self.head; MAX_HEIGHT];
        for &(_, node) in &nodes {
            let height = node.height();
            self.seek(node.key(), node.seq(), Some(&mut prev));
            if height > self.height.load(Ordering::Relaxed) {
                // prev[cur..height] already hold the head. Readers seeing the new height
                // before the links simply find null at those levels and descend.
                self.height.store(height, Ordering::Release);
            }
            for (i, p) in prev.iter().enumerate().take(height) {
                let succ = p.link(i).load(Ordering::Relaxed);
                node.link(i).store(succ, Ordering::Relaxed);
                p.link(i).store(node.0 as *mut u8, Ordering::Release);
            }
        }
        snap
    }

    /// Applies a batch; the batch becomes visible to readers at once.
    pub(crate) fn apply_owned(&self, batch: WriteBatch) {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut added = 0usize;
        for op in &batch.ops {
            added += match op {
                WriteOp::Put(k, v) => self.insert(&mut w, k, Some(v)),
                WriteOp::Delete(k) => self.insert(&mut w, k, None),
            };
        }
        self.visible.store(w.next_seq - 1, Ordering::Release);
        self.bytes.fetch_add(added, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, key: &[u8]) -> Lookup {
        let snap = self.visible.load(Ordering::Acquire);
        match self.key_node(key).and_then(|k| k.visible_version(snap)) {
            Some(v) => match v.value() {
                Some(v) => Lookup::Found(v.to_vec()),
                None => Lookup::Deleted,
            },
            None => Lookup::Absent,
        }
    }

    /// An iterator over the newest visible version of each key from `start` on, fixed to the
    /// writes visible now.
    pub(crate) fn iter(self: &Arc<Self>, start: Bound<&[u8]>) -> MemIter {
        let snap = self.link_written();
        let first = match start {
            Bound::Included(s) | Bound::Excluded(s) => self.seek(s, u64::MAX, None),
            Bound::Unbounded => self.head.next(0),
        };
        MemIter {
            _mem: self.clone(),
            node: first,
            snap,
        }
    }

    /// Calls `f` on the newest version of every key in order (used by flush on an immutable
    /// memtable).
    pub(crate) fn for_each<E>(
        self: &Arc<Self>,
        mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut it = self.iter(Bound::Unbounded);
        while let Some((k, v)) = it.next_node() {
            f(k.key(), v.value())?;
        }
        Ok(())
    }
}

/// Walks a memtable in key order at a fixed sequence snapshot.
pub(crate) struct MemIter {
    /// Keeps the arena alive.
    _mem: Arc<Memtable>,
    node: NodeRef,
    snap: u64,
}

// SAFETY: the node pointers point into the arena of `_mem`, which the iterator keeps alive,
// and nodes are immutable once linked.
unsafe impl Send for MemIter {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for MemIter {}

impl MemIter {
    /// The next key node with a version visible at the snapshot, and that version.
    fn next_node(&mut self) -> Option<(NodeRef, NodeRef)> {
        loop {
            if self.node.is_null() {
                return None;
            }
            let k = self.node;
            self.node = k.next(0);
            // None: the key was first written after the snapshot.
            if let Some(v) = k.visible_version(self.snap) {
                return Some((k, v));
            }
        }
    }

    /// The next entry, copied.
    pub(crate) fn next_owned(&mut self) -> Option<(Vec<u8>, Entry)> {
        self.next_node()
            .map(|(k, v)| (k.key().to_vec(), v.value().map(<[u8]>::to_vec)))
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
        // Two readers, so that two iterators link the writer's new keys concurrently.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
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
                })
            })
            .collect();
        w.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    }

    /// The hash index answers exactly what a walk of the skiplist answers, also with few
    /// buckets (long chains mixing keys), overwrites and deletes.
    #[test]
    fn point_lookups_match_a_model_with_long_hash_chains() {
        let m = Arc::new(Memtable::with_buckets(1, 4));
        let mut model = std::collections::BTreeMap::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..2_000u64 {
            let mut b = WriteBatch::new();
            for _ in 0..(next() % 4 + 1) {
                let key = format!("k{}", next() % 300);
                if next() % 5 == 0 {
                    b.delete(key.as_str());
                    model.insert(key, None);
                } else {
                    let v = format!("v{round}");
                    b.put(key.as_str(), v.as_str());
                    model.insert(key, Some(v));
                }
            }
            m.apply_owned(b);
            if round % 100 == 0 {
                // An iterator links the keys written since the last one (in batches of new
                // keys landing among linked ones), and walks them all in order.
                let mut it = m.iter(Bound::Unbounded);
                let mut walked = Vec::new();
                while let Some((k, v)) = it.next_owned() {
                    walked.push((
                        String::from_utf8(k).unwrap(),
                        v.map(|v| String::from_utf8(v).unwrap()),
                    ));
                }
                let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                assert_eq!(walked, want, "after round {round}");
                for k in 0..320 {
                    let key = format!("k{k}");
                    let want = match model.get(&key) {
                        None => Lookup::Absent,
                        Some(None) => Lookup::Deleted,
                        Some(Some(v)) => Lookup::Found(v.clone().into_bytes()),
                    };
                    assert_eq!(m.get(key.as_bytes()), want, "{key} after round {round}");
                    // The skiplist finds the same key node the hash index does.
                    let snap = m.visible.load(Ordering::Acquire);
                    let walked = m.seek(key.as_bytes(), u64::MAX, None);
                    let by_walk = if walked.is_null() || walked.key() != key.as_bytes() {
                        Lookup::Absent
                    } else {
                        match walked.visible_version(snap) {
                            None => Lookup::Absent,
                            Some(v) => v
                                .value()
                                .map_or(Lookup::Deleted, |v| Lookup::Found(v.to_vec())),
                        }
                    };
                    assert_eq!(by_walk, m.get(key.as_bytes()), "{key}");
                }
            }
        }
    }

    /// A reader never sees a key's value go back in time, nor a write of a batch not yet
    /// visible, while the writer keeps adding versions to the same chains.
    #[test]
    fn point_lookups_never_go_back_while_written() {
        let m = Arc::new(Memtable::with_buckets(1, 8));
        let rounds = 20_000u64;
        let w = {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 1..=rounds {
                    // Both keys of a batch carry the same number: seeing one newer than the
                    // other would be a half-visible batch.
                    let (a, b) = (format!("a{}", i % 16), format!("b{}", i % 16));
                    let v = format!("{i:08}");
                    m.apply_owned(batch(&[(&a, Some(&v)), (&b, Some(&v))]));
                }
            })
        };
        let mut last = [0u64; 16];
        let value = |l: Lookup| match l {
            Lookup::Found(v) => String::from_utf8(v).unwrap().parse::<u64>().unwrap(),
            _ => 0,
        };
        loop {
            let done = w.is_finished();
            for (k, seen) in last.iter_mut().enumerate() {
                let b = value(m.get(format!("b{k}").as_bytes()));
                let a = value(m.get(format!("a{k}").as_bytes()));
                assert!(a >= *seen, "a{k} went back from {seen} to {a}");
                assert!(
                    a >= b,
                    "a{k} = {a} is older than b{k} = {b}, written with it"
                );
                *seen = a;
            }
            // An iterator sees whole batches: a{k} and b{k} carry the same number.
            let mut it = m.iter(Bound::Unbounded);
            let mut at_snapshot = std::collections::HashMap::new();
            while let Some((k, v)) = it.next_owned() {
                let k = String::from_utf8(k).unwrap();
                if let Some((other, ov)) = at_snapshot.get(&k[1..]) {
                    assert_eq!(*ov, v, "{other} and {k} differ at one snapshot");
                }
                at_snapshot.insert(k[1..].to_string(), (k, v));
            }
            if done {
                break;
            }
        }
        w.join().unwrap();
        assert_eq!(last[(rounds % 16) as usize], rounds);
    }
}

//! The Merkle trees of the token ranges this node replicates, kept current on every write.
//!
//! One kv-core `MerkleTree` per range. A write XORs the key's old digest out of its bucket and
//! the new one in (O(1)); inner hashes are recomputed lazily when a peer asks. Trees are built
//! from the engine once at start and again only when the ranges this node replicates change
//! (a join, a leave, a weight change): never by a periodic rescan.
//!
//! Consistency with the engine: a replica write holds its key's stripe lock from before it
//! reads the key's old bytes until its new bytes are in the engine and the tree (an async write
//! hands the lock to the engine with its batch), and a rebuild holds every stripe lock while it
//! scans ([`crate::replica::Replica::rebuild_merkle`]), so a rebuild never sees a write half
//! applied. (A read-write lock of the index's own that every write took read-shared was a
//! cache line all writing threads bounced between them.)

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use kv_core::hash::key_token;
use kv_core::merkle::MerkleTree;
use kv_core::ring::{Placement, Ring, TokenRange};

use crate::replica::{user_key, DATA_PREFIX};
use crate::storage::Engine;

/// Leaf buckets per range tree.
pub const LEAF_BUCKETS: usize = 1024;

struct IndexState {
    /// The ring the ranges were computed from (to map a token to its range).
    ring: Arc<Ring>,
    /// The ranges this node replicates, sorted.
    ranges: Vec<TokenRange>,
    /// The tree of each range, in the order of `ranges`; shared with the state a new ring
    /// with the same ranges makes.
    trees: Arc<Vec<Mutex<MerkleTree>>>,
}

impl IndexState {
    /// The tree of `range`, if it is one of this node's.
    fn tree(&self, range: &TokenRange) -> Option<&Mutex<MerkleTree>> {
        self.ranges
            .binary_search(range)
            .ok()
            .map(|i| &self.trees[i])
    }
}

/// Per-range Merkle trees of this node's data.
///
/// Every write reads the state, so it is swapped whole (`arc-swap`): a read writes no cache
/// line that other writing threads read. A rebuild cannot race a write's update: both hold
/// the key's stripe lock (see the module notes).
#[derive(Default)]
pub struct MerkleIndex {
    state: ArcSwapOption<IndexState>,
    /// Held by a rebuild from its first look at the state to its last store, so that two
    /// rebuilds (two membership changes close together) take turns.
    rebuilding: Mutex<()>,
}

impl MerkleIndex {
    /// Records that `key` changed from `old` to `new` encoded states; the caller holds the
    /// key's stripe lock. Returns the change as applied, for [`MerkleIndex::undo`] (none when no tree
    /// covers the key).
    pub fn update(&self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Option<Change> {
        let guard = self.state.load();
        let state = guard.as_ref()?;
        let range = state.ring.range_for_token(key_token(key))?;
        let mut t = state
            .tree(&range)?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let digest = |bytes: Option<&[u8]>| bytes.map_or(0, |b| MerkleTree::key_digest(key, b));
        let change = Change {
            range,
            bucket: t.bucket_of(key),
            delta: digest(old) ^ digest(new),
        };
        t.xor_bucket(change.bucket, change.delta);
        Some(change)
    }

    /// Takes back a change [`MerkleIndex::update`] made, for a write that was refused. The
    /// caller holds the stripe lock it held for the update (so no rebuild came between).
    pub fn undo(&self, change: &Change) {
        if let Some(tree) = self
            .state
            .load()
            .as_ref()
            .and_then(|s| s.tree(&change.range))
        {
            let mut t = tree.lock().unwrap_or_else(|p| p.into_inner());
            t.xor_bucket(change.bucket, change.delta);
        }
    }
}

/// One key's change to a tree, as [`MerkleIndex::update`] applied it: XORing `delta` into the
/// same bucket again takes it back (other changes of the bucket meanwhile commute with it).
#[derive(Clone, Copy, Debug)]
pub struct Change {
    range: TokenRange,
    bucket: usize,
    delta: u64,
}

fn token_key(t: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(DATA_PREFIX);
    k.extend_from_slice(&t.to_be_bytes());
    k
}

/// Every (user key, stored bytes) of the data in `range`, in token order.
pub fn scan_range(
    engine: &Engine,
    range: TokenRange,
) -> Result<crate::hints::KeyStates, crate::storage::Error> {
    // Inclusive token pieces of (start, end]; a wrapping range is two.
    let mut pieces: Vec<(u64, u64)> = Vec::with_capacity(2);
    if range.start < range.end {
        pieces.push((range.start + 1, range.end));
    } else {
        if range.start < u64::MAX {
            pieces.push((range.start + 1, u64::MAX));
        }
        pieces.push((0, range.end));
    }
    let mut out = Vec::new();
    for (lo, hi) in pieces {
        let lo = token_key(lo);
        let hi = match hi.checked_add(1) {
            Some(h) => token_key(h),
            None => vec![DATA_PREFIX + 1],
        };
        for item in engine.scan(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))? {
            let (k, v) = item?;
            if let Some(uk) = user_key(&k) {
                out.push((uk.to_vec(), v));
            }
        }
    }
    Ok(out)
}

impl MerkleIndex {
    /// Rebuilds the trees for the ranges `me` replicates on `ring`, scanning the engine once,
    /// unless those ranges are the ones already indexed (only the ring snapshot is swapped).
    /// `keep_writers_out` is called before the scan and its result held until the trees are
    /// in place: it must wait for the writes in flight and keep new ones out (the replica
    /// takes every stripe lock). Returns whether a rebuild happened. Blocking: never on an
    /// async thread.
    pub fn rebuild<G>(
        &self,
        engine: &Engine,
        ring: Arc<Ring>,
        placement: &Placement,
        me: &str,
        keep_writers_out: impl FnOnce() -> G,
    ) -> Result<bool, crate::storage::Error> {
        let _turn = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let mut ranges = ring.replicated_ranges(me, placement);
        ranges.sort();
        // The same ranges on a new ring: the trees stay, the ring they map tokens by changes.
        let swap_ring = |ring: &Arc<Ring>| {
            let current = self.state.load();
            match current.as_deref() {
                Some(state) if state.ranges == ranges => {
                    self.state.store(Some(Arc::new(IndexState {
                        ring: ring.clone(),
                        ranges: state.ranges.clone(),
                        trees: state.trees.clone(),
                    })));
                    true
                }
                _ => false,
            }
        };
        if swap_ring(&ring) {
            return Ok(false);
        }
        // Wait for the writes in flight, and keep new ones out while scanning.
        let _writers = keep_writers_out();
        let mut trees: Vec<MerkleTree> = ranges
            .iter()
            .map(|_| MerkleTree::new(LEAF_BUCKETS))
            .collect();
        let start = [DATA_PREFIX];
        let end = [DATA_PREFIX + 1];
        for item in engine.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]))? {
            let (k, v) = item?;
            let Some(uk) = user_key(&k) else { continue };
            let Some(range) = ring.range_for_token(key_token(uk)) else {
                continue;
            };
            if let Ok(i) = ranges.binary_search(&range) {
                trees[i].update(uk, None, Some(MerkleTree::key_digest(uk, &v)));
            }
        }
        self.state.store(Some(Arc::new(IndexState {
            ring,
            ranges,
            trees: Arc::new(trees.into_iter().map(Mutex::new).collect()),
        })));
        Ok(true)
    }

    /// The ranges indexed now.
    pub fn ranges(&self) -> Vec<TokenRange> {
        self.state
            .load()
            .as_ref()
            .map(|s| s.ranges.clone())
            .unwrap_or_default()
    }

    /// Runs `f` on the tree of `range`, if this node indexes it.
    pub fn with_tree<T>(
        &self,
        range: &TokenRange,
        f: impl FnOnce(&mut MerkleTree) -> T,
    ) -> Option<T> {
        let guard = self.state.load();
        let mut t = guard
            .as_ref()?
            .tree(range)?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some(f(&mut t))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::replica::data_key;
    use crate::storage::Options;
    use kv_core::ring::NodeInfo;

    /// A ring of one weight-1 node per id, in one DC and rack.
    pub(crate) fn ring_of(ids: &[&str]) -> Ring {
        let mut ring = Ring::new();
        for id in ids {
            let tokens = ring.allocate_tokens(1, id.len() as u64 + 7);
            ring.insert(
                NodeInfo {
                    id: (*id).into(),
                    addr: String::new(),
                    dc: "dc1".into(),
                    rack: "r1".into(),
                    weight: 1,
                },
                tokens,
            );
        }
        ring
    }

    #[test]
    fn range_scans_cover_exactly_the_range_including_wrapping_ones() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), Options::default()).unwrap();
        let keys: Vec<String> = (0..500).map(|i| format!("key{i}")).collect();
        for k in &keys {
            engine.put(&data_key(k.as_bytes()), b"v").unwrap();
        }
        let ring = ring_of(&["a", "b", "c"]);
        let placement = Placement::Simple { n: 1 };
        let mut seen = 0;
        for (range, _) in ring.ranges(&placement) {
            let got = scan_range(&engine, range).unwrap();
            for (k, _) in &got {
                assert!(
                    range.contains(key_token(k)),
                    "{range:?} returned a key outside it"
                );
            }
            let expected = keys
                .iter()
                .filter(|k| range.contains(key_token(k.as_bytes())))
                .count();
            assert_eq!(got.len(), expected, "{range:?}");
            seen += got.len();
        }
        assert_eq!(seen, keys.len(), "the ranges partition the keys");
        assert!(ring.ranges(&placement).iter().any(|(r, _)| r.wraps()));
    }
}

//! Merkle trees for anti-entropy, updated incrementally on every write.
//!
//! A tree covers one group of keys (typically one token range of the ring) with a fixed number
//! of leaf buckets, a power of two ([`DEFAULT_LEAF_BUCKETS`] = 1024). A key falls in the bucket
//! given by [`MerkleTree::bucket_of`], a hash of the key independent of its ring token, so even
//! a small token range spreads over all buckets. Each leaf is the XOR of the digests
//! ([`MerkleTree::key_digest`]) of the (key, version) pairs in its bucket, so a write changes
//! its leaf in O(1) (XOR the old digest out, the new one in) without reading any other key.
//! Inner nodes are hashes of their two children, recomputed lazily when a hash is asked for.
//!
//! Laws kept here (and property-tested below):
//! - a leaf is the XOR of the digests of its keys, whatever the order of updates;
//! - an inner node is 0 exactly when its whole subtree is 0 (an empty subtree), otherwise a
//!   hash of its children; so two trees built from the same keys and versions are equal;
//! - [`MerkleTree::diff`] returns exactly the buckets whose leaves differ, in increasing order;
//! - decoding ([`MerkleTree::decode_level`], [`MerkleTree::from_bytes`]) never panics: garbage
//!   is an error;
//! - invariant of the lazy hashing: a node marked dirty has all its ancestors marked dirty, so a
//!   clean node has a clean, up-to-date subtree.
//!
//! # Comparing trees over the network
//!
//! Two nodes compare trees without shipping them whole, by exchanging *level messages*
//! ([`MerkleTree::encode_level`]): a depth and some `(index, hash)` pairs of that level. The
//! sides alternate; each step is pure ([`differing_children`]):
//!
//! 1. A sends its root: `encode_level(0, &[(0, a.root())])`.
//! 2. The receiver decodes the message and calls `differing_children(&mut mine, depth, &pairs)`.
//!    If it returns [`Descent::Ask`] with a non-empty list, it replies with *its own* hashes of
//!    those nodes (`node_hashes(depth + 1, &indices)`), one level deeper; an empty list means
//!    the trees agree.
//! 3. The other side does the same with that message, and so on. The side that receives the
//!    leaf level gets [`Descent::Leaves`]: exactly the differing buckets, whose keys the two
//!    nodes then exchange.
//!
//! Bytes exchanged: each message is 3 bytes of header plus, per node, an index gap (a varint,
//! 1 or 2 bytes) and an 8-byte hash. An isolated differing leaf costs one message of its two
//! children at every level below the root, about 21 bytes a level, plus 11 bytes for the root:
//! 222 bytes for 1024 buckets (depth 10), measured by a test. Differing leaves close together
//! share the upper levels. When most buckets differ, sending the whole leaf level (`8 * leaf_buckets` bytes,
//! 8 KiB for 1024) in one message is cheaper than descending.

use std::fmt;

use crate::hash::seeded_hash;

/// Leaf buckets of a tree unless configured otherwise.
pub const DEFAULT_LEAF_BUCKETS: usize = 1024;

/// Largest number of leaf buckets a tree may have (2^20: 16 MiB of hashes in memory).
pub const MAX_LEAF_BUCKETS: usize = 1 << 20;

/// Deepest level of the largest tree.
pub const MAX_DEPTH: usize = 20;

/// Seeds that make the three hashes of this module independent of each other and of the ring.
const BUCKET_SEED: u64 = 0x6b76_2d62_7563_6b74; // "kv-buckt"
const DIGEST_SEED: u64 = 0x6b76_2d64_6967_6573; // "kv-diges"
const INNER_SEED: u64 = 0x6b76_2d69_6e6e_6572; // "kv-inner"

/// Persisted form: magic, format version, leaf count (u32 LE), leaves (u64 LE), checksum.
const MAGIC: &[u8; 4] = b"KVMT";
const FORMAT_VERSION: u8 = 1;

/// Level message tags: every index of the level in order, or (gap, hash) pairs.
const LEVEL_DENSE: u8 = 1;
const LEVEL_SPARSE: u8 = 2;

/// Errors of decoding trees and level messages, and of asking for nodes that do not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MerkleError {
    /// The input ended before `what` was complete.
    Truncated {
        /// The part being read.
        what: &'static str,
        /// Byte offset where it starts.
        offset: usize,
    },
    /// The persisted tree does not start with the `KVMT` magic.
    BadMagic,
    /// The persisted tree has a format version this code does not read.
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// A leaf count that is not a power of two in `1..=MAX_LEAF_BUCKETS`.
    BadLeafCount {
        /// The count found.
        leaves: u64,
    },
    /// The persisted tree's checksum does not match its content.
    ChecksumMismatch {
        /// Checksum stored in the input.
        stored: u64,
        /// Checksum of the content.
        computed: u64,
    },
    /// A level message with an unknown format tag.
    UnknownLevelFormat {
        /// The tag found.
        tag: u8,
    },
    /// A varint longer than 10 bytes or above `u64::MAX`.
    BadVarint {
        /// Byte offset where it starts.
        offset: usize,
    },
    /// A depth deeper than the tree (or than [`MAX_DEPTH`] in a message).
    DepthOutOfRange {
        /// The depth asked for.
        depth: usize,
        /// The deepest level allowed.
        max: usize,
    },
    /// A node index outside its level (`index >= 2^depth`).
    IndexOutOfRange {
        /// The level.
        depth: usize,
        /// The index found.
        index: u64,
    },
    /// Bytes left over after a complete message.
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: usize,
        /// Number of extra bytes.
        count: usize,
    },
}

impl fmt::Display for MerkleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MerkleError::Truncated { what, offset } => {
                write!(
                    f,
                    "merkle data truncated: {what} at byte {offset} is incomplete"
                )
            }
            MerkleError::BadMagic => write!(f, "merkle tree bytes do not start with KVMT"),
            MerkleError::UnsupportedVersion { version } => {
                write!(f, "merkle tree format version {version} is not supported")
            }
            MerkleError::BadLeafCount { leaves } => write!(
                f,
                "merkle leaf count {leaves} is not a power of two in 1..={MAX_LEAF_BUCKETS}"
            ),
            MerkleError::ChecksumMismatch { stored, computed } => write!(
                f,
                "merkle tree checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
            ),
            MerkleError::UnknownLevelFormat { tag } => {
                write!(f, "merkle level message has unknown format tag {tag}")
            }
            MerkleError::BadVarint { offset } => {
                write!(
                    f,
                    "malformed varint at byte {offset} of a merkle level message"
                )
            }
            MerkleError::DepthOutOfRange { depth, max } => {
                write!(
                    f,
                    "merkle depth {depth} is out of range (deepest level is {max})"
                )
            }
            MerkleError::IndexOutOfRange { depth, index } => write!(
                f,
                "merkle node index {index} is out of range at depth {depth} (level has {} nodes)",
                1u64 << (*depth).min(63)
            ),
            MerkleError::TrailingBytes { offset, count } => {
                write!(
                    f,
                    "{count} unexpected bytes after the merkle data at byte {offset}"
                )
            }
        }
    }
}

impl std::error::Error for MerkleError {}

/// A Merkle tree over a fixed number of leaf buckets. See the module documentation.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    /// Heap layout: `nodes[1]` is the root, the children of `i` are `2i` and `2i + 1`, the
    /// leaves are `nodes[leaves..2 * leaves]`; `nodes[0]` is unused.
    nodes: Vec<u64>,
    /// `dirty[i]` for inner node `i`: its hash is stale. A dirty node's ancestors are dirty.
    dirty: Vec<bool>,
    /// Number of leaf buckets, a power of two.
    leaves: usize,
    /// log2(leaves): the level of the leaves (the root is level 0).
    depth: usize,
}

impl Default for MerkleTree {
    fn default() -> MerkleTree {
        MerkleTree::new(DEFAULT_LEAF_BUCKETS)
    }
}

/// Trees are equal when their leaves are: inner hashes are a function of the leaves, whether or
/// not they have been recomputed yet.
impl PartialEq for MerkleTree {
    fn eq(&self, other: &MerkleTree) -> bool {
        self.leaves == other.leaves && self.leaf_slice() == other.leaf_slice()
    }
}

impl Eq for MerkleTree {}

/// The next step of a networked descent (see [`differing_children`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Descent {
    /// Send the peer our hashes of these nodes of level `depth` (`node_hashes(depth, indices)`);
    /// empty: nothing differs in the nodes compared.
    Ask {
        /// The level of `indices`.
        depth: usize,
        /// The children of the nodes that differ, in increasing order.
        indices: Vec<usize>,
    },
    /// The leaf level was reached: these buckets differ, in increasing order.
    Leaves(Vec<usize>),
}

impl MerkleTree {
    /// An empty tree with `leaf_buckets` leaves, rounded up to a power of two and clamped to
    /// `1..=MAX_LEAF_BUCKETS` ([`MerkleTree::leaf_buckets`] tells the count used).
    pub fn new(leaf_buckets: usize) -> MerkleTree {
        let leaves = leaf_buckets.clamp(1, MAX_LEAF_BUCKETS).next_power_of_two();
        MerkleTree {
            nodes: vec![0; 2 * leaves],
            dirty: vec![false; leaves],
            leaves,
            depth: leaves.trailing_zeros() as usize,
        }
    }

    /// The digest of one stored version of a key: xxh3 over the key's length, the key and the
    /// encoded version. The length prefix keeps (`ab`, `c`) and (`a`, `bc`) apart. Never 0, so
    /// that XOR-ing a digest always changes its leaf.
    pub fn key_digest(key: &[u8], version: &[u8]) -> u64 {
        /// Inputs up to this size are laid out on the stack: every write digests its key's
        /// old and new versions, and most are small.
        const STACK: usize = 512;
        let len = 8 + key.len() + version.len();
        let mut stack = [0u8; STACK];
        let mut heap = Vec::new();
        let buf: &mut [u8] = if len <= STACK {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        buf[..8].copy_from_slice(&(key.len() as u64).to_le_bytes());
        buf[8..8 + key.len()].copy_from_slice(key);
        buf[8 + key.len()..].copy_from_slice(version);
        match seeded_hash(buf, DIGEST_SEED) {
            0 => 1,
            h => h,
        }
    }

    /// The leaf bucket of a key, from a hash independent of its ring token.
    pub fn bucket_of(&self, key: &[u8]) -> usize {
        // The low bits only (at most 20): the same bucket on 64-bit hosts and on wasm32.
        (seeded_hash(key, BUCKET_SEED) as usize) & (self.leaves - 1)
    }

    /// Records a change of `key`: XORs `old_digest` (the digest of the version it replaces, if
    /// any) out of its bucket and `new_digest` (none for a purged key) in. O(1) plus marking the
    /// path to the root dirty, which stops at the first node already dirty.
    pub fn update(&mut self, key: &[u8], old_digest: Option<u64>, new_digest: Option<u64>) {
        let delta = old_digest.unwrap_or(0) ^ new_digest.unwrap_or(0);
        self.xor_bucket(self.bucket_of(key), delta);
    }

    /// XORs `delta` into leaf `bucket` (see [`MerkleTree::bucket_of`]). Applying the same
    /// delta again undoes it: [`MerkleTree::update`] is this with the key's bucket and the XOR
    /// of its two digests, so a change is taken back by XORing its delta in once more.
    pub fn xor_bucket(&mut self, bucket: usize, delta: u64) {
        if delta == 0 {
            return;
        }
        let leaf = self.leaves + bucket;
        self.nodes[leaf] ^= delta;
        let mut i = leaf / 2;
        while i >= 1 && !self.dirty[i] {
            self.dirty[i] = true;
            i /= 2;
        }
    }

    /// The root hash (0 for a tree without keys), recomputing stale inner nodes.
    pub fn root(&mut self) -> u64 {
        self.refresh(1)
    }

    /// The level of the leaves: log2 of the bucket count (10 for 1024 buckets).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Number of leaf buckets.
    pub fn leaf_buckets(&self) -> usize {
        self.leaves
    }

    /// Whether no key is recorded (every leaf is 0).
    pub fn is_empty(&self) -> bool {
        self.leaf_slice().iter().all(|&h| h == 0)
    }

    /// The leaf of one bucket; `None` past the last bucket.
    pub fn bucket_hash(&self, bucket: usize) -> Option<u64> {
        self.leaf_slice().get(bucket).copied()
    }

    /// All hashes of level `depth` (0 = the root, [`MerkleTree::depth`] = the leaves), in index
    /// order; empty when the tree has no such level.
    pub fn level(&mut self, depth: usize) -> Vec<u64> {
        if depth > self.depth {
            return Vec::new();
        }
        let first = 1usize << depth;
        (first..2 * first).map(|i| self.refresh(i)).collect()
    }

    /// The hashes of some nodes of level `depth`, in the order asked.
    ///
    /// Errors with [`MerkleError::DepthOutOfRange`] or [`MerkleError::IndexOutOfRange`] when a
    /// node does not exist (indices typically come from a peer).
    pub fn node_hashes(
        &mut self,
        depth: usize,
        indices: &[usize],
    ) -> Result<Vec<u64>, MerkleError> {
        self.check_depth(depth)?;
        indices
            .iter()
            .map(|&index| {
                let heap = self.heap_index(depth, index)?;
                Ok(self.refresh(heap))
            })
            .collect()
    }

    /// The buckets whose leaves differ between the two trees, in increasing order, found by
    /// descending from the root into differing nodes only. Trees with different bucket counts
    /// cannot be compared bucket by bucket: then every bucket of the larger one is returned.
    pub fn diff(&mut self, other: &mut MerkleTree) -> Vec<usize> {
        if self.leaves != other.leaves {
            return (0..self.leaves.max(other.leaves)).collect();
        }
        // Heap indices of differing nodes of the current level.
        let mut frontier = Vec::new();
        if self.refresh(1) != other.refresh(1) {
            frontier.push(1usize);
        }
        for _ in 0..self.depth {
            let mut next = Vec::with_capacity(frontier.len() * 2);
            for i in frontier {
                for child in [2 * i, 2 * i + 1] {
                    if self.refresh(child) != other.refresh(child) {
                        next.push(child);
                    }
                }
            }
            frontier = next;
        }
        frontier.into_iter().map(|i| i - self.leaves).collect()
    }

    /// Encodes `(index, hash)` pairs of level `depth` into a level message. Pairs are sent in
    /// index order (the input is sorted; of repeated indices the first is kept). A whole level
    /// in order is sent densely (8 bytes a node), anything else as (varint gap, hash) pairs.
    ///
    /// Format: tag (1 = dense, 2 = sparse), depth (u8), count (varint), then per node the hash
    /// as u64 little-endian, preceded in the sparse form by the gap to the previous index + 1.
    pub fn encode_level(depth: usize, entries: &[(usize, u64)]) -> Vec<u8> {
        let mut sorted = entries.to_vec();
        sorted.sort_by_key(|(i, _)| *i);
        sorted.dedup_by_key(|(i, _)| *i);
        let dense = sorted.iter().enumerate().all(|(k, (i, _))| k == *i)
            && sorted.len() == 1usize << depth.min(MAX_DEPTH);
        let mut out = Vec::with_capacity(3 + sorted.len() * 10);
        out.push(if dense { LEVEL_DENSE } else { LEVEL_SPARSE });
        out.push(u8::try_from(depth).unwrap_or(u8::MAX));
        put_varint(&mut out, sorted.len() as u64);
        let mut next = 0usize;
        for (index, hash) in sorted {
            if !dense {
                put_varint(&mut out, (index - next) as u64);
                next = index + 1;
            }
            out.extend_from_slice(&hash.to_le_bytes());
        }
        out
    }

    /// Decodes a level message into its depth and `(index, hash)` pairs (indices increasing).
    ///
    /// Errors on anything but a well-formed message: truncation, unknown tag, depth above
    /// [`MAX_DEPTH`], an index outside its level, a malformed varint, trailing bytes.
    pub fn decode_level(bytes: &[u8]) -> Result<(usize, Vec<(usize, u64)>), MerkleError> {
        let mut r = Reader { bytes, pos: 0 };
        let tag = r.u8("level tag")?;
        if tag != LEVEL_DENSE && tag != LEVEL_SPARSE {
            return Err(MerkleError::UnknownLevelFormat { tag });
        }
        let depth = usize::from(r.u8("level depth")?);
        if depth > MAX_DEPTH {
            return Err(MerkleError::DepthOutOfRange {
                depth,
                max: MAX_DEPTH,
            });
        }
        let width = 1u64 << depth;
        let count_at = r.pos;
        let count = r.varint()?;
        if count > width {
            return Err(MerkleError::IndexOutOfRange {
                depth,
                index: count - 1,
            });
        }
        // Each entry takes at least 8 bytes: refuse counts the input cannot hold before
        // allocating for them.
        if count.saturating_mul(8) > (bytes.len() - r.pos) as u64 {
            return Err(MerkleError::Truncated {
                what: "level entries",
                offset: count_at,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        for k in 0..count {
            let index = if tag == LEVEL_DENSE {
                k
            } else {
                let gap = r.varint()?;
                next.checked_add(gap)
                    .ok_or(MerkleError::IndexOutOfRange { depth, index: gap })?
            };
            if index >= width {
                return Err(MerkleError::IndexOutOfRange { depth, index });
            }
            next = index + 1;
            entries.push((index as usize, r.u64("node hash")?));
        }
        r.finish()?;
        Ok((depth, entries))
    }

    /// The persisted form: `KVMT`, format version 1, the leaf count (u32 LE), every leaf (u64
    /// LE) and an xxh3 checksum of all that (u64 LE). Inner hashes are not stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + 4 + 8 * self.leaves + 8);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(self.leaves as u32).to_le_bytes());
        for leaf in self.leaf_slice() {
            out.extend_from_slice(&leaf.to_le_bytes());
        }
        let checksum = seeded_hash(&out, 0);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Reads the form written by [`MerkleTree::to_bytes`]. Errors on a wrong magic, version,
    /// leaf count or checksum, on truncation and on trailing bytes.
    pub fn from_bytes(b: &[u8]) -> Result<MerkleTree, MerkleError> {
        let mut r = Reader { bytes: b, pos: 0 };
        if r.take(4, "magic")? != MAGIC {
            return Err(MerkleError::BadMagic);
        }
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(MerkleError::UnsupportedVersion { version });
        }
        let leaves_at = r.pos;
        let leaves = u64::from(u32::from_le_bytes(
            r.take(4, "leaf count")?
                .try_into()
                .map_err(|_| MerkleError::Truncated {
                    what: "leaf count",
                    offset: leaves_at,
                })?,
        ));
        if leaves == 0 || !leaves.is_power_of_two() || leaves > MAX_LEAF_BUCKETS as u64 {
            return Err(MerkleError::BadLeafCount { leaves });
        }
        let mut tree = MerkleTree::new(leaves as usize);
        for k in 0..tree.leaves {
            tree.nodes[tree.leaves + k] = r.u64("leaf")?;
        }
        let content_end = r.pos;
        let stored = r.u64("checksum")?;
        r.finish()?;
        let computed = seeded_hash(&b[..content_end], 0);
        if stored != computed {
            return Err(MerkleError::ChecksumMismatch { stored, computed });
        }
        // Inner hashes are recomputed on demand.
        tree.dirty.iter_mut().skip(1).for_each(|d| *d = true);
        Ok(tree)
    }

    // ----- internals -----

    fn leaf_slice(&self) -> &[u64] {
        &self.nodes[self.leaves..]
    }

    fn check_depth(&self, depth: usize) -> Result<(), MerkleError> {
        if depth > self.depth {
            return Err(MerkleError::DepthOutOfRange {
                depth,
                max: self.depth,
            });
        }
        Ok(())
    }

    /// Heap index of node `index` of level `depth` (the depth must be checked).
    fn heap_index(&self, depth: usize, index: usize) -> Result<usize, MerkleError> {
        let width = 1usize << depth;
        if index >= width {
            return Err(MerkleError::IndexOutOfRange {
                depth,
                index: index as u64,
            });
        }
        Ok(width + index)
    }

    /// The up-to-date hash of heap node `i`, recomputing its dirty descendants. Only dirty
    /// nodes are visited: a clean node has a clean subtree.
    fn refresh(&mut self, i: usize) -> u64 {
        if i >= self.leaves || !self.dirty[i] {
            return self.nodes[i];
        }
        let left = self.refresh(2 * i);
        let right = self.refresh(2 * i + 1);
        self.nodes[i] = combine(left, right);
        self.dirty[i] = false;
        self.nodes[i]
    }
}

/// The hash of an inner node: 0 for an empty subtree, otherwise a nonzero hash of the children.
fn combine(left: u64, right: u64) -> u64 {
    if left == 0 && right == 0 {
        return 0;
    }
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&left.to_le_bytes());
    buf[8..].copy_from_slice(&right.to_le_bytes());
    match seeded_hash(&buf, INNER_SEED) {
        0 => 1,
        h => h,
    }
}

/// One step of the networked descent: compares `remote_hashes` (a peer's `(index, hash)` pairs
/// of level `depth`) with `local`, and says which nodes to send next. See the module
/// documentation for the exchange.
///
/// Errors when `depth` or an index does not exist in `local` (a peer with another bucket count
/// or a corrupt message).
pub fn differing_children(
    local: &mut MerkleTree,
    depth: usize,
    remote_hashes: &[(usize, u64)],
) -> Result<Descent, MerkleError> {
    local.check_depth(depth)?;
    let mut differing = Vec::new();
    for &(index, hash) in remote_hashes {
        let heap = local.heap_index(depth, index)?;
        if local.refresh(heap) != hash {
            differing.push(index);
        }
    }
    differing.sort_unstable();
    differing.dedup();
    if depth == local.depth {
        return Ok(Descent::Leaves(differing));
    }
    Ok(Descent::Ask {
        depth: depth + 1,
        indices: differing
            .into_iter()
            .flat_map(|i| [2 * i, 2 * i + 1])
            .collect(),
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A bounds-checked cursor over input bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MerkleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(MerkleError::Truncated {
                what,
                offset: self.pos,
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, MerkleError> {
        Ok(self.take(1, what)?[0])
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, MerkleError> {
        let at = self.pos;
        let raw: [u8; 8] = self
            .take(8, what)?
            .try_into()
            .map_err(|_| MerkleError::Truncated { what, offset: at })?;
        Ok(u64::from_le_bytes(raw))
    }

    fn varint(&mut self) -> Result<u64, MerkleError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8("varint")?;
            let part = u64::from(byte & 0x7f);
            // The tenth byte may only hold the top bit of a u64.
            if shift == 63 && part > 1 {
                return Err(MerkleError::BadVarint { offset: start });
            }
            value |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MerkleError::BadVarint { offset: start })
    }

    fn finish(&self) -> Result<(), MerkleError> {
        if self.pos != self.bytes.len() {
            return Err(MerkleError::TrailingBytes {
                offset: self.pos,
                count: self.bytes.len() - self.pos,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// A tree holding `keys` (key -> version bytes).
    fn tree_of(leaves: usize, keys: &BTreeMap<Vec<u8>, Vec<u8>>) -> MerkleTree {
        let mut t = MerkleTree::new(leaves);
        for (k, v) in keys {
            t.update(k, None, Some(MerkleTree::key_digest(k, v)));
        }
        t
    }

    /// The reference answer: buckets whose leaves differ, by comparing every leaf.
    fn leafwise_diff(a: &MerkleTree, b: &MerkleTree) -> Vec<usize> {
        (0..a.leaf_buckets())
            .filter(|&i| a.bucket_hash(i) != b.bucket_hash(i))
            .collect()
    }

    /// Runs the networked descent between two trees through encoded level messages, returning
    /// the differing buckets and the bytes exchanged.
    fn networked_diff(a: &mut MerkleTree, b: &mut MerkleTree) -> (Vec<usize>, usize) {
        let mut bytes = 0;
        let mut msg = MerkleTree::encode_level(0, &[(0, a.root())]);
        let sides = [b, a];
        let mut turn = 0;
        loop {
            bytes += msg.len();
            let (depth, pairs) = MerkleTree::decode_level(&msg).unwrap();
            let me = &mut *sides[turn];
            match differing_children(me, depth, &pairs).unwrap() {
                Descent::Leaves(buckets) => return (buckets, bytes),
                Descent::Ask { indices, .. } if indices.is_empty() => return (Vec::new(), bytes),
                Descent::Ask { depth, indices } => {
                    let hashes = me.node_hashes(depth, &indices).unwrap();
                    let pairs: Vec<(usize, u64)> = indices.into_iter().zip(hashes).collect();
                    msg = MerkleTree::encode_level(depth, &pairs);
                }
            }
            turn ^= 1;
        }
    }

    #[test]
    fn new_rounds_to_a_power_of_two() {
        let t = MerkleTree::new(DEFAULT_LEAF_BUCKETS);
        assert_eq!(t.leaf_buckets(), 1024);
        assert_eq!(t.depth(), 10);
        assert_eq!(MerkleTree::new(1000).leaf_buckets(), 1024);
        assert_eq!(MerkleTree::new(0).leaf_buckets(), 1);
        assert_eq!(MerkleTree::new(0).depth(), 0);
        assert_eq!(MerkleTree::new(usize::MAX).leaf_buckets(), MAX_LEAF_BUCKETS);
        assert_eq!(MerkleTree::default(), MerkleTree::new(1024));
        assert!(t.is_empty());
    }

    #[test]
    fn key_digest_separates_key_and_version() {
        let d = MerkleTree::key_digest(b"ab", b"c");
        assert_ne!(d, 0);
        assert_eq!(d, MerkleTree::key_digest(b"ab", b"c"));
        assert_ne!(d, MerkleTree::key_digest(b"a", b"bc"));
        assert_ne!(d, MerkleTree::key_digest(b"ab", b"d"));
        assert_ne!(MerkleTree::key_digest(b"", b""), 0);
        // The digest is xxh3 of (key length, key, version) laid out in one buffer, small or
        // large: nodes compare each other's trees, so the definition must not change.
        for (k, v) in [
            (&b"key"[..], vec![7u8; 100]),
            (&b"key"[..], vec![9u8; 2000]),
        ] {
            let mut whole = (k.len() as u64).to_le_bytes().to_vec();
            whole.extend_from_slice(k);
            whole.extend_from_slice(&v);
            assert_eq!(
                MerkleTree::key_digest(k, &v),
                seeded_hash(&whole, DIGEST_SEED)
            );
        }
    }

    #[test]
    fn bucket_of_spreads_keys_and_is_stable() {
        let t = MerkleTree::new(64);
        let buckets: BTreeSet<usize> = (0..2000)
            .map(|i| t.bucket_of(format!("k{i}").as_bytes()))
            .collect();
        assert_eq!(buckets.len(), 64);
        assert!(buckets.iter().all(|&b| b < 64));
        assert_eq!(t.bucket_of(b"x"), MerkleTree::new(64).bucket_of(b"x"));
        // Keys of a narrow token range still spread: the bucket ignores the ring token.
        let mut narrow: Vec<Vec<u8>> = (0..100_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        narrow.sort_by_key(|k| crate::hash::key_token(k));
        let first_hundred: BTreeSet<usize> = narrow[..200].iter().map(|k| t.bucket_of(k)).collect();
        assert!(first_hundred.len() > 40, "{}", first_hundred.len());
    }

    #[test]
    fn update_xors_digests_in_and_out() {
        let mut t = MerkleTree::new(16);
        let empty_root = t.root();
        assert_eq!(empty_root, 0);
        let d1 = MerkleTree::key_digest(b"k", b"v1");
        let d2 = MerkleTree::key_digest(b"k", b"v2");
        let bucket = t.bucket_of(b"k");
        t.update(b"k", None, Some(d1));
        assert_eq!(t.bucket_hash(bucket), Some(d1));
        let r1 = t.root();
        assert_ne!(r1, 0);
        t.update(b"k", Some(d1), Some(d2));
        assert_eq!(t.bucket_hash(bucket), Some(d2));
        assert_ne!(t.root(), r1);
        t.update(b"k", Some(d2), None);
        assert_eq!(t.root(), 0);
        assert!(t.is_empty());
        // No-op updates change nothing.
        t.update(b"k", None, None);
        t.update(b"k", Some(d1), Some(d1));
        assert!(t.is_empty());
        assert_eq!(t.bucket_hash(16), None);
    }

    #[test]
    fn root_is_recomputed_lazily_and_matches_a_fresh_tree() {
        let keys: BTreeMap<Vec<u8>, Vec<u8>> = (0..300)
            .map(|i| (format!("k{i}").into_bytes(), vec![i as u8]))
            .collect();
        let mut incremental = MerkleTree::new(32);
        for (k, v) in &keys {
            incremental.update(k, None, Some(MerkleTree::key_digest(k, v)));
            incremental.root();
        }
        let mut batch = tree_of(32, &keys);
        assert_eq!(incremental.root(), batch.root());
        assert_eq!(incremental.level(3), batch.level(3));
    }

    #[test]
    fn level_and_node_hashes_read_one_level() {
        let keys: BTreeMap<Vec<u8>, Vec<u8>> = (0..50)
            .map(|i| (format!("k{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let mut t = tree_of(8, &keys);
        assert_eq!(t.level(0), vec![t.root()]);
        assert_eq!(t.level(1).len(), 2);
        let leaves = t.level(3);
        assert_eq!(
            leaves,
            (0..8)
                .map(|i| t.bucket_hash(i).unwrap())
                .collect::<Vec<_>>()
        );
        assert!(t.level(4).is_empty());
        let level2 = t.level(2);
        assert_eq!(
            t.node_hashes(2, &[3, 0]).unwrap(),
            vec![level2[3], level2[0]]
        );
        assert_eq!(combine(leaves[0], leaves[1]), level2[0]);
        assert_eq!(
            t.node_hashes(2, &[4]),
            Err(MerkleError::IndexOutOfRange { depth: 2, index: 4 })
        );
        assert_eq!(
            t.node_hashes(4, &[0]),
            Err(MerkleError::DepthOutOfRange { depth: 4, max: 3 })
        );
    }

    #[test]
    fn diff_finds_changed_buckets() {
        let keys: BTreeMap<Vec<u8>, Vec<u8>> = (0..100)
            .map(|i| (format!("k{i}").into_bytes(), b"v1".to_vec()))
            .collect();
        let mut a = tree_of(64, &keys);
        let mut b = tree_of(64, &keys);
        assert!(a.diff(&mut b).is_empty());
        let d_old = MerkleTree::key_digest(b"k7", b"v1");
        b.update(
            b"k7",
            Some(d_old),
            Some(MerkleTree::key_digest(b"k7", b"v2")),
        );
        assert_eq!(a.diff(&mut b), vec![a.bucket_of(b"k7")]);
        assert_eq!(b.diff(&mut a), vec![a.bucket_of(b"k7")]);
        // Different bucket counts: everything differs.
        assert_eq!(a.diff(&mut MerkleTree::new(128)).len(), 128);
    }

    #[test]
    fn differing_children_steps_one_level() {
        let mut a = MerkleTree::new(4);
        let mut b = MerkleTree::new(4);
        b.update(b"x", None, Some(7));
        let bucket = b.bucket_of(b"x");
        let root_b = b.root();
        assert_eq!(
            differing_children(&mut a, 0, &[(0, root_b)]).unwrap(),
            Descent::Ask {
                depth: 1,
                indices: vec![0, 1]
            }
        );
        let l1 = b.level(1);
        let Descent::Ask { depth: 2, indices } =
            differing_children(&mut a, 1, &[(0, l1[0]), (1, l1[1])]).unwrap()
        else {
            panic!("expected to descend to level 2");
        };
        assert_eq!(indices, vec![bucket & !1, bucket | 1]);
        let hashes = b.node_hashes(2, &indices).unwrap();
        let pairs: Vec<(usize, u64)> = indices.into_iter().zip(hashes).collect();
        assert_eq!(
            differing_children(&mut a, 2, &pairs).unwrap(),
            Descent::Leaves(vec![bucket])
        );
        let root_a = a.root();
        assert_eq!(
            differing_children(&mut a, 0, &[(0, root_a)]).unwrap(),
            Descent::Ask {
                depth: 1,
                indices: vec![]
            }
        );
        assert!(differing_children(&mut a, 3, &[]).is_err());
        assert!(differing_children(&mut a, 1, &[(2, 0)]).is_err());
    }

    #[test]
    fn level_messages_round_trip_dense_and_sparse() {
        let dense: Vec<(usize, u64)> = (0..4).map(|i| (i, i as u64 * 11)).collect();
        let bytes = MerkleTree::encode_level(2, &dense);
        assert_eq!(bytes[0], LEVEL_DENSE);
        assert_eq!(bytes.len(), 3 + 4 * 8);
        assert_eq!(MerkleTree::decode_level(&bytes).unwrap(), (2, dense));
        let sparse = vec![(900, 1u64), (5, u64::MAX), (901, 0)];
        let bytes = MerkleTree::encode_level(10, &sparse);
        assert_eq!(bytes[0], LEVEL_SPARSE);
        let (depth, got) = MerkleTree::decode_level(&bytes).unwrap();
        assert_eq!(depth, 10);
        assert_eq!(got, vec![(5, u64::MAX), (900, 1), (901, 0)]);
        // Neighbouring indices cost one byte of gap each.
        assert_eq!(bytes.len(), 3 + 1 + 8 + 2 + 8 + 1 + 8);
        let empty = MerkleTree::encode_level(3, &[]);
        assert_eq!(MerkleTree::decode_level(&empty).unwrap(), (3, vec![]));
    }

    #[test]
    fn decode_level_rejects_garbage() {
        let good = MerkleTree::encode_level(1, &[(1, 42)]);
        assert!(matches!(
            MerkleTree::decode_level(&[]),
            Err(MerkleError::Truncated { .. })
        ));
        assert_eq!(
            MerkleTree::decode_level(&[9, 0, 0]),
            Err(MerkleError::UnknownLevelFormat { tag: 9 })
        );
        assert!(matches!(
            MerkleTree::decode_level(&[LEVEL_SPARSE, 21, 0]),
            Err(MerkleError::DepthOutOfRange { depth: 21, .. })
        ));
        // An index past its level.
        let mut bad = good.clone();
        bad[3] = 2;
        assert!(matches!(
            MerkleTree::decode_level(&bad),
            Err(MerkleError::IndexOutOfRange { .. })
        ));
        // Too many entries for the level, or for the input.
        assert!(MerkleTree::decode_level(&[LEVEL_DENSE, 1, 3]).is_err());
        assert!(matches!(
            MerkleTree::decode_level(&[LEVEL_SPARSE, 20, 0xff, 0xff, 0x3f]),
            Err(MerkleError::Truncated { .. })
        ));
        assert!(matches!(
            MerkleTree::decode_level(&[
                LEVEL_SPARSE,
                1,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x7f
            ]),
            Err(MerkleError::BadVarint { offset: 2 })
        ));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            MerkleTree::decode_level(&long),
            Err(MerkleError::TrailingBytes {
                offset: good.len(),
                count: 1
            })
        );
        assert!(matches!(
            MerkleTree::decode_level(&good[..good.len() - 1]),
            Err(MerkleError::Truncated { .. })
        ));
    }

    #[test]
    fn persisted_form_round_trips_and_rejects_damage() {
        let keys: BTreeMap<Vec<u8>, Vec<u8>> = (0..40)
            .map(|i| (format!("k{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let mut t = tree_of(16, &keys);
        let bytes = t.to_bytes();
        assert_eq!(bytes.len(), 4 + 1 + 4 + 16 * 8 + 8);
        let mut back = MerkleTree::from_bytes(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.root(), t.root());
        assert_eq!(back.level(2), t.level(2));

        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            MerkleTree::from_bytes(&flipped),
            Err(MerkleError::ChecksumMismatch { .. })
        ));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(MerkleTree::from_bytes(&magic), Err(MerkleError::BadMagic));
        let mut version = bytes.clone();
        version[4] = 9;
        assert_eq!(
            MerkleTree::from_bytes(&version),
            Err(MerkleError::UnsupportedVersion { version: 9 })
        );
        let mut count = bytes.clone();
        count[5] = 3;
        assert_eq!(
            MerkleTree::from_bytes(&count),
            Err(MerkleError::BadLeafCount { leaves: 3 })
        );
        assert!(matches!(
            MerkleTree::from_bytes(&bytes[..30]),
            Err(MerkleError::Truncated { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            MerkleTree::from_bytes(&long),
            Err(MerkleError::TrailingBytes { .. })
        ));
        assert!(MerkleError::BadMagic.to_string().contains("KVMT"));
    }

    #[test]
    fn networked_descent_costs_about_two_hundred_bytes_per_isolated_leaf() {
        let keys: BTreeMap<Vec<u8>, Vec<u8>> = (0..5000)
            .map(|i| (format!("k{i}").into_bytes(), b"v".to_vec()))
            .collect();
        let mut a = tree_of(DEFAULT_LEAF_BUCKETS, &keys);
        let mut b = a.clone();
        let (same, bytes_same) = networked_diff(&mut a, &mut b);
        assert!(same.is_empty());
        assert_eq!(bytes_same, 3 + 8);
        b.update(b"k1", Some(MerkleTree::key_digest(b"k1", b"v")), None);
        let (diff, bytes) = networked_diff(&mut a, &mut b);
        assert_eq!(diff, vec![a.bucket_of(b"k1")]);
        println!("networked descent for one differing leaf of 1024: {bytes} bytes");
        assert!(bytes <= 11 + 10 * (3 + 2 * 10), "{bytes} bytes");
    }

    // ----- properties -----

    fn arb_keys() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 0..12),
            proptest::collection::vec(any::<u8>(), 0..6),
            0..200,
        )
    }

    /// Changes: overwrite (Some) or delete (None) some of the keys, and add new ones.
    fn arb_changes() -> impl Strategy<Value = Vec<(Vec<u8>, Option<Vec<u8>>)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..12),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..6)),
            ),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn diff_returns_exactly_the_changed_buckets(
            keys in arb_keys(), changes in arb_changes(), leaves_log in 0usize..9
        ) {
            let leaves = 1 << leaves_log;
            let mut a = tree_of(leaves, &keys);
            let mut b = a.clone();
            let mut b_keys = keys.clone();
            let mut touched = BTreeSet::new();
            for (k, v) in &changes {
                let old = b_keys.get(k).map(|ov| MerkleTree::key_digest(k, ov));
                let new = v.as_ref().map(|nv| MerkleTree::key_digest(k, nv));
                b.update(k, old, new);
                if old != new {
                    touched.insert(b.bucket_of(k));
                }
                match v {
                    Some(nv) => b_keys.insert(k.clone(), nv.clone()),
                    None => b_keys.remove(k),
                };
            }
            let expected = leafwise_diff(&a, &b);
            // Every differing bucket was touched (a touched one may have changed back).
            prop_assert!(expected.iter().all(|x| touched.contains(x)));
            prop_assert_eq!(a.diff(&mut b), expected.clone());
            prop_assert_eq!(b.diff(&mut a), expected.clone());
            let (networked, _) = networked_diff(&mut a, &mut b);
            prop_assert_eq!(networked, expected);
            // The incremental tree equals one built from scratch from the final keys.
            let mut fresh = tree_of(leaves, &b_keys);
            prop_assert_eq!(b.root(), fresh.root());
            prop_assert_eq!(&b, &fresh);
        }

        #[test]
        fn update_order_does_not_matter(keys in arb_keys()) {
            let forward = tree_of(64, &keys);
            let mut backward = MerkleTree::new(64);
            for (k, v) in keys.iter().rev() {
                backward.update(k, None, Some(MerkleTree::key_digest(k, v)));
            }
            prop_assert_eq!(forward.clone().root(), backward.root());
            prop_assert_eq!(forward, backward);
        }

        #[test]
        fn level_messages_round_trip(depth in 0usize..=MAX_DEPTH, raw in proptest::collection::vec((any::<usize>(), any::<u64>()), 0..50)) {
            let width = 1usize << depth;
            let entries: Vec<(usize, u64)> = raw.into_iter().map(|(i, h)| (i % width, h)).collect();
            let mut expected = entries.clone();
            expected.sort_by_key(|(i, _)| *i);
            expected.dedup_by_key(|(i, _)| *i);
            let bytes = MerkleTree::encode_level(depth, &entries);
            prop_assert_eq!(MerkleTree::decode_level(&bytes).unwrap(), (depth, expected));
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = MerkleTree::decode_level(&bytes);
            let _ = MerkleTree::from_bytes(&bytes);
            let mut framed = b"KVMT\x01".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = MerkleTree::from_bytes(&framed);
        }

        #[test]
        fn persisted_trees_round_trip(keys in arb_keys(), leaves_log in 0usize..8) {
            let mut t = tree_of(1 << leaves_log, &keys);
            let mut back = MerkleTree::from_bytes(&t.to_bytes()).unwrap();
            prop_assert_eq!(back.root(), t.root());
            prop_assert_eq!(back, t);
        }
    }
}

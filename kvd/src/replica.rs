//! The replica side of a request: this node's own copy of the keys it holds.
//!
//! Each key is stored in the engine as its encoded [`SiblingSet`]. A write is a
//! read-merge-write of that set, so writes to one key on one replica are serialized by a
//! striped lock: it keeps the dots this replica mints for a key contiguous, which is what makes
//! the compact causal context correct (see kv-core's `version`). The plain methods block (disk
//! reads, fsync) and are for the blocking pool. The `_now` ones are for the async threads: they
//! never read from disk (else `WouldBlock`, having changed nothing) and wait for the commit
//! log asynchronously ([`Engine::submit`]), so the common case never leaves the async thread
//! and concurrent writes share one fsync (`Node::mint` and friends pick the path).
//!
//! A write holds the key's stripe lock from before it reads the old state until the new one is
//! in the memtable and the Merkle index; an async write hands the guard to the engine with its
//! batch, so a dropped request cannot release it early. A Merkle rebuild takes every stripe
//! lock ([`Replica::rebuild_merkle`]).

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use kv_core::hash::key_token;
use kv_core::version::{SiblingSet, VersionVector};

use crate::merkle_index::MerkleIndex;
use crate::storage::{Engine, WriteBatch};

/// Prefix of user data in the engine. The token follows, big-endian, so one token range is one
/// contiguous scan (anti-entropy, streaming to a new owner).
pub const DATA_PREFIX: u8 = b'd';

/// Number of lock stripes; a power of two well above the number of concurrent writers.
const STRIPES: usize = 4096;

/// The lock of a stripe of keys: async, since an async write holds it until its commit group
/// is done.
type Stripe = Arc<tokio::sync::Mutex<()>>;

/// Why a replica operation failed.
#[derive(Debug)]
pub enum ReplicaError {
    /// The engine refused or failed.
    Storage(crate::storage::Error),
    /// The stored bytes of a key do not decode.
    Corrupt(String),
    /// `Access::Now` (or a `_now` method) was asked and the operation needs a disk read or a
    /// stall; nothing was changed.
    WouldBlock,
    /// The blocking-pool task running the operation failed.
    Task(String),
    /// The request cannot apply to the key as it stands (an increment of a key holding a
    /// value, or one that would overflow): the client's error, the same on every replica.
    Rejected(String),
}

/// How long a replica operation may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only from memory: else `WouldBlock`.
    Now,
    /// Whatever it takes (disk reads): for the blocking pool.
    Blocking,
}

impl std::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaError::Storage(e) => write!(f, "storage: {e}"),
            ReplicaError::Corrupt(m) => write!(f, "stored version is corrupted: {m}"),
            ReplicaError::WouldBlock => write!(f, "the operation needs to wait for the disk"),
            ReplicaError::Task(m) => write!(f, "storage task failed: {m}"),
            ReplicaError::Rejected(m) => write!(f, "{m}"),
        }
    }
}

impl From<crate::storage::Error> for ReplicaError {
    fn from(e: crate::storage::Error) -> Self {
        ReplicaError::Storage(e)
    }
}

/// What a write minted here produced.
pub struct Minted {
    /// The key's full state after the write, encoded as stored (and as sent to the other
    /// replicas, which merge it).
    pub encoded: Vec<u8>,
    /// The context to hand back to the writer: what it saw plus its own write, and nothing it
    /// did not see (so reusing it never overwrites a concurrent sibling), as the context
    /// string clients hold.
    pub write_context: String,
    /// Older siblings dropped by the sibling cap.
    pub capped: usize,
}

/// This node's replica of the data.
pub struct Replica {
    engine: Arc<Engine>,
    actor: String,
    stripes: Vec<Stripe>,
    /// Keys held (tombstones included): counted once at start, then kept up to date.
    keys: Arc<AtomicU64>,
    /// Merkle trees of the ranges this node replicates, updated by every write.
    pub merkle: Arc<MerkleIndex>,
}

/// The engine key of a user key: prefix, token, key.
pub fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(DATA_PREFIX);
    k.extend_from_slice(&key_token(key).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The user key of an engine data key, if it is one.
pub fn user_key(engine_key: &[u8]) -> Option<&[u8]> {
    (engine_key.len() >= 9 && engine_key[0] == DATA_PREFIX).then(|| &engine_key[9..])
}

impl Replica {
    /// A replica over `engine` that mints versions as `actor`. Counts the keys it holds.
    pub fn new(engine: Arc<Engine>, actor: String) -> Result<Replica, ReplicaError> {
        let mut keys = 0;
        let start = [DATA_PREFIX];
        let end = [DATA_PREFIX + 1];
        for item in engine.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]))? {
            item?;
            keys += 1;
        }
        Ok(Replica {
            engine,
            actor,
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            keys: Arc::new(AtomicU64::new(keys)),
            merkle: Arc::default(),
        })
    }

    /// Keys held in this replica, tombstones included.
    pub fn key_count(&self) -> u64 {
        self.keys.load(Relaxed)
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn stripe(&self, key: &[u8]) -> &Stripe {
        &self.stripes[(key_token(key) as usize) & (STRIPES - 1)]
    }

    /// The stripe lock of `key`, blocking: never on an async thread.
    fn lock(&self, key: &[u8]) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripe(key).blocking_lock()
    }

    /// The stored bytes (encoded sibling set) of `key`, if any.
    pub fn read_raw_key(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReplicaError> {
        Ok(self.engine.get(&data_key(key))?)
    }

    /// The stored state of `key`, if any.
    pub fn read(&self, key: &[u8]) -> Result<Option<SiblingSet>, ReplicaError> {
        self.read_with(Access::Blocking, key)
    }

    /// [`Replica::read`] with a choice of [`Access`].
    pub fn read_with(
        &self,
        access: Access,
        key: &[u8],
    ) -> Result<Option<SiblingSet>, ReplicaError> {
        Ok(self.read_raw(access, &data_key(key))?.map(|(_, s)| s))
    }

    /// The stored bytes of an engine key and their decoding.
    fn read_raw(&self, access: Access, ek: &[u8]) -> Result<Stored, ReplicaError> {
        decoded(self.read_bytes(access, ek)?)
    }

    /// The stored bytes of an engine key.
    fn read_bytes(&self, access: Access, ek: &[u8]) -> Result<Option<Vec<u8>>, ReplicaError> {
        Ok(match access {
            Access::Blocking => self.engine.get(ek)?,
            Access::Now => self
                .engine
                .get_cached(ek)?
                .ok_or(ReplicaError::WouldBlock)?,
        })
    }

    /// Applies a client write here, minting its dot: `value` `None` is a delete; a value with
    /// `ttl_ms` expires that long after `now_ms`. Blocking.
    pub fn mint(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        ttl_ms: Option<u64>,
        ctx: &VersionVector,
        now_ms: u64,
    ) -> Result<Minted, ReplicaError> {
        let ek = data_key(key);
        let _guard = self.lock(key);
        let old = self.read_bytes(Access::Blocking, &ek)?;
        let (minted, old_bytes, batch) = self.minted(old, ek, (value, ttl_ms), ctx, now_ms)?;
        self.engine.write(batch)?;
        self.applied(key, old_bytes.as_deref(), &minted.encoded);
        Ok(minted)
    }

    /// [`Replica::mint`] for an async thread: `WouldBlock` (nothing changed) when the key's
    /// state is not in memory or the engine is stalling.
    pub async fn mint_now(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        ttl_ms: Option<u64>,
        ctx: &VersionVector,
        now_ms: u64,
    ) -> Result<Minted, ReplicaError> {
        let (guard, ek, old) = self.lock_now(key).await?;
        let (minted, old_bytes, batch) = self.minted(old, ek, (value, ttl_ms), ctx, now_ms)?;
        self.submit(key, batch, guard, old_bytes.as_deref(), &minted.encoded)
            .await?;
        Ok(minted)
    }

    /// Adds `by` to the counter of `key`, minting the write here (see
    /// [`SiblingSet::increment`]). The writer's context is the whole new state's.
    pub fn increment(&self, key: &[u8], by: i64, now_ms: u64) -> Result<Minted, ReplicaError> {
        let ek = data_key(key);
        let _guard = self.lock(key);
        let old = self.read_raw(Access::Blocking, &ek)?;
        let (minted, old_bytes, batch) = self.incremented(old, ek, by, now_ms)?;
        self.engine.write(batch)?;
        self.applied(key, old_bytes.as_deref(), &minted.encoded);
        Ok(minted)
    }

    /// [`Replica::increment`] for an async thread, as [`Replica::mint_now`].
    pub async fn increment_now(
        &self,
        key: &[u8],
        by: i64,
        now_ms: u64,
    ) -> Result<Minted, ReplicaError> {
        let (guard, ek, old) = self.lock_now(key).await?;
        let (minted, old_bytes, batch) = self.incremented(decoded(old)?, ek, by, now_ms)?;
        self.submit(key, batch, guard, old_bytes.as_deref(), &minted.encoded)
            .await?;
        Ok(minted)
    }

    /// The state after an increment over `old`, with the old bytes, and the batch storing it.
    fn incremented(
        &self,
        old: Stored,
        ek: Vec<u8>,
        by: i64,
        now_ms: u64,
    ) -> Result<(Minted, Option<Vec<u8>>, WriteBatch), ReplicaError> {
        let (old_bytes, mut state) = match old {
            Some((bytes, state)) => (Some(bytes), state),
            None => (None, SiblingSet::default()),
        };
        let outcome = state
            .increment(&self.actor, by, now_ms)
            .map_err(|e| ReplicaError::Rejected(e.to_string()))?;
        let new_bytes = state.encode();
        let mut batch = WriteBatch::new();
        batch.put(ek, new_bytes.clone());
        let minted = Minted {
            write_context: state.context().encode_context(),
            encoded: new_bytes,
            capped: outcome.dropped,
        };
        Ok((minted, old_bytes, batch))
    }

    /// Takes the stripe lock of `key` asynchronously and reads its stored bytes from memory.
    async fn lock_now(
        &self,
        key: &[u8],
    ) -> Result<(WriteGuard, Vec<u8>, Option<Vec<u8>>), ReplicaError> {
        if self.engine.write_would_stall() {
            return Err(ReplicaError::WouldBlock);
        }
        let ek = data_key(key);
        let stripe = self.stripe(key).clone().lock_owned().await;
        let old = self.read_bytes(Access::Now, &ek)?;
        Ok((stripe, ek, old))
    }

    /// Rebuilds the Merkle trees for the ranges `me` replicates on `ring` (see
    /// [`MerkleIndex::rebuild`]), holding every stripe lock while it scans: the writes in
    /// flight finish first, and no new one starts until the trees are in place. Blocking.
    pub fn rebuild_merkle(
        &self,
        ring: Arc<kv_core::ring::Ring>,
        placement: &kv_core::ring::Placement,
        me: &str,
    ) -> Result<bool, crate::storage::Error> {
        self.merkle
            .rebuild(&self.engine, ring, placement, me, || self.lock_all())
    }

    /// Every stripe lock, in order (a writer holds one at a time, so this cannot deadlock).
    /// Blocking.
    fn lock_all(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        self.stripes.iter().map(|s| s.blocking_lock()).collect()
    }

    /// Records `key`'s change from `old` to `new` in the Merkle index and submits `batch` with
    /// the guard, then waits for it. The tree is updated before the write is applied, which
    /// no rebuild can see: the engine keeps the stripe lock until the write is settled, also
    /// when this future is dropped. A write the engine refuses (a full disk refuses a group and
    /// the engine goes on) is taken back out of the tree there, still under the lock: left in, the
    /// tree would agree with the other replicas over a key this one does not hold, and
    /// anti-entropy would never bring it. The key is counted once it is applied.
    async fn submit(
        &self,
        key: &[u8],
        batch: WriteBatch,
        guard: WriteGuard,
        old: Option<&[u8]>,
        new: &[u8],
    ) -> Result<(), ReplicaError> {
        let change = self.merkle.update(key, old, Some(new));
        let (merkle, keys, is_new) = (self.merkle.clone(), self.keys.clone(), old.is_none());
        let settle = move |applied: bool| {
            if !applied {
                if let Some(c) = &change {
                    merkle.undo(c);
                }
            } else if is_new {
                keys.fetch_add(1, Relaxed);
            }
            drop(guard);
        };
        self.engine.submit_with(batch, settle)?.await?;
        Ok(())
    }

    /// After a blocking write of `key` from `old` to `new`: the Merkle index and the key count.
    fn applied(&self, key: &[u8], old: Option<&[u8]>, new: &[u8]) {
        self.merkle.update(key, old, Some(new));
        self.count_if_new(old);
    }

    /// Counts a key written for the first time (it had no `old` bytes).
    fn count_if_new(&self, old: Option<&[u8]>) {
        if old.is_none() {
            self.keys.fetch_add(1, Relaxed);
        }
    }

    /// The state after minting a write over the stored bytes `old` (decoded no further than
    /// the write needs), with the old bytes, and the batch storing it.
    fn minted(
        &self,
        old: Option<Vec<u8>>,
        ek: Vec<u8>,
        (value, ttl_ms): (Option<&[u8]>, Option<u64>),
        ctx: &VersionVector,
        now_ms: u64,
    ) -> Result<(Minted, Option<Vec<u8>>, WriteBatch), ReplicaError> {
        let (new_bytes, outcome) =
            SiblingSet::update_encoded(old.as_deref(), ctx, &self.actor, value, now_ms, ttl_ms)
                .map_err(|e| ReplicaError::Corrupt(e.to_string()))?;
        let mut batch = WriteBatch::new();
        batch.put(ek, new_bytes.clone());
        if value.is_none() {
            // A tombstone over the value: accepted on a disk below its reserve, since
            // deleting is how a full node's data is made smaller (compaction drops the value).
            batch.mark_freeing();
        }
        // The writer saw `ctx` and wrote `dot`. A version vector can say exactly that only when
        // no other dot of this actor lies between them; otherwise hand back `ctx` alone, which
        // at worst leaves the writer's own value as a sibling of its next write.
        let exact = ctx.get(&outcome.dot.actor) + 1 == outcome.dot.counter;
        let write_context = ctx.encode_context_witnessing(exact.then_some(&outcome.dot));
        let minted = Minted {
            encoded: new_bytes,
            write_context,
            capped: outcome.dropped,
        };
        Ok((minted, old, batch))
    }

    /// Removes `key` if its stored bytes are still `expected` (a purged tombstone, or data
    /// that cleanup handed over); returns whether it did.
    pub fn remove_if_unchanged(&self, key: &[u8], expected: &[u8]) -> Result<bool, ReplicaError> {
        let ek = data_key(key);
        let _guard = self.lock(key);
        match self.engine.get(&ek)? {
            Some(now) if now == expected => {
                self.engine.delete(&ek)?;
                self.merkle.update(key, Some(expected), None);
                self.keys.fetch_sub(1, Relaxed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Merges another replica's state of `key` into ours; returns whether ours changed.
    /// Blocking.
    pub fn merge(&self, key: &[u8], incoming: &SiblingSet) -> Result<bool, ReplicaError> {
        let ek = data_key(key);
        let _guard = self.lock(key);
        let current = self.read_raw(Access::Blocking, &ek)?;
        let Some((old_bytes, new_bytes, batch)) = merged(current, ek, incoming) else {
            return Ok(false);
        };
        self.engine.write(batch)?;
        self.applied(key, old_bytes.as_deref(), &new_bytes);
        Ok(true)
    }

    /// [`Replica::merge`] for an async thread: `WouldBlock` (nothing changed) when the key's
    /// state is not in memory or the engine is stalling.
    pub async fn merge_now(&self, key: &[u8], incoming: &SiblingSet) -> Result<bool, ReplicaError> {
        let (guard, ek, current) = self.lock_now(key).await?;
        let Some((old_bytes, new_bytes, batch)) = merged(decoded(current)?, ek, incoming) else {
            return Ok(false);
        };
        self.submit(key, batch, guard, old_bytes.as_deref(), &new_bytes)
            .await?;
        Ok(true)
    }
}

/// The stripe lock of one async write.
type WriteGuard = tokio::sync::OwnedMutexGuard<()>;

/// A key's stored bytes and their decoding, if it has any.
type Stored = Option<(Vec<u8>, SiblingSet)>;

/// Stored bytes with their decoding.
fn decoded(bytes: Option<Vec<u8>>) -> Result<Stored, ReplicaError> {
    match bytes {
        Some(bytes) => SiblingSet::decode(&bytes)
            .map(|s| Some((bytes, s)))
            .map_err(|e| ReplicaError::Corrupt(e.to_string())),
        None => Ok(None),
    }
}

/// `incoming` merged into `current`: the old bytes, the new bytes and the batch storing them,
/// or None when that changes nothing.
fn merged(
    current: Stored,
    ek: Vec<u8>,
    incoming: &SiblingSet,
) -> Option<(Option<Vec<u8>>, Vec<u8>, WriteBatch)> {
    let (old_bytes, merged) = match current {
        Some((bytes, cur)) => {
            let merged = cur.synced(incoming);
            if merged == cur {
                return None;
            }
            (Some(bytes), merged)
        }
        None => (None, incoming.clone()),
    };
    let new_bytes = merged.encode();
    let mut batch = WriteBatch::new();
    batch.put(ek, new_bytes.clone());
    if merged.is_deleted() {
        // A delete reaching this replica (from the coordinator that minted it, a hint or
        // anti-entropy): accepted below the reserve, as the delete was where it was minted.
        batch.mark_freeing();
    }
    Some((old_bytes, new_bytes, batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Options;

    fn replica(dir: &std::path::Path, actor: &str) -> Replica {
        let engine = Engine::open(dir, Options::default()).unwrap();
        Replica::new(Arc::new(engine), actor.to_string()).unwrap()
    }

    #[test]
    fn mint_then_read_then_merge() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = replica(d1.path(), "a");
        let b = replica(d2.path(), "b");
        let m1 = a
            .mint(b"k", Some(&b"v1"[..]), None, &VersionVector::new(), 1)
            .unwrap();
        assert_eq!(
            a.read(b"k").unwrap().unwrap().values(),
            vec![b"v1".as_slice()]
        );
        assert!(b
            .merge(b"k", &SiblingSet::decode(&m1.encoded).unwrap())
            .unwrap());
        assert!(
            !b.merge(b"k", &SiblingSet::decode(&m1.encoded).unwrap())
                .unwrap(),
            "merging the same state twice changes nothing"
        );
        // Two writers with the same (empty) context through the same replica: both survive.
        let m2 = a
            .mint(b"k", Some(&b"v2"[..]), None, &VersionVector::new(), 2)
            .unwrap();
        assert_eq!(SiblingSet::decode(&m2.encoded).unwrap().values().len(), 2);
        // A write with the context of a read replaces what that read saw.
        let seen = a.read(b"k").unwrap().unwrap().context().clone();
        let m3 = a.mint(b"k", Some(&b"v3"[..]), None, &seen, 3).unwrap();
        assert_eq!(
            SiblingSet::decode(&m3.encoded).unwrap().values(),
            vec![b"v3".as_slice()]
        );
        assert!(b
            .merge(b"k", &SiblingSet::decode(&m3.encoded).unwrap())
            .unwrap());
        assert_eq!(
            b.read(b"k").unwrap().unwrap().values(),
            vec![b"v3".as_slice()]
        );
        assert_eq!((a.key_count(), b.key_count()), (1, 1));
    }

    /// Below the disk reserve a replica takes deletes, minted here or arriving from another
    /// replica, and refuses what adds values.
    #[test]
    fn below_the_reserve_deletes_are_taken_minted_or_merged_and_values_refused() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let a = replica(d1.path(), "a");
        let full = |dir: &std::path::Path, actor: &str| {
            let opts = Options {
                // More than any disk has free.
                reserve_bytes: Some(u64::MAX / 4),
                ..Options::default()
            };
            let engine = Engine::open(dir, opts).unwrap();
            Replica::new(Arc::new(engine), actor.to_string()).unwrap()
        };
        let m1 = a
            .mint(b"k", Some(&b"v1"[..]), None, &VersionVector::new(), 1)
            .unwrap();
        let b = replica(d2.path(), "b");
        assert!(b
            .merge(b"k", &SiblingSet::decode(&m1.encoded).unwrap())
            .unwrap());
        drop(b);
        let b = full(d2.path(), "b");
        // A value, minted here or merged from elsewhere, is refused.
        let m2 = a
            .mint(b"k2", Some(&b"v2"[..]), None, &VersionVector::new(), 2)
            .unwrap();
        assert!(matches!(
            b.merge(b"k2", &SiblingSet::decode(&m2.encoded).unwrap()),
            Err(ReplicaError::Storage(e)) if e.is_no_space()
        ));
        assert!(matches!(
            b.mint(b"k3", Some(&b"v3"[..]), None, &VersionVector::new(), 3),
            Err(ReplicaError::Storage(e)) if e.is_no_space()
        ));
        // The delete of k minted on a, arriving here, is taken.
        let seen = a.read(b"k").unwrap().unwrap().context().clone();
        let del = a.mint(b"k", None, None, &seen, 4).unwrap();
        assert!(b
            .merge(b"k", &SiblingSet::decode(&del.encoded).unwrap())
            .unwrap());
        assert!(b.read(b"k").unwrap().unwrap().is_deleted());
        // And a delete minted here.
        let m5 = a
            .mint(b"j", Some(&b"v5"[..]), None, &VersionVector::new(), 5)
            .unwrap();
        drop(b);
        let b = replica(d2.path(), "b");
        assert!(b
            .merge(b"j", &SiblingSet::decode(&m5.encoded).unwrap())
            .unwrap());
        drop(b);
        let b = full(d2.path(), "b");
        let seen = b.read(b"j").unwrap().unwrap().context().clone();
        b.mint(b"j", None, None, &seen, 6).unwrap();
        assert!(b.read(b"j").unwrap().unwrap().is_deleted());
    }

    fn context(minted: &Minted) -> VersionVector {
        kv_core::version::decode_context(&minted.write_context).unwrap()
    }

    #[test]
    fn write_context_never_covers_an_unseen_sibling() {
        let d = tempfile::tempdir().unwrap();
        let a = replica(d.path(), "a");
        let first = a
            .mint(b"k", Some(&b"x"[..]), None, &VersionVector::new(), 1)
            .unwrap();
        // A second blind writer gets dot a:2; its context must not claim a:1, which it never saw.
        let second = a
            .mint(b"k", Some(&b"y"[..]), None, &VersionVector::new(), 2)
            .unwrap();
        let third = a
            .mint(b"k", Some(&b"z"[..]), None, &context(&second), 3)
            .unwrap();
        let third = SiblingSet::decode(&third.encoded).unwrap();
        let values = third.values();
        assert!(
            values.contains(&b"x".as_slice()),
            "x was never seen by the writer of z"
        );
        assert!(values.contains(&b"z".as_slice()));
        // The first writer's context is exact (a:1) and replaces only x.
        let fourth = a
            .mint(b"k", Some(&b"w"[..]), None, &context(&first), 4)
            .unwrap();
        assert!(!SiblingSet::decode(&fourth.encoded)
            .unwrap()
            .values()
            .contains(&b"x".as_slice()));
    }

    /// Root hashes of every tree of `index`, by range.
    fn roots(index: &MerkleIndex) -> Vec<u64> {
        index
            .ranges()
            .iter()
            .map(|r| index.with_tree(r, |t| t.root()).unwrap())
            .collect()
    }

    fn index_all(engine: &Engine, index: &MerkleIndex) {
        let ring = crate::merkle_index::tests::ring_of(&["a"]);
        let placement = kv_core::ring::Placement::Simple { n: 1 };
        assert!(index
            .rebuild(engine, Arc::new(ring), &placement, "a", || ())
            .unwrap());
    }

    /// A replica "a" over an engine with `--sync always` (every write waits for a commit
    /// group), in a temporary directory.
    fn replica_syncing_always() -> (tempfile::TempDir, Arc<Engine>, Arc<Replica>) {
        let d = tempfile::tempdir().unwrap();
        let opts = Options {
            sync: crate::storage::SyncMode::Always,
            ..Options::default()
        };
        let engine = Arc::new(Engine::open(d.path(), opts).unwrap());
        let r = Arc::new(Replica::new(engine.clone(), "a".into()).unwrap());
        (d, engine, r)
    }

    /// Merkle rebuilds while async writes run: a rebuild takes every stripe lock, so it sees
    /// each write whole (its bytes and its tree update both, or neither), and the trees kept
    /// up to date afterwards equal a rebuild from the engine at the end. Without the locks
    /// (`|| ()` as the rebuild's writer guard) the trees drift.
    #[test]
    fn a_merkle_rebuild_under_concurrent_writes_sees_each_write_whole() {
        let (_d, engine, r) = replica_syncing_always();
        let placement = kv_core::ring::Placement::Simple { n: 1 };
        // Two rings in which "a" replicates different ranges: each switch is a real rebuild.
        let rings = [
            Arc::new(crate::merkle_index::tests::ring_of(&["a"])),
            Arc::new(crate::merkle_index::tests::ring_of(&["a", "b"])),
        ];
        assert!(r.rebuild_merkle(rings[0].clone(), &placement, "a").unwrap());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rebuilder = {
            let (r, done, rings, placement) =
                (r.clone(), done.clone(), rings.clone(), placement.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(Relaxed) || n < 4 {
                    n += 1;
                    assert!(r
                        .rebuild_merkle(rings[n % 2].clone(), &placement, "a")
                        .unwrap());
                }
                n
            })
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..16 {
                let r = r.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..150 {
                        let key = format!("k{}", (t * 7 + i) % 200);
                        let value = format!("{t}-{i}");
                        let ctx = VersionVector::new();
                        loop {
                            match r
                                .mint_now(key.as_bytes(), Some(value.as_bytes()), None, &ctx, 1)
                                .await
                            {
                                Err(ReplicaError::WouldBlock) => tokio::task::yield_now().await,
                                other => {
                                    other.unwrap();
                                    break;
                                }
                            };
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        done.store(true, Relaxed);
        let rebuilds = rebuilder.join().unwrap();
        assert!(rebuilds >= 4, "{rebuilds}");
        // The last rebuild's ring, now kept up to date, against a fresh index of that ring.
        let last = rings[rebuilds % 2].clone();
        let fresh = MerkleIndex::default();
        assert!(fresh
            .rebuild(&engine, last, &placement, "a", || ())
            .unwrap());
        assert_eq!(roots(&r.merkle), roots(&fresh));
    }

    /// Async writes to a few keys from many tasks, some dropped right after their first poll,
    /// with `--sync always` (every write waits for a commit group): no two writes of a key
    /// read the same state (each mints the next counter), dropped writes still complete, and
    /// the incrementally kept Merkle trees equal a rebuild from the engine.
    #[test]
    fn async_writes_hold_their_key_until_applied_even_when_dropped() {
        use std::future::Future;
        use std::task::Poll;
        let (_d, engine, r) = replica_syncing_always();
        index_all(&engine, &r.merkle);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        const TASKS: usize = 16;
        const PER: usize = 40;
        let counters = rt.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let r = r.clone();
                tasks.push(tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for i in 0..PER {
                        let key = format!("k{}", i % 3);
                        let value = format!("{t}-{i}");
                        let ctx = VersionVector::new();
                        let fut = r.mint_now(key.as_bytes(), Some(value.as_bytes()), None, &ctx, 1);
                        if (t + i) % 5 == 0 {
                            let mut fut = std::pin::pin!(fut);
                            std::future::poll_fn(|cx| {
                                let _ = fut.as_mut().poll(cx);
                                Poll::Ready(())
                            })
                            .await;
                            continue;
                        }
                        let m = fut.await.unwrap();
                        seen.push((
                            key,
                            SiblingSet::decode(&m.encoded).unwrap().context().get("a"),
                        ));
                    }
                    seen
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        let mut unique = std::collections::HashSet::new();
        for c in &counters {
            assert!(unique.insert(c.clone()), "two writes minted {c:?}");
        }
        // A dropped write that reached the engine still completes, and holds its key's lock
        // until then: taking the locks waits for them.
        for k in 0..3 {
            drop(r.lock(format!("k{k}").as_bytes()));
        }
        let before = roots(&r.merkle);
        let fresh = MerkleIndex::default();
        index_all(&engine, &fresh);
        assert_eq!(
            before,
            roots(&fresh),
            "incremental trees differ from a rebuild"
        );
        let total: u64 = (0..3)
            .map(|k| {
                r.read(format!("k{k}").as_bytes())
                    .unwrap()
                    .unwrap()
                    .context()
                    .get("a")
            })
            .sum();
        assert!(total >= counters.len() as u64);
        assert_eq!(r.key_count(), 3);
    }

    #[test]
    fn a_write_the_full_disk_refuses_is_taken_back_out_of_the_tree_and_the_key_count() {
        use crate::storage::testing::fail_appends_in;
        let d = tempfile::tempdir().unwrap();
        // Every group fsynced: appends are system calls, committed by the engine's commit
        // thread, so the refusal comes back through the write's ticket.
        let opts = Options {
            sync: crate::storage::SyncMode::Always,
            ..Options::default()
        };
        let engine = Arc::new(Engine::open(d.path(), opts).unwrap());
        let r = Replica::new(engine.clone(), "a".into()).unwrap();
        index_all(&engine, &r.merkle);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ctx = VersionVector::new();
        rt.block_on(async {
            let kept = r
                .mint_now(b"kept", Some(b"1"), None, &ctx, 1)
                .await
                .unwrap();
            fail_appends_in(d.path(), true);
            // Over an existing key and as a new one.
            let kept = SiblingSet::decode(&kept.encoded).unwrap();
            let over = r.mint_now(b"kept", Some(b"2"), None, kept.context(), 1);
            let new = r.mint_now(b"new", Some(b"x"), None, &ctx, 1);
            for refused in [over.await, new.await] {
                let err = refused.err().expect("refused on the full disk").to_string();
                assert!(err.contains("out of disk space"), "{err}");
            }
            fail_appends_in(d.path(), false);
        });
        let rebuilt = MerkleIndex::default();
        index_all(&engine, &rebuilt);
        assert_eq!(
            roots(&r.merkle),
            roots(&rebuilt),
            "the tree kept a refused write"
        );
        assert_eq!(r.key_count(), 1);
        assert_eq!(
            r.read(b"kept").unwrap().unwrap().values(),
            vec![b"1".to_vec()]
        );
        // Space again: the same writes go through, and the tree follows.
        rt.block_on(async {
            r.mint_now(b"new", Some(b"x"), None, &ctx, 1).await.unwrap();
        });
        let rebuilt = MerkleIndex::default();
        index_all(&engine, &rebuilt);
        assert_eq!(roots(&r.merkle), roots(&rebuilt));
        assert_eq!(r.key_count(), 2);
    }

    #[test]
    fn data_keys_order_by_token_and_give_back_the_user_key() {
        let k = data_key(b"hello");
        assert_eq!(k[0], DATA_PREFIX);
        assert_eq!(user_key(&k), Some(b"hello".as_slice()));
        assert_eq!(user_key(b"x"), None);
    }
}

//! The replica side of a request: this node's own copy of the keys it holds.
//!
//! Each key is stored in the engine as its encoded [`SiblingSet`]. A write is a
//! read-merge-write of that set, so writes to one key on one replica are serialized by a
//! striped lock: it keeps the dots this replica mints for a key contiguous, which is what makes
//! the compact causal context correct (see kv-core's `version`). The methods are synchronous
//! (the engine is). Each takes an [`Access`]: `Now` answers only what needs no disk read and no
//! fsync (else `WouldBlock`, having changed nothing), so async callers run the common case on
//! their own thread and only the rest on the blocking pool (`Node::on_replica`).

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use kv_core::hash::key_token;
use kv_core::version::{SiblingSet, VersionVector};

use crate::merkle_index::MerkleIndex;
use crate::storage::{Engine, WriteBatch};

/// Prefix of user data in the engine. The token follows, big-endian, so one token range is one
/// contiguous scan (anti-entropy, streaming to a new owner).
pub const DATA_PREFIX: u8 = b'd';

/// Number of lock stripes; a power of two well above the number of concurrent writers.
const STRIPES: usize = 4096;

/// Why a replica operation failed.
#[derive(Debug)]
pub enum ReplicaError {
    /// The engine refused or failed.
    Storage(crate::storage::Error),
    /// The stored bytes of a key do not decode.
    Corrupt(String),
    /// `Access::Now` was asked and the operation needs a disk read, an fsync or a stall; nothing
    /// was changed.
    WouldBlock,
    /// The blocking-pool task running the operation failed.
    Task(String),
}

/// How long a replica operation may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only from memory, with a write that is a buffered append: else `WouldBlock`.
    Now,
    /// Whatever it takes (disk reads, fsync, stalls): for the blocking pool.
    Blocking,
}

impl std::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaError::Storage(e) => write!(f, "storage: {e}"),
            ReplicaError::Corrupt(m) => write!(f, "stored version is corrupted: {m}"),
            ReplicaError::WouldBlock => write!(f, "the operation needs to wait for the disk"),
            ReplicaError::Task(m) => write!(f, "storage task failed: {m}"),
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
    /// The key's full state after the write (what the other replicas merge).
    pub state: SiblingSet,
    /// `state` encoded, as stored (and as sent to the other replicas).
    pub encoded: Vec<u8>,
    /// The context to hand back to the writer: what it saw plus its own write, and nothing it
    /// did not see (so reusing it never overwrites a concurrent sibling).
    pub write_context: VersionVector,
    /// Older siblings dropped by the sibling cap.
    pub capped: usize,
}

/// This node's replica of the data.
pub struct Replica {
    engine: Arc<Engine>,
    actor: String,
    stripes: Vec<Mutex<()>>,
    /// Keys held (tombstones included): counted once at start, then kept up to date.
    keys: AtomicU64,
    /// Merkle trees of the ranges this node replicates, updated by every write.
    pub merkle: MerkleIndex,
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
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            keys: AtomicU64::new(keys),
            merkle: MerkleIndex::default(),
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

    fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let i = (key_token(key) as usize) & (STRIPES - 1);
        // A poisoned stripe only means another writer panicked; the data is in the engine.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
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
    fn read_raw(
        &self,
        access: Access,
        ek: &[u8],
    ) -> Result<Option<(Vec<u8>, SiblingSet)>, ReplicaError> {
        let stored = match access {
            Access::Blocking => self.engine.get(ek)?,
            Access::Now => self
                .engine
                .get_cached(ek)?
                .ok_or(ReplicaError::WouldBlock)?,
        };
        match stored {
            Some(bytes) => SiblingSet::decode(&bytes)
                .map(|s| Some((bytes, s)))
                .map_err(|e| ReplicaError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// `WouldBlock` when `access` is `Now` and a write could wait (fsync, stall).
    fn check_write(&self, access: Access) -> Result<(), ReplicaError> {
        if access == Access::Now && self.engine.write_may_block() {
            return Err(ReplicaError::WouldBlock);
        }
        Ok(())
    }

    /// Applies a client write here, minting its dot: `value` `None` is a delete.
    pub fn mint(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        ctx: &VersionVector,
        now_ms: u64,
    ) -> Result<Minted, ReplicaError> {
        self.mint_with(Access::Blocking, key, value, ctx, now_ms)
    }

    /// [`Replica::mint`] with a choice of [`Access`].
    pub fn mint_with(
        &self,
        access: Access,
        key: &[u8],
        value: Option<Vec<u8>>,
        ctx: &VersionVector,
        now_ms: u64,
    ) -> Result<Minted, ReplicaError> {
        self.check_write(access)?;
        let ek = data_key(key);
        let _guard = self.lock(key);
        let tree = self.merkle.write_guard();
        let (old_bytes, mut state) = match self.read_raw(access, &ek)? {
            Some((bytes, state)) => (Some(bytes), state),
            None => (None, SiblingSet::default()),
        };
        let outcome = state.update(ctx, &self.actor, value, now_ms);
        let new_bytes = state.encode();
        self.engine.put(&ek, &new_bytes)?;
        tree.update(key, old_bytes.as_deref(), Some(&new_bytes));
        if old_bytes.is_none() {
            self.keys.fetch_add(1, Relaxed);
        }
        // The writer saw `ctx` and wrote `dot`. A version vector can say exactly that only when
        // no other dot of this actor lies between them; otherwise hand back `ctx` alone, which
        // at worst leaves the writer's own value as a sibling of its next write.
        let mut write_context = ctx.clone();
        if ctx.get(&outcome.dot.actor) + 1 == outcome.dot.counter {
            write_context.merge_in(&VersionVector::from_entries([(
                outcome.dot.actor.clone(),
                outcome.dot.counter,
            )]));
        }
        Ok(Minted {
            state,
            encoded: new_bytes,
            write_context,
            capped: outcome.dropped,
        })
    }

    /// Removes `key` if its stored bytes are still `expected` (a purged tombstone); returns
    /// whether it did.
    pub fn remove_if_unchanged(&self, key: &[u8], expected: &[u8]) -> Result<bool, ReplicaError> {
        let ek = data_key(key);
        let _guard = self.lock(key);
        let tree = self.merkle.write_guard();
        match self.engine.get(&ek)? {
            Some(now) if now == expected => {
                self.engine.delete(&ek)?;
                tree.update(key, Some(expected), None);
                self.keys.fetch_sub(1, Relaxed);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Merges another replica's state of `key` into ours; returns whether ours changed.
    pub fn merge(&self, key: &[u8], incoming: &SiblingSet) -> Result<bool, ReplicaError> {
        self.merge_with(Access::Blocking, key, incoming)
    }

    /// [`Replica::merge`] with a choice of [`Access`].
    pub fn merge_with(
        &self,
        access: Access,
        key: &[u8],
        incoming: &SiblingSet,
    ) -> Result<bool, ReplicaError> {
        self.check_write(access)?;
        let ek = data_key(key);
        let _guard = self.lock(key);
        let tree = self.merkle.write_guard();
        let current = self.read_raw(access, &ek)?;
        let merged = match &current {
            Some((_, cur)) => cur.synced(incoming),
            None => incoming.clone(),
        };
        if current.as_ref().map(|(_, s)| s) == Some(&merged) {
            return Ok(false);
        }
        let new_bytes = merged.encode();
        let mut batch = WriteBatch::new();
        batch.put(ek, new_bytes.clone());
        self.engine.write(batch)?;
        tree.update(
            key,
            current.as_ref().map(|(b, _)| b.as_slice()),
            Some(&new_bytes),
        );
        if current.is_none() {
            self.keys.fetch_add(1, Relaxed);
        }
        Ok(true)
    }
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
            .mint(b"k", Some(b"v1".to_vec()), &VersionVector::new(), 1)
            .unwrap();
        assert_eq!(
            a.read(b"k").unwrap().unwrap().values(),
            vec![b"v1".as_slice()]
        );
        assert!(b.merge(b"k", &m1.state).unwrap());
        assert!(
            !b.merge(b"k", &m1.state).unwrap(),
            "merging the same state twice changes nothing"
        );
        // Two writers with the same (empty) context through the same replica: both survive.
        let m2 = a
            .mint(b"k", Some(b"v2".to_vec()), &VersionVector::new(), 2)
            .unwrap();
        assert_eq!(m2.state.values().len(), 2);
        // A write with the context of a read replaces what that read saw.
        let seen = a.read(b"k").unwrap().unwrap().context().clone();
        let m3 = a.mint(b"k", Some(b"v3".to_vec()), &seen, 3).unwrap();
        assert_eq!(m3.state.values(), vec![b"v3".as_slice()]);
        assert!(b.merge(b"k", &m3.state).unwrap());
        assert_eq!(
            b.read(b"k").unwrap().unwrap().values(),
            vec![b"v3".as_slice()]
        );
        assert_eq!((a.key_count(), b.key_count()), (1, 1));
    }

    #[test]
    fn write_context_never_covers_an_unseen_sibling() {
        let d = tempfile::tempdir().unwrap();
        let a = replica(d.path(), "a");
        let first = a
            .mint(b"k", Some(b"x".to_vec()), &VersionVector::new(), 1)
            .unwrap();
        // A second blind writer gets dot a:2; its context must not claim a:1, which it never saw.
        let second = a
            .mint(b"k", Some(b"y".to_vec()), &VersionVector::new(), 2)
            .unwrap();
        let third = a
            .mint(b"k", Some(b"z".to_vec()), &second.write_context, 3)
            .unwrap();
        let values = third.state.values();
        assert!(
            values.contains(&b"x".as_slice()),
            "x was never seen by the writer of z"
        );
        assert!(values.contains(&b"z".as_slice()));
        // The first writer's context is exact (a:1) and replaces only x.
        let fourth = a
            .mint(b"k", Some(b"w".to_vec()), &first.write_context, 4)
            .unwrap();
        assert!(!fourth.state.values().contains(&b"x".as_slice()));
    }

    #[test]
    fn data_keys_order_by_token_and_give_back_the_user_key() {
        let k = data_key(b"hello");
        assert_eq!(k[0], DATA_PREFIX);
        assert_eq!(user_key(&k), Some(b"hello".as_slice()));
        assert_eq!(user_key(b"x"), None);
    }
}

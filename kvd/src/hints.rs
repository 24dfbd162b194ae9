//! Hinted handoff: writes this node holds for a replica that was down (sloppy quorum), kept
//! durably in the engine and handed back when gossip sees the replica up again.
//!
//! - Durable: a hint is an engine record, so it survives a restart of the stand-in.
//! - Coalesced per key: a new hint for the same (target, key) is merged (DVV sync) into the one
//!   stored, so a target away for an hour receives each key's latest sibling set once.
//! - Bounded per target in bytes: past the bound a hint is refused (logged, counted) and the
//!   difference is left to anti-entropy; writes never wait for hint space.
//! - Deleted only after the target acknowledged it, and only if no newer hint for the same key
//!   was merged in meanwhile (compared byte for byte under the key's lock).
//!
//! Engine key: `'h' | token (8, big-endian) | key length (2) | key | target`, so every hint of
//! one key is one prefix scan (a stand-in answers reads with them) and hints sort by token.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_core::hash::key_token;
use kv_core::version::SiblingSet;

use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::replica::ReplicaError;
use crate::storage::{Engine, WriteBatch};

/// Prefix of hint records in the engine.
pub const HINT_PREFIX: u8 = b'h';
const STRIPES: usize = 256;

/// (user key, stored sibling-set bytes) pairs: hints read for delivery, or a range's data.
pub type KeyStates = Vec<(Vec<u8>, Vec<u8>)>;

/// Per-target figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetHints {
    /// Keys with a pending hint.
    pub count: u64,
    /// Bytes of their stored sibling sets.
    pub bytes: u64,
}

/// The hints this node holds.
pub struct HintStore {
    engine: Arc<Engine>,
    stripes: Vec<Mutex<()>>,
    pending: Mutex<BTreeMap<String, TargetHints>>,
    max_bytes_per_target: u64,
    /// Hints refused because their target's store was full.
    pub dropped: AtomicU64,
    /// Hints delivered and acknowledged.
    pub delivered: AtomicU64,
    /// Hints dropped undelivered because they outlived the hint expiry.
    pub expired: AtomicU64,
}

fn hint_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + key.len());
    k.push(HINT_PREFIX);
    k.extend_from_slice(&key_token(key).to_be_bytes());
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn hint_key(target: &str, key: &[u8]) -> Vec<u8> {
    let mut k = hint_prefix(key);
    k.extend_from_slice(target.as_bytes());
    k
}

/// Splits an engine hint key into (user key, target).
fn parse_hint_key(k: &[u8]) -> Option<(&[u8], &str)> {
    if k.len() < 11 || k[0] != HINT_PREFIX {
        return None;
    }
    let len = u16::from_be_bytes([k[9], k[10]]) as usize;
    let key = k.get(11..11 + len)?;
    let target = std::str::from_utf8(k.get(11 + len..)?).ok()?;
    Some((key, target))
}

impl HintStore {
    /// Opens the hint store over `engine`, counting the hints already there.
    pub fn open(engine: Arc<Engine>, max_bytes_per_target: u64) -> Result<HintStore, ReplicaError> {
        let mut pending: BTreeMap<String, TargetHints> = BTreeMap::new();
        let start = [HINT_PREFIX];
        let end = [HINT_PREFIX + 1];
        for item in engine.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]))? {
            let (k, v) = item?;
            if let Some((_, target)) = parse_hint_key(&k) {
                let e = pending.entry(target.to_string()).or_default();
                e.count += 1;
                e.bytes += v.len() as u64;
            }
        }
        Ok(HintStore {
            engine,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            pending: Mutex::new(pending),
            max_bytes_per_target,
            dropped: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        })
    }

    fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let i = (key_token(key) as usize) % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TargetHints>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores (merges) a hint of `state` for `target`. Refuses when the target's hints would
    /// pass the byte bound.
    pub fn store(&self, target: &str, key: &[u8], state: &SiblingSet) -> Result<(), String> {
        let hk = hint_key(target, key);
        let _guard = self.lock(key);
        let old = self.engine.get(&hk).map_err(|e| e.to_string())?;
        let merged = match &old {
            Some(bytes) => SiblingSet::decode(bytes)
                .map_err(|e| format!("stored hint is corrupted: {e}"))?
                .synced(state),
            None => state.clone(),
        };
        let encoded = merged.encode();
        let old_len = old.as_ref().map_or(0, |b| b.len() as u64);
        {
            let p = self.pending();
            let used = p.get(target).map_or(0, |t| t.bytes);
            if used - old_len.min(used) + encoded.len() as u64 > self.max_bytes_per_target {
                self.dropped.fetch_add(1, Relaxed);
                crate::warn!(
                    "hint store for {target} is full ({used} bytes); leaving this key to anti-entropy"
                );
                return Err(format!("hint store for {target} is full"));
            }
        }
        let mut batch = WriteBatch::new();
        batch.put(hk, encoded.clone());
        self.engine.write(batch).map_err(|e| e.to_string())?;
        let mut p = self.pending();
        let e = p.entry(target.to_string()).or_default();
        if old.is_none() {
            e.count += 1;
        }
        e.bytes = e.bytes + encoded.len() as u64 - old_len.min(e.bytes);
        Ok(())
    }

    /// Every hint held for `key` (all targets), merged: what a stand-in knows of the key.
    pub fn for_key(&self, key: &[u8]) -> Result<Option<SiblingSet>, String> {
        let prefix = hint_prefix(key);
        let mut end = prefix.clone();
        end.push(0xff);
        let mut merged: Option<SiblingSet> = None;
        let scan = self
            .engine
            .scan(Bound::Included(&prefix[..]), Bound::Included(&end[..]))
            .map_err(|e| e.to_string())?;
        for item in scan {
            let (k, v) = item.map_err(|e| e.to_string())?;
            if parse_hint_key(&k).is_some_and(|(uk, _)| uk == key) {
                let set = SiblingSet::decode(&v).map_err(|e| e.to_string())?;
                merged = Some(match merged {
                    Some(m) => m.synced(&set),
                    None => set,
                });
            }
        }
        Ok(merged)
    }

    /// Pending hints per target.
    pub fn summary(&self) -> BTreeMap<String, TargetHints> {
        self.pending().clone()
    }

    /// Total pending hints.
    pub fn total(&self) -> u64 {
        self.pending().values().map(|t| t.count).sum()
    }

    /// Up to `limit` hints for `target`: (user key, stored bytes).
    pub fn batch_for(&self, target: &str, limit: usize) -> Result<KeyStates, String> {
        let start = [HINT_PREFIX];
        let end = [HINT_PREFIX + 1];
        let mut out = Vec::new();
        let scan = self
            .engine
            .scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]))
            .map_err(|e| e.to_string())?;
        for item in scan {
            let (k, v) = item.map_err(|e| e.to_string())?;
            if let Some((key, t)) = parse_hint_key(&k) {
                if t == target {
                    out.push((key.to_vec(), v));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes the hint of (`target`, `key`) if it is still exactly `delivered` (a newer hint
    /// merged in meanwhile stays for the next round). Returns whether it was deleted.
    pub fn remove_if_unchanged(
        &self,
        target: &str,
        key: &[u8],
        delivered: &[u8],
    ) -> Result<bool, String> {
        let hk = hint_key(target, key);
        let _guard = self.lock(key);
        match self.engine.get(&hk).map_err(|e| e.to_string())? {
            Some(now) if now == delivered => {
                self.engine.delete(&hk).map_err(|e| e.to_string())?;
                let mut p = self.pending();
                if let Some(e) = p.get_mut(target) {
                    e.count = e.count.saturating_sub(1);
                    e.bytes = e.bytes.saturating_sub(now.len() as u64);
                    if e.count == 0 {
                        p.remove(target);
                    }
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Hints handed back per second at most, per stand-in (a returning node is not flooded).
pub const DELIVERY_RATE: usize = 2000;

/// The delivery worker: every half second, for each target with pending hints that gossip
/// sees up, sends a batch and deletes what was acknowledged. Hints for a member that left the
/// ring (removed while down, or decommissioned before they were delivered) go to the key's
/// current replicas instead.
pub async fn run_delivery(node: Arc<Node>) {
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let targets: Vec<String> = node.hints.summary().into_keys().collect();
        for target in targets {
            let result = if target == node.id {
                continue;
            } else if node.has_left_the_ring(&target) {
                redirect_some(&node, &target, DELIVERY_RATE / 2).await
            } else if node.is_up(&target) {
                deliver_some(&node, &target, DELIVERY_RATE / 2).await
            } else {
                continue;
            };
            if let Err(e) = result {
                crate::warn!("hint delivery for {target}: {e}");
            }
        }
    }
}

/// Up to `limit` hints for `target`, as (key text, stored bytes); the ones too old to hand
/// back are dropped on the way (anti-entropy covers them, and a tombstone purged meanwhile
/// must not be undone by a stale value).
async fn deliverable(
    node: &Arc<Node>,
    target: &str,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let n = node.clone();
    let t = target.to_string();
    let batch = tokio::task::spawn_blocking(move || n.hints.batch_for(&t, limit))
        .await
        .map_err(|e| e.to_string())??;
    let expiry_ms = node.config.hint_expiry.as_millis() as u64;
    let mut out = Vec::with_capacity(batch.len());
    for (key, bytes) in batch {
        let Ok(key_text) = String::from_utf8(key) else {
            continue;
        };
        let newest = SiblingSet::decode(&bytes)
            .ok()
            .and_then(|s| s.newest_timestamp())
            .unwrap_or(0);
        if newest.saturating_add(expiry_ms) < crate::now_ms() {
            if forget(node, target, key_text, bytes).await? {
                node.hints.expired.fetch_add(1, Relaxed);
            }
            continue;
        }
        out.push((key_text, bytes));
    }
    Ok(out)
}

/// Deletes a hint unless a newer one was merged in meanwhile; whether it was deleted.
async fn forget(
    node: &Arc<Node>,
    target: &str,
    key: String,
    bytes: Vec<u8>,
) -> Result<bool, String> {
    let n = node.clone();
    let t = target.to_string();
    tokio::task::spawn_blocking(move || n.hints.remove_if_unchanged(&t, key.as_bytes(), &bytes))
        .await
        .map_err(|e| e.to_string())?
}

async fn send_state(node: &Node, addr: &str, key: &str, bytes: &[u8]) -> Result<(), String> {
    let req = PeerRequest::Replicate {
        key: key.to_string(),
        state: bytes.to_vec(),
        hint_for: None,
    };
    match node.peers.call(addr, &req, Duration::from_secs(5)).await {
        Ok(PeerResponse::Ack) => Ok(()),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn deliver_some(node: &Arc<Node>, target: &str, limit: usize) -> Result<(), String> {
    let Some(addr) = node.addr_of(target) else {
        return Ok(());
    };
    for (key, bytes) in deliverable(node, target, limit).await? {
        send_state(node, &addr, &key, &bytes).await?;
        forget(node, target, key, bytes).await?;
        node.hints.delivered.fetch_add(1, Relaxed);
    }
    Ok(())
}

/// Hands the hints for `target`, which left the ring, to each key's current replicas; a hint
/// is deleted once every one of them took it (while one is down it waits, up to the expiry).
async fn redirect_some(node: &Arc<Node>, target: &str, limit: usize) -> Result<(), String> {
    let ring = node.ring();
    let placement = node.placement(&ring);
    for (key, bytes) in deliverable(node, target, limit).await? {
        let mut all_took = true;
        for owner in ring.preference_list(key.as_bytes(), &placement) {
            let took = if owner == node.id {
                let (n, k) = (node.clone(), key.clone());
                let set = SiblingSet::decode(&bytes).map_err(|e| e.to_string())?;
                tokio::task::spawn_blocking(move || n.replica.merge(k.as_bytes(), &set))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                match node.addr_of(&owner).filter(|_| node.is_up(&owner)) {
                    Some(addr) => send_state(node, &addr, &key, &bytes).await,
                    None => Err(format!("{owner} is down")),
                }
            };
            all_took &= took.is_ok();
        }
        if all_took && forget(node, target, key, bytes).await? {
            node.hints.delivered.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Options;
    use kv_core::version::VersionVector;

    fn state(actor: &str, v: &str) -> SiblingSet {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), actor, Some(v.as_bytes().to_vec()), 1);
        s
    }

    #[test]
    fn hints_coalesce_per_key_survive_reopen_and_are_removed_only_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Arc::new(Engine::open(dir.path(), Options::default()).unwrap());
            let h = HintStore::open(engine, 1 << 20).unwrap();
            h.store("n2", b"k", &state("a", "1")).unwrap();
            h.store("n2", b"k", &state("b", "2")).unwrap();
            h.store("n3", b"k", &state("a", "1")).unwrap();
            h.store("n2", b"other", &state("a", "x")).unwrap();
            assert_eq!(
                h.summary()["n2"].count,
                2,
                "two keys for n2, the first coalesced"
            );
            assert_eq!(h.for_key(b"k").unwrap().unwrap().values().len(), 2);
            assert_eq!(h.for_key(b"nothing").unwrap(), None);
        }
        let engine = Arc::new(Engine::open(dir.path(), Options::default()).unwrap());
        let h = HintStore::open(engine, 1 << 20).unwrap();
        assert_eq!(h.summary()["n2"].count, 2, "hints are durable");
        let batch = h.batch_for("n2", 10).unwrap();
        assert_eq!(batch.len(), 2);
        let (key, bytes) = batch.iter().find(|(k, _)| k == b"k").unwrap().clone();
        // A newer hint arrives between read and acknowledgement: it must not be deleted.
        h.store("n2", b"k", &state("c", "3")).unwrap();
        assert!(!h.remove_if_unchanged("n2", &key, &bytes).unwrap());
        let (_, now) = h
            .batch_for("n2", 10)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == b"k")
            .unwrap();
        assert!(h.remove_if_unchanged("n2", b"k", &now).unwrap());
        assert_eq!(h.summary()["n2"].count, 1);
        assert_eq!(h.total(), 2);
    }

    #[test]
    fn a_full_target_refuses_hints_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), Options::default()).unwrap());
        let h = HintStore::open(engine, 200).unwrap();
        let big = "v".repeat(150);
        h.store("n2", b"a", &state("a", &big)).unwrap();
        assert!(h.store("n2", b"b", &state("a", &big)).is_err());
        assert_eq!(h.dropped.load(Relaxed), 1);
        assert!(
            h.store("n3", b"b", &state("a", &big)).is_ok(),
            "the bound is per target"
        );
    }
}

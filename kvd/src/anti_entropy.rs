//! Merkle anti-entropy: replicas of a token range compare their trees and sync only the keys
//! of the buckets that differ, both ways.
//!
//! A session (this node with one peer, for one range): compare roots; descend level by level
//! into the nodes that differ (kv-core's `differing_children`), asking the peer only for the
//! hashes of those nodes; at the leaves, exchange (key, digest) lists of the differing buckets;
//! fetch the peer's state of every key that differs, merge it here (DVV sync) and send the
//! merge back. What crosses the network is proportional to the differences, not to the data.
//!
//! The worker runs sessions periodically for each (range, peer) pair once (the node with the
//! smaller id starts it); `repair` runs them all now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_core::merkle::{differing_children, Descent, MerkleTree};
use kv_core::ring::TokenRange;
use kv_core::version::SiblingSet;
use serde::{Deserialize, Serialize};

use crate::merkle_index::scan_range;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// A key and its encoded state, as exchanged by anti-entropy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyState {
    /// The user key.
    pub key: String,
    /// The encoded sibling set.
    #[serde(with = "kv_core::wire::b64")]
    pub state: Vec<u8>,
}

/// What one or more sessions did.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepairStats {
    /// (range, peer) pairs compared.
    pub ranges_compared: u64,
    /// Pairs whose roots already matched.
    pub ranges_in_sync: u64,
    /// Keys that differed and were synced (counted once per pair).
    pub keys_repaired: u64,
    /// Bytes of anti-entropy messages sent and received (JSON frames).
    pub bytes_exchanged: u64,
    /// Pairs skipped because the peer was down, did not answer, or indexes other ranges.
    pub pairs_skipped: u64,
}

impl RepairStats {
    fn add(&mut self, o: &RepairStats) {
        self.ranges_compared += o.ranges_compared;
        self.ranges_in_sync += o.ranges_in_sync;
        self.keys_repaired += o.keys_repaired;
        self.bytes_exchanged += o.bytes_exchanged;
        self.pairs_skipped += o.pairs_skipped;
    }
}

/// Totals since start, for /metrics and `status`.
#[derive(Default)]
pub struct AntiEntropyCounters {
    /// Sessions run.
    pub sessions: AtomicU64,
    /// Keys repaired.
    pub keys_repaired: AtomicU64,
    /// Bytes exchanged.
    pub bytes: AtomicU64,
    /// Rounds of the periodic worker completed.
    pub rounds: AtomicU64,
    /// Pairs of the running repair done / total (for progress).
    pub repair_done: AtomicU64,
    /// See `repair_done`.
    pub repair_total: AtomicU64,
}

/// Answers a peer's anti-entropy request about this node's data.
pub fn serve(node: &Node, req: PeerRequest) -> PeerResponse {
    let err = |message: String| PeerResponse::Error { message };
    match req {
        PeerRequest::MerkleHashes {
            range,
            depth,
            indices,
        } => match node
            .replica
            .merkle
            .with_tree(&range, |t| t.node_hashes(depth, &indices))
        {
            Some(Ok(hashes)) => PeerResponse::Hashes { hashes },
            Some(Err(e)) => err(e.to_string()),
            None => err(format!("{} does not replicate range {range}", node.id)),
        },
        PeerRequest::BucketDigests { range, buckets } => {
            match bucket_digests(node, range, &buckets) {
                Ok(entries) => PeerResponse::Digests { entries },
                Err(e) => err(e),
            }
        }
        PeerRequest::FetchStates { keys } => {
            let mut entries = Vec::with_capacity(keys.len());
            for key in keys {
                match node.replica.read_raw_key(key.as_bytes()) {
                    Ok(Some(state)) => entries.push(KeyState { key, state }),
                    Ok(None) => {}
                    Err(e) => return err(e.to_string()),
                }
            }
            PeerResponse::States { entries }
        }
        other => err(format!("not an anti-entropy request: {other:?}")),
    }
}

/// (key, digest) of every key of `range` that falls in one of `buckets`.
fn bucket_digests(
    node: &Node,
    range: TokenRange,
    buckets: &[usize],
) -> Result<Vec<(String, u64)>, String> {
    let wanted: BTreeSet<usize> = buckets.iter().copied().collect();
    let probe = MerkleTree::new(crate::merkle_index::LEAF_BUCKETS);
    let mut out = Vec::new();
    for (key, bytes) in scan_range(node.replica.engine(), range).map_err(|e| e.to_string())? {
        if wanted.contains(&probe.bucket_of(&key)) {
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            let digest = MerkleTree::key_digest(key.as_bytes(), &bytes);
            out.push((key, digest));
        }
    }
    Ok(out)
}

/// One session with `peer` for `range`.
pub async fn sync_range(
    node: &Arc<Node>,
    range: TokenRange,
    peer: &str,
) -> Result<RepairStats, String> {
    let addr = node
        .addr_of(peer)
        .ok_or_else(|| format!("{peer} is not a known member"))?;
    let mut stats = RepairStats {
        ranges_compared: 1,
        ..RepairStats::default()
    };
    let timeout = Duration::from_secs(30);
    let call = |req: PeerRequest| {
        let addr = addr.clone();
        async move {
            let sent = serde_json::to_vec(&req).map(|v| v.len()).unwrap_or(0) as u64;
            let resp = node
                .peers
                .call(&addr, &req, timeout)
                .await
                .map_err(|e| e.to_string())?;
            let received = serde_json::to_vec(&resp).map(|v| v.len()).unwrap_or(0) as u64;
            Ok::<_, String>((resp, sent + received))
        }
    };

    // Descend from the root into differing nodes only.
    let mut depth = 0;
    let mut indices = vec![0usize];
    let buckets = loop {
        let (resp, bytes) = call(PeerRequest::MerkleHashes {
            range,
            depth,
            indices: indices.clone(),
        })
        .await?;
        stats.bytes_exchanged += bytes;
        let PeerResponse::Hashes { hashes } = resp else {
            return Err(format!("unexpected answer {resp:?}"));
        };
        let remote: Vec<(usize, u64)> = indices.iter().copied().zip(hashes).collect();
        let step = node
            .replica
            .merkle
            .with_tree(&range, |t| differing_children(t, depth, &remote))
            .ok_or_else(|| format!("this node does not replicate range {range}"))?
            .map_err(|e| e.to_string())?;
        match step {
            Descent::Ask { indices: next, .. } if next.is_empty() => {
                stats.ranges_in_sync = 1;
                return Ok(stats);
            }
            Descent::Ask {
                depth: d,
                indices: next,
            } => {
                depth = d;
                indices = next;
            }
            Descent::Leaves(b) => break b,
        }
    };
    if buckets.is_empty() {
        stats.ranges_in_sync = 1;
        return Ok(stats);
    }

    // Compare the keys of the differing buckets.
    let (resp, bytes) = call(PeerRequest::BucketDigests {
        range,
        buckets: buckets.clone(),
    })
    .await?;
    stats.bytes_exchanged += bytes;
    let PeerResponse::Digests { entries } = resp else {
        return Err(format!("unexpected answer {resp:?}"));
    };
    let theirs: BTreeMap<String, u64> = entries.into_iter().collect();
    let n = node.clone();
    let b = buckets.clone();
    let ours: BTreeMap<String, u64> =
        tokio::task::spawn_blocking(move || bucket_digests(&n, range, &b))
            .await
            .map_err(|e| e.to_string())??
            .into_iter()
            .collect();
    let differing: Vec<String> = theirs
        .keys()
        .chain(ours.keys())
        .filter(|k| theirs.get(*k) != ours.get(*k))
        .cloned()
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    if differing.is_empty() {
        return Ok(stats);
    }

    // Pull theirs, merge here, push the merge back: both sides end with the sync of both.
    for chunk in differing.chunks(256) {
        let wanted: Vec<String> = chunk
            .iter()
            .filter(|k| theirs.contains_key(*k))
            .cloned()
            .collect();
        let mut fetched: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        if !wanted.is_empty() {
            let (resp, bytes) = call(PeerRequest::FetchStates { keys: wanted }).await?;
            stats.bytes_exchanged += bytes;
            let PeerResponse::States { entries } = resp else {
                return Err(format!("unexpected answer {resp:?}"));
            };
            fetched = entries.into_iter().map(|e| (e.key, e.state)).collect();
        }
        for key in chunk {
            let n = node.clone();
            let k = key.clone();
            let remote = fetched.get(key).cloned();
            let merged = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
                let local = n
                    .replica
                    .read_raw_key(k.as_bytes())
                    .map_err(|e| e.to_string())?;
                let mut union = match &local {
                    Some(b) => SiblingSet::decode(b).map_err(|e| e.to_string())?,
                    None => SiblingSet::new(),
                };
                if let Some(bytes) = &remote {
                    union.sync(&SiblingSet::decode(bytes).map_err(|e| e.to_string())?);
                }
                // A tombstone every replica is known to hold is being purged: carrying it back
                // to a replica that already dropped it would only undo the purge.
                if crate::tombstones::purgeable_here(&n, range, &union) {
                    if let Some(b) = &local {
                        if n.replica
                            .remove_if_unchanged(k.as_bytes(), b)
                            .map_err(|e| e.to_string())?
                        {
                            n.agreements.purged.fetch_add(1, Relaxed);
                        }
                    }
                    return Ok(None);
                }
                if remote.is_some() {
                    n.replica
                        .merge(k.as_bytes(), &union)
                        .map_err(|e| e.to_string())?;
                }
                n.replica
                    .read_raw_key(k.as_bytes())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??;
            if let Some(state) = merged {
                if fetched.get(key) != Some(&state) {
                    let (resp, bytes) = call(PeerRequest::Replicate {
                        key: key.clone(),
                        state,
                        hint_for: None,
                    })
                    .await?;
                    stats.bytes_exchanged += bytes;
                    if !matches!(resp, PeerResponse::Ack) {
                        return Err(format!("unexpected answer {resp:?}"));
                    }
                }
            }
            stats.keys_repaired += 1;
        }
    }
    Ok(stats)
}

/// The (range, peer) pairs this node compares: every other replica of every range it
/// replicates; with `only_lower`, only the peers whose id is greater (each pair runs once in
/// the cluster).
fn pairs(node: &Node, only_lower: bool) -> Vec<(TokenRange, String)> {
    let ring = node.ring();
    let placement = node.placement(&ring);
    let mine: BTreeSet<TokenRange> = node.replica.merkle.ranges().into_iter().collect();
    let mut out = Vec::new();
    for (range, replicas) in ring.ranges(&placement) {
        if !mine.contains(&range) {
            continue;
        }
        for peer in replicas {
            if peer != node.id && (!only_lower || node.id < peer) {
                out.push((range, peer));
            }
        }
    }
    out
}

/// Runs sessions for `pairs`, counting what they did; unreachable peers are skipped.
async fn run_pairs(node: &Arc<Node>, pairs: Vec<(TokenRange, String)>) -> RepairStats {
    let mut total = RepairStats::default();
    node.anti_entropy
        .repair_total
        .store(pairs.len() as u64, Relaxed);
    node.anti_entropy.repair_done.store(0, Relaxed);
    for (range, peer) in pairs {
        if !node.is_up(&peer) {
            total.pairs_skipped += 1;
        } else {
            let started = crate::now_ms();
            match sync_range(node, range, &peer).await {
                Ok(s) => {
                    // Both sides now hold everything either held when the session started.
                    node.agreements.record(range, &peer, started);
                    if let Some(addr) = node.addr_of(&peer) {
                        let req = PeerRequest::RangeSynced {
                            range,
                            peer: node.id.clone(),
                            at_ms: started,
                        };
                        let _ = node.peers.call(&addr, &req, Duration::from_secs(5)).await;
                    }
                    total.add(&s);
                    node.anti_entropy.sessions.fetch_add(1, Relaxed);
                    node.anti_entropy
                        .keys_repaired
                        .fetch_add(s.keys_repaired, Relaxed);
                    node.anti_entropy
                        .bytes
                        .fetch_add(s.bytes_exchanged, Relaxed);
                }
                Err(e) => {
                    total.pairs_skipped += 1;
                    crate::warn!("anti-entropy of {range} with {peer}: {e}");
                }
            }
        }
        node.anti_entropy.repair_done.fetch_add(1, Relaxed);
    }
    total
}

/// Purges the tombstones every replica is known to hold (see `tombstones`).
async fn purge_tombstones(node: &Arc<Node>) {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || crate::tombstones::purge(&n)).await {
        Ok(0) => {}
        Ok(purged) => crate::info!("purged {purged} tombstones every replica holds"),
        Err(e) => crate::warn!("tombstone purge failed: {e}"),
    }
}

/// `repair`: compares every range this node replicates with every other replica, now.
pub async fn repair_now(node: &Arc<Node>) -> RepairStats {
    let _running = node.repair_lock.lock().await;
    let started = Instant::now();
    let stats = run_pairs(node, pairs(node, false)).await;
    purge_tombstones(node).await;
    crate::info!(
        "repair: {} ranges compared ({} in sync), {} keys repaired, {} bytes, {} skipped, {:.1}s",
        stats.ranges_compared,
        stats.ranges_in_sync,
        stats.keys_repaired,
        stats.bytes_exchanged,
        stats.pairs_skipped,
        started.elapsed().as_secs_f64()
    );
    stats
}

/// The periodic worker (disabled when the interval is zero).
pub async fn run(node: Arc<Node>) {
    let every = node.config.anti_entropy_interval;
    if every.is_zero() {
        return;
    }
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let _running = node.repair_lock.lock().await;
        let stats = run_pairs(&node, pairs(&node, true)).await;
        purge_tombstones(&node).await;
        node.anti_entropy.rounds.fetch_add(1, Relaxed);
        if stats.keys_repaired > 0 {
            crate::info!(
                "anti-entropy: {} keys repaired over {} ranges",
                stats.keys_repaired,
                stats.ranges_compared
            );
        }
    }
}

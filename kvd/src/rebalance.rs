//! Moving data when membership changes, under traffic.
//!
//! Join: a new node is gossiped as `Joining` with its tokens; coordinators keep serving from
//! the current owners but also send every write to the owners-to-be (`Node::pending_ring`).
//! The newcomer streams each range it gains from a current owner (kv-core's `move_plan`),
//! merging every key, remembers each finished range in its data dir (a restart resumes), and
//! only then announces itself `Normal`: it answers reads for a range only once it holds it.
//!
//! Leave (`decommission`): the node announces `Leaving` (it keeps serving; writes also go to
//! the owners-to-be), pushes every range it holds to the node that takes it over, then
//! announces `Left` and drops out of every ring.
//!
//! Cleanup (`cleanup`): a node that gave ranges up (another node joined, or its weight
//! shrank) still holds their data. It hands each such range to the range's current replicas,
//! then drops it. Until then the stale copies take disk, and they are a hazard: should the
//! range come back to this node (the newcomer leaves) after its deletes' tombstones were
//! purged on the replicas, the old values would be read again.
//!
//! Transfers are throttled (`STREAM_BYTES_PER_SEC`) and their progress is in `status`.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_core::membership::MemberStatus;
use kv_core::ring::{Ring, TokenRange, Transfer};
use kv_core::version::SiblingSet;
use serde::{Deserialize, Serialize};

use crate::anti_entropy::KeyState;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::replica::{user_key, DATA_PREFIX};

/// Transfer rate limit per node.
pub const STREAM_BYTES_PER_SEC: u64 = 64 << 20;
/// Bytes per streamed chunk.
const CHUNK_BYTES: usize = 512 << 10;
const PROGRESS_FILE: &str = "join-progress.json";

/// A transfer in progress, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferProgress {
    /// `joining` or `leaving`.
    pub kind: String,
    /// Ranges finished.
    pub ranges_done: u64,
    /// Ranges to move.
    pub ranges_total: u64,
    /// Keys moved so far.
    pub keys: u64,
    /// Bytes moved so far.
    pub bytes: u64,
}

/// The node's current transfer, if any.
#[derive(Default)]
pub struct Transfers {
    current: Mutex<Option<TransferProgress>>,
    /// Keys streamed in or out since start.
    pub keys_moved: AtomicU64,
    /// Keys dropped by cleanups since start (handed to their replicas first).
    pub keys_cleaned: AtomicU64,
}

impl Transfers {
    /// A snapshot of the running transfer.
    pub fn progress(&self) -> Option<TransferProgress> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut TransferProgress)) {
        if let Some(p) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            f(p);
        }
    }

    fn set(&self, p: Option<TransferProgress>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// Starts reporting a fresh transfer of `kind` over `ranges_total` ranges.
    fn begin(&self, kind: &str, ranges_total: usize) {
        self.set(Some(TransferProgress {
            kind: kind.into(),
            ranges_total: ranges_total as u64,
            ..TransferProgress::default()
        }));
    }
}

/// Keeps a transfer under the rate limit.
struct Throttle {
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            started: Instant::now(),
            bytes: 0,
        }
    }

    async fn account(&mut self, bytes: u64) {
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / STREAM_BYTES_PER_SEC as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// The inclusive, non-wrapping token intervals of `range` (a wrapping range is two), in the
/// order a scan of the range visits them.
pub fn token_pieces(range: TokenRange) -> Vec<(u64, u64)> {
    let mut pieces = Vec::with_capacity(2);
    if range.start < range.end {
        pieces.push((range.start + 1, range.end));
    } else {
        if range.start < u64::MAX {
            pieces.push((range.start + 1, u64::MAX));
        }
        pieces.push((0, range.end));
    }
    pieces
}

/// The engine key where the data of token `t` begins.
pub fn token_key(t: u64) -> Vec<u8> {
    [&[DATA_PREFIX][..], &t.to_be_bytes()].concat()
}

/// One page of the data with tokens in `lo..=hi` after engine key `after`: up to about
/// `max_bytes`, and the engine key to continue after when there is more.
pub fn read_tokens(
    node: &Node,
    (lo, hi): (u64, u64),
    after: Option<&[u8]>,
    max_bytes: usize,
) -> Result<(Vec<KeyState>, Option<Vec<u8>>), String> {
    let lo_key = token_key(lo);
    let hi_key = match hi.checked_add(1) {
        Some(h) => token_key(h),
        None => vec![DATA_PREFIX + 1],
    };
    if after.is_some_and(|a| a >= hi_key.as_slice()) {
        return Ok((Vec::new(), None));
    }
    let start = match after {
        Some(a) if a >= lo_key.as_slice() => Bound::Excluded(a),
        _ => Bound::Included(&lo_key[..]),
    };
    let scan = node
        .replica
        .engine()
        .scan(start, Bound::Excluded(&hi_key[..]))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut size = 0;
    for item in scan {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let Some(uk) = user_key(&k) else { continue };
        let Ok(key) = String::from_utf8(uk.to_vec()) else {
            continue;
        };
        size += k.len() + v.len();
        out.push(KeyState { key, state: v });
        if size >= max_bytes {
            return Ok((out, Some(k)));
        }
    }
    Ok((out, None))
}

/// One page of the data of `range` after engine key `after` (a cursor returned by an earlier
/// page of the same range): up to about `max_bytes`.
pub fn read_chunk(
    node: &Node,
    range: TokenRange,
    after: Option<&[u8]>,
    max_bytes: usize,
) -> Result<(Vec<KeyState>, Option<Vec<u8>>), String> {
    let pieces = token_pieces(range);
    // A cursor belongs to the piece whose tokens contain it; earlier pieces are done.
    let cursor_token = after.and_then(|a| a.get(1..9)).map(|t| {
        let mut b = [0u8; 8];
        b.copy_from_slice(t);
        u64::from_be_bytes(b)
    });
    let first = match cursor_token {
        Some(t) => pieces
            .iter()
            .position(|(lo, hi)| *lo <= t && t <= *hi)
            .unwrap_or(pieces.len()),
        None => 0,
    };
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate().skip(first) {
        let cursor = if i == first { after } else { None };
        let (mut entries, next) = read_tokens(node, *piece, cursor, max_bytes)?;
        out.append(&mut entries);
        if next.is_some() {
            return Ok((out, next));
        }
    }
    Ok((out, None))
}

/// Merges streamed states into the local replica; returns their byte size.
async fn merge_all(node: &Arc<Node>, entries: Vec<KeyState>) -> Result<u64, String> {
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        let mut bytes = 0;
        for e in entries {
            bytes += e.state.len() as u64 + e.key.len() as u64;
            let set = SiblingSet::decode(&e.state).map_err(|err| err.to_string())?;
            n.replica
                .merge(e.key.as_bytes(), &set)
                .map_err(|err| err.to_string())?;
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| e.to_string())?
}

fn load_done(node: &Node) -> BTreeSet<TokenRange> {
    std::fs::read(node.config.data_dir.join(PROGRESS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_done(node: &Node, done: &BTreeSet<TokenRange>) {
    let bytes = serde_json::to_vec(done).unwrap_or_default();
    if let Err(e) = crate::identity::write_atomically(&node.config.data_dir, PROGRESS_FILE, &bytes)
    {
        crate::warn!("cannot record join progress: {e}");
    }
}

/// Streams one range in from every live owner (a write acknowledged by W owners is on at
/// least one of them whichever they are; merging is idempotent); returns the keys received.
async fn stream_in(node: &Arc<Node>, t: &Transfer, throttle: &mut Throttle) -> Result<u64, String> {
    let sources: Vec<&String> = t
        .from
        .iter()
        .filter(|s| **s != node.id && node.is_up(s))
        .collect();
    if sources.is_empty() {
        return Err(format!("no live owner of {} to stream from", t.range));
    }
    let mut keys = 0;
    for source in sources {
        keys += stream_from(node, t.range, source, throttle).await?;
    }
    Ok(keys)
}

async fn stream_from(
    node: &Arc<Node>,
    range: TokenRange,
    source: &str,
    throttle: &mut Throttle,
) -> Result<u64, String> {
    let addr = node
        .addr_of(source)
        .ok_or_else(|| format!("{source} is not a member"))?;
    let mut after: Option<Vec<u8>> = None;
    let mut keys = 0;
    loop {
        let req = PeerRequest::StreamRange {
            range,
            after: after.clone(),
            max_bytes: CHUNK_BYTES,
        };
        let resp = node
            .peers
            .call(&addr, &req, Duration::from_secs(60))
            .await
            .map_err(|e| format!("{source}: {e}"))?;
        let PeerResponse::Chunk { entries, next } = resp else {
            return Err(format!("{source}: unexpected answer {resp:?}"));
        };
        let n = entries.len() as u64;
        let bytes = merge_all(node, entries).await?;
        keys += n;
        node.transfers.keys_moved.fetch_add(n, Relaxed);
        node.transfers.update(|p| {
            p.keys += n;
            p.bytes += bytes;
        });
        throttle.account(bytes).await;
        match next {
            Some(cursor) => after = Some(cursor),
            None => return Ok(keys),
        }
    }
}

/// The join: stream in every range this node gains, then announce `Normal`. Retries until it
/// is done (a range whose owners are all down waits for one of them).
pub async fn run_join(node: Arc<Node>) {
    let mut done = load_done(&node);
    let mut throttle = Throttle::new();
    let started = Instant::now();
    // Let gossip spread the Joining record first, so writes start reaching this node.
    tokio::time::sleep(node.config.gossip_interval * 2).await;
    let mut shutdown = node.shutdown_signal();
    loop {
        let current = node.ring();
        let Some(pending) = node.pending_ring() else {
            tokio::time::sleep(node.config.gossip_interval).await;
            continue;
        };
        let plan: Vec<Transfer> = current
            .move_plan(&pending, &node.placement(&pending))
            .into_iter()
            .filter(|t| t.to == node.id)
            .collect();
        node.transfers.set(Some(TransferProgress {
            kind: "joining".into(),
            ranges_done: plan.iter().filter(|t| done.contains(&t.range)).count() as u64,
            ranges_total: plan.len() as u64,
            ..node.transfers.progress().unwrap_or_default()
        }));
        let mut failed = false;
        let todo: Vec<&Transfer> = plan.iter().filter(|t| !done.contains(&t.range)).collect();
        for t in todo {
            if *shutdown.borrow() {
                return;
            }
            match stream_in(&node, t, &mut throttle).await {
                Ok(_) => {
                    done.insert(t.range);
                    save_done(&node, &done);
                    node.transfers.update(|p| p.ranges_done += 1);
                }
                Err(e) => {
                    crate::warn!("join: streaming {} failed: {e}; will retry", t.range);
                    failed = true;
                }
            }
        }
        if !failed {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
    let moved = node.transfers.progress().map(|p| p.keys).unwrap_or(0);
    node.finish_join();
    let _ = std::fs::remove_file(node.config.data_dir.join(PROGRESS_FILE));
    node.transfers.set(None);
    crate::info!(
        "joined: streamed {moved} keys in {:.1}s; now serving",
        started.elapsed().as_secs_f64()
    );
}

/// One page of this node's data of `range` after engine key `after` (see [`read_chunk`]), read
/// on the blocking pool.
async fn read_page(
    node: &Arc<Node>,
    range: TokenRange,
    after: Option<Vec<u8>>,
) -> Result<(Vec<KeyState>, Option<Vec<u8>>), String> {
    let n = node.clone();
    tokio::task::spawn_blocking(move || read_chunk(&n, range, after.as_deref(), CHUNK_BYTES))
        .await
        .map_err(|e| e.to_string())?
}

/// The bytes of `entries` (keys and states), as throttles and progress count them.
fn size_of(entries: &[KeyState]) -> u64 {
    entries
        .iter()
        .map(|e| (e.key.len() + e.state.len()) as u64)
        .sum()
}

/// Has node `to` merge `entries` into its replica.
async fn send_batch(node: &Node, to: &str, entries: Vec<KeyState>) -> Result<(), String> {
    let addr = node
        .addr_of(to)
        .ok_or_else(|| format!("{to} is not a member"))?;
    let req = PeerRequest::MergeBatch { entries };
    match node.peers.call(&addr, &req, Duration::from_secs(60)).await {
        Ok(PeerResponse::Ack) => Ok(()),
        Ok(other) => Err(format!("{to}: unexpected answer {other:?}")),
        Err(e) => Err(format!("{to}: {e}")),
    }
}

/// Pushes this node's data of `range` to node `to`; returns the keys sent.
async fn push_range(
    node: &Arc<Node>,
    range: TokenRange,
    to: &str,
    throttle: &mut Throttle,
) -> Result<u64, String> {
    let mut moved = 0;
    let mut after_key: Option<Vec<u8>> = None;
    loop {
        let (entries, next) = read_page(node, range, after_key.clone()).await?;
        let count = entries.len() as u64;
        let bytes = size_of(&entries);
        if count > 0 {
            send_batch(node, to, entries).await?;
        }
        moved += count;
        node.transfers.keys_moved.fetch_add(count, Relaxed);
        node.transfers.update(|p| {
            p.keys += count;
            p.bytes += bytes;
        });
        throttle.account(bytes).await;
        match next {
            Some(k) => after_key = Some(k),
            None => return Ok(moved),
        }
    }
}

/// After a restart with another `--weight`: moves the ranges that changed hands between the
/// ring with the old tokens and the ring with the new ones — pulling in what this node gains
/// from the old owners and pushing what it gives up to the new ones — then records the move
/// as done (a restart before that resumes it). Reads meanwhile are served by the quorum: the
/// other replicas of a range hold its data.
pub async fn run_reweigh(node: Arc<Node>) {
    let Some((old_weight, old_tokens)) = node.moving_from() else {
        return;
    };
    // Let gossip spread the new tokens, so writes go to the new owners (and, after a restart,
    // bring back the other members: alone, the plan would be empty).
    tokio::time::sleep(node.config.gossip_interval * 3).await;
    let patience = Instant::now() + Duration::from_secs(30);
    while node.ring().len() <= 1 && Instant::now() < patience {
        tokio::time::sleep(node.config.gossip_interval).await;
    }
    let started = Instant::now();
    let mut throttle = Throttle::new();
    let shutdown = node.shutdown_signal();
    loop {
        let new_ring = node.ring();
        let Some(me) = new_ring.node(&node.id).cloned() else {
            tokio::time::sleep(node.config.gossip_interval).await;
            continue;
        };
        let mut old_ring = (*new_ring).clone();
        old_ring.insert(
            kv_core::ring::NodeInfo {
                weight: old_weight,
                ..me
            },
            old_tokens.clone(),
        );
        let plan = old_ring.move_plan(&new_ring, &node.placement(&new_ring));
        node.transfers.begin("rebalancing", plan.len());
        let mut failed = false;
        for t in &plan {
            if *shutdown.borrow() {
                return;
            }
            let result = if t.to == node.id {
                stream_in(&node, t, &mut throttle).await
            } else if t.from.contains(&node.id) {
                push_range(&node, t.range, &t.to, &mut throttle).await
            } else {
                Ok(0)
            };
            match result {
                Ok(_) => node.transfers.update(|p| p.ranges_done += 1),
                Err(e) => {
                    crate::warn!("rebalance: moving {} failed: {e}; will retry", t.range);
                    failed = true;
                }
            }
        }
        if !failed {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let moved = node.transfers.progress().map(|p| p.keys).unwrap_or(0);
    node.finish_reweigh();
    node.transfers.set(None);
    crate::info!(
        "rebalanced for the new weight: {moved} keys moved in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The ring without `me`: where the data goes when it leaves.
fn ring_without(ring: &Ring, me: &str) -> Ring {
    let mut after = ring.clone();
    after.remove(me);
    after
}

/// Decommission of this node: announce `Leaving`, push every range it holds to its next
/// owner, announce `Left`. Returns the keys moved. Recorded in the data dir, so a node
/// restarted while leaving resumes (pushing a range twice is harmless: merges are idempotent)
/// and a node that left stays out of the ring.
pub async fn run_decommission(node: &Arc<Node>) -> Result<u64, String> {
    let _one = node.repair_lock.lock().await;
    if node.ring().len() <= 1 {
        return Err("the last node of the ring cannot leave it".into());
    }
    node.record_leave(false);
    let events = node
        .membership()
        .update_me(|m| m.status = MemberStatus::Leaving);
    node.on_membership_events(&events);
    crate::info!("decommission: leaving; handing my ranges over");
    // Let gossip tell the coordinators, so that writes reach the new owners too.
    tokio::time::sleep(node.config.gossip_interval * 3).await;

    let current = node.ring();
    let after = ring_without(&current, &node.id);
    let plan: Vec<Transfer> = current
        .move_plan(&after, &node.placement(&after))
        .into_iter()
        .filter(|t| t.from.contains(&node.id))
        .collect();
    node.transfers.begin("leaving", plan.len());
    let mut throttle = Throttle::new();
    let mut moved = 0;
    for t in &plan {
        moved += push_range(node, t.range, &t.to, &mut throttle).await?;
        node.transfers.update(|p| p.ranges_done += 1);
    }
    node.record_leave(true);
    let events = node
        .membership()
        .update_me(|m| m.status = MemberStatus::Left);
    node.on_membership_events(&events);
    node.transfers.set(None);
    // Make sure the Left record reaches the others before the operator stops this node.
    tokio::time::sleep(node.config.gossip_interval * 3).await;
    crate::info!("decommission: done, {moved} keys handed over; this node has left the ring");
    Ok(moved)
}

/// What a cleanup did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CleanupStats {
    /// Ranges of the ring this node does not replicate.
    pub ranges_foreign: u64,
    /// Of those, the ranges where it held data, now handed over and dropped.
    pub ranges_cleaned: u64,
    /// Ranges kept for a later cleanup: a replica was down or did not take the data, or the
    /// ring changed meanwhile.
    pub ranges_skipped: u64,
    /// Keys dropped.
    pub keys_removed: u64,
    /// Bytes of the states dropped.
    pub bytes_removed: u64,
}

/// `cleanup`: hands the data of every range this node no longer replicates to the range's
/// current replicas (every one must be up and take it: a write acknowledged only here, as
/// with W=1, is not lost), then drops it here. A key written meanwhile is kept (it is dropped
/// only if its stored state is still the one handed over); the next cleanup takes it.
/// Refused while a membership change is under way: the data may be needed for it.
pub async fn run_cleanup(node: &Arc<Node>) -> Result<CleanupStats, String> {
    let _one = node.repair_lock.lock().await;
    if node.pending_ring().is_some()
        || node.is_joining()
        || node.moving_from().is_some()
        || node.transfers.progress().is_some()
    {
        return Err(
            "a node is joining, leaving or moving data: run cleanup once it is done".into(),
        );
    }
    let ring = node.ring();
    let placement = node.placement(&ring);
    let foreign: Vec<(TokenRange, Vec<String>)> = ring
        .ranges(&placement)
        .into_iter()
        .filter(|(_, replicas)| !replicas.contains(&node.id))
        .collect();
    let mut stats = CleanupStats {
        ranges_foreign: foreign.len() as u64,
        ..CleanupStats::default()
    };
    node.transfers.begin("cleanup", foreign.len());
    let mut throttle = Throttle::new();
    for (range, replicas) in &foreign {
        match clean_range(node, *range, replicas, &mut throttle).await {
            Ok((0, _)) => {}
            Ok((keys, bytes)) => {
                stats.ranges_cleaned += 1;
                stats.keys_removed += keys;
                stats.bytes_removed += bytes;
            }
            Err(e) => {
                crate::warn!("cleanup: {range} kept for a later cleanup: {e}");
                stats.ranges_skipped += 1;
            }
        }
        node.transfers.update(|p| p.ranges_done += 1);
    }
    node.transfers.set(None);
    crate::info!(
        "cleanup: {} keys of {} ranges handed over and dropped, {} ranges skipped",
        stats.keys_removed,
        stats.ranges_cleaned,
        stats.ranges_skipped
    );
    Ok(stats)
}

/// The automatic cleanup: runs [`run_cleanup`] once it is due ([`Node::schedule_cleanup`]:
/// `--cleanup-delay-s` after another node joined or a weight changed), waiting while a
/// membership change is under way, and again a minute later while ranges were skipped.
pub async fn run_auto_cleanup(node: Arc<Node>) {
    /// Wait before a cleanup that found a replica down tries those ranges again.
    const RETRY: Duration = Duration::from_secs(60);
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let due = node.cleanup_due_ms.load(Relaxed);
        if due == 0 || crate::now_ms() < due {
            continue;
        }
        let again = match run_cleanup(&node).await {
            Ok(stats) if stats.ranges_skipped > 0 => Some(RETRY),
            Ok(_) => None,
            // A membership change is under way: its end schedules another cleanup if needed,
            // and this one waits for it.
            Err(_) => Some(Duration::from_secs(5)),
        };
        let next = again.map_or(0, |d| crate::now_ms() + d.as_millis() as u64);
        // Unless a newer change rescheduled it meanwhile.
        let _ = node
            .cleanup_due_ms
            .compare_exchange(due, next, Relaxed, Relaxed);
    }
}

/// Hands this node's data of `range` to each of `replicas`, page by page, and drops each page
/// once all took it; returns the keys and bytes dropped.
async fn clean_range(
    node: &Arc<Node>,
    range: TokenRange,
    replicas: &[String],
    throttle: &mut Throttle,
) -> Result<(u64, u64), String> {
    let (mut keys, mut bytes) = (0, 0);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (entries, next) = read_page(node, range, after.clone()).await?;
        if entries.is_empty() {
            return Ok((keys, bytes));
        }
        // The ring may have moved on since the range was listed (a node joined or left).
        let ring = node.ring();
        if node.pending_ring().is_some()
            || ring.preference_list_for_token(range.end, &node.placement(&ring)) != replicas
        {
            return Err("the ring changed".into());
        }
        if let Some(down) = replicas.iter().find(|r| !node.is_up(r)) {
            return Err(format!("replica {down} is down"));
        }
        let size = size_of(&entries);
        for to in replicas {
            send_batch(node, to, entries.clone()).await?;
            throttle.account(size).await;
        }
        let n = node.clone();
        let (k, b) = tokio::task::spawn_blocking(move || {
            let (mut k, mut b) = (0u64, 0u64);
            for e in entries {
                if n.replica
                    .remove_if_unchanged(e.key.as_bytes(), &e.state)
                    .map_err(|err| err.to_string())?
                {
                    k += 1;
                    b += (e.key.len() + e.state.len()) as u64;
                }
            }
            Ok::<_, String>((k, b))
        })
        .await
        .map_err(|e| e.to_string())??;
        keys += k;
        bytes += b;
        node.transfers.keys_cleaned.fetch_add(k, Relaxed);
        node.transfers.update(|p| {
            p.keys += k;
            p.bytes += b;
        });
        match next {
            Some(cursor) => after = Some(cursor),
            None => return Ok((keys, bytes)),
        }
    }
}

/// Tries per range before an adoption gives up (a source may restart meanwhile).
const ADOPT_TRIES: u32 = 3;

/// The receiving side of `removenode`: streams in each range of `transfers` from every live
/// old owner (a write acknowledged by W replicas is on at least one live one, or in a hint
/// that goes to the new owners once the member is gone). Returns the keys received.
pub async fn adopt(node: &Arc<Node>, transfers: Vec<Transfer>) -> Result<u64, String> {
    node.transfers.begin("adopting", transfers.len());
    let mut throttle = Throttle::new();
    let mut keys = 0;
    let mut result = Ok(());
    'ranges: for t in &transfers {
        let mut tries = 0;
        loop {
            match stream_in(node, t, &mut throttle).await {
                Ok(n) => {
                    keys += n;
                    node.transfers.update(|p| p.ranges_done += 1);
                    break;
                }
                Err(e) if tries + 1 < ADOPT_TRIES => {
                    crate::warn!("removenode: streaming {} failed: {e}; retrying", t.range);
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    result = Err(format!("{}: streaming {} failed: {e}", node.id, t.range));
                    break 'ranges;
                }
            }
        }
    }
    node.transfers.set(None);
    result.map(|()| keys)
}

/// `removenode`: takes `target`, a member that is down for good, out of the ring. It is
/// ordered `Leaving` (so writes also reach the owners-to-be), every node that gains a range
/// streams it in from the range's live old owners, and then `target` is removed: a `Left`
/// order that also keeps it out if it comes back with its old data dir. Returns the keys
/// streamed. When a transfer fails, `target` stays `Leaving` and running the command again
/// resumes (merging twice is harmless).
pub async fn run_removal(node: &Arc<Node>, target: &str) -> Result<u64, String> {
    let _one = node.repair_lock.lock().await;
    let generation = check_removable(node, target)?;
    let events = node
        .membership()
        .set_status_of(target, MemberStatus::Leaving);
    node.on_membership_events(&events);
    crate::info!("removenode {target}: ordered to leave; its ranges go to their next owners");
    // Let gossip tell the coordinators, so that writes reach the new owners too.
    tokio::time::sleep(node.config.gossip_interval * 3).await;

    let current = node.ring();
    let after = ring_without(&current, target);
    let mut by_receiver: std::collections::BTreeMap<String, Vec<Transfer>> = Default::default();
    for t in current.move_plan(&after, &node.placement(&after)) {
        if t.from.iter().any(|f| f == target) {
            by_receiver.entry(t.to.clone()).or_default().push(t);
        }
    }
    let calls = by_receiver.into_iter().map(|(to, transfers)| async move {
        if to == node.id {
            return adopt(node, transfers).await;
        }
        let addr = node
            .addr_of(&to)
            .ok_or_else(|| format!("{to} is not a member"))?;
        let day = Duration::from_secs(24 * 3600);
        match node
            .peers
            .call(&addr, &PeerRequest::Adopt { transfers }, day)
            .await
        {
            Ok(PeerResponse::Adopted { keys }) => Ok(keys),
            Ok(PeerResponse::Error { message }) => Err(message),
            Ok(other) => Err(format!("{to}: unexpected answer {other:?}")),
            Err(e) => Err(format!("{to}: {e}")),
        }
    });
    let mut keys = 0;
    for r in futures_util::future::join_all(calls).await {
        keys += r.map_err(|e| format!("{e}; {target} stays leaving: run removenode again"))?;
    }

    let events = {
        let mut m = node.membership();
        let back = m.member(target).map(|x| x.generation) != Some(generation) || m.is_up(target);
        if back {
            return Err(format!(
                "{target} came back during the removal: decommission it instead"
            ));
        }
        m.remove(target)
    };
    node.on_membership_events(&events);
    // Make sure the removal reaches the others before answering.
    tokio::time::sleep(node.config.gossip_interval * 2).await;
    crate::info!("removenode {target}: done, {keys} keys streamed to the new owners");
    Ok(keys)
}

/// Why `target` cannot be removed now, or its generation.
pub fn check_removable(node: &Node, target: &str) -> Result<u64, String> {
    if target == node.id {
        return Err(format!(
            "{target} is the node running the command: decommission it, or ask another node"
        ));
    }
    let m = node.membership();
    let Some(member) = m.member(target).filter(|x| !x.tokens.is_empty()) else {
        return Err(format!("{target} is not a node of the ring"));
    };
    let status = member.effective_status();
    match status {
        MemberStatus::Normal | MemberStatus::Leaving => {}
        MemberStatus::Left => {
            return Err(format!(
                "{target} has already left the ring: nothing to remove"
            ))
        }
        MemberStatus::Joining => {
            return Err(format!(
                "{target} is still joining: it holds no range to hand over yet"
            ))
        }
    }
    if m.is_up(target) {
        return Err(format!(
            "{target} is up: decommission it instead (removenode is for a node that is gone)"
        ));
    }
    let others_serving = m
        .members()
        .filter(|x| x.id != target && !x.tokens.is_empty())
        .filter(|x| x.effective_status() == MemberStatus::Normal)
        .count();
    if others_serving == 0 {
        return Err(format!("{target} is the last node of the ring"));
    }
    if let Some(busy) = m.members().find(|x| {
        x.id != target
            && !x.tokens.is_empty()
            && matches!(
                x.effective_status(),
                MemberStatus::Joining | MemberStatus::Leaving
            )
    }) {
        return Err(format!(
            "{} is {:?}: wait until that membership change is done",
            busy.id,
            busy.effective_status()
        ));
    }
    Ok(member.generation)
}

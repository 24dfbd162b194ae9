//! Purging tombstones (and expired values, which are dead from their expiry time on, like a
//! tombstone written then) only when it is safe: a deleted key's tombstone is removed from a replica
//! once every other replica of its range has completed an anti-entropy session with this node
//! after the delete (so every replica holds the tombstone, or something newer), and the grace
//! period (`--tombstone-grace-s`) has passed. Before that, tombstones are ordinary versions that
//! anti-entropy carries like any other, so a replica that missed a delete can never bring the
//! value back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use kv_core::ring::TokenRange;
use kv_core::version::SiblingSet;

use crate::merkle_index::scan_range;
use crate::node::Node;

/// Clock skew allowed between the node that wrote a tombstone and this one.
const SKEW_MS: u64 = 1000;

/// When this node last completed an anti-entropy session with each peer, per range.
#[derive(Default)]
pub struct Agreements {
    at: Mutex<HashMap<(TokenRange, String), u64>>,
    /// Tombstones purged since start.
    pub purged: AtomicU64,
}

impl Agreements {
    /// Records a completed session with `peer` for `range` that started at `at_ms`.
    pub fn record(&self, range: TokenRange, peer: &str, at_ms: u64) {
        let mut m = self.at.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry((range, peer.to_string())).or_insert(0);
        *e = (*e).max(at_ms);
    }

    /// The oldest last session of `range` over `peers`; `None` if one never completed.
    fn oldest(&self, range: TokenRange, peers: &[String]) -> Option<u64> {
        let m = self.at.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .map(|p| m.get(&(range, p.clone())).copied())
            .try_fold(u64::MAX, |acc, t| t.map(|t| acc.min(t)))
    }
}

/// Whether `state` is dead and this node may drop it: only tombstones and expired values, the
/// last of them dead for longer than the grace period, and since before every peer's last
/// completed session (less clock skew).
pub fn purgeable(state: &SiblingSet, agreed_since: u64, now_ms: u64, grace_ms: u64) -> bool {
    let Some(dead) = state.dead_since(now_ms) else {
        return false;
    };
    dead.saturating_add(grace_ms) <= now_ms && dead.saturating_add(SKEW_MS) <= agreed_since
}

/// The age a tombstone must reach before a purge: the grace period, and never less than the
/// hint expiry (an older hint is dropped, never delivered, so none can outlive the tombstone).
fn min_age_ms(node: &Node) -> u64 {
    node.config
        .tombstone_grace
        .max(node.config.hint_expiry)
        .as_millis() as u64
}

/// Whether this node may drop `state`, a key of `range` (see [`purgeable`]).
pub fn purgeable_here(node: &Node, range: TokenRange, state: &SiblingSet) -> bool {
    if state.dead_since(crate::now_ms()).is_none() {
        return false;
    }
    let ring = node.ring();
    let placement = node.placement(&ring);
    let Some(replicas) = ring
        .ranges(&placement)
        .into_iter()
        .find(|(r, _)| *r == range)
        .map(|(_, replicas)| replicas)
    else {
        return false;
    };
    let peers: Vec<String> = replicas.into_iter().filter(|p| *p != node.id).collect();
    match node.agreements.oldest(range, &peers) {
        Some(agreed) => purgeable(state, agreed, crate::now_ms(), min_age_ms(node)),
        None => false,
    }
}

/// Purges the tombstones of every range whose replicas have all synced with this node since;
/// returns how many were removed.
pub fn purge(node: &Arc<Node>) -> u64 {
    let ring = node.ring();
    let placement = node.placement(&ring);
    let grace_ms = min_age_ms(node);
    let mine: std::collections::BTreeSet<TokenRange> =
        node.replica.merkle.ranges().into_iter().collect();
    let mut purged = 0;
    for (range, replicas) in ring.ranges(&placement) {
        if !mine.contains(&range) {
            continue;
        }
        let peers: Vec<String> = replicas.into_iter().filter(|p| *p != node.id).collect();
        let Some(agreed) = node.agreements.oldest(range, &peers) else {
            continue;
        };
        let data = match scan_range(node.replica.engine(), range) {
            Ok(d) => d,
            Err(e) => {
                crate::warn!("tombstone purge: cannot scan {range}: {e}");
                continue;
            }
        };
        let now = crate::now_ms();
        for (key, bytes) in data {
            let Ok(state) = SiblingSet::decode(&bytes) else {
                continue;
            };
            if purgeable(&state, agreed, now, grace_ms) {
                match node.replica.remove_if_unchanged(&key, &bytes) {
                    Ok(true) => purged += 1,
                    Ok(false) => {}
                    Err(e) => crate::warn!("tombstone purge: {e}"),
                }
            }
        }
    }
    node.agreements.purged.fetch_add(purged, Relaxed);
    purged
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_core::version::VersionVector;

    #[test]
    fn only_old_agreed_tombstones_are_purgeable() {
        let mut s = SiblingSet::new();
        s.update(&VersionVector::new(), "a", Some(b"v".to_vec()), 1_000);
        assert!(
            !purgeable(&s, 100_000, 100_000, 0),
            "a live value is never purged"
        );
        let ctx = s.context().clone();
        s.update(&ctx, "a", None, 10_000);
        assert!(purgeable(&s, 20_000, 20_000, 5_000));
        assert!(
            !purgeable(&s, 20_000, 12_000, 5_000),
            "within the grace period"
        );
        assert!(
            !purgeable(&s, 10_500, 20_000, 0),
            "a peer last synced before the delete"
        );
        let mut sib = s.clone();
        sib.update(&VersionVector::new(), "b", Some(b"again".to_vec()), 11_000);
        assert!(
            !purgeable(&sib, 50_000, 50_000, 0),
            "a concurrent live sibling"
        );
        assert!(!purgeable(&SiblingSet::new(), 50_000, 50_000, 0));
    }

    #[test]
    fn expired_values_are_purged_like_tombstones_written_at_their_expiry() {
        let mut s = SiblingSet::new();
        // Written at 1 s with a 9 s time to live: dead from 10 s on.
        s.update_expiring(
            &VersionVector::new(),
            "a",
            Some(b"v".to_vec()),
            1_000,
            Some(9_000),
        );
        assert!(!purgeable(&s, 100_000, 9_999, 0), "not expired yet");
        assert!(purgeable(&s, 20_000, 20_000, 5_000));
        assert!(
            !purgeable(&s, 20_000, 12_000, 5_000),
            "within the grace period after the expiry"
        );
        assert!(
            !purgeable(&s, 10_500, 20_000, 0),
            "a peer last synced before the value expired"
        );
        let mut beside = s.clone();
        beside.update(&VersionVector::new(), "b", Some(b"kept".to_vec()), 2_000);
        assert!(!purgeable(&beside, 50_000, 50_000, 0), "a live sibling");
    }

    #[test]
    fn agreement_needs_every_peer() {
        let a = Agreements::default();
        let r = TokenRange::new(1, 2);
        let peers = vec!["b".to_string(), "c".to_string()];
        a.record(r, "b", 10);
        assert_eq!(a.oldest(r, &peers), None);
        a.record(r, "c", 7);
        a.record(r, "b", 5);
        assert_eq!(
            a.oldest(r, &peers),
            Some(7),
            "the latest session per peer, oldest over peers"
        );
    }
}

//! The gossip worker: every round (about a second) it beats this node's heartbeat, lets the
//! failure detector re-judge its peers, and exchanges membership digests with a few random
//! peers. All decisions are kv-core's `Membership`; this file only moves digests.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use kv_core::membership::{Member, MemberStatus};

use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// Peers contacted per round.
const FANOUT: usize = 3;
const PEERS_FILE: &str = "peers.json";
/// The other members' last known records (ids, addresses, tokens, status): a restarted node
/// rebuilds the whole ring from them before any peer answers, instead of a ring of itself
/// alone (with which it would take every key as its own and acknowledge writes it does not
/// replicate).
const MEMBERS_FILE: &str = "members.json";

/// Runs gossip rounds until shutdown.
pub async fn run(node: Arc<Node>) {
    let mut interval = tokio::time::interval(node.config.gossip_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = node.shutdown_signal();
    let mut known_addrs = load_peers(&node);
    let mut known_shape = Vec::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => break,
        }
        round(&node, &known_addrs).await;
        let addrs: BTreeSet<String> = node
            .membership()
            .members()
            .filter(|m| m.id != node.id)
            .map(|m| m.addr.clone())
            .collect();
        if addrs != known_addrs && !addrs.is_empty() {
            save_peers(&node, &addrs);
            known_addrs = addrs;
        }
        let shape = ring_shape(&node);
        if shape != known_shape {
            save_members(&node);
            known_shape = shape;
        }
        node.metrics.gossip_rounds.fetch_add(1, Relaxed);
    }
}

/// One round: tick, then gossip with up to [`FANOUT`] peers. When no peer is known alive (a
/// restarted node, or one whose peers all went away), the seeds and remembered addresses are
/// asked instead, so a node always finds its way back into the cluster.
async fn round(node: &Arc<Node>, remembered: &BTreeSet<String>) {
    let (events, targets, digest) = {
        let mut m = node.membership();
        let now = crate::now_ms();
        let events = m.tick(now);
        let after = node.config.forget_left_after.as_millis() as u64;
        for id in m.forget_left(now, after) {
            crate::info!("forgot member {id}, which left the cluster over {after} ms ago");
        }
        let targets: Vec<String> = m
            .gossip_targets(FANOUT, crate::random_u64())
            .into_iter()
            .filter_map(|id| m.member(&id).map(|x| x.addr.clone()))
            .collect();
        (events, targets, m.digest())
    };
    node.on_membership_events(&events);
    let alive_peers = {
        let m = node.membership();
        let any = m.members().any(|x| x.id != node.id && m.is_up(&x.id));
        any
    };
    let mut addrs = targets;
    if !alive_peers {
        addrs.extend(node.config.seeds.iter().cloned());
        addrs.extend(remembered.iter().cloned());
        addrs.retain(|a| *a != node.config.listen);
        addrs.sort();
        addrs.dedup();
    }
    let mut exchanges = Vec::new();
    for addr in addrs {
        let node = node.clone();
        let req = PeerRequest::Gossip {
            members: digest.clone(),
        };
        exchanges.push(tokio::spawn(async move {
            let timeout = node.config.gossip_interval.max(Duration::from_millis(500));
            if let Ok(PeerResponse::Gossip { members }) =
                node.peers.call(&addr, &req, timeout).await
            {
                let events = node.membership().merge(&members, crate::now_ms());
                node.on_membership_events(&events);
            }
        }));
    }
    for e in exchanges {
        let _ = e.await;
    }
}

fn load_peers(node: &Node) -> BTreeSet<String> {
    remembered_peers(&node.config.data_dir)
}

/// The peer addresses a node remembered in its data dir.
pub fn remembered_peers(data_dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read(data_dir.join(PEERS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The other members' last known records, as saved by [`run`] (empty when none were).
pub fn remembered_members(data_dir: &std::path::Path) -> Vec<Member> {
    std::fs::read(data_dir.join(MEMBERS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// What of the membership shapes the ring: saved again only when it changes.
fn ring_shape(node: &Node) -> Vec<(String, String, MemberStatus, Vec<u64>)> {
    node.membership()
        .members()
        .filter(|m| m.id != node.id)
        .map(|m| (m.id.clone(), m.addr.clone(), m.status, m.tokens.clone()))
        .collect()
}

fn save_members(node: &Node) {
    let others: Vec<Member> = node
        .membership()
        .digest()
        .into_iter()
        .filter(|m| m.id != node.id)
        .collect();
    let bytes = serde_json::to_vec(&others).unwrap_or_default();
    if let Err(e) = crate::identity::write_atomically(&node.config.data_dir, MEMBERS_FILE, &bytes) {
        crate::warn!("cannot remember the members: {e}");
    }
}

fn save_peers(node: &Node, addrs: &BTreeSet<String>) {
    let bytes = serde_json::to_vec(addrs).unwrap_or_default();
    if let Err(e) = crate::identity::write_atomically(&node.config.data_dir, PEERS_FILE, &bytes) {
        crate::warn!("cannot remember peer addresses: {e}");
    }
}

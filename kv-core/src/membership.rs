//! Membership and failure detection, as a state machine fed with gossip and the time.
//!
//! Every node keeps a table of [`Member`] records. A member owns its own record: it bumps its
//! heartbeat `version` on every [`Membership::tick`] (a restart starts a new, higher
//! `generation`) and publishes its administrative [`MemberStatus`] and the peers it currently
//! suspects. Gossip exchanges whole tables ([`Membership::digest`]); [`Membership::merge`] keeps,
//! per member, the record with the newest `(generation, version)`.
//!
//! Failure detection (local to each node, never gossiped as a verdict):
//! - I *suspect* a peer when its heartbeat has not grown for `suspect_after_ms`.
//! - The peer is *down* for me when I suspect it and a second independent source agrees: another
//!   member that I consider alive (not suspected by me, not left) names the peer in its
//!   gossiped `suspects` list. When no such other live member exists (a two-node cluster, or all
//!   others are suspected too) my own suspicion suffices, since nobody is left to ask.
//! - A down or suspected peer whose heartbeat grows again is up at once.
//!
//! Administrative orders (decommission through an admin command on any node) must win over the
//! member's own gossip, which keeps bumping its version. They travel in a separate field,
//! [`Member::order`], merged on its own by the largest `(generation, epoch, status)`
//! independently of which heartbeat record wins. An order applies to the generation it was
//! issued for; while it applies, it decides the member's effective status, except that a
//! member's own `Left` is final. The member adopts an order naming it into its own `status`.
//!
//! A removal ([`Membership::remove`], `removenode` of a dead member) is a `Left` order that
//! also records a hash of the member's tokens, and it outlives restarts: a later generation
//! with the same tokens is the removed incarnation coming back with stale data, and stays
//! `Left`. A newcomer under the same id takes new tokens and is not concerned.
//!
//! Members that left are forgotten after a while ([`Membership::forget_left`]), so that a
//! cluster that replaces nodes for years does not gossip every node it ever had. A forgotten
//! member's last heartbeat is kept (locally, not gossiped): a peer that has not forgotten it
//! yet, or an old view of it, cannot gossip it back; a later incarnation under the same id (a
//! newer generation) is a new member. Removed members (`removenode`) are never forgotten: their
//! removal is what keeps their stale data out if they come back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Administrative status: gossiped, owned by the member itself (or set by an admin order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Announced, not yet owning data.
    Joining,
    /// A full member.
    Normal,
    /// Handing its data off before it leaves.
    Leaving,
    /// Gone for good (this generation).
    Left,
}

/// What `kvcli status` shows: the status combined with my view of the member's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Joining and alive.
    Joining,
    /// Normal and alive.
    Up,
    /// Failure detected (any status but `Left`).
    Down,
    /// Leaving and alive.
    Leaving,
    /// Left the cluster.
    Left,
}

/// An administrative order about a member, issued on any node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AdminOrder {
    /// The member generation the order is about; a restart with a newer one voids it.
    pub generation: u64,
    /// Orders about one generation are ordered by epoch: a later order wins.
    pub epoch: u64,
    /// The status ordered.
    pub status: MemberStatus,
    /// For a removal: the hash ([`tokens_hash`]) of the tokens the member held. The `Left`
    /// order then also applies to its later generations that hold the same tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_hash: Option<u64>,
}

/// A fingerprint of a member's ring tokens: the same tokens are the same data placement.
pub fn tokens_hash(tokens: &[u64]) -> u64 {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    crate::hash::seeded_hash(&bytes, 0x7265_6d6f_7665_6400)
}

/// One member's gossiped record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// Address peers and clients connect to.
    pub addr: String,
    /// Data center, for replica placement.
    pub dc: String,
    /// Rack, for replica placement.
    pub rack: String,
    /// Relative share of the ring.
    pub weight: u32,
    /// Ring tokens of its virtual nodes.
    pub tokens: Vec<u64>,
    /// Its own administrative status.
    pub status: MemberStatus,
    /// Incarnation: a restart uses a larger one.
    pub generation: u64,
    /// Heartbeat within the generation, bumped by the member on every tick and change.
    pub version: u64,
    /// Peers this member currently suspects (sorted).
    pub suspects: Vec<String>,
    /// The latest admin order about this member, merged separately (see the module doc).
    pub order: Option<AdminOrder>,
}

impl Member {
    /// A new member record in generation `generation`, version 0, no tokens, status `Joining`.
    pub fn new(id: impl Into<String>, addr: impl Into<String>, generation: u64) -> Self {
        Member {
            id: id.into(),
            addr: addr.into(),
            dc: String::new(),
            rack: String::new(),
            weight: 1,
            tokens: Vec::new(),
            status: MemberStatus::Joining,
            generation,
            version: 0,
            suspects: Vec::new(),
            order: None,
        }
    }

    /// The heartbeat `(generation, version)`: a larger one is newer.
    pub fn heartbeat(&self) -> (u64, u64) {
        (self.generation, self.version)
    }

    /// The status in force: the admin order for the current generation if there is one,
    /// except that the member's own `Left` is final; `Left` when the member was removed and
    /// holds the same tokens as then.
    pub fn effective_status(&self) -> MemberStatus {
        match &self.order {
            Some(o) if o.generation == self.generation && self.status != MemberStatus::Left => {
                o.status
            }
            Some(o) if self.was_removed(o) => MemberStatus::Left,
            _ => self.status,
        }
    }

    /// Whether `order` is a removal of an earlier generation of this member, with its tokens.
    fn was_removed(&self, order: &AdminOrder) -> bool {
        order.status == MemberStatus::Left
            && order.generation < self.generation
            && order.tokens_hash == Some(tokens_hash(&self.tokens))
    }
}

/// Failure-detector settings.
///
/// The threshold must leave room for gossip to carry a heartbeat across the cluster. Measured
/// with the default 3 s, one push-pull round per node per second to `k` targets from
/// [`Membership::gossip_targets`], 20 seeded runs of 200 rounds each (test helper
/// `simulate_gossip`): with k = 1 false "down" verdicts are common from 6 nodes on (stale views
/// on two nodes agree); with k = 2 one false verdict in all runs up to 24 nodes; with k = 3
/// none, and every node saw a dead peer down 3 to 4 s after its last heartbeat. The daemon
/// should gossip to 3 peers per round (or raise the threshold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// Suspect a peer whose heartbeat has not grown for this long (gossip rounds are ~1 s).
    pub suspect_after_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            suspect_after_ms: 3_000,
        }
    }
}

/// A change that a tick, merge or admin action made to my view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member I did not know of.
    Joined(String),
    /// A member's state changed.
    StateChanged {
        /// The member.
        id: String,
        /// Its state before.
        from: NodeState,
        /// Its state now.
        to: NodeState,
    },
    /// A member's tokens, weight, data center or rack changed (ring placement must be redone).
    TokensChanged(String),
    /// A member's address changed.
    AddressChanged(String),
    /// A member restarted with a newer generation.
    Restarted {
        /// The member.
        id: String,
        /// Its new generation.
        generation: u64,
    },
}

/// My local, ungossiped view of one peer's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Liveness {
    /// When I last saw its heartbeat grow.
    last_growth_ms: u64,
    /// Its heartbeat has not grown for `suspect_after_ms`.
    suspected: bool,
    /// Suspected and corroborated (see the module doc); cleared only by heartbeat growth.
    down: bool,
}

/// My view of the cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    /// My own id (my record is in `members`).
    me: String,
    /// Every member known, me included, by id.
    members: BTreeMap<String, Member>,
    /// Liveness of every peer (not me).
    liveness: BTreeMap<String, Liveness>,
    /// Detector settings.
    config: DetectorConfig,
    /// Local: when I first saw each member `Left`.
    left_since: BTreeMap<String, u64>,
    /// Local: the last heartbeat of each member I forgot; records no newer are ignored.
    forgotten: BTreeMap<String, (u64, u64)>,
}

impl Membership {
    /// My view at start: only me. `now_ms` is not needed yet (peers are timed from when they are
    /// first merged) and is taken so that the start time is available to the detector.
    pub fn new(me: Member, config: DetectorConfig, now_ms: u64) -> Self {
        let _ = now_ms;
        let id = me.id.clone();
        let mut members = BTreeMap::new();
        members.insert(id.clone(), me);
        Membership {
            me: id,
            members,
            liveness: BTreeMap::new(),
            config,
            left_since: BTreeMap::new(),
            forgotten: BTreeMap::new(),
        }
    }

    /// Forgets the members that have been `Left` in my view for `after_ms` or more, except
    /// removed ones (see the module doc); returns their ids.
    pub fn forget_left(&mut self, now_ms: u64, after_ms: u64) -> Vec<String> {
        let left: BTreeSet<String> = self
            .members
            .values()
            .filter(|m| m.id != self.me && m.effective_status() == MemberStatus::Left)
            .filter(|m| m.order.as_ref().is_none_or(|o| o.tokens_hash.is_none()))
            .map(|m| m.id.clone())
            .collect();
        self.left_since.retain(|id, _| left.contains(id));
        let mut out = Vec::new();
        for id in left {
            let since = *self.left_since.entry(id.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(since) < after_ms {
                continue;
            }
            if let Some(m) = self.members.remove(&id) {
                self.forgotten.insert(id.clone(), m.heartbeat());
            }
            self.liveness.remove(&id);
            self.left_since.remove(&id);
            out.push(id);
        }
        out
    }

    /// Whether member `id` was forgotten with a heartbeat of at least `heartbeat`.
    fn is_forgotten(&self, id: &str, heartbeat: (u64, u64)) -> bool {
        self.forgotten.get(id).is_some_and(|h| *h >= heartbeat)
    }

    /// My record.
    pub fn me(&self) -> &Member {
        // Law: `members` always holds my record (inserted in `new`, never removed).
        &self.members[&self.me]
    }

    fn me_mut(&mut self) -> &mut Member {
        self.members
            .entry(self.me.clone())
            .or_insert_with(|| Member::new(String::new(), String::new(), 0))
    }

    /// Changes my record and bumps its version, so the change wins in gossip. A status change
    /// made here also supersedes an admin order in force about me (the later decision wins).
    pub fn update_me(&mut self, f: impl FnOnce(&mut Member)) -> Vec<MembershipEvent> {
        let before = self.snapshot();
        let me = self.me_mut();
        let (id, generation, status) = (me.id.clone(), me.generation, me.effective_status());
        f(me);
        // The closure must not change who I am or move my heartbeat backwards.
        me.id = id;
        me.generation = me.generation.max(generation);
        me.version = me.version.saturating_add(1);
        // My own status change is the latest decision about me: if an admin order is in force
        // it would otherwise override the change forever, so the change becomes the next order.
        if me.status != status {
            if let Some(order) = me.order.as_mut().filter(|o| o.generation == me.generation) {
                order.epoch = order.epoch.saturating_add(1);
                order.status = me.status;
            }
        }
        self.events(before)
    }

    /// A heartbeat: bumps my version, re-evaluates suspicion and failure, publishes whom I
    /// suspect, and adopts an admin order about me.
    pub fn tick(&mut self, now_ms: u64) -> Vec<MembershipEvent> {
        let before = self.snapshot();
        self.evaluate(now_ms);
        let suspects: Vec<String> = self
            .liveness
            .iter()
            .filter(|(_, l)| l.suspected)
            .map(|(id, _)| id.clone())
            .collect();
        let me = self.me_mut();
        me.suspects = suspects;
        me.status = me.effective_status();
        me.version = me.version.saturating_add(1);
        self.events(before)
    }

    /// What to gossip: every record, sorted by id.
    pub fn digest(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// Merges a peer's digest. Per member the newest `(generation, version)` wins and admin
    /// orders merge on their own; a peer whose heartbeat grew is alive again at once. A newer
    /// record of me than my own (left over from an earlier run) is never taken: I bump my
    /// version past it, or, if it has a newer generation, move to the generation after it and
    /// report `Restarted` for myself (the daemon must then re-read [`me`](Self::me)'s
    /// generation if it derives anything from it).
    ///
    /// Law: the resulting table is the same whatever the order of the digests merged
    /// (commutative, associative, idempotent per record).
    pub fn merge(&mut self, digest: &[Member], now_ms: u64) -> Vec<MembershipEvent> {
        let before = self.snapshot();
        let mut events = Vec::new();
        for incoming in digest {
            if incoming.id == self.me {
                let me = self.me_mut();
                if incoming.heartbeat() > me.heartbeat() {
                    if incoming.generation > me.generation {
                        // Someone holds a newer generation of me than mine (my generation
                        // source went backwards): move past it as a restart would, so my
                        // records win again and nobody mistakes them for the old incarnation.
                        me.generation = incoming.generation.saturating_add(1);
                        me.version = 0;
                        events.push(MembershipEvent::Restarted {
                            id: me.id.clone(),
                            generation: me.generation,
                        });
                    } else {
                        me.version = incoming.version.saturating_add(1);
                    }
                }
                me.order = max_order(me.order.take(), incoming.order.clone());
                me.status = me.effective_status();
                continue;
            }
            match self.members.get_mut(&incoming.id) {
                None => {
                    // An old record of a member I forgot stays forgotten; a later incarnation
                    // under its id is a new member.
                    if self.is_forgotten(&incoming.id, incoming.heartbeat()) {
                        continue;
                    }
                    self.forgotten.remove(&incoming.id);
                    self.members.insert(incoming.id.clone(), incoming.clone());
                    self.liveness.insert(
                        incoming.id.clone(),
                        Liveness {
                            last_growth_ms: now_ms,
                            suspected: false,
                            down: false,
                        },
                    );
                }
                Some(known) => {
                    let order = max_order(known.order.take(), incoming.order.clone());
                    if incoming.heartbeat() > known.heartbeat() {
                        if incoming.generation > known.generation {
                            events.push(MembershipEvent::Restarted {
                                id: incoming.id.clone(),
                                generation: incoming.generation,
                            });
                        }
                        if incoming.addr != known.addr {
                            events.push(MembershipEvent::AddressChanged(incoming.id.clone()));
                        }
                        if incoming.tokens != known.tokens
                            || incoming.weight != known.weight
                            || incoming.dc != known.dc
                            || incoming.rack != known.rack
                        {
                            events.push(MembershipEvent::TokensChanged(incoming.id.clone()));
                        }
                        *known = incoming.clone();
                        let live = self
                            .liveness
                            .entry(incoming.id.clone())
                            .or_insert(Liveness {
                                last_growth_ms: now_ms,
                                suspected: false,
                                down: false,
                            });
                        live.last_growth_ms = live.last_growth_ms.max(now_ms);
                        live.suspected = false;
                        live.down = false;
                    }
                    known.order = order;
                }
            }
        }
        self.evaluate(now_ms);
        let mut changes = self.events(before);
        changes.extend(events);
        changes
    }

    /// An admin order (decommission and the like) about member `id`, issued here; it wins over
    /// the member's own gossip for its current generation (see the module doc). An unknown `id`
    /// changes nothing and gives no event.
    pub fn set_status_of(&mut self, id: &str, status: MemberStatus) -> Vec<MembershipEvent> {
        self.order(id, status, false)
    }

    /// Removes member `id` (`removenode`, for a member that is gone for good): a `Left` order
    /// that also keeps its later generations out while they hold the same tokens (see the
    /// module doc). An unknown `id` changes nothing and gives no event.
    pub fn remove(&mut self, id: &str) -> Vec<MembershipEvent> {
        self.order(id, MemberStatus::Left, true)
    }

    fn order(&mut self, id: &str, status: MemberStatus, removal: bool) -> Vec<MembershipEvent> {
        let before = self.snapshot();
        if let Some(m) = self.members.get_mut(id) {
            let epoch = match &m.order {
                Some(o) if o.generation == m.generation => o.epoch.saturating_add(1),
                _ => 1,
            };
            m.order = Some(AdminOrder {
                generation: m.generation,
                epoch,
                status,
                tokens_hash: removal.then(|| tokens_hash(&m.tokens)),
            });
            if id == self.me {
                let me = self.me_mut();
                me.status = me.effective_status();
                me.version = me.version.saturating_add(1);
            }
        }
        self.events(before)
    }

    /// Member `id`'s state in my view.
    pub fn state(&self, id: &str) -> Option<NodeState> {
        let m = self.members.get(id)?;
        let status = m.effective_status();
        if status == MemberStatus::Left {
            return Some(NodeState::Left);
        }
        if self.liveness.get(id).is_some_and(|l| l.down) {
            return Some(NodeState::Down);
        }
        Some(match status {
            MemberStatus::Joining => NodeState::Joining,
            MemberStatus::Normal => NodeState::Up,
            MemberStatus::Leaving => NodeState::Leaving,
            MemberStatus::Left => NodeState::Left,
        })
    }

    /// Whether `id` is known, not down and not left (joining and leaving members are alive and
    /// may be sent requests).
    pub fn is_up(&self, id: &str) -> bool {
        matches!(
            self.state(id),
            Some(NodeState::Up | NodeState::Joining | NodeState::Leaving)
        )
    }

    /// Whether I currently suspect `id` (its heartbeat stalled), down or not.
    pub fn is_suspected(&self, id: &str) -> bool {
        self.liveness.get(id).is_some_and(|l| l.suspected)
    }

    /// Every member, me included, sorted by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Member `id`'s record.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Up to `k` distinct live peers picked at random from `random`, plus sometimes one down
    /// peer (with probability `down / (live + 1)`, always when no peer is live) so that a
    /// recovery is noticed even when nobody else gossips with it. Pure given `random`.
    pub fn gossip_targets(&self, k: usize, random: u64) -> Vec<String> {
        let mut rng = SplitMix64(random);
        let mut live: Vec<&String> = Vec::new();
        let mut down: Vec<&String> = Vec::new();
        for (id, m) in &self.members {
            if *id == self.me || m.effective_status() == MemberStatus::Left {
                continue;
            }
            if self.liveness.get(id).is_some_and(|l| l.down) {
                down.push(id);
            } else {
                live.push(id);
            }
        }
        // Partial Fisher-Yates: the first `take` entries become a uniform sample.
        let take = k.min(live.len());
        for i in 0..take {
            let j = i + (rng.next() % (live.len() - i) as u64) as usize;
            live.swap(i, j);
        }
        let mut out: Vec<String> = live[..take].iter().map(|s| (*s).clone()).collect();
        if !down.is_empty() {
            let roll = rng.next() % (live.len() as u64 + 1);
            if roll < down.len() as u64 || live.is_empty() {
                let pick = (rng.next() % down.len() as u64) as usize;
                out.push(down[pick].clone());
            }
        }
        out
    }

    /// Recomputes suspicion, then failure, for every peer. Two passes so that the result does
    /// not depend on the order of peers: witnesses are judged by suspicion alone.
    fn evaluate(&mut self, now_ms: u64) {
        let threshold = self.config.suspect_after_ms;
        for (id, live) in self.liveness.iter_mut() {
            let left = self
                .members
                .get(id)
                .is_none_or(|m| m.effective_status() == MemberStatus::Left);
            live.suspected = !left && now_ms.saturating_sub(live.last_growth_ms) >= threshold;
            if !live.suspected {
                live.down = false;
            }
        }
        let witnesses: Vec<&Member> = self
            .members
            .values()
            .filter(|m| {
                m.id != self.me
                    && m.effective_status() != MemberStatus::Left
                    && self.liveness.get(&m.id).is_some_and(|l| !l.suspected)
            })
            .collect();
        let mut newly_down = BTreeSet::new();
        for (id, live) in &self.liveness {
            if !live.suspected || live.down {
                continue;
            }
            let others: Vec<&&Member> = witnesses.iter().filter(|w| w.id != *id).collect();
            let corroborated = others.iter().any(|w| w.suspects.iter().any(|s| s == id));
            if corroborated || others.is_empty() {
                newly_down.insert(id.clone());
            }
        }
        for id in newly_down {
            if let Some(live) = self.liveness.get_mut(&id) {
                live.down = true;
            }
        }
    }

    /// Every member's state, for diffing.
    fn snapshot(&self) -> BTreeMap<String, NodeState> {
        self.members
            .keys()
            .filter_map(|id| self.state(id).map(|s| (id.clone(), s)))
            .collect()
    }

    /// The `Joined` and `StateChanged` events between `before` and now.
    fn events(&self, before: BTreeMap<String, NodeState>) -> Vec<MembershipEvent> {
        let mut out = Vec::new();
        for id in self.members.keys() {
            let Some(now) = self.state(id) else { continue };
            match before.get(id) {
                None => out.push(MembershipEvent::Joined(id.clone())),
                Some(was) if *was != now => out.push(MembershipEvent::StateChanged {
                    id: id.clone(),
                    from: *was,
                    to: now,
                }),
                Some(_) => {}
            }
        }
        out
    }
}

/// The later of two admin orders; total, so the merge of orders is commutative.
fn max_order(a: Option<AdminOrder>, b: Option<AdminOrder>) -> Option<AdminOrder> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// A tiny deterministic generator (SplitMix64) so target choice is pure given a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, generation: u64) -> Member {
        let mut m = Member::new(id, format!("{id}.local:7000"), generation);
        m.status = MemberStatus::Normal;
        m
    }

    fn cluster(ids: &[&str]) -> Vec<Membership> {
        ids.iter()
            .map(|id| Membership::new(member(id, 1), DetectorConfig::default(), 0))
            .collect()
    }

    /// One gossip round at `now`: every alive node ticks, then every alive node merges the
    /// digest of every other alive node whose link `link(from, to)` is open.
    fn round(
        nodes: &mut [Membership],
        alive: &[bool],
        now: u64,
        link: impl Fn(usize, usize) -> bool,
    ) {
        for (i, n) in nodes.iter_mut().enumerate() {
            if alive[i] {
                n.tick(now);
            }
        }
        for from in 0..nodes.len() {
            let digest = nodes[from].digest();
            for to in 0..nodes.len() {
                if from != to && alive[from] && alive[to] && link(from, to) {
                    nodes[to].merge(&digest, now);
                }
            }
        }
    }

    fn all(_: usize, _: usize) -> bool {
        true
    }

    #[test]
    fn members_that_left_are_forgotten_and_not_gossiped_back_but_a_new_incarnation_joins() {
        let mut nodes = cluster(&["a", "b", "c", "d"]);
        let alive = [true; 4];
        for t in 0..3 {
            round(&mut nodes, &alive, t * 1000, all);
        }
        // c decommissions and stops; d was removed (removenode) while down.
        nodes[2].update_me(|m| m.status = MemberStatus::Left);
        nodes[0].remove("d");
        let alive = [true, true, true, false];
        for t in 3..6 {
            round(&mut nodes, &alive, t * 1000, all);
        }
        let old_c = nodes[2].me().clone();
        let alive = [true, true, false, false];
        assert_eq!(nodes[0].state("c"), Some(NodeState::Left));
        // Not before the delay, on every node that saw it leave.
        assert!(nodes[0].forget_left(6_000, 10_000).is_empty());
        assert!(nodes[1].forget_left(6_000, 10_000).is_empty());
        assert_eq!(nodes[0].forget_left(16_000, 10_000), vec!["c".to_string()]);
        assert_eq!(nodes[0].state("c"), None);
        assert_eq!(nodes[0].digest().len(), 3, "d, removed, is kept");
        // b has not forgotten c yet and gossips it: a stays without it.
        round(&mut nodes, &alive, 16_000, all);
        assert_eq!(nodes[0].state("c"), None);
        nodes[0].merge(std::slice::from_ref(&old_c), 16_500);
        assert_eq!(nodes[0].state("c"), None, "an old view of c is no news");
        assert_eq!(nodes[1].forget_left(16_000, 10_000), vec!["c".to_string()]);
        assert!(nodes
            .iter_mut()
            .take(2)
            .all(|n| n.forget_left(99_000, 10_000).is_empty()));
        assert_eq!(nodes[1].state("d"), Some(NodeState::Left));
        // A newcomer under c's id (a later generation) is a new member.
        let mut fresh = member("c", old_c.generation + 1);
        fresh.status = MemberStatus::Joining;
        let events = nodes[0].merge(&[fresh], 17_000);
        assert_eq!(events, vec![MembershipEvent::Joined("c".into())]);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Joining));
    }

    #[test]
    fn new_members_join_and_are_up() {
        let mut nodes = cluster(&["a", "b"]);
        let d = nodes[1].digest();
        let events = nodes[0].merge(&d, 0);
        assert_eq!(events, vec![MembershipEvent::Joined("b".into())]);
        assert_eq!(nodes[0].state("b"), Some(NodeState::Up));
        assert!(nodes[0].is_up("b"));
        assert_eq!(nodes[0].state("zz"), None);
    }

    #[test]
    fn a_dead_node_is_down_once_a_second_node_agrees() {
        let mut nodes = cluster(&["a", "b", "c"]);
        let mut alive = [true, true, true];
        let mut down_at = [None, None];
        for t in 0..=12u64 {
            let now = t * 1_000;
            if now == 5_000 {
                alive[2] = false; // c's last heartbeat was at 4 s
            }
            round(&mut nodes, &alive, now, all);
            for (i, slot) in down_at.iter_mut().enumerate() {
                if slot.is_none() && nodes[i].state("c") == Some(NodeState::Down) {
                    *slot = Some(now);
                }
            }
            if now <= 6_000 {
                assert_eq!(nodes[0].state("c"), Some(NodeState::Up), "at {now}");
            }
        }
        // Suspected at 7 s (3 s without growth), confirmed by the other's gossip in that round.
        assert_eq!(down_at, [Some(7_000), Some(7_000)]);
        assert!(!nodes[0].is_up("c"));
        assert_eq!(nodes[0].me().suspects, vec!["c".to_string()]);
    }

    #[test]
    fn suspicion_alone_does_not_mark_down_while_others_can_be_asked() {
        let mut nodes = cluster(&["a", "b", "c"]);
        let alive = [true, true, true];
        for t in 0..=2u64 {
            round(&mut nodes, &alive, t * 1_000, all);
        }
        // c stops gossiping. b is still heard at 4 s, not yet suspecting c.
        nodes[1].tick(4_000);
        let b = nodes[1].digest();
        nodes[0].merge(&b, 4_000);
        // At 5 s a has not seen c's heartbeat grow for 3 s: a suspects c, but b (alive, so a
        // second source to ask) does not say so.
        nodes[0].tick(5_000);
        assert!(nodes[0].is_suspected("c"));
        assert!(!nodes[0].is_suspected("b"));
        assert_eq!(nodes[0].state("c"), Some(NodeState::Up));
        // Once b suspects c too and says so, a marks c down.
        nodes[1].tick(5_000);
        assert!(nodes[1].me().suspects.contains(&"c".to_string()));
        let b = nodes[1].digest();
        let events = nodes[0].merge(&b, 5_000);
        assert!(events.contains(&MembershipEvent::StateChanged {
            id: "c".into(),
            from: NodeState::Up,
            to: NodeState::Down
        }));
    }

    #[test]
    fn a_false_suspicion_by_one_node_does_not_mark_down() {
        let mut nodes = cluster(&["a", "b", "c", "d"]);
        let alive = [true; 4];
        for t in 0..=2u64 {
            round(&mut nodes, &alive, t * 1_000, all);
        }
        // From 3 s on, a hears only b and d, and their news about c is withheld from a.
        for t in 3..=15u64 {
            let now = t * 1_000;
            for n in nodes.iter_mut() {
                n.tick(now);
            }
            for from in 0..4 {
                let digest = nodes[from].digest();
                for to in 0..4 {
                    if from == to {
                        continue;
                    }
                    if to == 0 {
                        if from == 2 {
                            continue;
                        }
                        let filtered: Vec<Member> =
                            digest.iter().filter(|m| m.id != "c").cloned().collect();
                        nodes[0].merge(&filtered, now);
                    } else {
                        nodes[to].merge(&digest, now);
                    }
                }
            }
            assert_eq!(nodes[0].state("c"), Some(NodeState::Up), "at {now}");
        }
        assert!(nodes[0].is_suspected("c"));
        assert!(!nodes[1].is_suspected("c"));
        // When the path heals, the suspicion clears at once.
        let c = nodes[2].digest();
        nodes[0].merge(&c, 16_000);
        assert!(!nodes[0].is_suspected("c"));
    }

    #[test]
    fn a_down_node_whose_heartbeat_grows_is_up_at_once() {
        let mut nodes = cluster(&["a", "b", "c"]);
        let mut alive = [true, true, true];
        for t in 0..=10u64 {
            if t == 3 {
                alive[2] = false;
            }
            round(&mut nodes, &alive, t * 1_000, all);
        }
        assert_eq!(nodes[0].state("c"), Some(NodeState::Down));
        // c comes back (same generation: a pause, not a restart).
        nodes[2].tick(11_000);
        let c = nodes[2].digest();
        let events = nodes[0].merge(&c, 11_000);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Up));
        assert!(events.contains(&MembershipEvent::StateChanged {
            id: "c".into(),
            from: NodeState::Down,
            to: NodeState::Up
        }));
    }

    #[test]
    fn a_restart_is_a_new_generation_and_wins_over_a_higher_version() {
        let mut nodes = cluster(&["a", "b"]);
        for t in 0..=50u64 {
            round(&mut nodes, &[true, true], t * 100, all);
        }
        assert!(nodes[0].member("b").unwrap().version > 40);
        let reborn = Membership::new(member("b", 2), DetectorConfig::default(), 6_000);
        let events = nodes[0].merge(&reborn.digest(), 6_000);
        assert!(events.contains(&MembershipEvent::Restarted {
            id: "b".into(),
            generation: 2
        }));
        assert_eq!(nodes[0].member("b").unwrap().heartbeat(), (2, 0));
        // The old generation's records, still gossiped by slow peers, lose.
        let stale = Member {
            version: 1_000,
            ..member("b", 1)
        };
        nodes[0].merge(&[stale], 6_100);
        assert_eq!(nodes[0].member("b").unwrap().heartbeat(), (2, 0));
    }

    #[test]
    fn a_newer_record_of_me_is_overtaken_not_taken() {
        let mut a = Membership::new(member("a", 5), DetectorConfig::default(), 0);
        a.tick(0);
        let same_gen = Member {
            version: 40,
            addr: "elsewhere".into(),
            ..member("a", 5)
        };
        a.merge(&[same_gen], 10);
        assert_eq!(a.me().heartbeat(), (5, 41));
        assert_eq!(a.me().addr, "a.local:7000");
        let newer_gen = member("a", 9);
        let events = a.merge(&[newer_gen], 20);
        assert_eq!(
            events,
            vec![MembershipEvent::Restarted {
                id: "a".into(),
                generation: 10
            }]
        );
        assert_eq!(a.me().heartbeat(), (10, 0));
    }

    #[test]
    fn two_node_cluster_marks_down_on_own_suspicion() {
        let mut nodes = cluster(&["a", "b"]);
        let mut alive = [true, true];
        let mut down_at = None;
        for t in 0..=10u64 {
            if t == 4 {
                alive[1] = false;
            }
            round(&mut nodes, &alive, t * 1_000, all);
            if down_at.is_none() && nodes[0].state("b") == Some(NodeState::Down) {
                down_at = Some(t * 1_000);
            }
        }
        assert_eq!(down_at, Some(6_000));
    }

    #[test]
    fn decommission_order_wins_over_the_members_own_gossip() {
        let mut nodes = cluster(&["a", "b", "c"]);
        let alive = [true, true, true];
        round(&mut nodes, &alive, 0, all);
        nodes[0].set_status_of("c", MemberStatus::Leaving);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Leaving));
        // c keeps gossiping newer records; a's order still stands and reaches everyone.
        for t in 1..=3u64 {
            round(&mut nodes, &alive, t * 1_000, all);
            assert_eq!(nodes[0].state("c"), Some(NodeState::Leaving));
        }
        for n in &nodes {
            assert_eq!(n.state("c"), Some(NodeState::Leaving));
        }
        assert_eq!(nodes[2].me().status, MemberStatus::Leaving);
        // An admin can cancel with a later order.
        nodes[1].set_status_of("c", MemberStatus::Normal);
        round(&mut nodes, &alive, 4_000, all);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Up));
        // c may still decide by itself later: its own change supersedes the standing order.
        nodes[2].update_me(|m| m.status = MemberStatus::Leaving);
        round(&mut nodes, &alive, 4_500, all);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Leaving));
        assert_eq!(nodes[1].state("c"), Some(NodeState::Leaving));
        // Once c has left by itself, that is final.
        nodes[2].update_me(|m| m.status = MemberStatus::Left);
        round(&mut nodes, &alive, 5_000, all);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Left));
        assert!(!nodes[0].is_up("c"));
        // A left member is never suspected nor a gossip target.
        round(&mut nodes, &[true, true, false], 20_000, all);
        assert_eq!(nodes[0].state("c"), Some(NodeState::Left));
        assert!(!nodes[0].gossip_targets(5, 7).contains(&"c".to_string()));
    }

    #[test]
    fn a_removed_member_stays_out_when_it_restarts_with_its_tokens_not_as_a_newcomer() {
        let mut nodes = cluster(&["a", "b", "c"]);
        for n in nodes.iter_mut() {
            let id = n.me().id.clone();
            n.update_me(|m| {
                m.tokens = vec![id.len() as u64 * 100 + id.as_bytes()[0] as u64];
                m.status = MemberStatus::Normal;
            });
        }
        round(&mut nodes, &[true, true, true], 0, all);
        // c dies; a removes it.
        for t in 1..=8u64 {
            round(&mut nodes, &[true, true, false], t * 1_000, all);
        }
        assert_eq!(nodes[0].state("c"), Some(NodeState::Down));
        nodes[0].remove("c");
        round(&mut nodes, &[true, true, false], 9_000, all);
        assert_eq!(nodes[1].state("c"), Some(NodeState::Left));

        // c restarts with its old data dir: a newer generation, the same tokens.
        let old = nodes[2].me().clone();
        let restart = |generation: u64, tokens: Vec<u64>| {
            let me = Member {
                generation,
                version: 0,
                order: None,
                suspects: Vec::new(),
                tokens,
                ..old.clone()
            };
            Membership::new(me, DetectorConfig::default(), 10_000)
        };
        nodes[2] = restart(old.generation + 1, old.tokens.clone());
        assert_eq!(nodes[2].me().status, MemberStatus::Normal);
        for t in 10..=12u64 {
            round(&mut nodes, &[true, true, true], t * 1_000, all);
        }
        for n in &nodes {
            assert_eq!(n.state("c"), Some(NodeState::Left), "seen by {}", n.me().id);
        }
        assert_eq!(nodes[2].me().status, MemberStatus::Left);

        // Wiped and started again as a newcomer: new tokens, so the removal does not apply.
        nodes[2] = restart(old.generation + 5, vec![7]);
        for t in 13..=15u64 {
            round(&mut nodes, &[true, true, true], t * 1_000, all);
        }
        for n in &nodes {
            assert_eq!(n.state("c"), Some(NodeState::Up), "seen by {}", n.me().id);
        }
    }

    #[test]
    fn update_me_bumps_version_and_reports_tokens() {
        let mut nodes = cluster(&["a", "b"]);
        round(&mut nodes, &[true, true], 0, all);
        let before = nodes[1].me().version;
        nodes[1].update_me(|m| m.tokens = vec![1, 2, 3]);
        assert_eq!(nodes[1].me().version, before + 1);
        let d = nodes[1].digest();
        let events = nodes[0].merge(&d, 100);
        assert_eq!(events, vec![MembershipEvent::TokensChanged("b".into())]);
        assert_eq!(nodes[0].member("b").unwrap().tokens, vec![1, 2, 3]);
    }

    #[test]
    fn gossip_targets_are_live_distinct_and_pure() {
        let mut nodes = cluster(&["a", "b", "c", "d", "e"]);
        let mut alive = [true; 5];
        for t in 0..=10u64 {
            if t == 2 {
                alive[4] = false;
            }
            round(&mut nodes, &alive, t * 1_000, all);
        }
        let a = &nodes[0];
        assert_eq!(a.state("e"), Some(NodeState::Down));
        let mut saw_down = false;
        for seed in 0..200u64 {
            let t = a.gossip_targets(2, seed);
            assert_eq!(t, a.gossip_targets(2, seed));
            let live: Vec<&String> = t.iter().filter(|id| *id != "e").collect();
            assert_eq!(live.len(), 2);
            assert!(!t.contains(&"a".to_string()));
            let unique: BTreeSet<&String> = t.iter().collect();
            assert_eq!(unique.len(), t.len());
            saw_down |= t.contains(&"e".to_string());
        }
        assert!(saw_down, "a down peer is sometimes probed");
        // Alone with only down peers, always probe one.
        let mut solo = cluster(&["a", "b"]);
        round(&mut solo, &[true, true], 0, all);
        for t in 1..=5u64 {
            round(&mut solo, &[true, false], t * 1_000, all);
        }
        assert_eq!(solo[0].gossip_targets(3, 1), vec!["b".to_string()]);
    }

    /// Records as an honest member would publish them: the content is a function of
    /// `(id, generation, version)`; admin orders vary freely.
    fn arb_record() -> impl Strategy<Value = Member> {
        (
            0..3usize,
            1..3u64,
            0..4u64,
            proptest::option::of((1..3u64, 0..3u64, 0..4u8, proptest::option::of(0..2u64))),
        )
            .prop_map(|(i, generation, version, order)| {
                let id = ["p", "q", "r"][i];
                let mut m = member(id, generation);
                m.version = version;
                m.tokens = vec![generation * 10 + version];
                m.order = order.map(|(generation, epoch, s, removed)| AdminOrder {
                    generation,
                    epoch,
                    tokens_hash: removed.map(|v| tokens_hash(&[generation * 10 + v])),
                    status: [
                        MemberStatus::Joining,
                        MemberStatus::Normal,
                        MemberStatus::Leaving,
                        MemberStatus::Left,
                    ][s as usize],
                });
                m
            })
    }

    /// Runs `n` nodes for `rounds` one-second rounds of push-pull gossip with `k` random
    /// targets each (from `gossip_targets`, seeded), the last node dying at round `rounds / 2`.
    /// Returns how many (observer, round) pairs saw a live peer as down, and the slowest
    /// detection of the dead node in ms after its last heartbeat.
    fn simulate_gossip(n: usize, k: usize, rounds: u64, seed: u64) -> (usize, u64) {
        let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut nodes = cluster(&refs);
        let everyone: Vec<Member> = nodes.iter().map(|m| m.me().clone()).collect();
        for m in nodes.iter_mut() {
            m.merge(&everyone, 0);
        }
        let mut rng = SplitMix64(seed);
        let dead = n - 1;
        let death = rounds / 2;
        let mut false_down = 0;
        let mut detected = vec![None; n - 1];
        for t in 1..=rounds {
            let now = t * 1_000;
            let up = |i: usize| i != dead || t <= death;
            for (i, node) in nodes.iter_mut().enumerate() {
                if up(i) {
                    node.tick(now);
                }
            }
            for i in (0..n).filter(|i| up(*i)) {
                for target in nodes[i].gossip_targets(k, rng.next()) {
                    let j = ids.iter().position(|x| *x == target).unwrap();
                    if !up(j) {
                        continue;
                    }
                    let push = nodes[i].digest();
                    nodes[j].merge(&push, now);
                    let pull = nodes[j].digest();
                    nodes[i].merge(&pull, now);
                }
            }
            for i in (0..n).filter(|i| up(*i)) {
                for j in (0..n).filter(|j| *j != i) {
                    let down = nodes[i].state(&ids[j]) == Some(NodeState::Down);
                    if down && up(j) {
                        false_down += 1;
                    }
                    if down && !up(j) && detected[i].is_none() {
                        detected[i] = Some(now - death * 1_000);
                    }
                }
            }
        }
        let slowest = detected
            .iter()
            .map(|d| d.unwrap_or(u64::MAX))
            .max()
            .unwrap();
        (false_down, slowest)
    }

    /// With the defaults (3 s, 1 s rounds) and a fan-out of 3, healthy gossip raises no false
    /// alarm and a dead node is seen down by everyone within a few rounds (see
    /// [`DetectorConfig`] for the fan-out figures).
    #[test]
    fn random_gossip_with_fanout_three_has_no_false_alarm() {
        for (n, seed) in [(3, 1), (6, 2), (12, 3), (24, 4)] {
            let (false_down, slowest) = simulate_gossip(n, 3, 200, seed);
            assert_eq!(false_down, 0, "n={n}");
            assert!((3_000..=6_000).contains(&slowest), "n={n}: {slowest} ms");
        }
    }

    proptest! {
        #[test]
        fn prop_merge_of_digests_is_order_independent(
            d1 in proptest::collection::vec(arb_record(), 0..6),
            d2 in proptest::collection::vec(arb_record(), 0..6),
        ) {
            let fresh = || Membership::new(member("me", 1), DetectorConfig::default(), 0);
            let mut x = fresh();
            x.merge(&d1, 10);
            x.merge(&d2, 10);
            let mut y = fresh();
            y.merge(&d2, 10);
            y.merge(&d1, 10);
            prop_assert_eq!(x.digest(), y.digest());
            let before = x.digest();
            x.merge(&d1, 10);
            x.merge(&d2, 10);
            prop_assert_eq!(x.digest(), before);
            for id in ["p", "q", "r"] {
                prop_assert_eq!(x.state(id), y.state(id));
            }
        }
    }
}

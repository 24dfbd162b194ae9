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
    /// except that the member's own `Left` is final.
    pub fn effective_status(&self) -> MemberStatus {
        match &self.order {
            Some(o) if o.generation == self.generation && self.status != MemberStatus::Left => {
                o.status
            }
            _ => self.status,
        }
    }
}

/// Failure-detector settings.
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
}

impl Membership {
    /// My view at start: only me.
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
        }
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

    /// Changes my record and bumps its version, so the change wins in gossip.
    pub fn update_me(&mut self, f: impl FnOnce(&mut Member)) -> Vec<MembershipEvent> {
        let before = self.snapshot();
        let me = self.me_mut();
        let (id, generation) = (me.id.clone(), me.generation);
        f(me);
        // The closure must not change who I am or move my heartbeat backwards.
        me.id = id;
        me.generation = me.generation.max(generation);
        me.version = me.version.saturating_add(1);
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
    /// record of me than my own (left over from an earlier run with the same generation) is
    /// never taken: I bump my version past it instead.
    ///
    /// Law: the resulting table is the same whatever the order of the digests merged
    /// (commutative, associative, idempotent per record).
    pub fn merge(&mut self, digest: &[Member], now_ms: u64) -> Vec<MembershipEvent> {
        let before = self.snapshot();
        let mut events = Vec::new();
        for incoming in digest {
            if incoming.id == self.me {
                let me = self.me_mut();
                if incoming.heartbeat() > me.heartbeat() && incoming.generation == me.generation {
                    me.version = incoming.version.saturating_add(1);
                }
                me.order = max_order(me.order.take(), incoming.order.clone());
                me.status = me.effective_status();
                continue;
            }
            match self.members.get_mut(&incoming.id) {
                None => {
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

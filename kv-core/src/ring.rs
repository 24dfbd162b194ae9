//! The consistent-hash ring: physical nodes, their virtual-node tokens, preference lists and the
//! plan of what moves when the membership changes.
//!
//! Each physical node owns a set of tokens (virtual nodes) on the 64-bit ring, about
//! [`DEFAULT_VNODES_PER_WEIGHT`] per unit of weight. The token `t` of a node makes it the
//! primary of the range `(previous token, t]`. A key lives at [`key_token`]`(key)`; its
//! preference list is built by walking clockwise from there over distinct physical nodes,
//! spreading replicas over data centers and racks (see [`Placement`]).
//!
//! Laws kept here (and property-tested below):
//! - a preference list never repeats a physical node;
//! - with `Simple { n }` and at least `n` data centers, the list spans `n` distinct DCs;
//!   with `PerDc`, it holds `min(count, nodes in that DC)` nodes of each named DC;
//! - `Simple { n }` lists are prefixes of one another (`n = 2` is the start of `n = 3`);
//! - every token of the ring lies in exactly one range of [`Ring::ranges`];
//! - the result depends only on the set of members and tokens, never on insertion order (a
//!   token claimed by two nodes belongs to the smaller id);
//! - joining a node through [`Ring::allocate_tokens`] only ever moves ranges *to* that node.
//!
//! Token allocation: the first node's tokens are evenly spaced; every later token is cut from
//! the largest range of the currently most loaded node (load per unit of weight), taking just
//! the share the new node is due. Primary ownership therefore stays within a few percent of the
//! weights, with few ranges (160 for 10 equal nodes), which keeps anti-entropy state small.
//!
//! Hot path: the preference list of every virtual node is precomputed for each placement
//! registered with [`Ring::prepare`] and recomputed on every change, so a lookup is one hash,
//! one binary search and a copy of the list. `&self` methods take no locks and the ring can be
//! shared between threads; a placement that was not prepared is computed on the fly (correct,
//! slower).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hash::{key_token, mix64, Token};

/// The id of a physical node.
pub type NodeId = String;

/// Virtual nodes (tokens) per unit of weight. With the allocator of [`Ring::allocate_tokens`],
/// 16 keeps ownership on 10 equal nodes within about ±3% of the mean for primaries and ±10% for
/// 3 replicas (the `balance_*` tests print the figures and bound them at ±25%), with only 160
/// ranges to keep Merkle trees for. 8 gives about -14%..+7% for 3 replicas, 32 about ±7%.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 16;

/// Number of tokens on the ring: 2^64.
pub const RING_SIZE: u128 = 1u128 << 64;

/// A physical node as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique, stable id.
    pub id: NodeId,
    /// Address peers and clients connect to (`host:port`).
    pub addr: String,
    /// Data center label: replicas are spread over distinct DCs first.
    pub dc: String,
    /// Rack label within the DC: replicas are spread over distinct racks second.
    pub rack: String,
    /// Relative capacity: a node of weight 2 gets twice the tokens and about twice the data.
    pub weight: u32,
}

/// How many replicas a key has and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// `n` replicas anywhere, spread over distinct DCs first, then distinct racks.
    Simple {
        /// Replica count.
        n: usize,
    },
    /// A replica count per data center (`dc1:2,dc2:1`), distinct racks first within each DC.
    PerDc(BTreeMap<String, usize>),
}

impl Placement {
    /// Total replica count asked for (the list can be shorter when the cluster is smaller).
    pub fn replicas(&self) -> usize {
        match self {
            Placement::Simple { n } => *n,
            Placement::PerDc(per_dc) => per_dc.values().sum(),
        }
    }

    /// Parses `"3"` into `Simple { n: 3 }` and `"dc1:2,dc2:1"` into `PerDc`.
    ///
    /// Errors with [`RingError::InvalidPlacement`] on an empty string, a count of 0, a count that
    /// is not a number, an empty DC name or a DC named twice.
    pub fn parse(s: &str) -> Result<Placement, RingError> {
        let invalid = |reason: String| RingError::InvalidPlacement {
            input: s.to_string(),
            reason,
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(invalid("empty placement".to_string()));
        }
        if !text.contains(':') {
            let n: usize = text
                .parse()
                .map_err(|_| invalid(format!("`{text}` is not a replica count")))?;
            if n == 0 {
                return Err(invalid("replica count must be at least 1".to_string()));
            }
            return Ok(Placement::Simple { n });
        }
        let mut per_dc = BTreeMap::new();
        for part in text.split(',') {
            let part = part.trim();
            let (dc, count) = part
                .split_once(':')
                .ok_or_else(|| invalid(format!("`{part}` is not of the form dc:count")))?;
            let (dc, count) = (dc.trim(), count.trim());
            if dc.is_empty() {
                return Err(invalid(format!("empty data center name in `{part}`")));
            }
            let count: usize = count
                .parse()
                .map_err(|_| invalid(format!("`{count}` is not a replica count (in `{part}`)")))?;
            if count == 0 {
                return Err(invalid(format!("data center `{dc}` has 0 replicas")));
            }
            if per_dc.insert(dc.to_string(), count).is_some() {
                return Err(invalid(format!("data center `{dc}` is named twice")));
            }
        }
        Ok(Placement::PerDc(per_dc))
    }
}

impl fmt::Display for Placement {
    /// The form [`Placement::parse`] reads: `3` or `dc1:2,dc2:1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Simple { n } => write!(f, "{n}"),
            Placement::PerDc(per_dc) => {
                for (i, (dc, count)) in per_dc.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{dc}:{count}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Placement {
    type Err = RingError;
    fn from_str(s: &str) -> Result<Placement, RingError> {
        Placement::parse(s)
    }
}

/// A contiguous stretch of the ring: `start` exclusive, `end` inclusive, wrapping past
/// `u64::MAX` when `start >= end`. `start == end` is the whole ring (a ring with one token).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TokenRange {
    /// Exclusive lower bound (the previous token on the ring).
    pub start: Token,
    /// Inclusive upper bound (the token that owns the range).
    pub end: Token,
}

impl TokenRange {
    /// The range `(start, end]`.
    pub fn new(start: Token, end: Token) -> TokenRange {
        TokenRange { start, end }
    }

    /// Whether `t` lies in the range.
    pub fn contains(&self, t: Token) -> bool {
        if self.start < self.end {
            self.start < t && t <= self.end
        } else {
            // Wrapping (or whole-ring when start == end).
            t > self.start || t <= self.end
        }
    }

    /// Whether the range wraps past `u64::MAX` (true for the whole ring).
    pub fn wraps(&self) -> bool {
        self.start >= self.end
    }

    /// Number of tokens in the range (`2^64` for the whole ring).
    pub fn size(&self) -> u128 {
        if self.start == self.end {
            RING_SIZE
        } else {
            u128::from(self.end.wrapping_sub(self.start))
        }
    }

    /// The fraction of the ring the range covers, in `(0, 1]`.
    pub fn fraction(&self) -> f64 {
        self.size() as f64 / RING_SIZE as f64
    }
}

impl fmt::Display for TokenRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:#018x}, {:#018x}]", self.start, self.end)
    }
}

/// One copy to make when the ring changes: `to` becomes a replica of `range` and can fetch it
/// from any of `from` (the replicas before the change, in preference order; empty when the
/// range had no replica, e.g. on the first node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The keys to copy.
    pub range: TokenRange,
    /// The node that must receive them.
    pub to: NodeId,
    /// The nodes that held them before the change.
    pub from: Vec<NodeId>,
}

/// One node a request goes to under a sloppy quorum (see [`Ring::sloppy_preference_list`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The node to send to.
    pub node: NodeId,
    /// `Some(id)` when `node` stands in for the unhealthy replica `id` and must keep a hint.
    pub hint_for: Option<NodeId>,
}

/// Errors of ring operations.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// A placement string could not be parsed.
    InvalidPlacement {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node is not a member of the ring.
    UnknownNode {
        /// The id asked for.
        id: NodeId,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::InvalidPlacement { input, reason } => {
                write!(f, "invalid placement `{input}`: {reason}")
            }
            RingError::UnknownNode { id } => write!(f, "node `{id}` is not in the ring"),
        }
    }
}

impl std::error::Error for RingError {}

/// A member: what it said about itself and the tokens it owns (sorted, without duplicates).
#[derive(Clone, Debug)]
struct Member {
    info: NodeInfo,
    tokens: Vec<Token>,
}

/// Preference lists of every virtual node for one placement.
#[derive(Clone, Debug)]
struct PlacementTable {
    placement: Placement,
    /// `lists[i]` serves the range ending at `vnode_tokens[i]`.
    lists: Vec<Vec<NodeId>>,
}

/// Everything derived from the members, rebuilt on every change.
#[derive(Clone, Debug, Default)]
struct Layout {
    /// Node index -> id, in id order (the order of `Ring::members`).
    ids: Vec<NodeId>,
    /// Node index -> data center index.
    node_dc: Vec<usize>,
    /// Node index -> (dc, rack) class index.
    node_class: Vec<usize>,
    /// DC index -> name, sorted.
    dc_names: Vec<String>,
    /// Class index -> DC index.
    class_dc: Vec<usize>,
    /// Class index -> number of nodes with tokens in it.
    class_size: Vec<usize>,
    /// Node index -> its weight.
    weights: Vec<u32>,
    /// Sorted tokens of the whole ring, without duplicates.
    vnode_tokens: Vec<Token>,
    /// Node index owning each entry of `vnode_tokens`.
    vnode_owner: Vec<usize>,
}

/// The consistent-hash ring. See the module documentation for its laws.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// Members by id; a BTreeMap so derived state never depends on insertion order.
    members: BTreeMap<NodeId, Member>,
    /// Derived from `members`.
    layout: Layout,
    /// Precomputed preference lists for the placements registered with [`Ring::prepare`].
    tables: Vec<PlacementTable>,
}

impl Ring {
    /// An empty ring.
    pub fn new() -> Ring {
        Ring::default()
    }

    /// Registers a placement whose preference lists are precomputed now and after every change,
    /// so lookups with it are fast. Preparing the same placement twice is a no-op.
    pub fn prepare(&mut self, placement: &Placement) {
        if self.table(placement).is_some() {
            return;
        }
        let lists = self.compute_lists(placement);
        self.tables.push(PlacementTable {
            placement: placement.clone(),
            lists,
        });
    }

    /// Builder form of [`Ring::prepare`].
    pub fn with_placement(mut self, placement: &Placement) -> Ring {
        self.prepare(placement);
        self
    }

    /// The placements registered with [`Ring::prepare`].
    pub fn prepared_placements(&self) -> impl Iterator<Item = &Placement> {
        self.tables.iter().map(|t| &t.placement)
    }

    /// Tokens for a new node of `weight` (`weight * DEFAULT_VNODES_PER_WEIGHT` of them), chosen
    /// against the current ring so that the node gets `weight / total weight` of the ring as
    /// primary, taken from the most loaded nodes. `seed` makes the choice reproducible (it picks
    /// the start on an empty ring and shifts each cut slightly, so two nodes given different
    /// seeds never pick the same tokens).
    ///
    /// Nodes should join one at a time: tokens allocated against a ring that lacks another
    /// joining node may overlap that node's cuts and leave both below their share.
    pub fn allocate_tokens(&self, weight: u32, seed: u64) -> Vec<Token> {
        let count = token_count(weight);
        if count == 0 {
            return Vec::new();
        }
        if self.layout.vnode_tokens.is_empty() {
            return evenly_spaced(count, mix64(seed));
        }
        let mut state = AllocState::from_layout(&self.layout);
        let me = state.add_owner(weight);
        let mut tokens = state.grow(me, count, seed);
        tokens.sort_unstable();
        tokens
    }

    /// Tokens for a new node of data center `dc` under a per-DC placement
    /// ([`Placement::PerDc`]): chosen against the ring of that DC's nodes alone. Each DC's
    /// replicas are picked walking its own nodes' tokens, so a node's share of its DC is what
    /// the DC's tokens give it, whatever the other DCs hold; balancing against the whole ring
    /// left equal nodes of one DC with shares up to three times apart. A token another DC's
    /// node holds is moved to the next free one (tokens stay unique on the ring).
    pub fn allocate_tokens_in_dc(&self, dc: &str, weight: u32, seed: u64) -> Vec<Token> {
        let mut local = Ring::new();
        for m in self.members.values().filter(|m| m.info.dc == dc) {
            local.members.insert(m.info.id.clone(), m.clone());
        }
        local.rebuild();
        let mut tokens = local.allocate_tokens(weight, seed);
        for t in &mut tokens {
            while self.layout.vnode_tokens.binary_search(t).is_ok() {
                *t = t.wrapping_add(1);
            }
        }
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// The full token list `id` should have after its weight changes to `new_weight`: its
    /// current tokens plus new ones cut from the most loaded nodes when it grows, or minus the
    /// tokens whose ranges go to the least loaded nodes when it shrinks. Apply it with
    /// [`Ring::insert`] and the updated [`NodeInfo`].
    ///
    /// Errors with [`RingError::UnknownNode`] when `id` is not a member.
    pub fn reallocate_tokens(
        &self,
        id: &str,
        new_weight: u32,
        seed: u64,
    ) -> Result<Vec<Token>, RingError> {
        let me = self
            .layout
            .ids
            .binary_search_by(|x| x.as_str().cmp(id))
            .map_err(|_| RingError::UnknownNode { id: id.to_string() })?;
        let current = self.tokens_of(id);
        let target = token_count(new_weight);
        let mut state = AllocState::from_layout(&self.layout);
        state.weights[me] = new_weight;
        let mut tokens = if target > current.len() {
            if state.tokens.is_empty() {
                evenly_spaced(target, mix64(seed))
            } else {
                let mut grown = current.clone();
                grown.extend(state.grow(me, target - current.len(), seed));
                grown
            }
        } else {
            state.shrink(me, current.len() - target);
            state
                .tokens
                .iter()
                .zip(&state.owner)
                .filter(|(_, o)| **o == me)
                .map(|(t, _)| *t)
                .collect()
        };
        tokens.sort_unstable();
        tokens.dedup();
        Ok(tokens)
    }

    /// Adds a node with its tokens, or replaces the node with the same id (its old tokens go).
    pub fn insert(&mut self, info: NodeInfo, tokens: Vec<Token>) {
        let mut tokens = tokens;
        tokens.sort_unstable();
        tokens.dedup();
        self.members
            .insert(info.id.clone(), Member { info, tokens });
        self.rebuild();
    }

    /// Removes a node; its ranges go to the next tokens clockwise. Returns what it was.
    pub fn remove(&mut self, id: &str) -> Option<NodeInfo> {
        let removed = self.members.remove(id)?;
        self.rebuild();
        Some(removed.info)
    }

    /// A member's description.
    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.members.get(id).map(|m| &m.info)
    }

    /// All members, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.members.values().map(|m| &m.info)
    }

    /// The tokens a member was inserted with (sorted, without duplicates); empty if unknown.
    pub fn tokens_of(&self, id: &str) -> Vec<Token> {
        self.members
            .get(id)
            .map(|m| m.tokens.clone())
            .unwrap_or_default()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Number of virtual nodes (distinct tokens) on the ring, which is also the number of ranges.
    pub fn vnode_count(&self) -> usize {
        self.layout.vnode_tokens.len()
    }

    /// The preference list of a key: up to `placement.replicas()` distinct nodes, the
    /// coordinator first. Empty on an empty ring.
    pub fn preference_list(&self, key: &[u8], placement: &Placement) -> Vec<NodeId> {
        self.preference_list_for_token(key_token(key), placement)
    }

    /// The preference list of a ring position (see [`Ring::preference_list`]).
    pub fn preference_list_for_token(&self, token: Token, placement: &Placement) -> Vec<NodeId> {
        let Some(vnode) = self.vnode_index(token) else {
            return Vec::new();
        };
        match self.table(placement) {
            Some(table) => table.lists[vnode].clone(),
            None => self.ids_of(&self.select(vnode, placement, &mut Scratch::default())),
        }
    }

    /// The precomputed preference list of a ring position, borrowed (no allocation); `None` when
    /// `placement` was not registered with [`Ring::prepare`] or the ring is empty.
    pub fn cached_preference_list(&self, token: Token, placement: &Placement) -> Option<&[NodeId]> {
        let vnode = self.vnode_index(token)?;
        self.table(placement).map(|t| t.lists[vnode].as_slice())
    }

    /// Every distinct physical node in clockwise order from `token`, each once: the raw walk
    /// used to find sloppy-quorum stand-ins.
    pub fn walk(&self, token: Token) -> Vec<NodeId> {
        let Some(start) = self.vnode_index(token) else {
            return Vec::new();
        };
        let layout = &self.layout;
        let mut seen = vec![false; layout.ids.len()];
        let mut out = Vec::new();
        let len = layout.vnode_tokens.len();
        for step in 0..len {
            let owner = layout.vnode_owner[(start + step) % len];
            if !seen[owner] {
                seen[owner] = true;
                out.push(layout.ids[owner].clone());
            }
        }
        out
    }

    /// The targets of a request under a sloppy quorum: the preference list with every node for
    /// which `is_up` is false replaced by the first healthy node further clockwise that is not
    /// already a target (one of the same DC if there is one, else any), which keeps a hint for
    /// it. A down replica without any stand-in is left out.
    pub fn sloppy_preference_list(
        &self,
        token: Token,
        placement: &Placement,
        is_up: impl Fn(&str) -> bool,
    ) -> Vec<Target> {
        // The common case, every replica up, copies each id once from the precomputed list.
        if let Some(list) = self.cached_preference_list(token, placement) {
            if list.iter().all(|id| is_up(id)) {
                return list
                    .iter()
                    .map(|node| Target {
                        node: node.clone(),
                        hint_for: None,
                    })
                    .collect();
            }
        }
        let preferred = self.preference_list_for_token(token, placement);
        if preferred.iter().all(|id| is_up(id)) {
            return preferred
                .into_iter()
                .map(|node| Target {
                    node,
                    hint_for: None,
                })
                .collect();
        }
        let walk = self.walk(token);
        let mut taken: Vec<&str> = preferred.iter().map(String::as_str).collect();
        let mut out = Vec::with_capacity(preferred.len());
        for id in &preferred {
            if is_up(id) {
                out.push(Target {
                    node: id.clone(),
                    hint_for: None,
                });
                continue;
            }
            let dc = self.node(id).map(|n| n.dc.as_str());
            let free = |c: &&NodeId| !taken.contains(&c.as_str()) && is_up(c);
            let same_dc = walk
                .iter()
                .filter(free)
                .find(|c| self.node(c).map(|n| n.dc.as_str()) == dc);
            if let Some(stand_in) = same_dc.or_else(|| walk.iter().find(free)) {
                taken.push(stand_in.as_str());
                out.push(Target {
                    node: stand_in.clone(),
                    hint_for: Some(id.clone()),
                });
            }
        }
        out
    }

    /// The range of the ring that contains `token` (the range of one virtual node); `None` on an
    /// empty ring.
    pub fn range_for_token(&self, token: Token) -> Option<TokenRange> {
        self.vnode_index(token).map(|i| self.vnode_range(i))
    }

    /// The ranges between consecutive tokens, in token order, each with its preference list.
    /// Together they cover the ring exactly once.
    pub fn ranges(&self, placement: &Placement) -> Vec<(TokenRange, Vec<NodeId>)> {
        let lists = self.lists(placement);
        (0..self.layout.vnode_tokens.len())
            .map(|i| (self.vnode_range(i), lists[i].clone()))
            .collect()
    }

    /// The ranges for which `id` is one of the replicas, in token order.
    pub fn replicated_ranges(&self, id: &str, placement: &Placement) -> Vec<TokenRange> {
        let lists = self.lists(placement);
        (0..self.layout.vnode_tokens.len())
            .filter(|&i| lists[i].iter().any(|n| n == id))
            .map(|i| self.vnode_range(i))
            .collect()
    }

    /// The fraction of the key space each member replicates under `placement` (with
    /// `Simple { n: 1 }`: the fraction it is primary for). Every member appears, owning 0.0 if
    /// it has no tokens. With `n` replicas and at least `n` nodes the fractions sum to `n`.
    pub fn ownership(&self, placement: &Placement) -> BTreeMap<NodeId, f64> {
        let lists = self.lists(placement);
        let mut out: BTreeMap<NodeId, f64> =
            self.members.keys().map(|id| (id.clone(), 0.0)).collect();
        for (i, list) in lists.iter().enumerate() {
            let share = self.vnode_range(i).fraction();
            for id in list {
                if let Some(v) = out.get_mut(id) {
                    *v += share;
                }
            }
        }
        out
    }

    /// What must move to go from `self` to `after`: for every stretch of the ring whose replica
    /// set changes, one [`Transfer`] per new replica, naming the old replicas that hold the data.
    /// Adjacent stretches with the same receiver and sources are merged. Nodes that stop being
    /// replicas of a range are not listed: they may drop it once the transfers are done.
    ///
    /// Law: with `after` = `self` plus one node (tokens from [`Ring::allocate_tokens`]), every
    /// transfer goes to the new node.
    pub fn move_plan(&self, after: &Ring, placement: &Placement) -> Vec<Transfer> {
        let mut bounds: Vec<Token> = self
            .layout
            .vnode_tokens
            .iter()
            .chain(&after.layout.vnode_tokens)
            .copied()
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let before_lists = self.lists(placement);
        let after_lists = after.lists(placement);
        let list_at = |ring: &Ring, lists: &[Vec<NodeId>], t: Token| -> Vec<NodeId> {
            ring.vnode_index(t)
                .map(|i| lists[i].clone())
                .unwrap_or_default()
        };
        let mut plan: Vec<Transfer> = Vec::new();
        // Index in `plan` of the last transfer to each receiver, to merge adjacent stretches.
        let mut last_to: HashMap<NodeId, usize> = HashMap::new();
        for (k, &end) in bounds.iter().enumerate() {
            let start = if k == 0 {
                bounds[bounds.len() - 1]
            } else {
                bounds[k - 1]
            };
            let range = TokenRange::new(start, end);
            // Every token of `range` lies in one range of each ring, so its end decides both.
            let before = list_at(self, &before_lists, end);
            let now = list_at(after, &after_lists, end);
            for to in now.iter().filter(|n| !before.contains(n)) {
                if let Some(&j) = last_to.get(to) {
                    let prev = &mut plan[j];
                    if prev.range.end == start && prev.from == before && k > 0 {
                        prev.range.end = end;
                        continue;
                    }
                }
                last_to.insert(to.clone(), plan.len());
                plan.push(Transfer {
                    range,
                    to: to.clone(),
                    from: before.clone(),
                });
            }
        }
        plan
    }

    // ----- internals -----

    fn table(&self, placement: &Placement) -> Option<&PlacementTable> {
        self.tables.iter().find(|t| &t.placement == placement)
    }

    /// The preference list of every virtual node: borrowed when prepared, computed otherwise.
    fn lists(&self, placement: &Placement) -> Cow<'_, [Vec<NodeId>]> {
        match self.table(placement) {
            Some(t) => Cow::Borrowed(t.lists.as_slice()),
            None => Cow::Owned(self.compute_lists(placement)),
        }
    }

    fn compute_lists(&self, placement: &Placement) -> Vec<Vec<NodeId>> {
        let mut scratch = Scratch::default();
        (0..self.layout.vnode_tokens.len())
            .map(|i| self.ids_of(&self.select(i, placement, &mut scratch)))
            .collect()
    }

    fn ids_of(&self, indices: &[usize]) -> Vec<NodeId> {
        indices
            .iter()
            .map(|&i| self.layout.ids[i].clone())
            .collect()
    }

    /// The virtual node whose range holds `token`: the first token at or after it, wrapping.
    fn vnode_index(&self, token: Token) -> Option<usize> {
        let tokens = &self.layout.vnode_tokens;
        if tokens.is_empty() {
            return None;
        }
        let i = tokens.partition_point(|&x| x < token);
        Some(if i == tokens.len() { 0 } else { i })
    }

    fn vnode_range(&self, i: usize) -> TokenRange {
        let tokens = &self.layout.vnode_tokens;
        let prev = if i == 0 {
            tokens[tokens.len() - 1]
        } else {
            tokens[i - 1]
        };
        TokenRange::new(prev, tokens[i])
    }

    fn rebuild(&mut self) {
        let mut layout = Layout::default();
        let mut dc_index: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            dc_index.insert(m.info.dc.as_str(), 0);
        }
        for (i, v) in dc_index.values_mut().enumerate() {
            *v = i;
        }
        layout.dc_names = dc_index.keys().map(|s| s.to_string()).collect();
        let mut class_index: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let mut all: Vec<(Token, usize)> = Vec::new();
        for (idx, m) in self.members.values().enumerate() {
            layout.ids.push(m.info.id.clone());
            layout.weights.push(m.info.weight);
            let dc = dc_index.get(m.info.dc.as_str()).copied().unwrap_or(0);
            layout.node_dc.push(dc);
            let key = (m.info.dc.as_str(), m.info.rack.as_str());
            let next = class_index.len();
            let class = *class_index.entry(key).or_insert(next);
            if class == layout.class_dc.len() {
                layout.class_dc.push(dc);
                layout.class_size.push(0);
            }
            layout.node_class.push(class);
            if !m.tokens.is_empty() {
                layout.class_size[class] += 1;
            }
            all.extend(m.tokens.iter().map(|&t| (t, idx)));
        }
        // Sorting by (token, index) and keeping the first of equal tokens gives a shared token
        // to the smallest id, whatever order the nodes were inserted in.
        all.sort_unstable();
        all.dedup_by_key(|(t, _)| *t);
        layout.vnode_tokens = all.iter().map(|(t, _)| *t).collect();
        layout.vnode_owner = all.iter().map(|(_, o)| *o).collect();
        self.layout = layout;
        let placements: Vec<Placement> = self.tables.drain(..).map(|t| t.placement).collect();
        for placement in placements {
            let lists = self.compute_lists(&placement);
            self.tables.push(PlacementTable { placement, lists });
        }
    }

    /// The replicas (node indices, in preference order) of the range ending at vnode `start`.
    ///
    /// Simple: repeatedly take, among the distinct nodes clockwise, the first one whose DC holds
    /// the fewest replicas so far and, among those, whose (dc, rack) holds the fewest: a new DC
    /// first, then a new rack, then any node. PerDc: the same with only DCs that still need
    /// replicas eligible and racks compared within the DC.
    ///
    /// Only the first `need[class]` nodes of each (dc, rack) class can ever be taken (nodes of a
    /// class are taken in clockwise order and at most `need` of them), so the walk stops once it
    /// has seen them all: on a single-rack cluster that is after `n` distinct nodes.
    fn select(&self, start: usize, placement: &Placement, s: &mut Scratch) -> Vec<usize> {
        let layout = &self.layout;
        let classes = layout.class_dc.len();
        let dcs = layout.dc_names.len();
        // Replicas wanted per DC (usize::MAX: no per-DC limit).
        s.want_dc.clear();
        match placement {
            Placement::Simple { .. } => s.want_dc.resize(dcs, usize::MAX),
            Placement::PerDc(per_dc) => s.want_dc.extend(
                layout
                    .dc_names
                    .iter()
                    .map(|dc| per_dc.get(dc).copied().unwrap_or(0)),
            ),
        }
        let total = placement.replicas();
        s.need.clear();
        s.need.extend((0..classes).map(|c| {
            total
                .min(s.want_dc[layout.class_dc[c]])
                .min(layout.class_size[c])
        }));
        let mut remaining: usize = s.need.iter().sum();
        s.seen_in_class.clear();
        s.seen_in_class.resize(classes, 0);
        s.seen_node.clear();
        s.seen_node.resize(layout.ids.len(), false);
        s.candidates.clear();
        let len = layout.vnode_tokens.len();
        let mut step = 0;
        while remaining > 0 && step < len {
            let owner = layout.vnode_owner[(start + step) % len];
            step += 1;
            if s.seen_node[owner] {
                continue;
            }
            s.seen_node[owner] = true;
            let class = layout.node_class[owner];
            if s.seen_in_class[class] < s.need[class] {
                s.seen_in_class[class] += 1;
                remaining -= 1;
                s.candidates.push(owner);
            }
        }
        s.used_dc.clear();
        s.used_dc.resize(dcs, 0);
        s.used_class.clear();
        s.used_class.resize(classes, 0);
        let mut chosen = Vec::with_capacity(total.min(s.candidates.len()));
        while chosen.len() < total {
            let mut best: Option<(usize, (usize, usize))> = None;
            for (pos, &node) in s.candidates.iter().enumerate() {
                if node == usize::MAX {
                    continue;
                }
                let dc = layout.node_dc[node];
                if s.used_dc[dc] >= s.want_dc[dc] {
                    continue;
                }
                let class = layout.node_class[node];
                let score = match placement {
                    Placement::Simple { .. } => (s.used_dc[dc], s.used_class[class]),
                    Placement::PerDc(_) => (0, s.used_class[class]),
                };
                if best.is_none_or(|(_, b)| score < b) {
                    best = Some((pos, score));
                }
            }
            let Some((pos, _)) = best else { break };
            let node = s.candidates[pos];
            s.candidates[pos] = usize::MAX;
            s.used_dc[layout.node_dc[node]] += 1;
            s.used_class[layout.node_class[node]] += 1;
            chosen.push(node);
        }
        chosen
    }
}

/// Reused buffers of [`Ring::select`].
#[derive(Default)]
struct Scratch {
    want_dc: Vec<usize>,
    need: Vec<usize>,
    seen_in_class: Vec<usize>,
    seen_node: Vec<bool>,
    candidates: Vec<usize>,
    used_dc: Vec<usize>,
    used_class: Vec<usize>,
}

fn token_count(weight: u32) -> usize {
    usize::try_from(u64::from(weight) * u64::from(DEFAULT_VNODES_PER_WEIGHT)).unwrap_or(usize::MAX)
}

/// `count` tokens at equal distances, the first at `start`.
fn evenly_spaced(count: usize, start: Token) -> Vec<Token> {
    let step = RING_SIZE / count as u128;
    let mut tokens: Vec<Token> = (0..count as u128)
        .map(|i| start.wrapping_add((i * step) as u64))
        .collect();
    tokens.sort_unstable();
    tokens
}

/// A working copy of the ring for token allocation: tokens, owners and primary loads.
struct AllocState {
    /// Sorted tokens.
    tokens: Vec<Token>,
    /// Owner index of each token.
    owner: Vec<usize>,
    /// Primary load (tokens owned) per owner.
    loads: Vec<u128>,
    /// Weight per owner.
    weights: Vec<u32>,
}

impl AllocState {
    fn from_layout(layout: &Layout) -> AllocState {
        let mut state = AllocState {
            tokens: layout.vnode_tokens.clone(),
            owner: layout.vnode_owner.clone(),
            loads: vec![0; layout.ids.len()],
            weights: layout.weights.clone(),
        };
        for i in 0..state.tokens.len() {
            state.loads[state.owner[i]] += state.range_size(i);
        }
        state
    }

    fn add_owner(&mut self, weight: u32) -> usize {
        self.loads.push(0);
        self.weights.push(weight);
        self.loads.len() - 1
    }

    /// Size of the range ending at token `i`.
    fn range_size(&self, i: usize) -> u128 {
        let prev = if i == 0 {
            self.tokens[self.tokens.len() - 1]
        } else {
            self.tokens[i - 1]
        };
        TokenRange::new(prev, self.tokens[i]).size()
    }

    /// Load per unit of weight; a weightless owner that holds anything is the most overloaded.
    fn pressure(&self, o: usize) -> f64 {
        if self.weights[o] == 0 {
            if self.loads[o] > 0 {
                f64::INFINITY
            } else {
                0.0
            }
        } else {
            self.loads[o] as f64 / f64::from(self.weights[o])
        }
    }

    /// Adds `count` tokens for owner `me`, each cut from the largest range of the currently
    /// most loaded other owner, so that `me` ends near its share `weight / total weight`.
    fn grow(&mut self, me: usize, count: usize, seed: u64) -> Vec<Token> {
        let total_weight: u128 = self.weights.iter().map(|&w| u128::from(w)).sum();
        let target = (RING_SIZE * u128::from(self.weights[me]))
            .checked_div(total_weight)
            .unwrap_or(0);
        let mut out = Vec::with_capacity(count);
        for k in 0..count {
            let left = (count - k) as u128;
            let want = target.saturating_sub(self.loads[me]) / left;
            // The most loaded donor (ties: lowest index, i.e. smallest id).
            let mut donor: Option<usize> = None;
            for o in 0..self.loads.len() {
                if o == me || self.loads[o] == 0 {
                    continue;
                }
                if donor.is_none_or(|d| self.pressure(o) > self.pressure(d)) {
                    donor = Some(o);
                }
            }
            let Some(donor) = donor else { break };
            // Its largest range that can still be split.
            let mut best: Option<(usize, u128)> = None;
            for i in 0..self.tokens.len() {
                if self.owner[i] != donor {
                    continue;
                }
                let size = self.range_size(i);
                if size >= 2 && best.is_none_or(|(_, b)| size > b) {
                    best = Some((i, size));
                }
            }
            let Some((i, size)) = best else { break };
            // Take what is due but leave the donor at least a quarter of the range, then shift
            // the cut down by up to 1/16 according to the seed, so that different seeds (almost)
            // never cut at the same token.
            let jitter = u128::from(mix64(seed ^ mix64(k as u64)) % (1 << 20));
            let capped = want.min(size - size / 4);
            let take = (capped - capped * jitter / (1 << 24)).clamp(1, size - 1);
            let prev = if i == 0 {
                self.tokens[self.tokens.len() - 1]
            } else {
                self.tokens[i - 1]
            };
            let token = prev.wrapping_add(take as u64);
            let pos = self.tokens.partition_point(|&t| t < token);
            self.tokens.insert(pos, token);
            self.owner.insert(pos, me);
            self.loads[me] += take;
            self.loads[donor] -= take;
            out.push(token);
        }
        out
    }

    /// Removes `count` tokens of `me`, each time the one whose range goes to the least loaded
    /// other owner (or back to `me` itself, which moves nothing).
    fn shrink(&mut self, me: usize, count: usize) {
        for _ in 0..count {
            let len = self.tokens.len();
            let mut best: Option<(usize, f64)> = None;
            for i in 0..len {
                if self.owner[i] != me {
                    continue;
                }
                let heir = self.owner[(i + 1) % len];
                let pressure = if heir == me {
                    f64::NEG_INFINITY
                } else {
                    self.pressure(heir)
                };
                if best.is_none_or(|(_, b)| pressure < b) {
                    best = Some((i, pressure));
                }
            }
            let Some((i, _)) = best else { break };
            let size = self.range_size(i);
            let heir = self.owner[(i + 1) % len];
            self.loads[me] -= size;
            if len > 1 {
                self.loads[heir] += size;
            }
            self.tokens.remove(i);
            self.owner.remove(i);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn info(id: &str, dc: &str, rack: &str, weight: u32) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            addr: format!("{id}.local:7000"),
            dc: dc.to_string(),
            rack: rack.to_string(),
            weight,
        }
    }

    /// Joins nodes one at a time, each with tokens allocated against the ring so far.
    fn grow_ring(ring: &mut Ring, nodes: &[NodeInfo]) {
        grow_ring_from(ring, nodes, 0);
    }

    fn grow_ring_from(ring: &mut Ring, nodes: &[NodeInfo], first_seed: usize) {
        for (i, n) in nodes.iter().enumerate() {
            let tokens = ring.allocate_tokens(n.weight, 1000 + (first_seed + i) as u64);
            ring.insert(n.clone(), tokens);
        }
    }

    fn equal_nodes(k: usize) -> Vec<NodeInfo> {
        (0..k)
            .map(|i| info(&format!("n{i:02}"), "dc1", "r1", 1))
            .collect()
    }

    fn simple(n: usize) -> Placement {
        Placement::Simple { n }
    }

    /// (min, max) deviation of the values from their mean, as fractions of the mean.
    fn deviation(values: &BTreeMap<NodeId, f64>) -> (f64, f64) {
        let mean = values.values().sum::<f64>() / values.len() as f64;
        let min = values.values().cloned().fold(f64::INFINITY, f64::min);
        let max = values.values().cloned().fold(f64::NEG_INFINITY, f64::max);
        (min / mean - 1.0, max / mean - 1.0)
    }

    /// Fraction of replica copies (range size x replicas) that a move plan copies.
    fn moved_fraction(plan: &[Transfer], replicas: usize) -> f64 {
        plan.iter().map(|t| t.range.fraction()).sum::<f64>() / replicas as f64
    }

    #[test]
    fn per_dc_allocation_balances_each_data_center_on_its_own() {
        // Two DCs joined alternately. Balanced against the whole ring, equal nodes of one DC
        // ended up to 34 % apart from their DC's mean over these seeds (72/75/53 % where 67
        // was due, seen on a real cluster); against their own DC, under 20 %.
        let order = ["a1", "b1", "a2", "b2", "a3", "b3"];
        let placement = Placement::parse("dc1:2,dc2:1").unwrap();
        let mut worst: f64 = 0.0;
        for seed in 0..20u64 {
            let mut ring = Ring::new();
            for (i, id) in order.iter().enumerate() {
                let n = info(id, if id.starts_with('a') { "dc1" } else { "dc2" }, "r1", 1);
                let tokens = ring.allocate_tokens_in_dc(&n.dc, n.weight, seed * 100 + i as u64);
                assert_eq!(tokens.len(), token_count(1));
                for t in &tokens {
                    assert!(
                        ring.layout.vnode_tokens.binary_search(t).is_err(),
                        "a token is taken twice"
                    );
                }
                ring.insert(n, tokens);
            }
            let own = ring.ownership(&placement);
            for dc in ["a", "b"] {
                let shares: BTreeMap<NodeId, f64> = own
                    .iter()
                    .filter(|(id, _)| id.starts_with(dc))
                    .map(|(id, f)| (id.clone(), *f))
                    .collect();
                let (lo, hi) = deviation(&shares);
                worst = worst.max(-lo).max(hi);
            }
            // Every key still has 2 replicas in dc1 and 1 in dc2.
            for k in 0..100u32 {
                let list = ring.preference_list(&k.to_be_bytes(), &placement);
                let in_dc1 = list.iter().filter(|id| id.starts_with('a')).count();
                assert_eq!((list.len(), in_dc1), (3, 2), "{list:?}");
            }
        }
        assert!(
            worst < 0.2,
            "a node {:.0} % off its DC's mean",
            worst * 100.0
        );
    }

    #[test]
    fn ring_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ring>();
    }

    #[test]
    fn placement_parses_and_prints() {
        assert_eq!(Placement::parse("3").unwrap(), simple(3));
        assert_eq!(Placement::parse(" 1 ").unwrap(), simple(1));
        let per_dc = Placement::parse("dc1:2, dc2:1").unwrap();
        let expected: BTreeMap<String, usize> =
            [("dc1".to_string(), 2), ("dc2".to_string(), 1)].into();
        assert_eq!(per_dc, Placement::PerDc(expected));
        assert_eq!(per_dc.to_string(), "dc1:2,dc2:1");
        assert_eq!("dc1:2,dc2:1".parse::<Placement>().unwrap(), per_dc);
        assert_eq!(simple(3).to_string(), "3");
        for bad in [
            "",
            "0",
            "x",
            "-1",
            "dc1:0",
            ":2",
            "dc1:2,dc1:1",
            "dc1",
            "dc1:2,",
            "dc1:a",
        ] {
            let err = Placement::parse(bad).unwrap_err();
            assert!(matches!(err, RingError::InvalidPlacement { .. }), "{bad}");
            assert!(err.to_string().contains("invalid placement"), "{err}");
        }
    }

    #[test]
    fn placement_replicas_counts_all_dcs() {
        assert_eq!(simple(3).replicas(), 3);
        assert_eq!(Placement::parse("dc1:2,dc2:1").unwrap().replicas(), 3);
    }

    #[test]
    fn token_range_contains_size_and_wraps() {
        let r = TokenRange::new(10, 20);
        assert!(!r.contains(10) && r.contains(11) && r.contains(20) && !r.contains(21));
        assert_eq!(r.size(), 10);
        assert!(!r.wraps());
        let w = TokenRange::new(u64::MAX - 1, 1);
        assert!(w.wraps());
        assert!(w.contains(u64::MAX) && w.contains(0) && w.contains(1));
        assert!(!w.contains(u64::MAX - 1) && !w.contains(2));
        assert_eq!(w.size(), 3);
        let full = TokenRange::new(5, 5);
        assert!(full.contains(5) && full.contains(0) && full.contains(u64::MAX));
        assert_eq!(full.size(), RING_SIZE);
        assert_eq!(full.fraction(), 1.0);
        assert!((TokenRange::new(0, 1 << 62).fraction() - 0.25).abs() < 1e-12);
        assert!(r.to_string().contains("0x000000000000000a"));
    }

    #[test]
    fn empty_ring_has_nothing() {
        let ring = Ring::new();
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.vnode_count(), 0);
        assert!(ring.preference_list(b"k", &simple(3)).is_empty());
        assert!(ring.walk(7).is_empty());
        assert!(ring.ranges(&simple(3)).is_empty());
        assert!(ring.range_for_token(7).is_none());
        assert!(ring.ownership(&simple(1)).is_empty());
        assert!(ring.move_plan(&Ring::new(), &simple(3)).is_empty());
    }

    #[test]
    fn insert_node_nodes_tokens_of_and_remove() {
        let mut ring = Ring::new();
        ring.insert(info("b", "dc1", "r1", 1), vec![30, 10, 10]);
        ring.insert(info("a", "dc1", "r1", 1), vec![20]);
        assert_eq!(ring.len(), 2);
        assert!(!ring.is_empty());
        assert_eq!(ring.tokens_of("b"), vec![10, 30]);
        assert_eq!(ring.vnode_count(), 3);
        let ids: Vec<&str> = ring.nodes().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(ring.node("a").unwrap().addr, "a.local:7000");
        // Replacing keeps one member and drops the old tokens.
        ring.insert(info("b", "dc2", "r9", 2), vec![40]);
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.tokens_of("b"), vec![40]);
        assert_eq!(ring.node("b").unwrap().dc, "dc2");
        assert_eq!(ring.vnode_count(), 2);
        assert_eq!(ring.remove("a").unwrap().id, "a");
        assert!(ring.remove("a").is_none());
        assert!(ring.node("a").is_none());
        assert!(ring.tokens_of("a").is_empty());
        assert_eq!(ring.walk(0), vec!["b".to_string()]);
    }

    #[test]
    fn primary_owns_the_range_up_to_its_token() {
        let mut ring = Ring::new();
        ring.insert(info("a", "dc1", "r1", 1), vec![100]);
        ring.insert(info("b", "dc1", "r1", 1), vec![200]);
        let p1 = simple(1);
        assert_eq!(ring.preference_list_for_token(100, &p1), ["a"]);
        assert_eq!(ring.preference_list_for_token(101, &p1), ["b"]);
        assert_eq!(ring.preference_list_for_token(200, &p1), ["b"]);
        assert_eq!(ring.preference_list_for_token(201, &p1), ["a"]);
        assert_eq!(ring.preference_list_for_token(0, &p1), ["a"]);
        assert_eq!(ring.preference_list_for_token(150, &simple(2)), ["b", "a"]);
        // Never more replicas than nodes.
        assert_eq!(ring.preference_list_for_token(150, &simple(5)), ["b", "a"]);
        assert_eq!(ring.range_for_token(150), Some(TokenRange::new(100, 200)));
        assert_eq!(ring.range_for_token(250), Some(TokenRange::new(200, 100)));
    }

    #[test]
    fn preference_list_of_a_key_is_that_of_its_token() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(5));
        for i in 0..100 {
            let key = format!("key-{i}");
            assert_eq!(
                ring.preference_list(key.as_bytes(), &simple(3)),
                ring.preference_list_for_token(key_token(key.as_bytes()), &simple(3))
            );
        }
    }

    #[test]
    fn shared_token_belongs_to_the_smaller_id_in_any_order() {
        let mut one = Ring::new();
        one.insert(info("b", "dc1", "r1", 1), vec![50]);
        one.insert(info("a", "dc1", "r1", 1), vec![50, 90]);
        let mut two = Ring::new();
        two.insert(info("a", "dc1", "r1", 1), vec![50, 90]);
        two.insert(info("b", "dc1", "r1", 1), vec![50]);
        for ring in [&one, &two] {
            assert_eq!(ring.vnode_count(), 2);
            assert_eq!(ring.preference_list_for_token(40, &simple(1)), ["a"]);
            assert!(ring.ranges(&simple(1)).iter().all(|(r, _)| r.size() > 0));
        }
    }

    #[test]
    fn prepared_and_computed_lists_agree() {
        let mut ring = Ring::new();
        let nodes: Vec<NodeInfo> = (0..8)
            .map(|i| {
                info(
                    &format!("n{i}"),
                    ["dc1", "dc2"][i % 2],
                    ["r1", "r2", "r3"][i % 3],
                    1,
                )
            })
            .collect();
        grow_ring(&mut ring, &nodes);
        let placements = [simple(3), Placement::parse("dc1:2,dc2:1").unwrap()];
        let computed: Vec<Vec<Vec<NodeId>>> = placements
            .iter()
            .map(|p| {
                (0..200u64)
                    .map(|t| ring.preference_list_for_token(mix64(t), p))
                    .collect()
            })
            .collect();
        assert!(ring.cached_preference_list(1, &placements[0]).is_none());
        let mut prepared = ring.clone();
        for p in &placements {
            prepared.prepare(p);
            prepared.prepare(p);
        }
        assert_eq!(prepared.prepared_placements().count(), 2);
        for (p, expected) in placements.iter().zip(&computed) {
            for (t, list) in (0..200u64).zip(expected) {
                assert_eq!(&prepared.preference_list_for_token(mix64(t), p), list);
                assert_eq!(
                    prepared.cached_preference_list(mix64(t), p).unwrap(),
                    list.as_slice()
                );
            }
        }
        // Tables follow changes.
        prepared.remove("n3");
        ring.remove("n3");
        let p = &placements[1];
        for t in 0..200u64 {
            assert_eq!(
                prepared.preference_list_for_token(mix64(t), p),
                ring.preference_list_for_token(mix64(t), p)
            );
        }
        let built = Ring::new().with_placement(&simple(2));
        assert_eq!(built.prepared_placements().next(), Some(&simple(2)));
    }

    #[test]
    fn walk_lists_every_node_once_from_the_owner() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(6));
        for t in [0u64, 1 << 40, u64::MAX, 12345] {
            let walk = ring.walk(t);
            assert_eq!(walk.len(), 6);
            assert_eq!(walk.iter().collect::<BTreeSet<_>>().len(), 6);
            assert_eq!(walk[0], ring.preference_list_for_token(t, &simple(1))[0]);
            // Without DCs or racks, the preference list is the start of the walk.
            assert_eq!(walk[..3], ring.preference_list_for_token(t, &simple(3))[..]);
        }
    }

    #[test]
    fn simple_placement_prefers_new_dcs_then_new_racks() {
        let mut ring = Ring::new();
        // Clockwise: a(dc1,r1) b(dc1,r1) c(dc1,r2) d(dc2,r1)
        ring.insert(info("a", "dc1", "r1", 1), vec![10]);
        ring.insert(info("b", "dc1", "r1", 1), vec![20]);
        ring.insert(info("c", "dc1", "r2", 1), vec![30]);
        ring.insert(info("d", "dc2", "r1", 1), vec![40]);
        // From 5: a first, then the new DC (d), then a new rack of dc1 (c), then b.
        assert_eq!(
            ring.preference_list_for_token(5, &simple(4)),
            ["a", "d", "c", "b"]
        );
        assert_eq!(ring.preference_list_for_token(5, &simple(2)), ["a", "d"]);
        // PerDc takes its counts per DC, distinct racks first.
        let p = Placement::parse("dc1:2,dc2:1").unwrap();
        assert_eq!(ring.preference_list_for_token(5, &p), ["a", "c", "d"]);
        let only_dc2 = Placement::parse("dc2:3").unwrap();
        assert_eq!(ring.preference_list_for_token(5, &only_dc2), ["d"]);
        let unknown = Placement::parse("dc9:1").unwrap();
        assert!(ring.preference_list_for_token(5, &unknown).is_empty());
    }

    #[test]
    fn sloppy_list_replaces_down_nodes_with_stand_ins() {
        let mut ring = Ring::new();
        ring.insert(info("a", "dc1", "r1", 1), vec![10]);
        ring.insert(info("b", "dc2", "r1", 1), vec![20]);
        ring.insert(info("c", "dc1", "r1", 1), vec![30]);
        ring.insert(info("d", "dc2", "r1", 1), vec![40]);
        ring.insert(info("e", "dc1", "r1", 1), vec![50]);
        let p = simple(2);
        assert_eq!(ring.preference_list_for_token(5, &p), ["a", "b"]);
        let all_up = ring.sloppy_preference_list(5, &p, |_| true);
        assert_eq!(
            all_up.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(all_up.iter().all(|t| t.hint_for.is_none()));
        // b is down: the next healthy dc2 node (d) stands in, skipping c of dc1.
        let targets = ring.sloppy_preference_list(5, &p, |id| id != "b");
        assert_eq!(
            targets,
            vec![
                Target {
                    node: "a".into(),
                    hint_for: None
                },
                Target {
                    node: "d".into(),
                    hint_for: Some("b".into())
                },
            ]
        );
        // All of dc2 down: any healthy node stands in.
        let targets = ring.sloppy_preference_list(5, &p, |id| id != "b" && id != "d");
        assert_eq!(
            targets[1],
            Target {
                node: "c".into(),
                hint_for: Some("b".into())
            }
        );
        // Everything down but a: no stand-in for b.
        let targets = ring.sloppy_preference_list(5, &p, |id| id == "a");
        assert_eq!(targets.len(), 1);
    }

    #[test]
    fn ranges_replicated_ranges_and_ownership_agree() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(4));
        let p = simple(2);
        let ranges = ring.ranges(&p);
        assert_eq!(ranges.len(), ring.vnode_count());
        let total: u128 = ranges.iter().map(|(r, _)| r.size()).sum();
        assert_eq!(total, RING_SIZE);
        let owned = ring.ownership(&p);
        assert!((owned.values().sum::<f64>() - 2.0).abs() < 1e-9);
        for n in ring.nodes() {
            let mine = ring.replicated_ranges(&n.id, &p);
            let expected: Vec<TokenRange> = ranges
                .iter()
                .filter(|(_, l)| l.contains(&n.id))
                .map(|(r, _)| *r)
                .collect();
            assert_eq!(mine, expected);
            let share: f64 = mine.iter().map(|r| r.fraction()).sum();
            assert!((share - owned[&n.id]).abs() < 1e-9);
        }
    }

    #[test]
    fn allocate_tokens_spaces_the_first_node_evenly_and_is_reproducible() {
        let ring = Ring::new();
        let tokens = ring.allocate_tokens(2, 7);
        assert_eq!(tokens.len(), 2 * DEFAULT_VNODES_PER_WEIGHT as usize);
        assert_eq!(tokens, ring.allocate_tokens(2, 7));
        assert_ne!(tokens, ring.allocate_tokens(2, 8));
        let step = (RING_SIZE / tokens.len() as u128) as u64;
        let mut sorted = tokens.clone();
        sorted.sort_unstable();
        let gaps: BTreeSet<u64> = sorted.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps
            .iter()
            .all(|&g| g == step || g == 0 || g.abs_diff(step) <= 1));
        assert!(ring.allocate_tokens(0, 1).is_empty());
        // Against a ring: reproducible, different per seed, never an existing token.
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(3));
        let a = ring.allocate_tokens(1, 42);
        assert_eq!(a, ring.allocate_tokens(1, 42));
        let b = ring.allocate_tokens(1, 43);
        assert!(a.iter().all(|t| !b.contains(t)));
        let existing: BTreeSet<Token> = ring.nodes().flat_map(|n| ring.tokens_of(&n.id)).collect();
        assert!(a.iter().all(|t| !existing.contains(t)));
    }

    #[test]
    fn balance_on_ten_equal_nodes() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(10));
        assert_eq!(ring.vnode_count(), 10 * DEFAULT_VNODES_PER_WEIGHT as usize);
        let (lo1, hi1) = deviation(&ring.ownership(&simple(1)));
        let (lo3, hi3) = deviation(&ring.ownership(&simple(3)));
        println!(
            "balance, 10 equal nodes x {DEFAULT_VNODES_PER_WEIGHT} vnodes: primary {:+.1}%..{:+.1}%, 3 replicas {:+.1}%..{:+.1}% of the mean",
            lo1 * 100.0, hi1 * 100.0, lo3 * 100.0, hi3 * 100.0
        );
        assert!(lo1 > -0.25 && hi1 < 0.25, "primary {lo1} {hi1}");
        assert!(lo3 > -0.25 && hi3 < 0.25, "replicated {lo3} {hi3}");
    }

    #[test]
    fn balance_holds_while_growing_and_after_a_leave() {
        let nodes = equal_nodes(30);
        let mut ring = Ring::new();
        let mut worst: (f64, f64) = (0.0, 0.0);
        for k in 1..=nodes.len() {
            grow_ring_from(&mut ring, &nodes[k - 1..k], k);
            if k >= 3 {
                let (lo1, hi1) = deviation(&ring.ownership(&simple(1)));
                let (lo3, hi3) = deviation(&ring.ownership(&simple(3)));
                worst.0 = worst.0.max(hi1).max(-lo1);
                worst.1 = worst.1.max(hi3).max(-lo3);
            }
        }
        println!(
            "growing 3..=30 nodes: worst deviation primary {:.1}%, 3 replicas {:.1}%",
            worst.0 * 100.0,
            worst.1 * 100.0
        );
        assert!(worst.0 < 0.25 && worst.1 < 0.25, "{worst:?}");
        let mut ten = Ring::new();
        grow_ring(&mut ten, &equal_nodes(10));
        let mut worst_leave: f64 = 0.0;
        for n in equal_nodes(10) {
            let mut after = ten.clone();
            after.remove(&n.id);
            let (lo, hi) = deviation(&after.ownership(&simple(3)));
            worst_leave = worst_leave.max(hi).max(-lo);
        }
        println!(
            "10 nodes minus any one: worst deviation, 3 replicas {:.1}%",
            worst_leave * 100.0
        );
        assert!(worst_leave < 0.25, "{worst_leave}");
        assert_eq!(
            RingError::UnknownNode { id: "x".into() }.to_string(),
            "node `x` is not in the ring"
        );
    }

    #[test]
    fn weight_two_node_owns_about_twice() {
        let mut ring = Ring::new();
        let mut nodes = equal_nodes(9);
        nodes.insert(4, info("heavy", "dc1", "r1", 2));
        grow_ring(&mut ring, &nodes);
        assert_eq!(
            ring.tokens_of("heavy").len(),
            2 * DEFAULT_VNODES_PER_WEIGHT as usize
        );
        for n in [1, 3] {
            let own = ring.ownership(&simple(n));
            let light: Vec<f64> = own
                .iter()
                .filter(|(id, _)| *id != "heavy")
                .map(|(_, v)| *v)
                .collect();
            let ratio = own["heavy"] / (light.iter().sum::<f64>() / light.len() as f64);
            println!("weight-2 node owns {ratio:.2}x the mean of weight-1 nodes (n={n})");
            if n == 1 {
                assert!((1.75..=2.25).contains(&ratio), "ratio {ratio}");
            } else {
                // With 3 replicas on 10 nodes a node cannot hold a replica of more than
                // the whole ring, which caps the ratio below 2.
                assert!((1.5..=2.25).contains(&ratio), "ratio {ratio}");
            }
        }
    }

    #[test]
    fn joining_the_kth_node_moves_about_one_kth_to_it_only() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(10));
        let mut after = ring.clone();
        let newcomer = info("new", "dc1", "r1", 1);
        let tokens = after.allocate_tokens(1, 99);
        after.insert(newcomer, tokens);
        for n in [1, 3] {
            let plan = ring.move_plan(&after, &simple(n));
            assert!(plan.iter().all(|t| t.to == "new"), "{plan:?}");
            assert!(plan.iter().all(|t| t.from.len() == n));
            let moved = moved_fraction(&plan, n);
            println!(
                "joining the 11th node moves {:.2}% of the data (1/11 = 9.09%), n={n}",
                moved * 100.0
            );
            assert!((moved - 1.0 / 11.0).abs() < 0.25 / 11.0, "moved {moved}");
        }
    }

    #[test]
    fn leaving_moves_only_the_leaver_data() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(8));
        let mut after = ring.clone();
        after.remove("n03");
        let p = simple(3);
        let plan = ring.move_plan(&after, &p);
        assert!(!plan.is_empty());
        assert!(plan
            .iter()
            .all(|t| t.to != "n03" && t.from.contains(&"n03".to_string())));
        let moved = moved_fraction(&plan, 3);
        let share = ring.ownership(&p)["n03"] / 3.0;
        assert!((moved - share).abs() < 1e-9, "moved {moved} share {share}");
    }

    #[test]
    fn move_plan_from_empty_ring_sends_everything_to_the_first_nodes() {
        let mut after = Ring::new();
        grow_ring(&mut after, &equal_nodes(2));
        let plan = Ring::new().move_plan(&after, &simple(2));
        assert!(plan.iter().all(|t| t.from.is_empty()));
        assert!((moved_fraction(&plan, 2) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn reallocate_tokens_grows_and_shrinks() {
        let mut ring = Ring::new();
        grow_ring(&mut ring, &equal_nodes(6));
        let before = ring.tokens_of("n02");
        let grown = ring.reallocate_tokens("n02", 2, 5).unwrap();
        assert_eq!(grown.len(), 2 * before.len());
        assert!(before.iter().all(|t| grown.contains(t)));
        let mut heavier = ring.clone();
        heavier.insert(info("n02", "dc1", "r1", 2), grown);
        let own = heavier.ownership(&simple(1));
        let ratio = own["n02"] / own["n00"];
        assert!((1.6..=2.4).contains(&ratio), "ratio {ratio}");
        let plan = ring.move_plan(&heavier, &simple(1));
        assert!(plan.iter().all(|t| t.to == "n02"));

        let shrunk = heavier.reallocate_tokens("n02", 1, 5).unwrap();
        assert_eq!(shrunk.len(), before.len());
        let mut lighter = heavier.clone();
        lighter.insert(info("n02", "dc1", "r1", 1), shrunk);
        let (lo, hi) = deviation(&lighter.ownership(&simple(1)));
        assert!(lo > -0.25 && hi < 0.25, "{lo} {hi}");
        let plan = heavier.move_plan(&lighter, &simple(1));
        assert!(plan.iter().all(|t| t.to != "n02"));

        assert!(ring.reallocate_tokens("n02", 0, 1).unwrap().is_empty());
        assert_eq!(
            ring.reallocate_tokens("nope", 1, 1),
            Err(RingError::UnknownNode { id: "nope".into() })
        );
    }

    // ----- properties -----

    /// A random cluster: up to 12 nodes over up to 3 DCs and 2 racks per DC, weights 1..=3.
    fn arb_cluster() -> impl Strategy<Value = Vec<NodeInfo>> {
        proptest::collection::vec((0usize..3, 0usize..2, 1u32..=3), 1..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (dc, rack, w))| {
                    info(&format!("n{i}"), &format!("dc{dc}"), &format!("r{rack}"), w)
                })
                .collect()
        })
    }

    fn build(nodes: &[NodeInfo]) -> Ring {
        let mut ring = Ring::new();
        grow_ring(&mut ring, nodes);
        ring
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn preference_lists_are_distinct_and_spread_over_dcs(
            nodes in arb_cluster(), n in 1usize..5, probes in proptest::collection::vec(any::<u64>(), 16)
        ) {
            let ring = build(&nodes);
            let dcs: BTreeSet<&str> = nodes.iter().map(|x| x.dc.as_str()).collect();
            for t in probes {
                let list = ring.preference_list_for_token(t, &simple(n));
                prop_assert_eq!(list.len(), n.min(nodes.len()));
                prop_assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), list.len());
                let used: BTreeSet<&str> =
                    list.iter().map(|id| ring.node(id).unwrap().dc.as_str()).collect();
                prop_assert_eq!(used.len(), n.min(dcs.len()).min(list.len()));
                // Prefix law.
                let shorter = ring.preference_list_for_token(t, &simple(n.saturating_sub(1).max(1)));
                prop_assert_eq!(&list[..shorter.len()], &shorter[..]);
            }
        }

        #[test]
        fn per_dc_lists_take_the_count_of_each_dc(
            nodes in arb_cluster(), a in 1usize..3, b in 1usize..3, probes in proptest::collection::vec(any::<u64>(), 16)
        ) {
            let ring = build(&nodes);
            let p = Placement::parse(&format!("dc0:{a},dc1:{b}")).unwrap();
            for t in probes {
                let list = ring.preference_list_for_token(t, &p);
                prop_assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), list.len());
                for (dc, want) in [("dc0", a), ("dc1", b)] {
                    let in_dc: Vec<&NodeInfo> = nodes.iter().filter(|x| x.dc == dc).collect();
                    let got: Vec<&String> = list.iter().filter(|id| ring.node(id).unwrap().dc == dc).collect();
                    prop_assert_eq!(got.len(), want.min(in_dc.len()));
                    let racks_avail: BTreeSet<&str> = in_dc.iter().map(|x| x.rack.as_str()).collect();
                    let racks_used: BTreeSet<&str> = got.iter().map(|id| ring.node(id).unwrap().rack.as_str()).collect();
                    prop_assert_eq!(racks_used.len(), got.len().min(racks_avail.len()));
                }
            }
        }

        #[test]
        fn ranges_cover_the_ring_exactly_once(
            tokens in proptest::collection::vec(any::<u64>(), 1..40), probes in proptest::collection::vec(any::<u64>(), 32)
        ) {
            let mut ring = Ring::new();
            for (i, chunk) in tokens.chunks(4).enumerate() {
                ring.insert(info(&format!("n{i}"), "dc1", "r1", 1), chunk.to_vec());
            }
            let ranges = ring.ranges(&simple(1));
            prop_assert_eq!(ranges.iter().map(|(r, _)| r.size()).sum::<u128>(), RING_SIZE);
            for t in probes.iter().chain(&tokens) {
                let holders: Vec<&TokenRange> = ranges.iter().map(|(r, _)| r).filter(|r| r.contains(*t)).collect();
                prop_assert_eq!(holders.len(), 1);
                prop_assert_eq!(Some(*holders[0]), ring.range_for_token(*t));
            }
        }

        #[test]
        fn ring_does_not_depend_on_insertion_order(nodes in arb_cluster(), probes in proptest::collection::vec(any::<u64>(), 16)) {
            let ring = build(&nodes);
            let mut reversed = Ring::new();
            for n in nodes.iter().rev() {
                reversed.insert(n.clone(), ring.tokens_of(&n.id));
            }
            for t in probes {
                prop_assert_eq!(ring.preference_list_for_token(t, &simple(3)), reversed.preference_list_for_token(t, &simple(3)));
                prop_assert_eq!(ring.walk(t), reversed.walk(t));
            }
        }

        #[test]
        fn a_join_moves_data_only_to_the_newcomer(nodes in arb_cluster(), n in 1usize..4, seed in any::<u64>()) {
            // Single DC: with DCs, a newcomer in a new DC legitimately reshuffles others.
            let nodes: Vec<NodeInfo> = nodes.into_iter().map(|mut x| { x.dc = "dc1".into(); x.rack = "r1".into(); x }).collect();
            let ring = build(&nodes);
            let mut after = ring.clone();
            after.insert(info("new", "dc1", "r1", 1), ring.allocate_tokens(1, seed));
            let plan = ring.move_plan(&after, &simple(n));
            prop_assert!(plan.iter().all(|t| t.to == "new"));
            let expected = after.ownership(&simple(n))["new"];
            let moved: f64 = plan.iter().map(|t| t.range.fraction()).sum();
            prop_assert!((moved - expected).abs() < 1e-9);
            let total_weight: u32 = nodes.iter().map(|x| x.weight).sum::<u32>() + 1;
            let primary = after.ownership(&simple(1))["new"];
            let due = 1.0 / f64::from(total_weight);
            prop_assert!((primary - due).abs() < 0.25 * due, "primary {} due {}", primary, due);
        }

        #[test]
        fn sloppy_targets_are_distinct_and_healthy(nodes in arb_cluster(), down in proptest::collection::vec(any::<bool>(), 12), t in any::<u64>()) {
            let ring = build(&nodes);
            let is_up = |id: &str| !down[id[1..].parse::<usize>().unwrap()];
            let targets = ring.sloppy_preference_list(t, &simple(3), is_up);
            let pref = ring.preference_list_for_token(t, &simple(3));
            prop_assert!(targets.iter().all(|x| is_up(&x.node)));
            prop_assert_eq!(targets.iter().map(|x| &x.node).collect::<BTreeSet<_>>().len(), targets.len());
            let healthy = nodes.iter().filter(|x| is_up(&x.id)).count();
            prop_assert_eq!(targets.len(), pref.len().min(healthy));
            for x in &targets {
                match &x.hint_for {
                    None => prop_assert!(pref.contains(&x.node)),
                    Some(h) => prop_assert!(pref.contains(h) && !is_up(h) && !pref.contains(&x.node)),
                }
            }
        }
    }
}

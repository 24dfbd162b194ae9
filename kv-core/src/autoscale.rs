//! The autoscaling policy: from the load each node reported over a recent window, decide
//! whether the cluster should grow, shrink by one node, or stay as it is.
//!
//! The policy is a pure function ([`decide`]): the driver (`kvcli autoscale`) reads `status`
//! and every node's `/metrics`, turns them into [`Member`]s and [`LoadSample`]s, and acts on
//! the [`Decision`]. Time is an argument in milliseconds (no clock is read here, so the same
//! code runs in the browser).
//!
//! Laws kept by [`decide`] (checked by the property tests below):
//! - **Bounds**: a scale-out never takes the cluster above `max_nodes`; a scale-in never takes
//!   it below `min_nodes`.
//! - **Replication**: a scale-in never leaves fewer members than the placement needs: `n`
//!   nodes for [`Placement::Simple`], and for [`Placement::PerDc`] the removed node's data
//!   center keeps at least its replica count.
//! - **Stillness**: nothing is decided while data is moving (a member joining, leaving or
//!   streaming ranges), nor while a member is down for a scale-in.
//! - **Cooldown**: within `cooldown_ms` of the last change, the decision is always `Hold`.
//! - **Hysteresis**: with ops/s per node between the low and high watermarks (and latency and
//!   disk within their limits) the decision is `Hold`; under a steady load, the cluster a
//!   scale-out leads to never wants to scale in, and the cluster a scale-in leads to never
//!   wants to scale out. Scale-in compares the *peak* of the window, projected onto one node
//!   fewer, with the low watermark; scale-out compares the mean with the high one.
//! - **Full disks**: while an up member's latest reading says it refuses writes for lack of
//!   disk space, the cluster grows by one node (bounds and cooldown permitting), never shrinks.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ring::Placement;

/// A scale-in waits until the worst p99 is below this fraction of `max_p99_ms`: latency does
/// not fall in proportion to the node count, so a margin keeps a removal from pushing the
/// latency straight back over its limit.
pub const P99_SHRINK_FRACTION: f64 = 0.5;

/// A scale-in waits until the disk use per node, projected onto one node fewer, is below this
/// fraction of `max_disk_bytes_per_node`.
pub const DISK_SHRINK_FRACTION: f64 = 0.8;

/// Per-node targets the policy keeps the cluster within.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Mean client ops/s per node above which the cluster grows.
    pub high_ops_per_node: f64,
    /// The cluster shrinks only when its peak ops/s, spread over one node fewer, stays below
    /// this. Must be below `high_ops_per_node` (the gap is the hysteresis band).
    pub low_ops_per_node: f64,
    /// Worst p99 latency (ms) of any node above which the cluster grows.
    pub max_p99_ms: Option<f64>,
    /// Disk bytes per node above which the cluster grows.
    pub max_disk_bytes_per_node: Option<u64>,
}

/// The settings of the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Never fewer members than this.
    pub min_nodes: usize,
    /// Never more members than this.
    pub max_nodes: usize,
    /// Load targets per node.
    pub targets: Targets,
    /// The cluster's replica placement: a scale-in never leaves fewer nodes than it needs.
    pub placement: Placement,
    /// No change within this many ms of the last one.
    pub cooldown_ms: u64,
    /// Samples older than this (ms before `now`) are ignored.
    pub window_ms: u64,
    /// Most nodes added by one scale-out.
    pub max_step: usize,
    /// A scale-in needs at least this many samples from every up node in the window, so that
    /// one quiet moment does not remove a node.
    pub min_samples_to_shrink: usize,
}

impl Policy {
    /// Checks that the settings make sense together.
    ///
    /// Errors (with a sentence naming the setting) when `min_nodes` is 0 or above `max_nodes`,
    /// the watermarks are not `0 <= low < high`, a limit is not positive, or `max_step`,
    /// `window_ms` or `min_samples_to_shrink` is 0.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.targets;
        if self.min_nodes == 0 {
            return Err("the minimum node count must be at least 1".into());
        }
        if self.min_nodes > self.max_nodes {
            return Err(format!(
                "the minimum node count ({}) is above the maximum ({})",
                self.min_nodes, self.max_nodes
            ));
        }
        if !(t.low_ops_per_node >= 0.0 && t.low_ops_per_node.is_finite()) {
            return Err("the low ops/s watermark must be a number >= 0".into());
        }
        if !(t.high_ops_per_node > t.low_ops_per_node && t.high_ops_per_node.is_finite()) {
            return Err(format!(
                "the high ops/s watermark ({}) must be above the low one ({})",
                t.high_ops_per_node, t.low_ops_per_node
            ));
        }
        if t.max_p99_ms.is_some_and(|p| !(p > 0.0 && p.is_finite())) {
            return Err("the p99 limit must be a positive number of ms".into());
        }
        if t.max_disk_bytes_per_node == Some(0) {
            return Err("the disk limit per node must be positive".into());
        }
        if self.max_step == 0 {
            return Err("a scale-out step must add at least 1 node".into());
        }
        if self.window_ms == 0 {
            return Err("the load window must be longer than 0 ms".into());
        }
        if self.min_samples_to_shrink == 0 {
            return Err("a scale-in needs at least 1 sample per node".into());
        }
        Ok(())
    }

    /// The fewest members the cluster may have: the minimum, or what the placement needs
    /// when that is more.
    pub fn floor(&self) -> usize {
        self.min_nodes.max(self.placement.replicas())
    }
}

/// A member's state as `status` reports it (members that left are not members any more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Serving.
    Up,
    /// Streaming its ranges in before it enters the ring.
    Joining,
    /// Handing its ranges over before it leaves the ring.
    Leaving,
    /// Not answering.
    Down,
}

/// One member of the cluster as the driver sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// Data center label.
    pub dc: String,
    /// Its state.
    pub state: MemberState,
    /// Ranges are streaming in or out of it (a join, decommission or weight change).
    pub moving: bool,
    /// The driver may remove it (by default: a node the driver started itself).
    pub removable: bool,
}

/// What one node reported at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSample {
    /// Node id.
    pub node: String,
    /// When it was read, in ms (any epoch, the same as `now_ms`).
    pub at_ms: u64,
    /// Client requests per second since the previous reading.
    pub ops_per_sec: f64,
    /// p99 latency (ms) of the requests since the previous reading (None: no request).
    pub p99_ms: Option<f64>,
    /// Bytes of table files on disk.
    pub disk_bytes: u64,
    /// The node refused writes for lack of disk space at this reading (its disk is below its
    /// reserve, or full).
    #[serde(default)]
    pub disk_full: bool,
}

/// The samples of the recent past, oldest first: a helper for drivers.
#[derive(Clone, Debug, Default)]
pub struct LoadWindow {
    samples: VecDeque<LoadSample>,
}

impl LoadWindow {
    /// An empty window.
    pub fn new() -> LoadWindow {
        LoadWindow::default()
    }

    /// Adds a sample.
    pub fn push(&mut self, sample: LoadSample) {
        self.samples.push_back(sample);
    }

    /// Drops samples older than `window_ms` before `now_ms`, and those of nodes not in `keep`.
    pub fn prune(&mut self, now_ms: u64, window_ms: u64, keep: &[&str]) {
        let since = now_ms.saturating_sub(window_ms);
        self.samples
            .retain(|s| s.at_ms > since && keep.contains(&s.node.as_str()));
    }

    /// Forgets every sample (after a change, the old figures describe another cluster).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<LoadSample> {
        self.samples.iter().cloned().collect()
    }
}

/// What the cluster should do now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Add `count` nodes.
    ScaleOut {
        /// How many.
        count: usize,
        /// Why, for a person.
        reason: String,
    },
    /// Drain and remove `node`.
    ScaleIn {
        /// Which one.
        node: String,
        /// Why, for a person.
        reason: String,
    },
    /// Change nothing.
    Hold {
        /// Why, for a person.
        reason: String,
    },
}

impl Decision {
    /// Why the decision was taken.
    pub fn reason(&self) -> &str {
        match self {
            Decision::ScaleOut { reason, .. }
            | Decision::ScaleIn { reason, .. }
            | Decision::Hold { reason } => reason,
        }
    }

    /// `scale_out`, `scale_in` or `hold`.
    pub fn action(&self) -> &'static str {
        match self {
            Decision::ScaleOut { .. } => "scale_out",
            Decision::ScaleIn { .. } => "scale_in",
            Decision::Hold { .. } => "hold",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::ScaleOut { count, reason } => {
                write!(f, "scale out by {count}: {reason}")
            }
            Decision::ScaleIn { node, reason } => write!(f, "scale in {node}: {reason}"),
            Decision::Hold { reason } => write!(f, "hold: {reason}"),
        }
    }
}

/// The window's load figures over the up members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Up members with at least one sample in the window.
    pub nodes_reporting: usize,
    /// Sum over the up members of their mean ops/s.
    pub total_ops: f64,
    /// Sum over the up members of their peak ops/s.
    pub peak_total_ops: f64,
    /// The worst of the members' mean p99 (ms).
    pub worst_mean_p99_ms: Option<f64>,
    /// The worst single p99 sample (ms).
    pub worst_p99_ms: Option<f64>,
    /// Sum of every up member's latest disk use.
    pub total_disk_bytes: u64,
    /// Up members whose latest sample says their disk is full.
    pub disk_full: Vec<String>,
    /// The fewest samples any up member has in the window.
    pub min_samples: usize,
    /// Up members without any sample in the window.
    pub silent: Vec<String>,
}

/// Sums up the samples of the up members within `window_ms` before `now_ms`.
pub fn summarize(
    members: &[Member],
    samples: &[LoadSample],
    now_ms: u64,
    window_ms: u64,
) -> LoadSummary {
    let since = now_ms.saturating_sub(window_ms);
    let mut by_node: BTreeMap<&str, Vec<&LoadSample>> = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.at_ms > since && s.at_ms <= now_ms)
    {
        by_node.entry(s.node.as_str()).or_default().push(s);
    }
    let mut out = LoadSummary {
        nodes_reporting: 0,
        total_ops: 0.0,
        peak_total_ops: 0.0,
        worst_mean_p99_ms: None,
        worst_p99_ms: None,
        total_disk_bytes: 0,
        disk_full: Vec::new(),
        min_samples: usize::MAX,
        silent: Vec::new(),
    };
    for m in members.iter().filter(|m| m.state == MemberState::Up) {
        let Some(list) = by_node.get(m.id.as_str()) else {
            out.silent.push(m.id.clone());
            out.min_samples = 0;
            continue;
        };
        out.nodes_reporting += 1;
        out.min_samples = out.min_samples.min(list.len());
        let ops: Vec<f64> = list.iter().map(|s| s.ops_per_sec.max(0.0)).collect();
        out.total_ops += ops.iter().sum::<f64>() / ops.len() as f64;
        out.peak_total_ops += ops.iter().copied().fold(0.0, f64::max);
        let p99s: Vec<f64> = list.iter().filter_map(|s| s.p99_ms).collect();
        if !p99s.is_empty() {
            let mean = p99s.iter().sum::<f64>() / p99s.len() as f64;
            let worst = p99s.iter().copied().fold(0.0, f64::max);
            out.worst_mean_p99_ms = Some(out.worst_mean_p99_ms.map_or(mean, |w| w.max(mean)));
            out.worst_p99_ms = Some(out.worst_p99_ms.map_or(worst, |w| w.max(worst)));
        }
        if let Some(latest) = list.iter().max_by_key(|s| s.at_ms) {
            out.total_disk_bytes += latest.disk_bytes;
            if latest.disk_full {
                out.disk_full.push(m.id.clone());
            }
        }
    }
    if out.min_samples == usize::MAX {
        out.min_samples = 0;
    }
    out
}

/// Decides what the cluster of `members` should do at `now_ms`, given the load `samples` and
/// the time of the last change (`None`: none yet). See the module's laws.
///
/// `members` lists every member that has not left, in the driver's order of preference for
/// removal: a scale-in removes the first removable member whose departure the placement
/// allows.
pub fn decide(
    policy: &Policy,
    members: &[Member],
    samples: &[LoadSample],
    now_ms: u64,
    last_change_ms: Option<u64>,
) -> Decision {
    let hold = |reason: String| Decision::Hold { reason };
    let n = members.len();
    let floor = policy.floor();
    let ceiling = policy.max_nodes.max(policy.min_nodes);

    // Stillness: while ranges stream, the ring is between two shapes and the load figures
    // describe neither; a second change would also race the first one's transfers.
    let moving: Vec<String> = members
        .iter()
        .filter_map(|m| match (m.state, m.moving) {
            (MemberState::Joining, _) => Some(format!("{} joining", m.id)),
            (MemberState::Leaving, _) => Some(format!("{} leaving", m.id)),
            (_, true) => Some(format!("{} moving ranges", m.id)),
            _ => None,
        })
        .collect();
    if !moving.is_empty() {
        return hold(format!("data is moving ({})", moving.join(", ")));
    }
    if let Some(last) = last_change_ms {
        let until = last.saturating_add(policy.cooldown_ms);
        if now_ms < until {
            return hold(format!(
                "cooling down after the last change ({} s left)",
                (until - now_ms).div_ceil(1000)
            ));
        }
    }
    if n < policy.min_nodes {
        let count = (policy.min_nodes - n).min(policy.max_step);
        return Decision::ScaleOut {
            count,
            reason: format!("{n} nodes, below the minimum of {}", policy.min_nodes),
        };
    }
    if n > ceiling {
        return match removal_candidate(policy, members) {
            Ok(m) => Decision::ScaleIn {
                node: m.id.clone(),
                reason: format!("{n} nodes, above the maximum of {ceiling}"),
            },
            Err(why) => hold(format!(
                "{n} nodes, above the maximum of {ceiling}, but {why}"
            )),
        };
    }

    let load = summarize(members, samples, now_ms, policy.window_ms);
    let t = &policy.targets;
    if load.nodes_reporting == 0 {
        return hold("no load figures yet".into());
    }
    let per_node = load.total_ops / load.nodes_reporting as f64;

    // Scale out: how many nodes the load needs, by each measure.
    let mut wanted = n;
    let mut why = Vec::new();
    if per_node > t.high_ops_per_node {
        let need = ceil_div_f(load.total_ops, t.high_ops_per_node);
        wanted = wanted.max(need);
        why.push(format!(
            "{per_node:.1} ops/s per node, above the high watermark {}",
            t.high_ops_per_node
        ));
    }
    if let (Some(limit), Some(p99)) = (t.max_p99_ms, load.worst_mean_p99_ms) {
        if p99 > limit {
            wanted = wanted.max(n + 1);
            why.push(format!("p99 {p99:.1} ms, above the limit of {limit} ms"));
        }
    }
    if let Some(limit) = t.max_disk_bytes_per_node {
        let need = ceil_div_f(load.total_disk_bytes as f64, limit as f64);
        if need > n {
            wanted = wanted.max(need);
            why.push(format!(
                "{} MB on disk, more than {n} nodes of {} MB hold",
                load.total_disk_bytes / 1_000_000,
                limit / 1_000_000
            ));
        }
    }
    // A node refusing writes for lack of space: one more node takes some of its ranges, and
    // its cleanup then drops them.
    if !load.disk_full.is_empty() {
        wanted = wanted.max(n + 1);
        why.push(format!(
            "{} refuse{} writes for lack of disk space",
            load.disk_full.join(", "),
            if load.disk_full.len() == 1 { "s" } else { "" }
        ));
    }
    if wanted > n {
        let why = why.join("; ");
        if n >= ceiling {
            return hold(format!(
                "{why}, but already at the maximum of {ceiling} nodes"
            ));
        }
        let count = (wanted - n).min(policy.max_step).min(ceiling - n);
        return Decision::ScaleOut {
            count,
            reason: format!("{why}: {n} -> {} nodes", n + count),
        };
    }

    // Scale in: only on a sustained quiet that would stay quiet on one node fewer.
    let band = format!(
        "{per_node:.1} ops/s per node (low {} / high {})",
        t.low_ops_per_node, t.high_ops_per_node
    );
    if n <= floor {
        return hold(format!(
            "{band}; {n} nodes is the floor (minimum {}, placement needs {})",
            policy.min_nodes,
            policy.placement.replicas()
        ));
    }
    let projected = load.peak_total_ops / (n - 1) as f64;
    if projected >= t.low_ops_per_node {
        return hold(format!(
            "{band}; the peak would be {projected:.1} ops/s per node on {} nodes, not under the low watermark",
            n - 1
        ));
    }
    if let (Some(limit), Some(p99)) = (t.max_p99_ms, load.worst_p99_ms) {
        if p99 > limit * P99_SHRINK_FRACTION {
            return hold(format!(
                "{band}; p99 {p99:.1} ms is not yet under {:.1} ms for a scale-in",
                limit * P99_SHRINK_FRACTION
            ));
        }
    }
    if let Some(limit) = t.max_disk_bytes_per_node {
        let projected_disk = load.total_disk_bytes as f64 / (n - 1) as f64;
        if projected_disk > limit as f64 * DISK_SHRINK_FRACTION {
            return hold(format!(
                "{band}; {} nodes would hold {:.0} MB each, too close to the {} MB limit",
                n - 1,
                projected_disk / 1e6,
                limit / 1_000_000
            ));
        }
    }
    if let Some(down) = members.iter().find(|m| m.state == MemberState::Down) {
        return hold(format!(
            "{band}; {} is down: not removing capacity",
            down.id
        ));
    }
    if !load.silent.is_empty() {
        return hold(format!(
            "{band}; no figures from {} yet",
            load.silent.join(", ")
        ));
    }
    if load.min_samples < policy.min_samples_to_shrink {
        return hold(format!(
            "{band}; watching ({} of {} samples) before a scale-in",
            load.min_samples, policy.min_samples_to_shrink
        ));
    }
    match removal_candidate(policy, members) {
        Ok(m) => Decision::ScaleIn {
            node: m.id.clone(),
            reason: format!(
                "{band}; the peak would be {projected:.1} ops/s per node on {} nodes",
                n - 1
            ),
        },
        Err(why) => hold(format!("{band}; {why}")),
    }
}

/// `ceil(a / b)` as a node count (0 for no load).
fn ceil_div_f(a: f64, b: f64) -> usize {
    if a <= 0.0 || b <= 0.0 {
        return 0;
    }
    let q = (a / b).ceil();
    if q >= usize::MAX as f64 {
        usize::MAX
    } else {
        q as usize
    }
}

/// The first member, in the given order, that may be removed: removable, up, and leaving
/// enough members for the floor and the placement (per data center for `PerDc`).
fn removal_candidate<'a>(policy: &Policy, members: &'a [Member]) -> Result<&'a Member, String> {
    let n = members.len();
    if n <= policy.floor() {
        return Err(format!(
            "{n} nodes is the floor (minimum {}, placement needs {})",
            policy.min_nodes,
            policy.placement.replicas()
        ));
    }
    let removable: Vec<&Member> = members
        .iter()
        .filter(|m| m.removable && m.state == MemberState::Up)
        .collect();
    if removable.is_empty() {
        return Err("no member may be removed (only nodes this autoscaler started are)".into());
    }
    for m in &removable {
        match &policy.placement {
            Placement::Simple { .. } => return Ok(m),
            Placement::PerDc(per_dc) => {
                let need = per_dc.get(&m.dc).copied().unwrap_or(0);
                let in_dc = members.iter().filter(|x| x.dc == m.dc).count();
                if in_dc > need {
                    return Ok(m);
                }
            }
        }
    }
    Err("removing any removable member would leave its data center short of replicas".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(min: usize, max: usize, n: usize) -> Policy {
        Policy {
            min_nodes: min,
            max_nodes: max,
            targets: Targets {
                high_ops_per_node: 100.0,
                low_ops_per_node: 40.0,
                max_p99_ms: Some(50.0),
                max_disk_bytes_per_node: Some(1_000_000_000),
            },
            placement: Placement::Simple { n },
            cooldown_ms: 30_000,
            window_ms: 60_000,
            max_step: 2,
            min_samples_to_shrink: 3,
        }
    }

    fn member(id: &str, removable: bool) -> Member {
        Member {
            id: id.into(),
            dc: "dc1".into(),
            state: MemberState::Up,
            moving: false,
            removable,
        }
    }

    fn cluster(k: usize) -> Vec<Member> {
        (1..=k).map(|i| member(&format!("n{i}"), i > 3)).collect()
    }

    /// `per_node` ops/s from every member, `count` samples a second apart ending at `now`.
    fn even(members: &[Member], per_node: f64, count: u64, now: u64) -> Vec<LoadSample> {
        let mut out = Vec::new();
        for m in members {
            for i in 0..count {
                out.push(LoadSample {
                    node: m.id.clone(),
                    at_ms: now - i * 1000,
                    ops_per_sec: per_node,
                    p99_ms: Some(5.0),
                    disk_bytes: 1_000_000,
                    disk_full: false,
                });
            }
        }
        out
    }

    const NOW: u64 = 1_000_000;

    #[test]
    fn grows_when_busy_by_what_the_load_needs() {
        let p = policy(3, 10, 3);
        let m = cluster(3);
        // 3 x 150 = 450 ops/s needs 5 nodes of 100; the step caps it at 2.
        let d = decide(&p, &m, &even(&m, 150.0, 3, NOW), NOW, None);
        assert!(matches!(d, Decision::ScaleOut { count: 2, .. }), "{d}");
        assert!(d.reason().contains("above the high watermark"), "{d}");
        // 3 x 120 = 360 needs 4.
        let d = decide(&p, &m, &even(&m, 120.0, 3, NOW), NOW, None);
        assert!(matches!(d, Decision::ScaleOut { count: 1, .. }), "{d}");
    }

    #[test]
    fn holds_at_the_maximum_and_says_so() {
        let p = policy(3, 3, 3);
        let m = cluster(3);
        let d = decide(&p, &m, &even(&m, 500.0, 3, NOW), NOW, None);
        assert!(matches!(d, Decision::Hold { .. }), "{d}");
        assert!(d.reason().contains("maximum"), "{d}");
    }

    #[test]
    fn shrinks_when_quiet_removing_a_removable_node() {
        let p = policy(3, 10, 3);
        let m = cluster(5);
        let d = decide(&p, &m, &even(&m, 1.0, 3, NOW), NOW, None);
        assert_eq!(d.action(), "scale_in", "{d}");
        assert!(
            matches!(&d, Decision::ScaleIn { node, .. } if node == "n4"),
            "{d}"
        );
    }

    #[test]
    fn never_removes_a_node_it_may_not() {
        let p = policy(1, 10, 1);
        let m: Vec<Member> = (1..=4).map(|i| member(&format!("n{i}"), false)).collect();
        let d = decide(&p, &m, &even(&m, 0.0, 3, NOW), NOW, None);
        assert!(matches!(d, Decision::Hold { .. }), "{d}");
        assert!(d.reason().contains("may be removed"), "{d}");
    }

    #[test]
    fn a_single_quiet_sample_is_not_enough_to_shrink() {
        let p = policy(3, 10, 3);
        let m = cluster(5);
        let d = decide(&p, &m, &even(&m, 0.0, 1, NOW), NOW, None);
        assert!(d.reason().contains("watching"), "{d}");
        assert_eq!(d.action(), "hold");
    }

    #[test]
    fn a_burst_in_the_window_blocks_a_scale_in() {
        let p = policy(3, 10, 3);
        let m = cluster(4);
        let mut s = even(&m, 5.0, 5, NOW);
        // One burst a few seconds ago: 4 x 5 mean, but the peak is high.
        s[2].ops_per_sec = 300.0;
        let d = decide(&p, &m, &s, NOW, None);
        assert_eq!(d.action(), "hold", "{d}");
        assert!(d.reason().contains("peak"), "{d}");
    }

    #[test]
    fn latency_and_disk_each_grow_the_cluster() {
        let p = policy(3, 10, 3);
        let m = cluster(3);
        let mut s = even(&m, 50.0, 3, NOW);
        for x in &mut s {
            x.p99_ms = Some(80.0);
        }
        let d = decide(&p, &m, &s, NOW, None);
        assert!(matches!(d, Decision::ScaleOut { count: 1, .. }), "{d}");
        assert!(d.reason().contains("p99"), "{d}");
        let mut s = even(&m, 50.0, 3, NOW);
        for x in &mut s {
            x.disk_bytes = 1_500_000_000;
        }
        // 4.5 GB over nodes of 1 GB: 5 nodes, 2 more.
        let d = decide(&p, &m, &s, NOW, None);
        assert!(matches!(d, Decision::ScaleOut { count: 2, .. }), "{d}");
        assert!(d.reason().contains("disk"), "{d}");
    }

    #[test]
    fn a_node_refusing_writes_for_lack_of_disk_space_grows_the_cluster() {
        let p = policy(3, 10, 3);
        let m = cluster(4);
        // Quiet enough to shrink, but n2's latest reading says its disk is full.
        let mut s = even(&m, 1.0, 3, NOW);
        for x in s.iter_mut().filter(|x| x.node == "n2" && x.at_ms == NOW) {
            x.disk_full = true;
        }
        let d = decide(&p, &m, &s, NOW, None);
        assert!(matches!(d, Decision::ScaleOut { count: 1, .. }), "{d}");
        assert!(
            d.reason()
                .contains("n2 refuses writes for lack of disk space"),
            "{d}"
        );
        // Only the latest reading counts: a disk that was full and is no longer is not.
        let mut s = even(&m, 1.0, 3, NOW);
        for x in s.iter_mut().filter(|x| x.node == "n2" && x.at_ms < NOW) {
            x.disk_full = true;
        }
        let d = decide(&p, &m, &s, NOW, None);
        assert!(!matches!(d, Decision::ScaleOut { .. }), "{d}");
        // At the maximum it holds, and says why.
        let p = policy(3, 4, 3);
        let mut s = even(&m, 1.0, 3, NOW);
        s[0].disk_full = true;
        let d = decide(&p, &m, &s, NOW, None);
        assert_eq!(d.action(), "hold", "{d}");
        assert!(d.reason().contains("lack of disk space"), "{d}");
    }

    #[test]
    fn below_the_minimum_grows_at_once_and_above_the_maximum_shrinks() {
        let p = policy(4, 5, 3);
        let m = cluster(3);
        let d = decide(&p, &m, &[], NOW, None);
        assert!(matches!(d, Decision::ScaleOut { count: 1, .. }), "{d}");
        let m = cluster(6);
        let d = decide(&p, &m, &[], NOW, None);
        assert!(
            matches!(&d, Decision::ScaleIn { node, .. } if node == "n4"),
            "{d}"
        );
    }

    #[test]
    fn nothing_happens_while_data_moves() {
        let p = policy(3, 10, 3);
        let mut m = cluster(5);
        m[4].state = MemberState::Joining;
        let d = decide(&p, &m, &even(&m, 0.0, 3, NOW), NOW, None);
        assert!(d.reason().contains("n5 joining"), "{d}");
        let mut m = cluster(5);
        m[1].moving = true;
        let d = decide(&p, &m, &even(&m, 500.0, 3, NOW), NOW, None);
        assert_eq!(d.action(), "hold", "{d}");
    }

    #[test]
    fn a_down_member_blocks_a_scale_in_but_not_a_scale_out() {
        let p = policy(3, 10, 3);
        let mut m = cluster(5);
        m[1].state = MemberState::Down;
        let d = decide(&p, &m, &even(&m, 0.0, 3, NOW), NOW, None);
        assert!(d.reason().contains("n2 is down"), "{d}");
        let d = decide(&p, &m, &even(&m, 300.0, 3, NOW), NOW, None);
        assert_eq!(d.action(), "scale_out", "{d}");
    }

    #[test]
    fn per_dc_placement_keeps_each_dc_supplied() {
        let mut p = policy(1, 10, 1);
        p.placement = Placement::parse("east:2,west:1").unwrap();
        let mut m: Vec<Member> = ["e1", "e2", "w1", "w2"]
            .iter()
            .map(|id| member(id, true))
            .collect();
        m[0].dc = "east".into();
        m[1].dc = "east".into();
        m[2].dc = "west".into();
        m[3].dc = "west".into();
        // east has exactly 2: only a west node may go, and the first of them is w1.
        let d = decide(&p, &m, &even(&m, 0.0, 3, NOW), NOW, None);
        assert!(
            matches!(&d, Decision::ScaleIn { node, .. } if node == "w1"),
            "{d}"
        );
    }

    #[test]
    fn cooldown_holds_and_ends() {
        let p = policy(3, 10, 3);
        let m = cluster(3);
        let s = even(&m, 500.0, 3, NOW);
        let d = decide(&p, &m, &s, NOW, Some(NOW - 10_000));
        assert_eq!(
            d.reason(),
            "cooling down after the last change (20 s left)",
            "{d}"
        );
        let d = decide(&p, &m, &s, NOW, Some(NOW - 30_000));
        assert_eq!(d.action(), "scale_out", "{d}");
    }

    #[test]
    fn old_samples_fall_out_of_the_window() {
        let p = policy(3, 10, 3);
        let m = cluster(3);
        let s = even(&m, 500.0, 3, NOW - 120_000);
        let d = decide(&p, &m, &s, NOW, None);
        assert_eq!(d.reason(), "no load figures yet");
        let mut w = LoadWindow::new();
        for x in s {
            w.push(x);
        }
        w.push(LoadSample {
            node: "n1".into(),
            at_ms: NOW,
            ops_per_sec: 1.0,
            p99_ms: None,
            disk_bytes: 0,
            disk_full: false,
        });
        w.prune(NOW, 60_000, &["n1", "n2"]);
        assert_eq!(w.samples().len(), 1);
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let mut p = policy(3, 10, 3);
        assert!(p.validate().is_ok());
        p.targets.low_ops_per_node = 200.0;
        assert!(p.validate().unwrap_err().contains("high ops/s"));
        let mut p = policy(5, 4, 3);
        assert!(p.validate().unwrap_err().contains("minimum"));
        p.min_nodes = 0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn decisions_serialize_with_their_action() {
        let d = Decision::ScaleIn {
            node: "n4".into(),
            reason: "quiet".into(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["action"], "scale_in");
        assert_eq!(v["node"], "n4");
        assert_eq!(d.to_string(), "scale in n4: quiet");
    }

    fn arb_state() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            6 => Just(MemberState::Up),
            1 => Just(MemberState::Joining),
            1 => Just(MemberState::Leaving),
            1 => Just(MemberState::Down),
        ]
    }

    prop_compose! {
        fn arb_members()(spec in proptest::collection::vec(
            (arb_state(), any::<bool>(), any::<bool>(), 0..3usize), 1..12)
        ) -> Vec<Member> {
            spec.into_iter().enumerate().map(|(i, (state, moving, removable, dc))| Member {
                id: format!("n{i}"),
                dc: format!("dc{dc}"),
                state,
                moving: moving && i % 3 == 0,
                removable,
            }).collect()
        }
    }

    prop_compose! {
        fn arb_policy()(min in 1..6usize, extra in 0..6usize, n in 1..5usize,
                        per_dc in proptest::option::of(proptest::collection::vec(1..3usize, 3)),
                        low in 0.0..100.0f64, gap in 1.0..200.0f64,
                        p99 in proptest::option::of(1.0..100.0f64),
                        disk in proptest::option::of(1_000u64..1_000_000),
                        step in 1..4usize, shrink in 1..4usize, cooldown in 0..60_000u64)
            -> Policy {
            Policy {
                min_nodes: min,
                max_nodes: min + extra,
                targets: Targets {
                    high_ops_per_node: low + gap,
                    low_ops_per_node: low,
                    max_p99_ms: p99,
                    max_disk_bytes_per_node: disk,
                },
                placement: match per_dc {
                    Some(c) => Placement::PerDc(
                        c.iter().enumerate().map(|(i, k)| (format!("dc{i}"), *k)).collect(),
                    ),
                    None => Placement::Simple { n },
                },
                cooldown_ms: cooldown,
                window_ms: 30_000,
                max_step: step,
                min_samples_to_shrink: shrink,
            }
        }
    }

    fn arb_samples(members: &[Member], seed: &[(f64, f64, u64)]) -> Vec<LoadSample> {
        let mut out = Vec::new();
        for (i, m) in members.iter().enumerate() {
            for k in 0..3u64 {
                let (ops, p99, disk) = seed[(i * 3 + k as usize) % seed.len()];
                out.push(LoadSample {
                    node: m.id.clone(),
                    at_ms: NOW - k * 5_000,
                    ops_per_sec: ops,
                    p99_ms: Some(p99),
                    disk_bytes: disk,
                    disk_full: false,
                });
            }
        }
        out
    }

    proptest! {
        /// Bounds, replication, stillness and cooldown hold for any cluster and load.
        #[test]
        fn prop_safety_laws(
            p in arb_policy(),
            members in arb_members(),
            seed in proptest::collection::vec((0.0..1000.0f64, 0.0..200.0f64, 0u64..5_000_000), 1..20),
            since_change in proptest::option::of(0u64..120_000),
        ) {
            let samples = arb_samples(&members, &seed);
            let last = since_change.map(|s| NOW - s);
            let d = decide(&p, &members, &samples, NOW, last);
            let n = members.len();
            let moving = members.iter().any(|m| m.moving
                || matches!(m.state, MemberState::Joining | MemberState::Leaving));
            let cooling = last.is_some_and(|l| NOW < l + p.cooldown_ms);
            match &d {
                Decision::ScaleOut { count, .. } => {
                    prop_assert!(*count >= 1);
                    prop_assert!(n + count <= p.max_nodes, "{d} with {n} nodes");
                }
                Decision::ScaleIn { node, .. } => {
                    prop_assert!(n > p.min_nodes, "{d} with {n} nodes");
                    prop_assert!(n > p.placement.replicas(), "{d} with {n} nodes");
                    let m = members.iter().find(|m| &m.id == node).unwrap();
                    prop_assert!(m.removable && m.state == MemberState::Up);
                    if let Placement::PerDc(per_dc) = &p.placement {
                        let left = members.iter().filter(|x| x.dc == m.dc).count() - 1;
                        prop_assert!(left >= per_dc.get(&m.dc).copied().unwrap_or(0));
                    }
                    prop_assert!(!members.iter().any(|m| m.state == MemberState::Down)
                        || n > p.max_nodes);
                }
                Decision::Hold { reason } => prop_assert!(!reason.is_empty()),
            }
            if moving || cooling {
                prop_assert_eq!(d.action(), "hold", "{}", d);
            }
        }

        /// Load between the watermarks, within the limits, never changes the cluster.
        #[test]
        fn prop_no_change_inside_the_band(
            p in arb_policy(),
            k in 1..10usize,
            frac in 0.0..=1.0f64,
        ) {
            let members: Vec<Member> = (0..k).map(|i| Member {
                id: format!("n{i}"), dc: format!("dc{}", i % 3), state: MemberState::Up,
                moving: false, removable: true,
            }).collect();
            prop_assume!(k >= p.min_nodes && k <= p.max_nodes);
            let t = &p.targets;
            let ops = t.low_ops_per_node + frac * (t.high_ops_per_node - t.low_ops_per_node);
            let samples: Vec<LoadSample> = members.iter().flat_map(|m| (0..3u64).map(|i| LoadSample {
                node: m.id.clone(), at_ms: NOW - i * 1000, ops_per_sec: ops,
                p99_ms: t.max_p99_ms.map(|l| l * 0.75), disk_bytes: 0, disk_full: false,
            })).collect();
            let d = decide(&p, &members, &samples, NOW, None);
            prop_assert_eq!(d.action(), "hold", "{}", d);
        }

        /// Under a steady load, a change never calls for the opposite change right after.
        #[test]
        fn prop_no_flapping(
            p in arb_policy(),
            k in 1..10usize,
            total in 0.0..3000.0f64,
            p99 in 0.0..150.0f64,
            disk_total in 0u64..8_000_000,
        ) {
            let build = |k: usize| -> (Vec<Member>, Vec<LoadSample>) {
                let members: Vec<Member> = (0..k).map(|i| Member {
                    id: format!("n{i}"), dc: format!("dc{}", i % 3), state: MemberState::Up,
                    moving: false, removable: true,
                }).collect();
                let samples = members.iter().flat_map(|m| (0..3u64).map(|i| LoadSample {
                    node: m.id.clone(), at_ms: NOW - i * 1000, ops_per_sec: total / k as f64,
                    p99_ms: Some(p99), disk_bytes: disk_total / k as u64, disk_full: false,
                })).collect();
                (members, samples)
            };
            prop_assume!(k >= p.min_nodes && k <= p.max_nodes);
            let (m, s) = build(k);
            match decide(&p, &m, &s, NOW, None) {
                Decision::ScaleOut { count, .. } => {
                    let (m, s) = build(k + count);
                    let after = decide(&p, &m, &s, NOW, None);
                    prop_assert!(after.action() != "scale_in", "{} after scaling out to {}", after, k + count);
                }
                Decision::ScaleIn { .. } => {
                    let (m, s) = build(k - 1);
                    let after = decide(&p, &m, &s, NOW, None);
                    prop_assert!(after.action() != "scale_out", "{} after scaling in to {}", after, k - 1);
                }
                Decision::Hold { .. } => {}
            }
        }
    }
}

//! Quorums: the N/W/R settings and the trackers that decide a request's outcome.
//!
//! The coordinator sends a request to every replica of a key's preference list and feeds each
//! replica's outcome to a [`WriteTracker`] or [`ReadTracker`]. The tracker answers
//! [`Decision::Pending`] until the outcome is decided, then [`Decision::Succeeded`] at exactly
//! the W-th acknowledgement (R-th answer), or [`Decision::Failed`] as soon as the replicas that
//! have not answered can no longer make up the quorum. A failure names every replica that failed
//! and why.
//!
//! Laws: a decision is a function of the counts only (`ok >= quorum` succeeds, `ok + pending <
//! quorum` fails), so once decided it never changes; a reply from a node outside the replica
//! list, or a second reply from the same node, is ignored.

use std::fmt;

use crate::version::SiblingSet;

/// Errors in quorum settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuorumError {
    /// N is 0: a key needs at least one replica.
    NoReplicas,
    /// W is outside `1..=N`.
    WriteQuorumOutOfRange {
        /// The W asked for.
        w: usize,
        /// The replica count.
        n: usize,
    },
    /// R is outside `1..=N`.
    ReadQuorumOutOfRange {
        /// The R asked for.
        r: usize,
        /// The replica count.
        n: usize,
    },
}

impl fmt::Display for QuorumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuorumError::NoReplicas => write!(f, "replica count N must be at least 1"),
            QuorumError::WriteQuorumOutOfRange { w, n } => {
                write!(f, "write quorum W={w} must be between 1 and N={n}")
            }
            QuorumError::ReadQuorumOutOfRange { r, n } => {
                write!(f, "read quorum R={r} must be between 1 and N={n}")
            }
        }
    }
}

impl std::error::Error for QuorumError {}

/// Replication factor N, write quorum W and read quorum R.
///
/// Law: `1 <= w <= n` and `1 <= r <= n` for every value built by [`QuorumConfig::new`] or
/// [`QuorumConfig::capped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct QuorumConfig {
    /// Replicas per key.
    pub n: usize,
    /// Acknowledgements a write waits for.
    pub w: usize,
    /// Answers a read waits for.
    pub r: usize,
}

impl QuorumConfig {
    /// Checks and builds the settings.
    ///
    /// Errors: [`QuorumError::NoReplicas`] for `n == 0`, the out-of-range variants when `w` or
    /// `r` is 0 or above `n`.
    pub fn new(n: usize, w: usize, r: usize) -> Result<Self, QuorumError> {
        if n == 0 {
            return Err(QuorumError::NoReplicas);
        }
        if w == 0 || w > n {
            return Err(QuorumError::WriteQuorumOutOfRange { w, n });
        }
        if r == 0 || r > n {
            return Err(QuorumError::ReadQuorumOutOfRange { r, n });
        }
        Ok(QuorumConfig { n, w, r })
    }

    /// Whether every read quorum overlaps every write quorum (W + R > N), so a read sees the
    /// latest acknowledged write when no hinted stand-in was involved.
    pub fn is_strong(&self) -> bool {
        self.w + self.r > self.n
    }

    /// The settings for a cluster of `nodes` nodes: N, W and R capped at the node count (and
    /// kept at least 1), as while the cluster is smaller than N.
    pub fn capped(&self, nodes: usize) -> QuorumConfig {
        let n = self.n.min(nodes).max(1);
        QuorumConfig {
            n,
            w: self.w.min(n).max(1),
            r: self.r.min(n).max(1),
        }
    }
}

impl Default for QuorumConfig {
    /// The cluster defaults: N = 3, W = 2, R = 2.
    fn default() -> Self {
        QuorumConfig { n: 3, w: 2, r: 2 }
    }
}

/// What one replica did with a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaOutcome {
    /// The replica stored the write.
    Ack,
    /// A stand-in stored the write as a hint for the replica `intended` (sloppy quorum); it
    /// counts toward W.
    HintedAck {
        /// The replica the write was meant for.
        intended: String,
    },
    /// The replica answered with an error.
    Failed(String),
    /// The replica did not answer in time.
    TimedOut,
}

/// A tracker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not decided yet.
    Pending,
    /// The quorum was reached.
    Succeeded,
    /// The quorum can no longer be reached; every failed replica as `(node, reason)`.
    Failed(Vec<(String, String)>),
}

/// Decides from counts alone; see the module laws.
/// `failures` is called only for a failed decision: deciding allocates nothing otherwise (it
/// runs on every answer of every request).
fn decide(
    ok: usize,
    pending: usize,
    quorum: usize,
    failures: impl FnOnce() -> Vec<(String, String)>,
) -> Decision {
    if ok >= quorum {
        Decision::Succeeded
    } else if ok + pending < quorum {
        Decision::Failed(failures())
    } else {
        Decision::Pending
    }
}

/// How many of the replicas have not answered yet.
fn count_pending<T>(replicas: &[(String, Option<T>)]) -> usize {
    replicas.iter().filter(|(_, o)| o.is_none()).count()
}

/// Finds `node` among the replicas that have not answered yet.
fn unanswered<T>(replicas: &[(String, Option<T>)], node: &str) -> Option<usize> {
    replicas
        .iter()
        .position(|(id, reply)| id == node && reply.is_none())
}

/// Counts the acknowledgements of one write.
#[derive(Debug, Clone)]
pub struct WriteTracker {
    /// Each replica (or stand-in) the write went to, with its outcome once known.
    replicas: Vec<(String, Option<ReplicaOutcome>)>,
    /// Acknowledgements needed.
    w: usize,
}

impl WriteTracker {
    /// A tracker for a write sent to `replicas` that needs `w` acknowledgements (a repeated
    /// node is counted once).
    pub fn new(replicas: Vec<String>, w: usize) -> Self {
        let mut unique: Vec<(String, Option<ReplicaOutcome>)> = Vec::with_capacity(replicas.len());
        for r in replicas {
            if !unique.iter().any(|(id, _)| *id == r) {
                unique.push((r, None));
            }
        }
        WriteTracker {
            replicas: unique,
            w,
        }
    }

    /// Adds a node the write is now also sent to (a stand-in found after a replica failed);
    /// it counts as pending until it answers. A node already in the list is not added again.
    pub fn add(&mut self, node: String) {
        if !self.replicas.iter().any(|(id, _)| *id == node) {
            self.replicas.push((node, None));
        }
    }

    /// Records `node`'s outcome and returns the decision. Ignored (and the decision returned
    /// unchanged) for a node outside the list or one that already answered.
    pub fn record(&mut self, node: &str, outcome: ReplicaOutcome) -> Decision {
        if let Some(i) = unanswered(&self.replicas, node) {
            self.replicas[i].1 = Some(outcome);
        }
        self.decision()
    }

    /// The decision from the outcomes recorded so far.
    pub fn decision(&self) -> Decision {
        decide(self.acks(), count_pending(&self.replicas), self.w, || {
            self.failures()
        })
    }

    /// Acknowledgements so far, hinted ones included.
    pub fn acks(&self) -> usize {
        self.replicas
            .iter()
            .filter(|(_, o)| {
                matches!(
                    o,
                    Some(ReplicaOutcome::Ack | ReplicaOutcome::HintedAck { .. })
                )
            })
            .count()
    }

    /// Replicas that have not answered yet.
    pub fn pending(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every replica that failed, as `(node, reason)`, in replica-list order.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .filter_map(|(id, o)| match o {
                Some(ReplicaOutcome::Failed(reason)) => Some((id.clone(), reason.clone())),
                Some(ReplicaOutcome::TimedOut) => Some((id.clone(), "timed out".to_string())),
                _ => None,
            })
            .collect()
    }

    /// Acknowledgements that stand-ins gave for others, as `(stand_in, intended)`.
    pub fn hinted(&self) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .filter_map(|(id, o)| match o {
                Some(ReplicaOutcome::HintedAck { intended }) => {
                    Some((id.clone(), intended.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// What one replica answered to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadReply {
    /// The replica's state of the key.
    Found(SiblingSet),
    /// The replica holds nothing for the key.
    NotFound,
    /// The replica answered with an error.
    Failed(String),
    /// The replica did not answer in time.
    TimedOut,
}

/// Counts the answers to one read, merges them and tells which replicas need repair.
#[derive(Debug, Clone)]
pub struct ReadTracker {
    /// Each replica the read went to, with its answer once known.
    replicas: Vec<(String, Option<ReadReply>)>,
    /// Answers needed.
    r: usize,
    /// The sync of every `Found` answer so far.
    merged: SiblingSet,
    /// The replica whose `Found` answer is the only one so far: its set was moved into
    /// `merged` (the sync of one set is that set) and its slot holds an empty set instead,
    /// until a second `Found` answer needs the original back (cloned from `merged` then). A
    /// read with one `Found` answer (R=1, or a one-node cluster) copies nothing.
    sole_found: Option<usize>,
}

impl ReadTracker {
    /// A tracker for a read sent to `replicas` that needs `r` answers (a repeated node is
    /// counted once).
    pub fn new(replicas: Vec<String>, r: usize) -> Self {
        let mut unique: Vec<(String, Option<ReadReply>)> = Vec::with_capacity(replicas.len());
        for node in replicas {
            if !unique.iter().any(|(id, _)| *id == node) {
                unique.push((node, None));
            }
        }
        ReadTracker {
            replicas: unique,
            r,
            merged: SiblingSet::new(),
            sole_found: None,
        }
    }

    /// Records `node`'s answer and returns the decision. `Found` and `NotFound` both count as
    /// answers. Ignored for a node outside the list or one that already answered.
    pub fn record(&mut self, node: &str, reply: ReadReply) -> Decision {
        if let Some(i) = unanswered(&self.replicas, node) {
            let reply = match reply {
                ReadReply::Found(set) if !self.any_found() => {
                    self.merged = set;
                    self.sole_found = Some(i);
                    ReadReply::Found(SiblingSet::new())
                }
                ReadReply::Found(set) => {
                    if let Some(first) = self.sole_found.take() {
                        self.replicas[first].1 = Some(ReadReply::Found(self.merged.clone()));
                    }
                    self.merged.sync(&set);
                    ReadReply::Found(set)
                }
                other => other,
            };
            self.replicas[i].1 = Some(reply);
        }
        self.decision()
    }

    /// Whether a `Found` answer was recorded.
    fn any_found(&self) -> bool {
        self.replicas
            .iter()
            .any(|(_, o)| matches!(o, Some(ReadReply::Found(_))))
    }

    /// The decision from the answers recorded so far.
    pub fn decision(&self) -> Decision {
        decide(
            self.answers(),
            count_pending(&self.replicas),
            self.r,
            || self.failures(),
        )
    }

    /// Answers so far (`Found` or `NotFound`).
    pub fn answers(&self) -> usize {
        self.replicas
            .iter()
            .filter(|(_, o)| matches!(o, Some(ReadReply::Found(_) | ReadReply::NotFound)))
            .count()
    }

    /// Replicas that have not answered yet.
    pub fn pending(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every replica that failed, as `(node, reason)`, in replica-list order.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.replicas
            .iter()
            .filter_map(|(id, o)| match o {
                Some(ReadReply::Failed(reason)) => Some((id.clone(), reason.clone())),
                Some(ReadReply::TimedOut) => Some((id.clone(), "timed out".to_string())),
                _ => None,
            })
            .collect()
    }

    /// The sync of every `Found` answer so far (empty when none).
    pub fn merged(&self) -> SiblingSet {
        self.merged.clone()
    }

    /// A reference to the merge, without cloning it.
    pub fn merged_ref(&self) -> &SiblingSet {
        &self.merged
    }

    /// The merge, taking the tracker: for a read that needs nothing more from it.
    pub fn into_merged(self) -> SiblingSet {
        self.merged
    }

    /// Replicas whose answer differs from the merge: a `Found` set other than the merge, or
    /// `NotFound` while the merge holds anything (even only tombstones or a context). These
    /// are the replicas to send the merge to (read repair). Replicas that failed or have not
    /// answered are not listed.
    pub fn stale_replicas(&self) -> Vec<String> {
        let empty = SiblingSet::new();
        self.replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.sole_found)
            .map(|(_, r)| r)
            .filter(|(_, o)| match o {
                Some(ReadReply::Found(set)) => *set != self.merged,
                Some(ReadReply::NotFound) => self.merged != empty,
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn a_stand_in_added_after_a_failure_can_complete_the_quorum() {
        let mut t = super::WriteTracker::new(vec!["a".into(), "b".into(), "c".into()], 2);
        t.record("a", super::ReplicaOutcome::Ack);
        t.record("b", super::ReplicaOutcome::Failed("refused".into()));
        t.add("d".into());
        t.add("a".into());
        assert_eq!(t.pending(), vec!["c".to_string(), "d".to_string()]);
        t.record("c", super::ReplicaOutcome::Failed("refused".into()));
        assert_eq!(t.decision(), super::Decision::Pending, "d may still answer");
        let d = t.record(
            "d",
            super::ReplicaOutcome::HintedAck {
                intended: "b".into(),
            },
        );
        assert_eq!(d, super::Decision::Succeeded);
    }

    use super::*;
    use crate::version::VersionVector;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    fn set_with(actor: &str, value: &str) -> SiblingSet {
        let mut s = SiblingSet::new();
        s.update(
            &VersionVector::new(),
            actor,
            Some(value.as_bytes().to_vec()),
            1,
        );
        s
    }

    #[test]
    fn config_validation() {
        assert_eq!(QuorumConfig::new(0, 1, 1), Err(QuorumError::NoReplicas));
        assert_eq!(
            QuorumConfig::new(3, 0, 1),
            Err(QuorumError::WriteQuorumOutOfRange { w: 0, n: 3 })
        );
        assert_eq!(
            QuorumConfig::new(3, 2, 4),
            Err(QuorumError::ReadQuorumOutOfRange { r: 4, n: 3 })
        );
        let c = QuorumConfig::new(3, 2, 2).unwrap();
        assert!(c.is_strong());
        assert!(!QuorumConfig::new(3, 1, 2).unwrap().is_strong());
        assert_eq!(c.capped(1), QuorumConfig { n: 1, w: 1, r: 1 });
        assert_eq!(c.capped(2), QuorumConfig { n: 2, w: 2, r: 2 });
        assert_eq!(c.capped(5), c);
        assert_eq!(c.capped(0), QuorumConfig { n: 1, w: 1, r: 1 });
        assert!(QuorumError::NoReplicas.to_string().contains("N"));
        assert_eq!(QuorumConfig::default(), QuorumConfig::new(3, 2, 2).unwrap());
    }

    #[test]
    fn write_succeeds_at_exactly_the_wth_ack_with_hints() {
        let mut t = WriteTracker::new(nodes(3), 2);
        assert_eq!(t.record("n0", ReplicaOutcome::Ack), Decision::Pending);
        assert_eq!(
            t.record(
                "n1",
                ReplicaOutcome::HintedAck {
                    intended: "n9".into()
                }
            ),
            Decision::Succeeded
        );
        assert_eq!(t.hinted(), vec![("n1".to_string(), "n9".to_string())]);
        // A later failure does not undo the decision.
        assert_eq!(
            t.record("n2", ReplicaOutcome::Failed("disk full".into())),
            Decision::Succeeded
        );
        assert_eq!(
            t.failures(),
            vec![("n2".to_string(), "disk full".to_string())]
        );
    }

    #[test]
    fn write_fails_fast_with_every_reason() {
        let mut t = WriteTracker::new(nodes(3), 2);
        assert_eq!(
            t.record("n0", ReplicaOutcome::Failed("refused".into())),
            Decision::Pending
        );
        let d = t.record("n2", ReplicaOutcome::TimedOut);
        assert_eq!(
            d,
            Decision::Failed(vec![
                ("n0".to_string(), "refused".to_string()),
                ("n2".to_string(), "timed out".to_string()),
            ])
        );
        assert_eq!(t.pending(), vec!["n1".to_string()]);
    }

    #[test]
    fn duplicates_and_strangers_are_ignored() {
        let mut t = WriteTracker::new(nodes(3), 2);
        t.record("n0", ReplicaOutcome::Ack);
        assert_eq!(t.record("n0", ReplicaOutcome::Ack), Decision::Pending);
        assert_eq!(t.record("x", ReplicaOutcome::Ack), Decision::Pending);
        assert_eq!(t.acks(), 1);
        // A first failure then a late "ack" from the same node stays a failure.
        t.record("n1", ReplicaOutcome::Failed("boom".into()));
        t.record("n1", ReplicaOutcome::Ack);
        assert_eq!(t.acks(), 1);
        assert_eq!(t.failures().len(), 1);
        // A replica listed twice is one replica.
        let t = WriteTracker::new(vec!["a".into(), "a".into()], 2);
        assert!(matches!(t.decision(), Decision::Failed(_)));
    }

    #[test]
    fn read_merges_and_names_stale_replicas() {
        let mut t = ReadTracker::new(nodes(3), 2);
        let old = set_with("n0", "old");
        let mut new = old.clone();
        let ctx = new.context().clone();
        new.update(&ctx, "n1", Some(b"new".to_vec()), 2);
        assert_eq!(
            t.record("n0", ReadReply::Found(old.clone())),
            Decision::Pending
        );
        assert_eq!(
            t.record("n1", ReadReply::Found(new.clone())),
            Decision::Succeeded
        );
        assert_eq!(t.merged(), new);
        assert_eq!(t.merged().values(), vec![b"new".as_slice()]);
        assert_eq!(t.stale_replicas(), vec!["n0".to_string()]);
        t.record("n2", ReadReply::NotFound);
        assert_eq!(t.stale_replicas(), vec!["n0".to_string(), "n2".to_string()]);
    }

    #[test]
    fn read_not_found_everywhere_is_not_stale_and_concurrent_answers_merge() {
        let mut t = ReadTracker::new(nodes(2), 2);
        t.record("n0", ReadReply::NotFound);
        assert_eq!(t.record("n1", ReadReply::NotFound), Decision::Succeeded);
        assert!(t.stale_replicas().is_empty());
        assert!(t.merged().is_empty());

        let mut t = ReadTracker::new(nodes(3), 2);
        t.record("n0", ReadReply::Found(set_with("n0", "a")));
        t.record("n1", ReadReply::Found(set_with("n1", "b")));
        assert_eq!(t.merged().values().len(), 2);
        assert_eq!(t.stale_replicas(), vec!["n0".to_string(), "n1".to_string()]);
        let d = t.record("n2", ReadReply::Failed("io".into()));
        assert_eq!(d, Decision::Succeeded);
        assert_eq!(t.failures(), vec![("n2".to_string(), "io".to_string())]);
    }

    #[test]
    fn read_fails_when_too_few_can_answer() {
        let mut t = ReadTracker::new(nodes(3), 3);
        assert_eq!(
            t.record("n1", ReadReply::TimedOut),
            Decision::Failed(vec![("n1".to_string(), "timed out".to_string())])
        );
    }

    /// An outcome kind in the property test: 0 ack, 1 hinted ack, 2 error, 3 timeout.
    fn outcome(kind: u8) -> ReplicaOutcome {
        match kind {
            0 => ReplicaOutcome::Ack,
            1 => ReplicaOutcome::HintedAck {
                intended: "elsewhere".into(),
            },
            2 => ReplicaOutcome::Failed("error".into()),
            _ => ReplicaOutcome::TimedOut,
        }
    }

    fn reply(kind: u8) -> ReadReply {
        match kind {
            0 => ReadReply::Found(set_with("a", "v")),
            1 => ReadReply::NotFound,
            2 => ReadReply::Failed("error".into()),
            _ => ReadReply::TimedOut,
        }
    }

    proptest! {
        /// Replays random replies (including strangers and repeats) and checks each decision
        /// against counts kept independently.
        #[test]
        fn prop_trackers_decide_exactly_when_counts_say(
            n in 1..6usize,
            quorum in 1..6usize,
            replies in proptest::collection::vec((0..7usize, 0..4u8), 0..14),
        ) {
            let quorum = quorum.min(n);
            let mut wt = WriteTracker::new(nodes(n), quorum);
            let mut rt = ReadTracker::new(nodes(n), quorum);
            let mut seen = BTreeSet::new();
            let (mut ok, mut bad) = (0usize, 0usize);
            let mut decided_at: Option<usize> = None;
            for (step, (who, kind)) in replies.iter().enumerate() {
                let node = format!("n{who}");
                if *who < n && seen.insert(*who) {
                    if *kind < 2 { ok += 1 } else { bad += 1 }
                }
                let expected = if ok >= quorum {
                    "ok"
                } else if n - bad < quorum {
                    "fail"
                } else {
                    "pending"
                };
                for d in [wt.record(&node, outcome(*kind)), rt.record(&node, reply(*kind))] {
                    let got = match &d {
                        Decision::Succeeded => "ok",
                        Decision::Failed(reasons) => {
                            prop_assert_eq!(reasons.len(), bad);
                            "fail"
                        }
                        Decision::Pending => "pending",
                    };
                    prop_assert_eq!(got, expected);
                }
                if expected != "pending" && decided_at.is_none() {
                    decided_at = Some(step);
                    // Decided at the reply that made it so, not later.
                    prop_assert!(*who < n);
                }
            }
            prop_assert_eq!(wt.acks(), ok);
            prop_assert_eq!(rt.answers(), ok);
        }

        /// The merge and the stale replicas are those of every answer kept whole: the sync
        /// of the `Found` sets, and each answer that differs from it.
        #[test]
        fn prop_reads_merge_and_name_stale_replicas_as_if_every_answer_were_kept(
            replies in proptest::collection::vec((0..4usize, 0..4u8), 0..10),
        ) {
            // Answers 0..2 are three sets a replica may hold (two concurrent, one newer than
            // the first); 3 is "not found".
            let first = set_with("a", "one");
            let concurrent = set_with("b", "two");
            let mut newer = first.clone();
            let ctx = newer.context().clone();
            newer.update(&ctx, "a", Some(b"three".to_vec()), 2);
            let sets = [first, concurrent, newer];
            let mut t = ReadTracker::new(nodes(4), 1);
            let mut kept: Vec<(String, Option<SiblingSet>)> = Vec::new();
            for (who, kind) in replies {
                let node = format!("n{who}");
                if kept.iter().any(|(n, _)| *n == node) {
                    continue;
                }
                let set = sets.get(kind as usize).cloned();
                kept.push((node.clone(), set.clone()));
                t.record(&node, set.map_or(ReadReply::NotFound, ReadReply::Found));
            }
            let mut merged = SiblingSet::new();
            for set in kept.iter().filter_map(|(_, s)| s.as_ref()) {
                merged.sync(set);
            }
            let mut stale: Vec<String> = kept
                .iter()
                .filter(|(_, s)| s.as_ref().map_or(merged != SiblingSet::new(), |s| *s != merged))
                .map(|(n, _)| n.clone())
                .collect();
            stale.sort();
            prop_assert_eq!(t.merged_ref(), &merged);
            prop_assert_eq!(t.stale_replicas(), stale);
            prop_assert_eq!(t.into_merged(), merged);
        }
    }
}

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
fn decide(ok: usize, pending: usize, quorum: usize, failures: Vec<(String, String)>) -> Decision {
    if ok >= quorum {
        Decision::Succeeded
    } else if ok + pending < quorum {
        Decision::Failed(failures)
    } else {
        Decision::Pending
    }
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
        decide(self.acks(), self.pending().len(), self.w, self.failures())
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
        }
    }

    /// Records `node`'s answer and returns the decision. `Found` and `NotFound` both count as
    /// answers. Ignored for a node outside the list or one that already answered.
    pub fn record(&mut self, node: &str, reply: ReadReply) -> Decision {
        if let Some(i) = unanswered(&self.replicas, node) {
            if let ReadReply::Found(set) = &reply {
                self.merged.sync(set);
            }
            self.replicas[i].1 = Some(reply);
        }
        self.decision()
    }

    /// The decision from the answers recorded so far.
    pub fn decision(&self) -> Decision {
        decide(
            self.answers(),
            self.pending().len(),
            self.r,
            self.failures(),
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

    /// Replicas whose answer differs from the merge: a `Found` set other than the merge, or
    /// `NotFound` while the merge holds anything (even only tombstones or a context). These
    /// are the replicas to send the merge to (read repair). Replicas that failed or have not
    /// answered are not listed.
    pub fn stale_replicas(&self) -> Vec<String> {
        let empty = SiblingSet::new();
        self.replicas
            .iter()
            .filter(|(_, o)| match o {
                Some(ReadReply::Found(set)) => *set != self.merged,
                Some(ReadReply::NotFound) => self.merged != empty,
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

//! The coordinator: any node serves any request by finding the key's preference list on the
//! ring and gathering a quorum from those replicas.
//!
//! A write is minted on one replica (this node when it is one, else the first live replica),
//! which applies it to its local sibling set and returns the new state; that state is then sent
//! to the other replicas, which merge it. The client is answered after W acknowledgements; the
//! rest complete in the background. A read asks all N replicas, answers after R replies with
//! their merge, then repairs in the background the replicas that answered stale.
//! The counting is kv-core's `WriteTracker` / `ReadTracker`; this file only feeds them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use kv_core::hash::key_token;
use kv_core::quorum::{Decision, ReadReply, ReadTracker, ReplicaOutcome, WriteTracker};
use kv_core::ring::Target;
use kv_core::version::{decode_context, SiblingSet};
use kv_core::wire::{ErrorCode, WireError};

use crate::node::Node;
use crate::peer::{Outgoing, PeerError, PeerRequest, PeerResponse};
use crate::replica::{Access, ReplicaError};

/// What a write returns to the client.
pub struct WriteResult {
    /// The context to hand back with the next write (encoded).
    pub context: String,
    /// For an increment: the counter's value on the replica that applied it, right after.
    pub counter: Option<i64>,
}

fn unavailable(what: &str, needed: usize, got: usize, failures: &[(String, String)]) -> WireError {
    let detail: Vec<String> = failures
        .iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect();
    WireError::new(
        ErrorCode::Unavailable,
        format!(
            "quorum not met: {what}={needed} needed, {got} answered; {}",
            detail.join("; ")
        ),
    )
}

fn timed_out(what: &str, needed: usize, got: usize, pending: &[String]) -> WireError {
    WireError::new(
        ErrorCode::Timeout,
        format!(
            "{what}={needed} not reached in time ({got} answered); no answer from {}",
            pending.join(", ")
        ),
    )
}

fn internal(e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorCode::Internal, e.to_string())
}

/// The nodes a request for `key` goes to, checked against a requested quorum override.
///
/// Strict: the key's preference list. Sloppy: the same list with each replica that gossip
/// sees down replaced by the next healthy node clockwise, which keeps a hint for it.
fn targets_for(
    node: &Node,
    key: &str,
    sloppy: bool,
    quorum: Option<usize>,
    default: usize,
    what: &str,
) -> Result<(Vec<Target>, usize), WireError> {
    let ring = node.ring_now();
    if ring.is_empty() {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            "the ring is empty: no node owns data yet",
        ));
    }
    let placement = node.placement(&ring);
    let n = placement.replicas().min(ring.len());
    let q = quorum_of(n, quorum, default, what)?;
    let token = key_token(key.as_bytes());
    let targets: Vec<Target> = if sloppy {
        ring.sloppy_preference_list(token, &placement, |id| node.is_up(id))
    } else {
        ring.preference_list_for_token(token, &placement)
            .into_iter()
            .map(|node| Target {
                node,
                hint_for: None,
            })
            .collect()
    };
    // A sloppy list holds only nodes seen up (a down replica is replaced or left out).
    let live = if sloppy {
        targets.len()
    } else {
        targets.iter().filter(|t| node.is_up(&t.node)).count()
    };
    if live < q {
        // Known before anything is sent: refused without writing anything, as Cassandra's
        // "unavailable" is, naming every replica that is down and not stood in for.
        let down: Vec<String> = ring
            .preference_list_for_token(token, &placement)
            .into_iter()
            .filter(|id| {
                !node.is_up(id) && !targets.iter().any(|t| t.hint_for.as_deref() == Some(id))
            })
            .map(|id| {
                if sloppy {
                    format!("{id}: down (gossip), and no other node is up to stand in")
                } else {
                    format!("{id}: down (gossip)")
                }
            })
            .collect();
        return Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "quorum not met: {what}={q} needed, {live} of the key's {} up; {}",
                if sloppy {
                    "replicas and stand-ins"
                } else {
                    "replicas"
                },
                down.join("; ")
            ),
        ));
    }
    Ok((targets, q))
}

/// The quorum a request needs of a key's `n` replicas: the one it asks for, else `default`.
fn quorum_of(
    n: usize,
    quorum: Option<usize>,
    default: usize,
    what: &str,
) -> Result<usize, WireError> {
    match quorum {
        Some(q) if q > n => Err(WireError::bad_request(format!(
            "{what}={q} exceeds the {n} replicas of the key"
        ))),
        Some(q) => Ok(q),
        None => Ok(default.min(n)),
    }
}

/// Whether this node is the only one in the ring and none joins or leaves: then it is every
/// key's only replica, no stand-in can exist and nothing is sent on.
fn alone(node: &Node) -> bool {
    let ring = node.ring_now();
    ring.len() == 1 && ring.nodes().all(|n| n.id == node.id) && node.pending_ring().is_none()
}

/// Who a write goes to and who stands in for whom: the quorum tracker plus the sloppy-quorum
/// bookkeeping of one write.
struct WritePlan {
    tracker: WriteTracker,
    /// Every node the write goes to, with the replica it holds a hint for (None: a replica).
    roles: Vec<(String, Option<String>)>,
    /// Healthy nodes further clockwise not yet used, for replacing failed targets: listed at
    /// the first failure (most writes have none), never under a strict quorum.
    fallbacks: Option<std::collections::VecDeque<String>>,
    /// The key's ring position, under a sloppy quorum (None: strict, no stand-ins).
    sloppy_token: Option<u64>,
    /// Owners-to-be of the key while membership changes: sent the write, not counted.
    extras: Vec<String>,
}

impl WritePlan {
    fn hint_for(&self, id: &str) -> Option<String> {
        self.roles
            .iter()
            .find(|(n, _)| n == id)
            .and_then(|(_, h)| h.clone())
    }

    /// A target failed: under a sloppy quorum the next fallback stands in for the replica
    /// the failed node was to hold the write for (itself, or the one it stood in for), so a
    /// second failure does not lose the hint either. Returns the new stand-in.
    fn replace(&mut self, node: &Node, failed: &str) -> Option<(String, String)> {
        let token = self.sloppy_token?;
        let roles = &self.roles;
        let fallbacks = self.fallbacks.get_or_insert_with(|| {
            node.ring()
                .walk(token)
                .into_iter()
                .filter(|id| !roles.iter().any(|(n, _)| n == id) && node.is_up(id))
                .collect()
        });
        let fb = fallbacks.pop_front()?;
        let intended = self.hint_for(failed).unwrap_or_else(|| failed.to_string());
        self.tracker.add(fb.clone());
        self.roles.push((fb.clone(), Some(intended.clone())));
        Some((fb, intended))
    }
}

/// A client write.
pub enum Write {
    /// A put, expiring `ttl_ms` after the replica that mints it applied it, when given.
    Value {
        /// The value.
        value: Vec<u8>,
        /// Its time to live.
        ttl_ms: Option<u64>,
    },
    /// A delete (a versioned tombstone).
    Delete,
    /// An increment of the key's counter by `by` (see [`kv_core::counter`]). It needs no
    /// context: it writes over what the minting replica holds, merged.
    Increment {
        /// What to add (negative to subtract).
        by: i64,
    },
}

/// Coordinates a put, a delete or an increment; puts and deletes carry the client's `context`.
///
/// Answers after W acknowledgements; the rest of the fan-out (and the replacement of replicas
/// that fail late by stand-ins with hints) continues in the background.
pub async fn write(
    node: &Arc<Node>,
    key: &str,
    write: Write,
    context: String,
    w: Option<usize>,
    sloppy: Option<bool>,
) -> Result<WriteResult, WireError> {
    let ctx = decode_context(&context)
        .map_err(|e| WireError::bad_request(format!("the context does not decode: {e}")))?;
    // A one-node cluster: the write is minted here and that is all, so no targets are listed
    // and no quorum is tracked (what `write_replicated` ends with).
    if alone(node) {
        let w = quorum_of(1, w, node.config.w, "W")?;
        return match mint_here(node, key, &write, &ctx).await {
            Ok((state, context)) => Ok(WriteResult {
                counter: match write {
                    Write::Increment { .. } => Some(counter_value(&state)?),
                    _ => None,
                },
                context,
            }),
            Err(MintFailure::Rejected(why)) => Err(WireError::bad_request(why)),
            Err(MintFailure::Refused(why) | MintFailure::Unknown(why)) => {
                Err(unavailable("W", w, 0, &[(node.id.clone(), why)]))
            }
        };
    }
    // Boxed: this was the largest branch of a request's future, and every request's future
    // is as large as its largest branch and is moved whole (2,280 bytes with it, 1,712 now).
    let deadline = Instant::now() + node.config.request_timeout;
    Box::pin(write_replicated(
        node, key, write, ctx, &context, w, sloppy, deadline,
    ))
    .await
}

/// [`write`] on a cluster of more than this node: minted on one replica, sent to the others
/// and counted against W, with stand-ins under a sloppy quorum.
#[allow(clippy::too_many_arguments)]
async fn write_replicated(
    node: &Arc<Node>,
    key: &str,
    write: Write,
    ctx: kv_core::version::VersionVector,
    context: &str,
    w: Option<usize>,
    sloppy: Option<bool>,
    deadline: Instant,
) -> Result<WriteResult, WireError> {
    let sloppy = sloppy.unwrap_or(node.config.sloppy);
    let (targets, w) = targets_for(node, key, sloppy, w, node.config.w, "W")?;
    // While nodes join or leave, the owners-to-be also get every write (not counted in W:
    // the current owners answer for it; the newcomers stream the rest).
    let extras: Vec<String> = match node.pending_ring() {
        Some(pending) => pending
            .preference_list(key.as_bytes(), &node.placement(&pending))
            .into_iter()
            .filter(|id| !targets.iter().any(|t| t.node == *id))
            .collect(),
        None => Vec::new(),
    };
    let mut plan = WritePlan {
        extras,
        tracker: WriteTracker::new(targets.iter().map(|t| t.node.clone()).collect(), w),
        roles: targets
            .iter()
            .map(|t| (t.node.clone(), t.hint_for.clone()))
            .collect(),
        fallbacks: None,
        sloppy_token: sloppy.then(|| key_token(key.as_bytes())),
    };

    // Mint on this node when it is a replica, else on the first live one; fall back down the
    // list when the minter fails. Only a real replica mints: a stand-in keeps hints, never a
    // state of its own from which to number versions.
    let replicas = targets
        .iter()
        .filter(|t| t.hint_for.is_none())
        .map(|t| t.node.as_str());
    let mut order: Vec<&str> = replicas.clone().filter(|p| *p == node.id).collect();
    order.extend(replicas.filter(|p| *p != node.id));
    let mut minted: Option<(String, Vec<u8>, String)> = None;
    for cand in order {
        match mint_on(node, cand, key, &write, &ctx, context, deadline).await {
            Ok((state, wctx)) => {
                plan.tracker.record(cand, ReplicaOutcome::Ack);
                minted = Some((cand.to_string(), state, wctx));
                break;
            }
            // Every replica would refuse it the same way: the client's error.
            Err(MintFailure::Rejected(why)) => return Err(WireError::bad_request(why)),
            // The minter may have applied the write: minting it again on the next replica
            // would store the one client write twice, as two concurrent siblings. Say so
            // instead; the client reads the key before writing again.
            Err(MintFailure::Unknown(why)) => {
                node.metrics.timeouts.fetch_add(1, Relaxed);
                return Err(WireError::new(
                    ErrorCode::Timeout,
                    format!(
                        "no answer from {cand}, which was applying the write ({why}): it may \
                         have been applied; read the key before writing it again"
                    ),
                ));
            }
            Err(MintFailure::Refused(why)) => {
                plan.replace(node, cand);
                if let Decision::Failed(f) = plan.tracker.record(cand, ReplicaOutcome::Failed(why))
                {
                    return Err(unavailable("W", w, plan.tracker.acks(), &f));
                }
            }
        }
    }
    let Some((minter, state, write_context)) = minted else {
        let mut failures = plan.tracker.failures();
        if failures.is_empty() {
            failures.push((
                "-".into(),
                "no replica of the key is up to take the write".into(),
            ));
        }
        return Err(unavailable("W", w, plan.tracker.acks(), &failures));
    };

    let counter = match write {
        Write::Increment { .. } => Some(counter_value(&state)?),
        _ => None,
    };
    if plan.extras.is_empty()
        && matches!(plan.tracker.decision(), Decision::Succeeded)
        && plan.tracker.pending().is_empty()
    {
        // Nobody is left to send the new state to (N = 1, or the others failed while the
        // write looked for a minter, without a stand-in): what FanOut would find.
        return Ok(WriteResult {
            context: write_context,
            counter,
        });
    }
    let mut fan = FanOut::start(node, key.to_string(), state, &minter, plan, deadline);
    let decided = loop {
        match fan.plan.tracker.decision() {
            Decision::Succeeded => break Ok(()),
            Decision::Failed(f) => break Err(unavailable("W", w, fan.plan.tracker.acks(), &f)),
            Decision::Pending => {}
        }
        if !fan.next().await {
            node.metrics.timeouts.fetch_add(1, Relaxed);
            let tracker = &fan.plan.tracker;
            break Err(timed_out("W", w, tracker.acks(), &tracker.pending()));
        }
    };
    // The answer is known; the replicas still pending (and the owners-to-be) keep going in the
    // background, late failures replaced by stand-ins.
    if !fan.running.is_empty() {
        tokio::spawn(async move { while fan.next().await {} });
    }
    decided.map(|()| WriteResult {
        context: write_context,
        counter,
    })
}

/// Applies the client's write on replica `cand` (locally or by a peer call): the new state and
/// the writer's context.
async fn mint_on(
    node: &Arc<Node>,
    cand: &str,
    key: &str,
    write: &Write,
    ctx: &kv_core::version::VersionVector,
    context: &str,
    deadline: Instant,
) -> Result<(Vec<u8>, String), MintFailure> {
    if !node.is_up(cand) {
        return Err(MintFailure::Refused("down (gossip)".to_string()));
    }
    let (value, ttl_ms) = match write {
        Write::Value { value, ttl_ms } => (Some(value.as_slice()), *ttl_ms),
        Write::Delete | Write::Increment { .. } => (None, None),
    };
    if cand == node.id {
        return mint_here(node, key, write, ctx).await;
    }
    let req = match write {
        Write::Increment { by } => PeerRequest::Increment {
            key: key.to_string(),
            by: *by,
        },
        _ => PeerRequest::Mint {
            key: key.to_string(),
            value: value.map(<[u8]>::to_vec),
            ttl_ms,
            context: context.to_string(),
        },
    };
    match call(node, cand, Outgoing::Request(&req), deadline).await {
        Ok(PeerResponse::Minted {
            state,
            write_context,
            ..
        }) => Ok((state, write_context)),
        Ok(PeerResponse::Rejected { message }) => Err(MintFailure::Rejected(message)),
        Ok(other) => Err(MintFailure::Refused(format!("unexpected answer {other:?}"))),
        Err(e @ (PeerError::ConnectionLost | PeerError::Timeout)) => {
            Err(MintFailure::Unknown(e.to_string()))
        }
        Err(e) => Err(MintFailure::Refused(e.to_string())),
    }
}

/// [`mint_on`] this node.
async fn mint_here(
    node: &Arc<Node>,
    key: &str,
    write: &Write,
    ctx: &kv_core::version::VersionVector,
) -> Result<(Vec<u8>, String), MintFailure> {
    let minted = match write {
        Write::Increment { by } => node.increment(key, *by, crate::now_ms()).await,
        Write::Value { value, ttl_ms } => {
            node.mint(key, Some(value), *ttl_ms, ctx, crate::now_ms())
                .await
        }
        Write::Delete => node.mint(key, None, None, ctx, crate::now_ms()).await,
    };
    match minted {
        Ok(m) => {
            node.count_capped(m.capped);
            Ok((m.encoded, m.write_context))
        }
        Err(ReplicaError::Rejected(why)) => Err(MintFailure::Rejected(why)),
        Err(e) => Err(MintFailure::Refused(e.to_string())),
    }
}

/// The value of the counter in a minted state.
fn counter_value(state: &[u8]) -> Result<i64, WireError> {
    let internal = |e: String| WireError::new(ErrorCode::Internal, e);
    SiblingSet::decode(state)
        .map_err(|e| internal(format!("the minted state does not decode: {e}")))?
        .counter(crate::now_ms())
        .map_err(|e| internal(format!("the minted counter does not decode: {e}")))
        .map(|c| c.map_or(0, |c| c.value()))
}

/// Why a replica did not mint a write.
enum MintFailure {
    /// The write cannot apply to the key (an increment of a value): the client's error.
    Rejected(String),
    /// It did not apply it (down, unreachable, or it answered with an error): another replica
    /// may mint it.
    Refused(String),
    /// The request reached it and no answer came back: it may have applied it.
    Unknown(String),
}

/// The replication of one minted write: the minted state sent to every other target
/// (stand-ins as hints) and to the owners-to-be, outcomes fed to the plan's tracker, failed
/// targets replaced by fallbacks. The sends are futures polled by whoever drives `next` (the
/// request until its decision, then one background task), not a task each.
struct FanOut {
    node: Arc<Node>,
    /// Shared by the sends (each encodes its frame from them).
    key: Arc<str>,
    state: Arc<[u8]>,
    plan: WritePlan,
    deadline: Instant,
    running: FuturesUnordered<BoxFuture<'static, (String, ReplicaOutcome, bool)>>,
}

impl FanOut {
    fn start(
        node: &Arc<Node>,
        key: String,
        state: Vec<u8>,
        minter: &str,
        mut plan: WritePlan,
        deadline: Instant,
    ) -> FanOut {
        let extras = std::mem::take(&mut plan.extras);
        let mut fan = FanOut {
            node: node.clone(),
            key: key.into(),
            state: state.into(),
            plan,
            deadline,
            running: FuturesUnordered::new(),
        };
        for extra in extras {
            fan.send(extra, None, false);
        }
        for target in fan.plan.tracker.pending() {
            if target == minter {
                continue;
            }
            let hint = fan.plan.hint_for(&target);
            if hint.is_none() && !fan.node.is_up(&target) {
                fan.outcome(target, ReplicaOutcome::Failed("down (gossip)".into()));
            } else {
                fan.send(target, hint, true);
            }
        }
        fan
    }

    /// Starts sending the state to `target` (a hint for `hint`); `counted` outcomes go to the
    /// tracker, the others (owners-to-be) are only attempted.
    fn send(&mut self, target: String, hint: Option<String>, counted: bool) {
        let (node, key, state) = (self.node.clone(), self.key.clone(), self.state.clone());
        let deadline = self.deadline;
        self.running.push(Box::pin(async move {
            let outcome = replicate(&node, &target, &key, &state, hint, deadline).await;
            (target, outcome, counted)
        }));
    }

    fn outcome(&mut self, from: String, outcome: ReplicaOutcome) {
        if matches!(outcome, ReplicaOutcome::Failed(_)) {
            if let Some((fb, intended)) = self.plan.replace(&self.node, &from) {
                self.send(fb, Some(intended), true);
            }
        }
        self.plan.tracker.record(&from, outcome);
    }

    /// Waits for the next outcome; false when nothing is left to wait for or the deadline
    /// passed.
    async fn next(&mut self) -> bool {
        if self.running.is_empty() {
            return false;
        }
        match tokio::time::timeout_at(self.deadline.into(), self.running.next()).await {
            Ok(Some((from, outcome, counted))) => {
                if counted {
                    self.outcome(from, outcome);
                }
                true
            }
            Ok(None) | Err(_) => false,
        }
    }
}

/// Sends a key's state to one replica (this node merges locally), or to a stand-in as a hint
/// for `hint_for`, and reports the outcome.
async fn replicate(
    node: &Arc<Node>,
    target: &str,
    key: &str,
    state: &[u8],
    hint_for: Option<String>,
    deadline: Instant,
) -> ReplicaOutcome {
    let ack = |hint: &Option<String>| match hint {
        Some(intended) => ReplicaOutcome::HintedAck {
            intended: intended.clone(),
        },
        None => ReplicaOutcome::Ack,
    };
    if target == node.id && hint_for.is_none() {
        let merged = match SiblingSet::decode(state) {
            Ok(set) => node.merge_state(key, set).await,
            Err(e) => return ReplicaOutcome::Failed(e.to_string()),
        };
        return match merged {
            Ok(_) => ReplicaOutcome::Ack,
            Err(e) => ReplicaOutcome::Failed(e.to_string()),
        };
    }
    if let (true, Some(intended)) = (target == node.id, &hint_for) {
        // This node stands in for `intended`: keep the state as a hint (a durable write).
        let (n, intended) = (node.clone(), intended.clone());
        let (key, state) = (key.to_string(), state.to_vec());
        let stored = tokio::task::spawn_blocking(move || {
            let set = SiblingSet::decode(&state).map_err(|e| e.to_string())?;
            n.hints.store(&intended, key.as_bytes(), &set)
        })
        .await;
        return match stored {
            Ok(Ok(())) => ack(&hint_for),
            Ok(Err(e)) => ReplicaOutcome::Failed(e),
            Err(e) => ReplicaOutcome::Failed(format!("hint task failed: {e}")),
        };
    }
    let out = Outgoing::Replicate {
        key,
        state,
        hint_for: hint_for.as_deref(),
    };
    match call(node, target, out, deadline).await {
        Ok(PeerResponse::Ack) => ack(&hint_for),
        Ok(other) => ReplicaOutcome::Failed(format!("unexpected answer {other:?}")),
        Err(PeerError::Timeout) => ReplicaOutcome::TimedOut,
        Err(e) => ReplicaOutcome::Failed(e.to_string()),
    }
}

/// Calls a peer by node id with what is left of the request's time.
async fn call(
    node: &Arc<Node>,
    target: &str,
    out: Outgoing<'_>,
    deadline: Instant,
) -> Result<PeerResponse, PeerError> {
    let addr = node
        .addr_of(target)
        .ok_or_else(|| PeerError::Unreachable("not a known member".to_string()))?;
    node.metrics.peer_requests.fetch_add(1, Relaxed);
    let left = deadline.saturating_duration_since(Instant::now());
    let mut result = node.peers.call_out(&addr, out, left).await;
    if matches!(result, Err(PeerError::Unreachable(_))) && node.is_up(target) {
        // Gossip heard from it since the failure this answer remembers (it restarted): try
        // again now instead of failing on a stale memory.
        node.peers.clear_failure(&addr);
        let left = deadline.saturating_duration_since(Instant::now());
        result = node.peers.call_out(&addr, out, left).await;
    }
    if result.is_err() {
        node.metrics.peer_failures.fetch_add(1, Relaxed);
    }
    result
}

/// Coordinates a read: the merged sibling set of R replicas (empty when the key is absent).
pub async fn read(
    node: &Arc<Node>,
    key: &str,
    r: Option<usize>,
    sloppy: Option<bool>,
) -> Result<SiblingSet, WireError> {
    let sloppy = sloppy.unwrap_or(node.config.sloppy);
    let (targets, r) = targets_for(node, key, sloppy, r, node.config.r, "R")?;
    let deadline = Instant::now() + node.config.request_timeout;
    let mut tracker = ReadTracker::new(targets.iter().map(|t| t.node.clone()).collect(), r);
    let stand_ins: Vec<String> = targets
        .iter()
        .filter(|t| t.hint_for.is_some())
        .map(|t| t.node.clone())
        .collect();
    // A stand-in that holds nothing for the key knows nothing about it: its "not found" must
    // not count as an answer (it would hide the real value).
    let settle = |from: &str, reply: ReadReply| match reply {
        ReadReply::NotFound if stand_ins.iter().any(|s| s == from) => {
            ReadReply::Failed("stand-in holds no hint for the key".into())
        }
        other => other,
    };
    // Made on the first remote target: a read this node answers alone needs none.
    let mut running: Option<FuturesUnordered<BoxFuture<'static, (String, ReadReply)>>> = None;
    for t in targets {
        let target = t.node;
        if !node.is_up(&target) {
            tracker.record(&target, ReadReply::Failed("down (gossip)".into()));
            continue;
        }
        let with_hints = t.hint_for.is_some();
        if target == node.id && !with_hints {
            // This node's own replica, answered at once when it needs no disk.
            match node.replica.read_with(Access::Now, key.as_bytes()) {
                Err(ReplicaError::WouldBlock) => {}
                read => {
                    let reply = match read {
                        Ok(Some(s)) => ReadReply::Found(s),
                        Ok(None) => ReadReply::NotFound,
                        Err(e) => ReadReply::Failed(e.to_string()),
                    };
                    tracker.record(&target, settle(&target, reply));
                    continue;
                }
            }
        }
        let (node, key) = (node.clone(), key.to_string());
        running
            .get_or_insert_with(FuturesUnordered::new)
            .push(Box::pin(async move {
                let reply = read_one(&node, &target, key, with_hints, deadline).await;
                (target, reply)
            }));
    }
    loop {
        match tracker.decision() {
            Decision::Succeeded => break,
            Decision::Failed(f) => return Err(unavailable("R", r, tracker.answers(), &f)),
            Decision::Pending => {}
        }
        // Nothing was sent to wait for: every target answered or failed above.
        let Some(running) = running.as_mut() else {
            return Err(unavailable("R", r, tracker.answers(), &tracker.failures()));
        };
        match tokio::time::timeout_at(deadline.into(), running.next()).await {
            Ok(Some((from, reply))) => {
                let reply = settle(&from, reply);
                tracker.record(&from, reply);
            }
            Ok(None) => return Err(unavailable("R", r, tracker.answers(), &tracker.failures())),
            Err(_) => {
                node.metrics.timeouts.fetch_add(1, Relaxed);
                return Err(timed_out("R", r, tracker.answers(), &tracker.pending()));
            }
        }
    }
    if running.as_ref().is_none_or(FuturesUnordered::is_empty)
        && tracker.stale_replicas().is_empty()
    {
        return Ok(tracker.into_merged());
    }
    let merged = tracker.merged();
    let mut running = running.unwrap_or_default();
    // Read repair: wait for the remaining answers (until the deadline), then bring every
    // replica that answered something older than the merge up to date.
    let (node, key) = (node.clone(), key.to_string());
    tokio::spawn(async move {
        while let Ok(Some((from, reply))) =
            tokio::time::timeout_at(deadline.into(), running.next()).await
        {
            tracker.record(&from, reply);
        }
        let full = tracker.merged();
        if full.is_empty() {
            return;
        }
        let state = full.encode();
        for stale in tracker.stale_replicas() {
            if stand_ins.contains(&stale) {
                continue;
            }
            let repair_deadline = Instant::now() + node.config.request_timeout;
            if let ReplicaOutcome::Ack =
                replicate(&node, &stale, &key, &state, None, repair_deadline).await
            {
                node.metrics.read_repairs.fetch_add(1, Relaxed);
            }
        }
    });
    Ok(merged)
}

async fn read_one(
    node: &Arc<Node>,
    target: &str,
    key: String,
    with_hints: bool,
    deadline: Instant,
) -> ReadReply {
    if target == node.id {
        let read = if with_hints {
            let n = node.clone();
            tokio::task::spawn_blocking(move || {
                let data = n.replica.read(key.as_bytes()).map_err(internal)?;
                let hinted = n.hints.for_key(key.as_bytes()).map_err(internal)?;
                Ok(match (data, hinted) {
                    (Some(d), Some(h)) => Some(d.synced(&h)),
                    (d, h) => d.or(h),
                })
            })
            .await
            .map_err(internal)
            .and_then(|r| r)
        } else {
            read_local(node, key).await
        };
        return match read {
            Ok(Some(s)) => ReadReply::Found(s),
            Ok(None) => ReadReply::NotFound,
            Err(e) => ReadReply::Failed(e.message),
        };
    }
    match call(
        node,
        target,
        Outgoing::Request(&PeerRequest::Read { key, with_hints }),
        deadline,
    )
    .await
    {
        Ok(PeerResponse::State { state: Some(bytes) }) => match SiblingSet::decode(&bytes) {
            Ok(s) => ReadReply::Found(s),
            Err(e) => ReadReply::Failed(format!("undecodable state: {e}")),
        },
        Ok(PeerResponse::State { state: None }) => ReadReply::NotFound,
        Ok(other) => ReadReply::Failed(format!("unexpected answer {other:?}")),
        Err(PeerError::Timeout) => ReadReply::TimedOut,
        Err(e) => ReadReply::Failed(e.to_string()),
    }
}

/// Reads only this node's replica of `key` (`get --local`).
pub async fn read_local(node: &Arc<Node>, key: String) -> Result<Option<SiblingSet>, WireError> {
    node.read_state(&key).await.map_err(internal)
}

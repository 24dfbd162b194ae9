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

use kv_core::quorum::{Decision, ReadReply, ReadTracker, ReplicaOutcome, WriteTracker};
use kv_core::version::{decode_context, SiblingSet};
use kv_core::wire::{ErrorCode, WireError};
use tokio::sync::mpsc;

use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// What a write returns to the client.
pub struct WriteResult {
    /// The context to hand back with the next write (encoded).
    pub context: String,
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

/// The preference list of `key`, checked against a requested quorum override.
fn replicas_for(
    node: &Node,
    key: &str,
    quorum: Option<usize>,
    default: usize,
    what: &str,
) -> Result<(Vec<String>, usize), WireError> {
    let ring = node.ring();
    if ring.is_empty() {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            "the ring is empty: no node owns data yet",
        ));
    }
    let prefs = ring.preference_list(key.as_bytes(), &node.placement(&ring));
    let n = prefs.len();
    let q = match quorum {
        Some(q) if q > n => {
            return Err(WireError::bad_request(format!(
                "{what}={q} exceeds the {n} replicas of the key"
            )))
        }
        Some(q) => q,
        None => default.min(n),
    };
    Ok((prefs, q))
}

/// Coordinates a put (`value` `Some`) or a delete (`None`) with the client's `context`.
pub async fn write(
    node: &Arc<Node>,
    key: String,
    value: Option<Vec<u8>>,
    context: String,
    w: Option<usize>,
) -> Result<WriteResult, WireError> {
    let ctx = decode_context(&context)
        .map_err(|e| WireError::bad_request(format!("the context does not decode: {e}")))?;
    let (prefs, w) = replicas_for(node, &key, w, node.config.w, "W")?;
    let deadline = Instant::now() + node.config.request_timeout;
    let mut tracker = WriteTracker::new(prefs.clone(), w);

    // Mint on this node when it is a replica, else on the first live one; fall back down the
    // list when the minter fails.
    let mut order: Vec<&String> = prefs.iter().filter(|p| **p == node.id).collect();
    order.extend(prefs.iter().filter(|p| **p != node.id));
    let mut minted: Option<(String, Vec<u8>, String)> = None;
    for cand in order {
        if !node.is_up(cand) {
            if let Decision::Failed(f) =
                tracker.record(cand, ReplicaOutcome::Failed("down (gossip)".into()))
            {
                return Err(unavailable("W", w, tracker.acks(), &f));
            }
            continue;
        }
        let outcome = if *cand == node.id {
            let n = node.clone();
            let (k, v, c) = (key.clone(), value.clone(), ctx.clone());
            match tokio::task::spawn_blocking(move || {
                n.replica.mint(k.as_bytes(), v, &c, crate::now_ms())
            })
            .await
            {
                Ok(Ok(m)) => {
                    node.count_capped(m.capped);
                    Ok((m.state.encode(), m.write_context.encode_context()))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("write task failed: {e}")),
            }
        } else {
            let req = PeerRequest::Mint {
                key: key.clone(),
                value: value.clone(),
                context: context.clone(),
            };
            match call(node, cand, &req, deadline).await {
                Ok(PeerResponse::Minted {
                    state,
                    write_context,
                    ..
                }) => Ok((state, write_context)),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok((state, wctx)) => {
                tracker.record(cand, ReplicaOutcome::Ack);
                minted = Some((cand.clone(), state, wctx));
                break;
            }
            Err(why) => {
                if let Decision::Failed(f) = tracker.record(cand, ReplicaOutcome::Failed(why)) {
                    return Err(unavailable("W", w, tracker.acks(), &f));
                }
            }
        }
    }
    let Some((minter, state, write_context)) = minted else {
        return Err(unavailable("W", w, tracker.acks(), &tracker.failures()));
    };

    // Send the new state to every other replica that has not failed already.
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, ReplicaOutcome)>();
    let untried: Vec<String> = tracker.pending();
    for target in untried {
        if target == minter {
            continue;
        }
        if !node.is_up(&target) {
            let _ = tx.send((target, ReplicaOutcome::Failed("down (gossip)".into())));
            continue;
        }
        let (node, tx, key, state) = (node.clone(), tx.clone(), key.clone(), state.clone());
        tokio::spawn(async move {
            let outcome = replicate(&node, &target, key, state, deadline).await;
            let _ = tx.send((target, outcome));
        });
    }
    drop(tx);
    loop {
        match tracker.decision() {
            Decision::Succeeded => {
                return Ok(WriteResult {
                    context: write_context,
                })
            }
            Decision::Failed(f) => return Err(unavailable("W", w, tracker.acks(), &f)),
            Decision::Pending => {}
        }
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((from, outcome))) => {
                tracker.record(&from, outcome);
            }
            Ok(None) => return Err(unavailable("W", w, tracker.acks(), &tracker.failures())),
            Err(_) => {
                node.metrics.timeouts.fetch_add(1, Relaxed);
                return Err(timed_out("W", w, tracker.acks(), &tracker.pending()));
            }
        }
    }
}

/// Sends a key's state to one replica (this node merges locally) and reports the outcome.
async fn replicate(
    node: &Arc<Node>,
    target: &str,
    key: String,
    state: Vec<u8>,
    deadline: Instant,
) -> ReplicaOutcome {
    if target == node.id {
        let n = node.clone();
        let merged = tokio::task::spawn_blocking(move || {
            let set = SiblingSet::decode(&state).map_err(|e| e.to_string())?;
            n.replica
                .merge(key.as_bytes(), &set)
                .map_err(|e| e.to_string())
        })
        .await;
        return match merged {
            Ok(Ok(_)) => ReplicaOutcome::Ack,
            Ok(Err(e)) => ReplicaOutcome::Failed(e),
            Err(e) => ReplicaOutcome::Failed(format!("merge task failed: {e}")),
        };
    }
    match call(
        node,
        target,
        &PeerRequest::Replicate { key, state },
        deadline,
    )
    .await
    {
        Ok(PeerResponse::Ack) => ReplicaOutcome::Ack,
        Ok(other) => ReplicaOutcome::Failed(format!("unexpected answer {other:?}")),
        Err(e) if e == "timed out" => ReplicaOutcome::TimedOut,
        Err(e) => ReplicaOutcome::Failed(e),
    }
}

/// Calls a peer by node id with what is left of the request's time.
async fn call(
    node: &Arc<Node>,
    target: &str,
    req: &PeerRequest,
    deadline: Instant,
) -> Result<PeerResponse, String> {
    let addr = node
        .addr_of(target)
        .ok_or_else(|| "not a known member".to_string())?;
    node.metrics.peer_requests.fetch_add(1, Relaxed);
    let left = deadline.saturating_duration_since(Instant::now());
    let result = node.peers.call(&addr, req, left).await;
    if result.is_err() {
        node.metrics.peer_failures.fetch_add(1, Relaxed);
    }
    result.map_err(|e| e.to_string())
}

/// Coordinates a read: the merged sibling set of R replicas (empty when the key is absent).
pub async fn read(
    node: &Arc<Node>,
    key: String,
    r: Option<usize>,
) -> Result<SiblingSet, WireError> {
    let (prefs, r) = replicas_for(node, &key, r, node.config.r, "R")?;
    let deadline = Instant::now() + node.config.request_timeout;
    let mut tracker = ReadTracker::new(prefs.clone(), r);
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, ReadReply)>();
    for target in prefs {
        if !node.is_up(&target) {
            let _ = tx.send((target, ReadReply::Failed("down (gossip)".into())));
            continue;
        }
        let (node, tx, key) = (node.clone(), tx.clone(), key.clone());
        tokio::spawn(async move {
            let reply = read_one(&node, &target, key, deadline).await;
            let _ = tx.send((target, reply));
        });
    }
    drop(tx);
    loop {
        match tracker.decision() {
            Decision::Succeeded => break,
            Decision::Failed(f) => return Err(unavailable("R", r, tracker.answers(), &f)),
            Decision::Pending => {}
        }
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some((from, reply))) => {
                tracker.record(&from, reply);
            }
            Ok(None) => return Err(unavailable("R", r, tracker.answers(), &tracker.failures())),
            Err(_) => {
                node.metrics.timeouts.fetch_add(1, Relaxed);
                return Err(timed_out("R", r, tracker.answers(), &tracker.pending()));
            }
        }
    }
    let merged = tracker.merged();
    // Read repair: wait for the remaining answers (until the deadline), then bring every
    // replica that answered something older than the merge up to date.
    let node = node.clone();
    tokio::spawn(async move {
        while let Ok(Some((from, reply))) =
            tokio::time::timeout_at(deadline.into(), rx.recv()).await
        {
            tracker.record(&from, reply);
        }
        let full = tracker.merged();
        if full.is_empty() {
            return;
        }
        let state = full.encode();
        for stale in tracker.stale_replicas() {
            let repair_deadline = Instant::now() + node.config.request_timeout;
            if let ReplicaOutcome::Ack =
                replicate(&node, &stale, key.clone(), state.clone(), repair_deadline).await
            {
                node.metrics.read_repairs.fetch_add(1, Relaxed);
            }
        }
    });
    Ok(merged)
}

async fn read_one(node: &Arc<Node>, target: &str, key: String, deadline: Instant) -> ReadReply {
    if target == node.id {
        return match read_local(node, key).await {
            Ok(Some(s)) => ReadReply::Found(s),
            Ok(None) => ReadReply::NotFound,
            Err(e) => ReadReply::Failed(e.message),
        };
    }
    match call(node, target, &PeerRequest::Read { key }, deadline).await {
        Ok(PeerResponse::State { state: Some(bytes) }) => match SiblingSet::decode(&bytes) {
            Ok(s) => ReadReply::Found(s),
            Err(e) => ReadReply::Failed(format!("undecodable state: {e}")),
        },
        Ok(PeerResponse::State { state: None }) => ReadReply::NotFound,
        Ok(other) => ReadReply::Failed(format!("unexpected answer {other:?}")),
        Err(e) if e == "timed out" => ReadReply::TimedOut,
        Err(e) => ReadReply::Failed(e),
    }
}

/// Reads only this node's replica of `key` (`get --local`).
pub async fn read_local(node: &Arc<Node>, key: String) -> Result<Option<SiblingSet>, WireError> {
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.replica.read(key.as_bytes()))
        .await
        .map_err(internal)?
        .map_err(internal)
}

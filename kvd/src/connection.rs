//! One client WebSocket connection: JSON text frames in, answers out, many requests in flight
//! at once, each answered by its id as soon as it completes.
//!
//! A bad frame is answered with an error and the connection lives on. When a client has
//! `max_in_flight` requests outstanding, further ones are answered `overloaded`; when it stops
//! reading its answers, the bounded answer queue fills and the node stops reading its requests
//! (TCP back-pressure), so an unread client cannot grow the node's memory.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kv_core::version::SiblingSet;
use kv_core::wire::{
    decode_request, error_response, ok_response, value_to_json, ClientOp, ErrorCode, Request,
    WireError,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::coordinator;
use crate::metrics::op_index;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};

/// Answers waiting to be written; when full, the reader waits (back-pressure).
const ANSWER_QUEUE: usize = 1024;
/// A connection with nothing in flight and no frame for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Serves one client connection until it closes or the node shuts down.
/// With `read_only` (the client's token allows reads only), writes and admin operations are
/// answered `unauthorized`.
pub async fn serve(node: Arc<Node>, ws: WebSocketStream<TcpStream>, read_only: bool) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(ANSWER_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            // Batch whatever is queued into one flush.
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let in_flight = Arc::new(Semaphore::new(node.config.max_in_flight));
    let mut shutdown = node.shutdown_signal();
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => m,
            _ = shutdown.changed() => break,
        };
        let msg = match next {
            Ok(Some(Ok(msg))) => msg,
            Ok(Some(Err(e))) => {
                // The socket layer refused a frame (e.g. far over the size limit) or the
                // connection broke: tell the client if we still can, then close.
                let err = WireError::new(ErrorCode::TooLarge, format!("connection closed: {e}"));
                let _ = tx.send(Message::text(error_response(None, &err))).await;
                break;
            }
            Ok(None) => break,
            Err(_) => {
                if in_flight.available_permits() == node.config.max_in_flight {
                    break;
                }
                continue;
            }
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                node.metrics.bad_frames.fetch_add(1, Relaxed);
                let err = WireError::bad_request(
                    "binary frames are not part of the client protocol: send JSON text frames",
                );
                if tx
                    .send(Message::text(error_response(None, &err)))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Message::Close(_) => break,
            _ => continue,
        };
        let req = match decode_request(&text, &node.config.limits) {
            Ok(r) => r,
            Err((id, err)) => {
                node.metrics.bad_frames.fetch_add(1, Relaxed);
                if tx
                    .send(Message::text(error_response(id, &err)))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            node.metrics.overloaded.fetch_add(1, Relaxed);
            let err = WireError::new(
                ErrorCode::Overloaded,
                format!(
                    "more than {} requests in flight on this connection",
                    node.config.max_in_flight
                ),
            );
            if tx
                .send(Message::text(error_response(Some(req.id), &err)))
                .await
                .is_err()
            {
                break;
            }
            continue;
        };
        if read_only && !allowed_read_only(&req.op) {
            let err = WireError::new(
                ErrorCode::Unauthorized,
                format!("this token is read-only: '{}' is refused", req.op.name()),
            );
            if tx
                .send(Message::text(error_response(Some(req.id), &err)))
                .await
                .is_err()
            {
                break;
            }
            continue;
        }
        let node = node.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let answer = handle(&node, req).await;
            let _ = tx.send(Message::text(answer)).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// Runs an admin request on member `target` (a peer call that may take `limit`).
async fn forward(
    node: &Node,
    target: &str,
    req: PeerRequest,
    limit: Duration,
) -> Result<PeerResponse, WireError> {
    let addr = node
        .addr_of(target)
        .ok_or_else(|| WireError::bad_request(format!("{target} is not a member")))?;
    node.peers
        .call(&addr, &req, limit)
        .await
        .map_err(|e| WireError::new(ErrorCode::Unavailable, format!("{target}: {e}")))
}

fn unexpected(target: &str, answer: &PeerResponse) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!("unexpected answer from {target}: {answer:?}"),
    )
}

/// The operations a read-only token may run.
fn allowed_read_only(op: &ClientOp) -> bool {
    matches!(
        op,
        ClientOp::Get { .. }
            | ClientOp::Status
            | ClientOp::Ring { .. }
            | ClientOp::Hints
            | ClientOp::Scan { .. }
            | ClientOp::Ping
    )
}

/// Runs one request and returns its answer frame.
pub async fn handle(node: &Arc<Node>, req: Request) -> String {
    let start = Instant::now();
    let op = op_index(req.op.name());
    let result = run(node, req.op, req.sloppy).await;
    if let Some(i) = op {
        node.metrics.requests[i].fetch_add(1, Relaxed);
        node.metrics.latency[i].observe(start.elapsed());
        if result.is_err() {
            node.metrics.errors[i].fetch_add(1, Relaxed);
        }
    }
    match result {
        Ok(v) => ok_response(req.id, v),
        Err(e) => {
            if e.code == ErrorCode::Unavailable {
                node.metrics.unavailable.fetch_add(1, Relaxed);
            }
            error_response(Some(req.id), &e)
        }
    }
}

async fn run(node: &Arc<Node>, op: ClientOp, sloppy: Option<bool>) -> Result<Value, WireError> {
    match op {
        ClientOp::Get { key, r, local } => {
            let state = if local {
                coordinator::read_local(node, key.clone())
                    .await?
                    .unwrap_or_default()
            } else {
                coordinator::read(node, key.clone(), r, sloppy).await?
            };
            Ok(get_answer(&key, &state))
        }
        ClientOp::Put {
            key,
            value,
            context,
            w,
        } => {
            let res =
                coordinator::write(node, key.clone(), Some(value), context, w, sloppy).await?;
            Ok(json!({ "key": key, "context": res.context }))
        }
        ClientOp::Delete { key, context, w } => {
            let res = coordinator::write(node, key.clone(), None, context, w, sloppy).await?;
            Ok(json!({ "key": key, "context": res.context }))
        }
        ClientOp::Status => Ok(crate::http::status_json(node).await),
        ClientOp::Ring { key } => Ok(ring_answer(node, key.as_deref())),
        ClientOp::Ping => Ok(json!({ "node": node.id })),
        ClientOp::Scan { cursor, limit } => {
            crate::scan::scan(node, cursor, limit.unwrap_or(1000)).await
        }
        ClientOp::Hints => Ok(crate::http::hints_json(node).await),
        ClientOp::Repair { node: target } => {
            let stats = match target {
                Some(t) if t != node.id => {
                    match forward(node, &t, PeerRequest::RunRepair, Duration::from_secs(3600))
                        .await?
                    {
                        PeerResponse::Repaired { stats } => stats,
                        other => return Err(unexpected(&t, &other)),
                    }
                }
                _ => crate::anti_entropy::repair_now(node).await,
            };
            Ok(serde_json::to_value(stats).unwrap_or_default())
        }
        ClientOp::Decommission { node: target } => {
            if !node.ring().nodes().any(|n| n.id == target) {
                return Err(WireError::bad_request(format!(
                    "{target} is not a node of the ring"
                )));
            }
            if !node.is_up(&target) {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    format!("{target} is down: start it so that it can hand its data over"),
                ));
            }
            let moved = if target == node.id {
                crate::rebalance::run_decommission(node)
                    .await
                    .map_err(|e| WireError::new(ErrorCode::Internal, e))?
            } else {
                let day = Duration::from_secs(24 * 3600);
                match forward(node, &target, PeerRequest::Decommission, day).await? {
                    PeerResponse::Decommissioned { moved_keys } => moved_keys,
                    other => return Err(unexpected(&target, &other)),
                }
            };
            Ok(json!({ "node": target, "moved_keys": moved }))
        }
    }
}

/// The answer to a get: every live sibling (`values`, and `siblings` with their timestamps),
/// `found` when at least one is live, and the causal context to write back with.
pub fn get_answer(key: &str, state: &SiblingSet) -> Value {
    let siblings: Vec<Value> = state
        .siblings()
        .iter()
        .filter_map(|s| {
            s.value
                .as_deref()
                .map(|v| json!({ "value": value_to_json(v), "timestamp_ms": s.timestamp_ms }))
        })
        .collect();
    let values: Vec<Value> = state.values().into_iter().map(value_to_json).collect();
    json!({
        "key": key,
        "found": !values.is_empty(),
        "values": values,
        "siblings": siblings,
        "context": state.context().encode_context(),
    })
}

/// Token ownership per node, or one key's preference list.
fn ring_answer(node: &Node, key: Option<&str>) -> Value {
    let ring = node.ring();
    let placement = node.placement(&ring);
    match key {
        Some(k) => json!({
            "key": k,
            "token": kv_core::hash::key_token(k.as_bytes()).to_string(),
            "preference_list": ring.preference_list(k.as_bytes(), &placement),
        }),
        None => {
            let ownership = ring.ownership(&placement);
            let nodes: Vec<Value> = ring
                .nodes()
                .map(|n| {
                    json!({
                        "id": n.id,
                        "addr": n.addr,
                        "dc": n.dc,
                        "rack": n.rack,
                        "weight": n.weight,
                        "tokens": ring.tokens_of(&n.id).len(),
                        "ownership": ownership.get(&n.id).copied().unwrap_or(0.0),
                    })
                })
                .collect();
            // Every vnode, in ring order, for drawing the ring. Tokens are strings: a u64 does
            // not fit a JavaScript number.
            let mut vnodes: Vec<(u64, String)> = ring
                .nodes()
                .flat_map(|n| {
                    ring.tokens_of(&n.id)
                        .into_iter()
                        .map(|t| (t, n.id.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            vnodes.sort();
            let vnodes: Vec<Value> = vnodes
                .into_iter()
                .map(|(t, id)| json!({ "token": t.to_string(), "node": id }))
                .collect();
            json!({ "replicas": placement.replicas(), "nodes": nodes, "vnodes": vnodes })
        }
    }
}

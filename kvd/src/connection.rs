//! One client WebSocket connection: JSON text frames in, answers out, many requests in flight
//! at once, each answered by its id as soon as it completes.
//!
//! A bad frame is answered with an error and the connection lives on. When a client has
//! `max_in_flight` requests outstanding, further ones are answered `overloaded`; when it stops
//! reading its answers, the socket and then the bounded write buffer fill, and the node stops
//! reading its requests (TCP back-pressure), so an unread client cannot grow the node's memory.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Fuse, FusedFuture, FutureExt};
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use kv_core::json;
use kv_core::version::SiblingSet;
use kv_core::wire::{
    decode_request, error_response, ok_response, value_to_json, write_value, ClientOp, ErrorCode,
    Request, WireError,
};
use serde_json::{json, Value};
use std::future::Future;
use std::task::{Context, Poll, Wake, Waker};

use crate::coordinator;
use crate::metrics::op_index;
use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ws::{Incoming, ServerWs, WsError};

/// Answers queued and not yet written beyond which the connection stops reading requests
/// (a client that does not read its answers).
const WRITE_BACKLOG: usize = 256 * 1024;

/// What woke the connection.
enum Event {
    Shutdown,
    /// A request's answer, or a refused frame's.
    Answer(String),
    /// A request to run.
    Run(Request),
    /// The client closed, or the connection broke.
    Closed,
    /// A frame the WebSocket layer refused: the error answer is sent, then the connection ends.
    Refused(WsError),
    /// The idle check's period.
    Tick,
    /// A ping or pong: the client is alive, nothing to answer here.
    Ignored,
}

/// Serves one client connection until it closes or the node shuts down.
/// With `read_only` (the client's token allows reads only), writes and admin operations are
/// answered `unauthorized`.
///
/// One task does everything: it reads requests, runs them concurrently as futures (no task
/// per request: spawning copies each request's future into a new task, which cost more than
/// a memtable read), queues their answers as they complete, and flushes only when it has
/// nothing else to do — one write for every answer ready at that moment, as Redis writes its
/// replies before waiting for more input. A client that stops reading fills the socket, the
/// answers queue up, and past `WRITE_BACKLOG` the task stops reading that client's requests.
pub async fn serve(node: Arc<Node>, mut ws: ServerWs<crate::tls::Io>, read_only: bool) {
    let max_in_flight = node.config.max_in_flight;
    // The first request in flight runs in a slot inside this task's own future; only the
    // requests a client pipelines behind it go to `running`, each a heap-allocated task of
    // some 2.4 KB (past the allocator's per-thread cache: the slow path every time).
    let mut inline = std::pin::pin!(Fuse::terminated());
    let mut running = FuturesUnordered::new();
    let mut shutdown = node.shutdown_signal();
    // A connection with nothing in flight and no complete frame for this long is closed.
    let idle_timeout = node.config.idle_timeout;
    let mut idle_check = tokio::time::interval(idle_timeout / 8);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When a frame was last seen, as of the tick that noticed it (a clock read per tick, not
    // per frame): the connection closes past the timeout by at most a tick (an eighth).
    let mut last_frame = Instant::now();
    let mut framed = false;
    // One wait for the shutdown, kept across iterations (a new one per iteration registered
    // and removed a waiter under the watch's lock twice per request), and polled only when it
    // woke us: polling it again takes the lock that every connection's wait shares.
    let mut shutting_down = Box::pin(shutdown.changed());
    let shutdown_wake = Arc::new(WakeFlag::default());
    let shutdown_waker = Waker::from(shutdown_wake.clone());
    loop {
        let event = std::future::poll_fn(|cx| {
            shutdown_wake.task.register(cx.waker());
            if shutdown_wake.fired.swap(false, Acquire)
                && shutting_down
                    .as_mut()
                    .poll(&mut Context::from_waker(&shutdown_waker))
                    .is_ready()
            {
                return Poll::Ready(Event::Shutdown);
            }
            if !inline.is_terminated() {
                if let Poll::Ready(answer) = inline.as_mut().poll(cx) {
                    return Poll::Ready(Event::Answer(answer));
                }
            }
            if !running.is_empty() {
                if let Poll::Ready(Some(answer)) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Answer(answer));
                }
            }
            // Reads the next request unless too many answers wait to be written; then writes
            // what is queued. A write that empties the backlog leads back to reading (no
            // wakeup would come for a read never polled).
            loop {
                let reading = ws.unwritten() < WRITE_BACKLOG;
                if reading {
                    match ws.poll_message(cx) {
                        Poll::Ready(Ok(Some(msg))) => {
                            framed = true;
                            let in_flight = running.len() + usize::from(!inline.is_terminated());
                            let full = in_flight >= max_in_flight;
                            return Poll::Ready(
                                match accept(&node, &mut ws, msg, read_only, full) {
                                    Accepted::Run(req) => Event::Run(req),
                                    Accepted::Refused(answer) => Event::Answer(answer),
                                    Accepted::Ignored => Event::Ignored,
                                    Accepted::Close => Event::Closed,
                                    Accepted::Failed(e) => Event::Refused(e),
                                },
                            );
                        }
                        Poll::Ready(Ok(None)) => return Poll::Ready(Event::Closed),
                        Poll::Ready(Err(e)) => return Poll::Ready(Event::Refused(e)),
                        Poll::Pending => {}
                    }
                }
                if ws.wants_flush() {
                    match ws.poll_flush(cx) {
                        Poll::Ready(Err(_)) => return Poll::Ready(Event::Closed),
                        Poll::Ready(Ok(())) if !reading => continue,
                        _ => {}
                    }
                }
                break;
            }
            if idle_check.poll_tick(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Shutdown | Event::Closed => break,
            Event::Ignored => {}
            Event::Answer(answer) => ws.feed_text(&answer),
            Event::Run(req) => {
                let request = handle(&node, req);
                if inline.is_terminated() {
                    inline.set(request.fuse());
                } else {
                    running.push(request);
                }
            }
            Event::Refused(e) => {
                // Tell the client if we still can (an oversized frame is the usual cause),
                // then close.
                if !matches!(e, WsError::Io(_)) {
                    node.metrics.bad_frames.fetch_add(1, Relaxed);
                }
                let code = match e {
                    WsError::TooLarge(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::BadRequest,
                };
                let err = WireError::new(code, format!("connection closed: {e}"));
                ws.feed_text(&error_response(None, &err));
                break;
            }
            Event::Tick => {
                if std::mem::take(&mut framed) {
                    last_frame = Instant::now();
                }
                if running.is_empty()
                    && inline.is_terminated()
                    && last_frame.elapsed() >= idle_timeout
                {
                    break;
                }
            }
        }
    }
    // The client is gone (or stopped sending): finish what it asked for (a write in flight
    // completes its replication), unless the node is shutting down.
    drop(shutting_down);
    if !*shutdown.borrow() {
        if !inline.is_terminated() {
            let answer = inline.await;
            ws.feed_text(&answer);
        }
        while let Some(answer) = running.next().await {
            ws.feed_text(&answer);
        }
    }
    ws.close().await;
}

/// The waker of one future that a task polls only after it woke the task: waking sets
/// `fired` (set at first, so the future is polled once to register) and wakes the task.
struct WakeFlag {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Default for WakeFlag {
    fn default() -> Self {
        WakeFlag {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Release);
        self.task.wake();
    }
}

/// What to do with one incoming message.
enum Accepted {
    /// A valid request to run.
    Run(Request),
    /// An error answer instead (bad frame, overloaded, not allowed).
    Refused(String),
    /// Nothing (ping and pong frames; the WebSocket layer answered a ping).
    Ignored,
    /// The client closes.
    Close,
    /// The message broke the protocol (text that is not UTF-8): the connection ends.
    Failed(WsError),
}

fn accept(
    node: &Node,
    ws: &mut ServerWs<crate::tls::Io>,
    msg: Incoming,
    read_only: bool,
    full: bool,
) -> Accepted {
    let text = match msg {
        Incoming::Text(at) => match ws.text(&at) {
            Ok(text) => text,
            Err(e) => return Accepted::Failed(e),
        },
        Incoming::Binary => {
            node.metrics.bad_frames.fetch_add(1, Relaxed);
            let err = WireError::bad_request(
                "binary frames are not part of the client protocol: send JSON text frames",
            );
            return Accepted::Refused(error_response(None, &err));
        }
        Incoming::Control => return Accepted::Ignored,
        Incoming::Close => return Accepted::Close,
    };
    let req = match decode_request(text, &node.config.limits) {
        Ok(req) => req,
        Err((id, err)) => {
            node.metrics.bad_frames.fetch_add(1, Relaxed);
            return Accepted::Refused(error_response(id, &err));
        }
    };
    if full {
        node.metrics.overloaded.fetch_add(1, Relaxed);
        let err = WireError::new(
            ErrorCode::Overloaded,
            format!(
                "more than {} requests in flight on this connection",
                node.config.max_in_flight
            ),
        );
        return Accepted::Refused(error_response(Some(req.id), &err));
    }
    if read_only && !allowed_read_only(&req.op) {
        let err = WireError::new(
            ErrorCode::Unauthorized,
            format!("this token is read-only: '{}' is refused", req.op.name()),
        );
        return Accepted::Refused(error_response(Some(req.id), &err));
    }
    Accepted::Run(req)
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
        node.metrics
            .requests
            .record(i, start.elapsed(), result.is_err());
    }
    match result {
        Ok(answer) => answer.frame(req.id),
        Err(e) => {
            if e.code == ErrorCode::Unavailable {
                node.metrics.unavailable.fetch_add(1, Relaxed);
            }
            error_response(Some(req.id), &e)
        }
    }
}

/// A successful answer, before it becomes a frame. Gets and writes, the hot path, serialize
/// straight from their data; the rest go through a JSON value.
enum Answer {
    Get {
        key: String,
        state: SiblingSet,
    },
    Written {
        key: String,
        context: String,
    },
    Incremented {
        key: String,
        value: i64,
        context: String,
    },
    Other(Value),
}

/// What a read shows of a key's state: its live values, and its counter, when it has one, as
/// one more value (the decimal text of the merge of its live counter siblings).
struct Shown<'a> {
    /// Live values in dot order, the counter last.
    values: Vec<SiblingFrame<'a>>,
    counter: Option<i64>,
}

fn shown(state: &SiblingSet, now_ms: u64) -> Result<Shown<'_>, String> {
    let counter = state
        .counter(now_ms)
        .map_err(|e| format!("the stored counter does not decode: {e}"))?
        .map(|c| c.value());
    let mut values: Vec<_> = state
        .siblings()
        .iter()
        .filter(|s| !s.counter)
        .filter_map(|s| {
            Some(SiblingFrame {
                value: s.live_value(now_ms)?.into(),
                timestamp_ms: s.timestamp_ms,
                expires_at_ms: s.expires_at_ms,
                counter: false,
            })
        })
        .collect();
    if let Some(c) = counter {
        let newest = state
            .siblings()
            .iter()
            .filter(|s| s.counter)
            .map(|s| s.timestamp_ms)
            .max()
            .unwrap_or(0);
        values.push(SiblingFrame {
            value: c.to_string().into_bytes().into(),
            timestamp_ms: newest,
            expires_at_ms: None,
            counter: true,
        });
    }
    Ok(Shown { values, counter })
}

struct SiblingFrame<'a> {
    value: std::borrow::Cow<'a, [u8]>,
    timestamp_ms: u64,
    expires_at_ms: Option<u64>,
    /// Set on the value that shows the key's counter.
    counter: bool,
}

impl Answer {
    /// The answer's text frame. Gets and writes, the frames of nearly every request, are
    /// written by hand (`kv_core::json`): the same JSON as [`get_answer`] and `serde_json`,
    /// at a fraction of the cost.
    fn frame(self, id: u64) -> String {
        match self {
            Answer::Get { key, state } => match shown(&state, crate::now_ms()) {
                Ok(shown) => get_frame(id, &key, &state, &shown),
                Err(e) => error_response(
                    Some(id),
                    &WireError::new(ErrorCode::Internal, format!("answer: {e}")),
                ),
            },
            Answer::Written { key, context } => {
                let mut out = String::with_capacity(48 + key.len() + context.len());
                out.push_str("{\"id\":");
                json::write_u64(&mut out, id);
                out.push_str(",\"ok\":true,\"key\":");
                json::write_str(&mut out, &key);
                out.push_str(",\"context\":");
                json::write_str(&mut out, &context);
                out.push('}');
                out
            }
            Answer::Incremented {
                key,
                value,
                context,
            } => json!({
                "id": id,
                "ok": true,
                "key": key,
                "value": value,
                "context": context,
            })
            .to_string(),
            Answer::Other(v) => ok_response(id, v),
        }
    }
}

/// `{"id", "ok": true, "key", "found", "values", "siblings", "counter"?, "context"}`.
fn get_frame(id: u64, key: &str, state: &SiblingSet, shown: &Shown<'_>) -> String {
    let context = state.context().encode_context();
    // Values twice (in `values` and `siblings`) and the rest; escapes may still grow it.
    let capacity = 160
        + 2 * key.len()
        + context.len()
        + shown
            .values
            .iter()
            .map(|s| 2 * s.value.len() + 64)
            .sum::<usize>();
    let mut out = String::with_capacity(capacity);
    out.push_str("{\"id\":");
    json::write_u64(&mut out, id);
    out.push_str(",\"ok\":true,\"key\":");
    json::write_str(&mut out, key);
    out.push_str(",\"found\":");
    json::write_bool(&mut out, !shown.values.is_empty());
    out.push_str(",\"values\":[");
    for (i, s) in shown.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(&mut out, &s.value);
    }
    out.push_str("],\"siblings\":[");
    for (i, s) in shown.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"value\":");
        write_value(&mut out, &s.value);
        out.push_str(",\"timestamp_ms\":");
        json::write_u64(&mut out, s.timestamp_ms);
        if let Some(at) = s.expires_at_ms {
            out.push_str(",\"expires_at_ms\":");
            json::write_u64(&mut out, at);
        }
        if s.counter {
            out.push_str(",\"counter\":true");
        }
        out.push('}');
    }
    out.push(']');
    if let Some(c) = shown.counter {
        out.push_str(",\"counter\":");
        json::write_i64(&mut out, c);
    }
    out.push_str(",\"context\":");
    json::write_str(&mut out, &context);
    out.push('}');
    out
}

async fn run(node: &Arc<Node>, op: ClientOp, sloppy: Option<bool>) -> Result<Answer, WireError> {
    let other = match op {
        ClientOp::Get { key, r, local } => {
            let state = if local {
                coordinator::read_local(node, key.clone())
                    .await?
                    .unwrap_or_default()
            } else {
                coordinator::read(node, &key, r, sloppy).await?
            };
            return Ok(Answer::Get { key, state });
        }
        ClientOp::Put {
            key,
            value,
            context,
            w,
            ttl_s,
        } => {
            let write = coordinator::Write::Value {
                value,
                ttl_ms: ttl_s.map(|t| t.saturating_mul(1000)),
            };
            let res = coordinator::write(node, &key, write, context, w, sloppy).await?;
            return Ok(Answer::Written {
                key,
                context: res.context,
            });
        }
        ClientOp::Delete { key, context, w } => {
            let context = match context {
                Some(context) => context,
                None => Box::pin(context_to_delete(node, &key, sloppy)).await?,
            };
            let write = coordinator::Write::Delete;
            let res = coordinator::write(node, &key, write, context, w, sloppy).await?;
            return Ok(Answer::Written {
                key,
                context: res.context,
            });
        }
        ClientOp::Incr { key, by, w } => {
            let write = coordinator::Write::Increment { by };
            let res = coordinator::write(node, &key, write, String::new(), w, sloppy).await?;
            return Ok(Answer::Incremented {
                key,
                value: res.counter.unwrap_or(0),
                context: res.context,
            });
        }
        // The rare operations run boxed: their futures are large, and the future of every
        // request (allocated and moved per request) is as large as its largest branch.
        ClientOp::Status => Ok(Box::pin(crate::http::status_json(node)).await),
        ClientOp::Ring { key } => Ok(ring_answer(node, key.as_deref())),
        ClientOp::Ping => Ok(json!({ "node": node.id })),
        ClientOp::Scan { cursor, limit } => {
            Box::pin(crate::scan::scan(node, cursor, limit.unwrap_or(1000))).await
        }
        ClientOp::Hints => Ok(Box::pin(crate::http::hints_json(node)).await),
        ClientOp::Repair { node: target } => Box::pin(repair(node, target)).await,
        ClientOp::Decommission { node: target } => Box::pin(decommission(node, target)).await,
        ClientOp::RemoveNode { node: target } => Box::pin(remove_node(node, target)).await,
        ClientOp::Snapshot { name } => Box::pin(crate::snapshot::take(node, name))
            .await
            .map(|taken| serde_json::to_value(taken).unwrap_or_default()),
        ClientOp::Snapshots => Box::pin(crate::snapshot::list(node)).await,
        ClientOp::ClearSnapshot { name } => Box::pin(crate::snapshot::clear(node, name)).await,
        ClientOp::Compact => Box::pin(compact(node)).await,
        ClientOp::Cleanup => Box::pin(crate::rebalance::run_cleanup(node))
            .await
            .map(|stats| serde_json::to_value(stats).unwrap_or_default())
            .map_err(|e| WireError::new(ErrorCode::Unavailable, e)),
    };
    other.map(Answer::Other)
}

/// The context a delete without one (no `context` field) uses: that of a read at the default
/// R, now. A tombstone with no context would be concurrent with every stored version and
/// delete nothing; like Riak's delete, this one replaces what the read finds (with R + W > N,
/// every acknowledged write), while a version written after the read stays, as a sibling. An
/// empty context is a context: that of a read that found nothing, which deletes nothing
/// written since.
async fn context_to_delete(
    node: &Arc<Node>,
    key: &str,
    sloppy: Option<bool>,
) -> Result<String, WireError> {
    match coordinator::read(node, key, None, sloppy).await {
        Ok(state) => Ok(state.context().encode_context()),
        Err(e) => Err(WireError::new(
            e.code,
            format!(
                "a delete without a context reads the key first, to know what it deletes: {}",
                e.message
            ),
        )),
    }
}

/// `compact`: every table of this node's storage merged into its last level, at the
/// background threads' priority; answers with the tables and bytes before and after. One at a
/// time: a second request waits for the running one.
async fn compact(node: &Arc<Node>) -> Result<Value, WireError> {
    let _one_at_a_time = node.major_compaction.lock().await;
    let n = node.clone();
    let started = std::time::Instant::now();
    let (before, after) = tokio::task::spawn_blocking(move || {
        let engine = n.replica.engine();
        let before = engine.stats();
        engine.compact_in_background()?;
        Ok::<_, kvd_storage::Error>((before, engine.stats()))
    })
    .await
    .map_err(|e| WireError::new(ErrorCode::Internal, format!("compaction failed: {e}")))?
    .map_err(|e| {
        // A full disk is an error that freeing space cures, as for writes.
        let code = if e.is_no_space() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        WireError::new(code, format!("compaction failed: {e}"))
    })?;
    let bytes = |s: &kvd_storage::Stats| s.level_bytes.iter().sum::<u64>();
    let seconds = started.elapsed().as_secs_f64();
    crate::info!(
        "compaction: {} tables ({} bytes) -> {} tables ({} bytes) in {seconds:.2} s",
        before.table_count,
        bytes(&before),
        after.table_count,
        bytes(&after)
    );
    Ok(json!({
        "node": node.id,
        "tables_before": before.table_count,
        "bytes_before": bytes(&before),
        "tables_after": after.table_count,
        "bytes_after": bytes(&after),
        "seconds": (seconds * 1000.0).round() / 1000.0,
    }))
}

/// `repair`: anti-entropy now on this node, or on `target`.
async fn repair(node: &Arc<Node>, target: Option<String>) -> Result<Value, WireError> {
    let stats = match target {
        Some(t) if t != node.id => {
            match forward(node, &t, PeerRequest::RunRepair, Duration::from_secs(3600)).await? {
                PeerResponse::Repaired { stats } => stats,
                other => return Err(unexpected(&t, &other)),
            }
        }
        _ => crate::anti_entropy::repair_now(node).await,
    };
    Ok(serde_json::to_value(stats).unwrap_or_default())
}

/// `decommission`: `target` hands its data over and leaves the ring.
async fn decommission(node: &Arc<Node>, target: String) -> Result<Value, WireError> {
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

/// `removenode`: `target`, down for good, leaves the ring; its ranges are refilled from the
/// other replicas.
async fn remove_node(node: &Arc<Node>, target: String) -> Result<Value, WireError> {
    crate::rebalance::check_removable(node, &target).map_err(WireError::bad_request)?;
    let moved = crate::rebalance::run_removal(node, &target)
        .await
        .map_err(|e| WireError::new(ErrorCode::Unavailable, e))?;
    Ok(json!({ "node": target, "moved_keys": moved }))
}

/// The answer to a get: every live sibling (`values`, and `siblings` with their timestamps and
/// expiry times), `found` when at least one is live, and the causal context to write back with.
/// Expired values are left out, like deleted ones.
pub fn get_answer(key: &str, state: &SiblingSet) -> Result<Value, String> {
    let shown = shown(state, crate::now_ms())?;
    let siblings: Vec<Value> = shown
        .values
        .iter()
        .map(|v| {
            let mut sib =
                json!({ "value": value_to_json(&v.value), "timestamp_ms": v.timestamp_ms });
            if let Some(at) = v.expires_at_ms {
                sib["expires_at_ms"] = json!(at);
            }
            if v.counter {
                sib["counter"] = json!(true);
            }
            sib
        })
        .collect();
    let values: Vec<Value> = shown
        .values
        .iter()
        .map(|v| value_to_json(&v.value))
        .collect();
    let mut answer = json!({
        "key": key,
        "found": !values.is_empty(),
        "values": values,
        "siblings": siblings,
        "context": state.context().encode_context(),
    });
    if let Some(c) = shown.counter {
        answer["counter"] = json!(c);
    }
    Ok(answer)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NodeArgs, NodeConfig};
    use kv_core::version::VersionVector;

    /// The hand-written get and write frames are the JSON the value-built answers are:
    /// several siblings, a binary value, text needing escapes, an expiring value, a counter
    /// beside values (two actors), a tombstone, nothing.
    #[test]
    fn hand_written_frames_are_the_documented_json() {
        let now = crate::now_ms();
        let none = VersionVector::new();
        let mut states = Vec::new();
        let mut s = SiblingSet::new();
        s.update(&none, "a", Some(b"plain".to_vec()), now);
        s.update(&none, "b", Some(vec![0, 159, 146, 150, 255]), now + 1);
        s.update(
            &none,
            "a",
            Some("quote \" back \\ nl \n tab \t \u{1} é 😀".into()),
            now,
        );
        s.update_expiring(&none, "c", Some(b"ttl".to_vec()), now, Some(60_000));
        states.push(s.clone());
        let mut c = SiblingSet::new();
        c.increment("a", 5, now).unwrap();
        c.increment("b", -7, now).unwrap();
        states.push(c);
        let mut t = s.clone();
        let ctx = t.context().clone();
        t.update(&ctx, "a", None, now);
        states.push(t);
        states.push(SiblingSet::new());
        for (i, state) in states.into_iter().enumerate() {
            let key = format!("key \"{i}\" é");
            let mut want = get_answer(&key, &state).unwrap();
            want["id"] = json!(u64::MAX - i as u64);
            want["ok"] = json!(true);
            let frame = Answer::Get { key, state }.frame(u64::MAX - i as u64);
            let got: Value = serde_json::from_str(&frame).unwrap();
            assert_eq!(got, want, "{frame}");
        }
        let frame = Answer::Written {
            key: "k\u{7}\"".into(),
            context: "AQID+/==".into(),
        }
        .frame(3);
        let got: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            got,
            json!({"id": 3, "ok": true, "key": "k\u{7}\"", "context": "AQID+/=="})
        );
    }

    /// Every request's future is allocated and moved per request, and is as large as its
    /// largest branch: a rare operation or a connect inlined into it once made each one 24 KB,
    /// and copying it cost more instructions than the rest of a put.
    #[tokio::test]
    async fn a_request_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let args = NodeArgs {
            id: Some("n1".into()),
            listen: Some("127.0.0.1:1".into()),
            data_dir: Some(dir.path().to_path_buf()),
            n: Some(1),
            w: Some(1),
            r: Some(1),
            ..NodeArgs::default()
        };
        let node = Node::start(NodeConfig::resolve(args).unwrap())
            .await
            .unwrap();
        let req = Request {
            id: 1,
            op: ClientOp::Ping,
            sloppy: None,
        };
        let request = handle(&node, req);
        let size = std::mem::size_of_val(&request);
        println!("a request's future: {size} bytes");
        assert!(size <= 6 * 1024, "a request's future is {size} bytes");
        // The same holds for a peer's requests (each replicated write is one).
        let peer = node.handle_peer(PeerRequest::Stats);
        let size = std::mem::size_of_val(&peer);
        println!("a peer request's future: {size} bytes");
        assert!(size <= 6 * 1024, "a peer request's future is {size} bytes");
    }
}

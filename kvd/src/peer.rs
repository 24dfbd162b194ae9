//! Node-to-node traffic: the peer messages, pooled outgoing WebSocket connections with many
//! requests in flight matched by id, and the serving side of a peer connection.
//!
//! A peer connection is a WebSocket to `ws://ADDR/peer`. The messages of the request path
//! (mint, replicate, read and their answers) travel as binary frames (`peer_codec`); the rest
//! as JSON text frames `{"id": N, "body": {...}}`. Answers carry the id of their request.
//! Both directions write through one task per connection that batches whatever is queued
//! into one flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use kv_core::membership::Member;
use kv_core::wire::b64;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::node::Node;

/// What one node asks another.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum PeerRequest {
    /// A gossip round: the sender's view of the membership; the answer is the receiver's.
    Gossip {
        /// The sender's digest.
        members: Vec<Member>,
    },
    /// Apply a client write on this replica, minting its version here.
    Mint {
        /// The user key.
        key: String,
        /// The new value; absent for a delete.
        #[serde(with = "b64::option", default)]
        value: Option<Vec<u8>>,
        /// The value's time to live, in milliseconds.
        #[serde(default)]
        ttl_ms: Option<u64>,
        /// The client's causal context (encoded).
        context: String,
    },
    /// Add `by` to the counter of a key on this replica, minting the write here.
    Increment {
        /// The user key.
        key: String,
        /// What to add (negative to subtract).
        by: i64,
    },
    /// Merge this state of a key into the local replica, or, with `hint_for`, keep it as a
    /// hint for that node (this node stands in for it: sloppy quorum).
    Replicate {
        /// The user key.
        key: String,
        /// The encoded sibling set.
        #[serde(with = "b64")]
        state: Vec<u8>,
        /// The down replica this node stands in for.
        #[serde(default)]
        hint_for: Option<String>,
    },
    /// Read the local replica of a key; with `with_hints`, merged with the hints held for it
    /// (a stand-in answering for a down replica).
    Read {
        /// The user key.
        key: String,
        /// Include hints.
        #[serde(default)]
        with_hints: bool,
    },
    /// This node's own figures for `status`.
    Stats,
    /// Anti-entropy: this node's Merkle hashes of `indices` at `depth` of `range`'s tree.
    MerkleHashes {
        /// The range.
        range: kv_core::ring::TokenRange,
        /// Tree level (0 = root).
        depth: usize,
        /// Node indices within the level.
        indices: Vec<usize>,
    },
    /// Anti-entropy: (key, digest) of every key of `range` in one of `buckets`.
    BucketDigests {
        /// The range.
        range: kv_core::ring::TokenRange,
        /// Leaf buckets.
        buckets: Vec<usize>,
    },
    /// Anti-entropy: the stored states of `keys`.
    FetchStates {
        /// User keys.
        keys: Vec<String>,
    },
    /// Run a repair on this node now (`repair --node`).
    RunRepair,
    /// Anti-entropy: `peer` completed a session with this node for `range`, started at `at_ms`.
    RangeSynced {
        /// The range.
        range: kv_core::ring::TokenRange,
        /// The node that ran the session.
        peer: String,
        /// When the session started (its clock).
        at_ms: u64,
    },
    /// Rebalancing: a page of this node's data of `range` after engine key `after`.
    StreamRange {
        /// The range.
        range: kv_core::ring::TokenRange,
        /// Where the previous page ended (engine key).
        #[serde(with = "b64::option", default)]
        after: Option<Vec<u8>>,
        /// About how many bytes to return.
        max_bytes: usize,
    },
    /// Rebalancing: merge these states into the local replica.
    MergeBatch {
        /// The states.
        entries: Vec<crate::anti_entropy::KeyState>,
    },
    /// Drain this node and leave the ring (`decommission`).
    Decommission,
    /// `removenode`: stream in these ranges, which this node gains from a removed member, from
    /// their live old owners.
    Adopt {
        /// What to stream in.
        transfers: Vec<kv_core::ring::Transfer>,
    },
    /// `scan`: a page of this node's data with tokens in `lo..=hi` after engine key `after`.
    ScanTokens {
        /// First token.
        lo: u64,
        /// Last token.
        hi: u64,
        /// Where the previous page ended (engine key).
        #[serde(with = "b64::option", default)]
        after: Option<Vec<u8>>,
        /// About how many bytes to return.
        max_bytes: usize,
    },
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum PeerResponse {
    /// The receiver's gossip digest.
    Gossip {
        /// The receiver's digest.
        members: Vec<Member>,
    },
    /// The key's state after a minted write, and the writer's context.
    Minted {
        /// The encoded sibling set.
        #[serde(with = "b64")]
        state: Vec<u8>,
        /// The context to hand back to the writer (encoded).
        write_context: String,
        /// Siblings dropped by the sibling cap.
        capped: usize,
    },
    /// The request cannot apply to the key as it stands (the client's error, which another
    /// replica would give too), unlike [`PeerResponse::Error`].
    Rejected {
        /// Why.
        message: String,
    },
    /// The write was applied.
    Ack,
    /// The local state of a key, if any.
    State {
        /// The encoded sibling set.
        #[serde(with = "b64::option", default)]
        state: Option<Vec<u8>>,
    },
    /// The answer to [`PeerRequest::Stats`].
    Stats {
        /// The figures.
        stats: crate::http::NodeStats,
    },
    /// Merkle hashes, in the order asked.
    Hashes {
        /// The hashes.
        hashes: Vec<u64>,
    },
    /// (key, digest) pairs.
    Digests {
        /// The pairs.
        entries: Vec<(String, u64)>,
    },
    /// Stored states (keys absent here are left out).
    States {
        /// The states.
        entries: Vec<crate::anti_entropy::KeyState>,
    },
    /// What a repair did.
    Repaired {
        /// Its figures.
        stats: crate::anti_entropy::RepairStats,
    },
    /// A page of a range.
    Chunk {
        /// The states.
        entries: Vec<crate::anti_entropy::KeyState>,
        /// Where to continue; none when the range is done.
        #[serde(with = "b64::option", default)]
        next: Option<Vec<u8>>,
    },
    /// A decommission finished.
    Decommissioned {
        /// Keys handed over.
        moved_keys: u64,
    },
    /// The ranges of an [`PeerRequest::Adopt`] were streamed in.
    Adopted {
        /// Keys received.
        keys: u64,
    },
    /// The request failed; the message says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Frame<T> {
    id: u64,
    body: T,
}

/// Why a peer call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// No connection could be made, or it had closed: the request was not sent.
    Unreachable(String),
    /// The connection dropped after the request was handed to it, before the answer: the peer
    /// may or may not have applied it.
    ConnectionLost,
    /// No answer in time (the peer may or may not have applied the request).
    Timeout,
    /// The peer answered with an error.
    Remote(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Unreachable(m) => write!(f, "unreachable ({m})"),
            PeerError::ConnectionLost => write!(f, "connection lost"),
            PeerError::Timeout => write!(f, "timed out"),
            PeerError::Remote(m) => write!(f, "error: {m}"),
        }
    }
}

/// A request to send: a [`PeerRequest`], or the replication of a state encoded straight from
/// borrowed parts (a write replicates the same key and state to every replica).
#[derive(Clone, Copy, Debug)]
pub enum Outgoing<'a> {
    /// Any request.
    Request(&'a PeerRequest),
    /// What `PeerRequest::Replicate` carries, borrowed.
    Replicate {
        /// The key.
        key: &'a str,
        /// Its encoded state.
        state: &'a [u8],
        /// The replica the receiver keeps it for, as a hint.
        hint_for: Option<&'a str>,
    },
}

impl Outgoing<'_> {
    /// The frame of this request with `id`.
    fn message(self, id: u64) -> Result<Message, PeerError> {
        match self {
            Outgoing::Replicate {
                key,
                state,
                hint_for,
            } => Ok(Message::binary(crate::peer_codec::encode_replicate(
                id, key, state, hint_for,
            ))),
            Outgoing::Request(req) => match crate::peer_codec::encode_request(id, req) {
                Some(frame) => Ok(Message::binary(frame)),
                None => serde_json::to_string(&Frame { id, body: req })
                    .map(Message::text)
                    .map_err(|e| PeerError::Remote(format!("cannot encode request: {e}"))),
            },
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<PeerResponse>>>>;

/// One open connection to a peer.
struct Conn {
    /// Frames to write, drained by the connection's writer task.
    tx: mpsc::UnboundedSender<Message>,
    /// Requests waiting for their answer, by id.
    pending: Pending,
    /// Cleared by the reader task when the socket closes.
    alive: Arc<AtomicBool>,
}

/// The connection state of one peer address.
#[derive(Default)]
struct Slot {
    /// The open connection; the lock is per address and held while connecting, so a burst of
    /// requests to a new peer opens one connection, and a slow connect to one peer never
    /// delays requests to the others.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// The last failed connect: when, and why.
    failed: Mutex<Option<(Instant, String)>>,
}

/// Outgoing connections to peers, one per address, opened on first use and reopened after a
/// failure (at most once per `RETRY_AFTER`, so a dead peer costs a fast failure, not a connect
/// attempt per request).
pub struct PeerPool {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    next_id: AtomicU64,
    max_state_bytes: usize,
    /// The cluster secret peers prove they know (`--cluster-secret-file`), if any.
    secret: Option<String>,
    /// TLS to peers (`--tls-ca`), if configured.
    tls: Option<Arc<crate::tls::Tls>>,
}

const RETRY_AFTER: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// WebSocket settings for peer links: peers exchange whole sibling sets, so allow a frame of
/// the largest encoded set in base64 (4/3) plus the JSON around it.
pub fn peer_ws_config(max_state_bytes: usize) -> WebSocketConfig {
    let max = max_state_bytes / 3 * 4 + 64 * 1024;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_frame_size(Some(max))
        .max_message_size(Some(max))
}

/// Bytes read from a socket at a time. The socket layer zeroes the whole read buffer before
/// every read: at its 128 KiB default that memset cost more than a small request itself (and
/// 128 KiB per connection). Bigger frames simply take several reads.
pub const READ_BUFFER: usize = 8 * 1024;

impl PeerPool {
    /// An empty pool; with `secret`, every connection first authenticates (see `auth`).
    /// With `tls`, peers are dialled with `wss://` and their certificates verified by it.
    pub fn new(
        max_state_bytes: usize,
        secret: Option<String>,
        tls: Option<Arc<crate::tls::Tls>>,
    ) -> PeerPool {
        PeerPool {
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_state_bytes,
            secret,
            tls,
        }
    }

    /// Sends `req` to the node at `addr` and waits up to `timeout` for the answer.
    pub async fn call(
        &self,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        self.call_out(addr, Outgoing::Request(req), timeout).await
    }

    /// [`PeerPool::call`] with a request that may be made of borrowed parts.
    pub async fn call_out(
        &self,
        addr: &str,
        out: Outgoing<'_>,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let deadline = Instant::now() + timeout;
        let conn = tokio::time::timeout(timeout, self.conn(addr))
            .await
            .map_err(|_| PeerError::Timeout)??;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = out.message(id)?;
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        // The reader marks the connection dead before it fails every waiting call; a call
        // registered just after that would otherwise wait for its deadline.
        // Both are before anything was sent: the peer never saw the request.
        if !conn.alive.load(Ordering::Acquire) {
            lock(&conn.pending).remove(&id);
            return Err(PeerError::Unreachable("the connection had closed".into()));
        }
        if conn.tx.send(msg).is_err() {
            lock(&conn.pending).remove(&id);
            return Err(PeerError::Unreachable("the connection had closed".into()));
        }
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(PeerResponse::Error { message })) => Err(PeerError::Remote(message)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(PeerError::ConnectionLost),
            Err(_) => {
                lock(&conn.pending).remove(&id);
                Err(PeerError::Timeout)
            }
        }
    }

    /// Forgets a recent connect failure to `addr`, so the next call tries at once (gossip
    /// has seen the peer come back).
    pub fn clear_failure(&self, addr: &str) {
        *lock(&self.slot(addr).failed) = None;
    }

    fn slot(&self, addr: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(addr) {
            return slot.clone();
        }
        slots.entry(addr.to_string()).or_default().clone()
    }

    async fn conn(&self, addr: &str) -> Result<Arc<Conn>, PeerError> {
        let slot = self.slot(addr);
        let mut conn = slot.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if c.alive.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
            *conn = None;
        }
        if let Some((at, why)) = lock(&slot.failed).as_ref() {
            if at.elapsed() < RETRY_AFTER {
                return Err(PeerError::Unreachable(why.clone()));
            }
        }
        // Boxed: the connect future (TCP, TLS and WebSocket handshakes) is large, and every
        // peer call's future would otherwise carry its size (and be copied with it).
        match Box::pin(self.connect(addr)).await {
            Ok(c) => {
                *lock(&slot.failed) = None;
                let c = Arc::new(c);
                *conn = Some(c.clone());
                Ok(c)
            }
            Err(why) => {
                *lock(&slot.failed) = Some((Instant::now(), why.clone()));
                Err(PeerError::Unreachable(why))
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<Conn, String> {
        let (url, connector) = match &self.tls {
            Some(tls) => (
                format!("wss://{addr}/peer"),
                Some(tokio_tungstenite::Connector::Rustls(tls.client())),
            ),
            None => (format!("ws://{addr}/peer"), None),
        };
        let fut = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(peer_ws_config(self.max_state_bytes)),
            true,
            connector,
        );
        let (mut ws, _) = match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => return Err(connect_failure(e, self.tls.is_some())),
            Err(_) => return Err("connect timed out".into()),
        };
        if let Some(secret) = &self.secret {
            crate::auth::client_handshake(&mut ws, secret).await?;
        }
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let alive_w = alive.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if write_batch(&mut sink, msg, &mut rx).await.is_err() {
                    break;
                }
            }
            alive_w.store(false, Ordering::Release);
            let _ = sink.close().await;
        });
        let pending_r = pending.clone();
        let alive_r = alive.clone();
        let without_secret = self.secret.is_none();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let answer = match msg {
                    Message::Binary(frame) => crate::peer_codec::decode_response(&frame),
                    Message::Text(text) => match serde_json::from_str::<Frame<PeerResponse>>(&text)
                    {
                        Ok(f) => Ok((f.id, f.body)),
                        // A peer that runs with a cluster secret opens with its challenge:
                        // this node, without the secret, will never be let in, and every
                        // waiting call is told so (a join gives up at once, not after 30 s).
                        Err(_) if without_secret && text.contains("\"challenge\"") => {
                            let message = "refused: the peer asks for the cluster secret; \
                                           start this node with --cluster-secret-file"
                                .to_string();
                            for (_, tx) in lock(&pending_r).drain() {
                                let _ = tx.send(PeerResponse::Error {
                                    message: message.clone(),
                                });
                            }
                            break;
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    _ => continue,
                };
                match answer {
                    Ok((id, body)) => {
                        if let Some(tx) = lock(&pending_r).remove(&id) {
                            let _ = tx.send(body);
                        }
                    }
                    Err(e) => crate::warn!("undecodable answer from a peer: {e}"),
                }
            }
            alive_r.store(false, Ordering::Release);
            // Dropping the senders fails every waiting call with ConnectionLost.
            lock(&pending_r).clear();
        });
        Ok(Conn { tx, pending, alive })
    }
}

/// Why a connection to a peer failed; a mismatch of TLS settings or certificates, which no
/// retry will cure, starts with `refused:`.
fn connect_failure(e: tokio_tungstenite::tungstenite::Error, tls: bool) -> String {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error as E;
    match &e {
        E::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>()) =>
        {
            format!("refused: TLS with the peer failed ({io})")
        }
        E::Protocol(ProtocolError::HttparseError(_)) if !tls => {
            format!("refused: the peer does not answer plain WebSocket; does it serve TLS? ({e})")
        }
        _ => e.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one incoming peer connection: requests run concurrently, answers go back through
/// one writer as they complete.
pub async fn serve(node: Arc<Node>, mut ws: WebSocketStream<crate::tls::Io>) {
    if let Some(secret) = &node.config.cluster_secret {
        if let Err(e) = crate::auth::serve_handshake(&mut ws, secret).await {
            crate::warn!("refused a peer connection: {e}");
            let _ = ws.close(None).await;
            return;
        }
    }
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if write_batch(&mut sink, msg, &mut rx).await.is_err() {
                break;
            }
        }
    });
    // Requests run concurrently inside this task (a task each cost more than a memtable
    // read); long ones (a repair, a decommission) simply stay in the set.
    let mut running = FuturesUnordered::new();
    let mut shutdown = node.shutdown_signal();
    // One wait for the shutdown across iterations (see `connection::serve`).
    let mut shutting_down = Box::pin(shutdown.changed());
    loop {
        let msg = tokio::select! {
            Some(answer) = running.next(), if !running.is_empty() => {
                if tx.send(answer).is_err() {
                    break;
                }
                continue;
            }
            m = stream.next() => m,
            _ = &mut shutting_down => break,
        };
        let Some(Ok(msg)) = msg else { break };
        let request = match msg {
            Message::Binary(frame) => crate::peer_codec::decode_request(&frame),
            Message::Text(text) => serde_json::from_str::<Frame<PeerRequest>>(&text)
                .map(|f| (f.id, f.body))
                .map_err(|e| e.to_string()),
            Message::Close(_) => break,
            _ => continue,
        };
        let (id, body) = match request {
            Ok(r) => r,
            Err(e) => {
                crate::warn!("undecodable peer request: {e}");
                continue;
            }
        };
        let node = node.clone();
        running.push(async move {
            let body = node.handle_peer(body).await;
            match crate::peer_codec::encode_response(id, &body) {
                Some(frame) => Message::binary(frame),
                None => Message::text(serde_json::to_string(&Frame { id, body }).unwrap_or_else(
                    |e| {
                        let error = PeerResponse::Error {
                            message: format!("cannot encode the answer: {e}"),
                        };
                        serde_json::to_string(&Frame { id, body: error }).unwrap_or_default()
                    },
                )),
            }
        });
    }
    // The peer closed: finish what it asked for (its answers are lost, the work is not).
    drop(shutting_down);
    if !*shutdown.borrow() {
        while let Some(answer) = running.next().await {
            let _ = tx.send(answer);
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch<S>(
    sink: &mut S,
    first: Message,
    queue: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    sink.feed(first).await?;
    if queue.is_empty() {
        // The task that queued `first` woke this one, which the runtime runs next: yield
        // once, so the other requests ready in this tick queue theirs and share the send.
        tokio::task::yield_now().await;
    }
    while let Ok(more) = queue.try_recv() {
        sink.feed(more).await?;
    }
    sink.flush().await
}

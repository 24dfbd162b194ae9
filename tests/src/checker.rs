//! A consistency checker in the manner of Jepsen's set test, for a Dynamo-style store with
//! siblings: concurrent clients write unique values while faults are injected; every operation
//! is recorded as invoked and then ok, failed or unknown; after the faults are healed and
//! anti-entropy has run, [`verify`] reads every key from every replica and checks:
//!
//! 1. **No acknowledged write is lost**: the value of every write a client saw acknowledged
//!    (W=2) is still there, or a descendant of it is — a later write whose context covered it
//!    (read-modify-write), recursively. Concurrent writes must all survive, as siblings.
//! 2. **Nothing appears that was never written**: every value read back was the value of a
//!    write that was invoked and not definitely refused.
//! 3. **No overwritten value comes back**: a value never stands next to one of its own
//!    descendants, and a value an acknowledged delete replaced is gone.
//! 4. **The replicas agree**: every replica of every key holds the same values, and a `repair`
//!    on every node finds every range in sync (identical Merkle roots) with nothing to move.
//!
//! What "descendant" means here follows the store's contract (INTERFACE.md): a write with the
//! context of an earlier get replaces the versions that get saw. So each read-modify-write
//! records the values its read returned, and those are exactly the values it may replace.
//! Some read-modify-writes are deletes: a delete replaces what its read returned with nothing,
//! so it covers those values (they may be absent) whether acknowledged or of unknown outcome,
//! and once acknowledged, none of them may be present again.
//! Some keys only get blind writes (no context): there, every acknowledged value must be
//! present itself, as a sibling. Blind keys are retired after a few dozen writes so the sibling
//! cap of the store (64) is never what drops a value.
//!
//! Some keys are counters (`k0`, `k1`, ...), only ever incremented by positive amounts: after
//! the repair, every replica must hold the same count, at least the sum of the acknowledged
//! increments and at most that plus the increments of unknown outcome.
//!
//! An operation is *unknown* when its outcome cannot be known (a timeout, a lost connection,
//! `unavailable` after a replica may have applied it): it may or may not be present, but if it
//! is, it is not a phantom. *Failed* is kept for answers that say the write was refused before
//! anything was applied (`bad_request`, `too_large`, `unauthorized`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::faults::Rng;

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Refused before anything was applied (the reason).
    Failed(String),
    /// May or may not have been applied (the reason).
    Unknown(String),
}

/// What an operation did.
#[derive(Clone, Debug)]
pub enum OpKind {
    /// A quorum read; `values` is what it returned (when ok).
    Read {
        /// The key.
        key: String,
        /// The values returned.
        values: Vec<String>,
    },
    /// A write of a unique `value`; `supersedes` holds the values the read whose context it
    /// carried returned (empty for a blind write).
    Write {
        /// The key.
        key: String,
        /// The unique value written; for a delete, a unique label that is never stored.
        value: String,
        /// Values this write replaces (its context covered them).
        supersedes: Vec<String>,
        /// Written without a context.
        blind: bool,
        /// A delete with the read's context: it replaces `supersedes` with nothing.
        delete: bool,
    },
    /// An increment of a counter key by a positive amount.
    Incr {
        /// The key.
        key: String,
        /// What it adds.
        by: u64,
    },
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub struct Op {
    /// The client task that ran it.
    pub client: usize,
    /// Index of the node it was sent to.
    pub node: usize,
    /// What it did.
    pub kind: OpKind,
    /// When it was invoked, since the history began.
    pub invoked: Duration,
    /// When it completed.
    pub completed: Option<Duration>,
    /// How it ended (`None` while in flight).
    pub outcome: Option<Outcome>,
}

/// Every operation of a run, in invocation order.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

/// Operation counts of a history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Writes invoked.
    pub writes: u64,
    /// Writes acknowledged.
    pub writes_ok: u64,
    /// Writes refused.
    pub writes_failed: u64,
    /// Writes whose outcome is unknown.
    pub writes_unknown: u64,
    /// Of the writes, deletes invoked.
    pub deletes: u64,
    /// Deletes acknowledged.
    pub deletes_ok: u64,
    /// Reads invoked.
    pub reads: u64,
    /// Reads answered.
    pub reads_ok: u64,
    /// Counter increments invoked.
    pub incrs: u64,
    /// Increments acknowledged.
    pub incrs_ok: u64,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> Arc<History> {
        Arc::new(History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // A panic in another client task cannot leave an op half-written: keep going.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the invocation of an operation; returns its index.
    pub fn invoke(&self, client: usize, node: usize, kind: OpKind) -> usize {
        let mut ops = self.lock();
        ops.push(Op {
            client,
            node,
            kind,
            invoked: self.start.elapsed(),
            completed: None,
            outcome: None,
        });
        ops.len() - 1
    }

    /// Records how operation `i` ended; for a read, the values it returned.
    pub fn complete(&self, i: usize, outcome: Outcome, read_values: Option<Vec<String>>) {
        let at = self.start.elapsed();
        let mut ops = self.lock();
        let op = &mut ops[i];
        op.completed = Some(at);
        op.outcome = Some(outcome);
        if let (OpKind::Read { values, .. }, Some(v)) = (&mut op.kind, read_values) {
            *values = v;
        }
    }

    /// A copy of every operation.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    /// Why writes failed or ended unknown: the reason's first words (an error code, or what
    /// happened to the connection) and how often.
    pub fn write_failure_reasons(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for op in self.lock().iter() {
            let why = match (&op.kind, &op.outcome) {
                (OpKind::Write { .. }, Some(Outcome::Failed(w))) => format!("failed {w}"),
                (OpKind::Write { .. }, Some(Outcome::Unknown(w))) => format!("unknown {w}"),
                (OpKind::Write { .. }, None) => "unknown: in flight at the end".to_string(),
                _ => continue,
            };
            let short: String = why.chars().take(60).collect();
            *out.entry(short).or_insert(0) += 1;
        }
        out
    }

    /// Counts by kind and outcome.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for op in self.lock().iter() {
            match (&op.kind, &op.outcome) {
                (OpKind::Write { delete, .. }, o) => {
                    c.writes += 1;
                    if *delete {
                        c.deletes += 1;
                        c.deletes_ok += u64::from(o == &Some(Outcome::Ok));
                    }
                    match o {
                        Some(Outcome::Ok) => c.writes_ok += 1,
                        Some(Outcome::Failed(_)) => c.writes_failed += 1,
                        // Still in flight when the run ended: unknown as well.
                        Some(Outcome::Unknown(_)) | None => c.writes_unknown += 1,
                    }
                }
                (OpKind::Read { .. }, o) => {
                    c.reads += 1;
                    if o == &Some(Outcome::Ok) {
                        c.reads_ok += 1;
                    }
                }
                (OpKind::Incr { .. }, o) => {
                    c.incrs += 1;
                    c.incrs_ok += u64::from(o == &Some(Outcome::Ok));
                }
            }
        }
        c
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client connection that never panics: every failure is a value.
pub struct Conn {
    ws: Stream,
    next_id: u64,
}

impl Conn {
    /// Opens a WebSocket to `url` within `limit`.
    pub async fn connect(url: &str, limit: Duration) -> Result<Conn, String> {
        match tokio::time::timeout(limit, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(Conn { ws, next_id: 1 }),
            Ok(Err(e)) => Err(format!("connect {url}: {e}")),
            Err(_) => Err(format!("connect {url}: no handshake within {limit:?}")),
        }
    }

    /// Sends `req` and waits up to `limit` for the answer with its id.
    pub async fn request(&mut self, mut req: Value, limit: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        let exchange = async {
            self.ws
                .send(Message::text(req.to_string()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t)
                            .map_err(|e| format!("an answer that is not JSON ({e}): {t}"))?;
                        if v["id"].as_u64() == Some(id) {
                            return Ok(v);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("read: {e}")),
                    None => return Err("the connection closed".to_string()),
                }
            }
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }
}

/// Sends one request on a fresh connection.
async fn call(url: &str, req: Value, limit: Duration) -> Result<Value, String> {
    let mut c = Conn::connect(url, Duration::from_secs(3)).await?;
    c.request(req, limit).await
}

/// Classifies a write's answer.
fn write_outcome(answer: &Result<Value, String>) -> Outcome {
    match answer {
        Ok(v) if v["ok"] == true => Outcome::Ok,
        Ok(v) => {
            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
            let why = format!("{code}: {}", v["error"]["message"].as_str().unwrap_or(""));
            match code.as_str() {
                "bad_request" | "too_large" | "unauthorized" => Outcome::Failed(why),
                _ => Outcome::Unknown(why),
            }
        }
        Err(e) => Outcome::Unknown(e.clone()),
    }
}

/// The load the client tasks put on the cluster.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Concurrent client tasks, each with its own connection.
    pub clients: usize,
    /// Keys written by read-modify-write (`r0`, `r1`, ...).
    pub rmw_keys: usize,
    /// Blind-write key slots; each slot moves to a fresh key after `blind_per_key` writes.
    pub blind_slots: usize,
    /// Blind writes per key before its slot moves on (below the store's sibling cap).
    pub blind_per_key: u64,
    /// Share of operations that are read-modify-writes (the rest are blind writes).
    pub rmw_share: f64,
    /// Share of read-modify-writes that delete the key instead of writing a value.
    pub delete_share: f64,
    /// Share of puts written with a time to live of a day: within a run they must behave
    /// exactly like plain values, while their expiring versions travel through hints, repair
    /// and read repair under the faults.
    pub ttl_share: f64,
    /// Share of operations that increment a counter key (`k0`, `k1`, ...) by 1 to 9.
    pub incr_share: f64,
    /// Counter keys.
    pub counter_keys: usize,
    /// Write quorum asked for.
    pub w: usize,
    /// Share of writes that leave W to the node's default (the harnesses start nodes with
    /// `--w 2`), exercising the path where a node works out the quorum itself.
    pub default_w_share: f64,
    /// Read quorum asked for.
    pub r: usize,
    /// How long a client waits for an answer before calling the outcome unknown.
    pub timeout: Duration,
    /// Pause between a client's operations (the machine is shared).
    pub pace: Duration,
    /// A client moves to another node after this many operations.
    pub ops_per_connection: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 6,
            rmw_keys: 24,
            blind_slots: 8,
            blind_per_key: 40,
            rmw_share: 0.5,
            delete_share: 0.15,
            ttl_share: 0.2,
            incr_share: 0.1,
            counter_keys: 4,
            w: 2,
            default_w_share: 0.3,
            r: 2,
            timeout: Duration::from_secs(8),
            pace: Duration::from_millis(5),
            ops_per_connection: 40,
        }
    }
}

/// Runs `workload.clients` client tasks against `urls` until `stop` is set, recording every
/// operation in `history`. Returns when every client has finished its last operation.
pub async fn run_workload(
    urls: Vec<String>,
    workload: Workload,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let urls = Arc::new(urls);
    let blind_counters: Arc<Vec<AtomicU64>> = Arc::new(
        (0..workload.blind_slots)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let mut rng = Rng::new(seed ^ (0x5151_0000 + client as u64).wrapping_mul(0x9E37_79B9));
        let urls = urls.clone();
        let wl = workload.clone();
        let history = history.clone();
        let stop = stop.clone();
        let counters = blind_counters.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<(usize, Conn)> = None;
            let mut seq = 0u64;
            let mut on_conn = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    let node = rng.below(urls.len() as u64) as usize;
                    match Conn::connect(&urls[node], Duration::from_secs(3)).await {
                        Ok(c) => {
                            conn = Some((node, c));
                            on_conn = 0;
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    }
                }
                let Some((node, c)) = conn.as_mut() else {
                    continue;
                };
                let node = *node;
                seq += 1;
                on_conn += 1;
                let value = format!("c{client}-{seq}");
                let default_w = rng.chance(wl.default_w_share);
                let ttl = rng.chance(wl.ttl_share);
                let healthy = if rng.chance(wl.incr_share) {
                    let key = format!("k{}", rng.below(wl.counter_keys.max(1) as u64));
                    let by = 1 + rng.below(9);
                    incr(c, (client, node), &key, by, default_w, &wl, &history).await
                } else if rng.chance(wl.rmw_share) {
                    let key = format!("r{}", rng.below(wl.rmw_keys as u64));
                    let a = Attempt {
                        client,
                        node,
                        key: &key,
                        value,
                        default_w,
                        ttl,
                    };
                    let delete = rng.chance(wl.delete_share);
                    rmw(c, a, delete, &wl, &history).await
                } else {
                    let slot = rng.below(wl.blind_slots as u64) as usize;
                    let n = counters[slot].fetch_add(1, Ordering::Relaxed);
                    let key = format!("b{slot}.{}", n / wl.blind_per_key);
                    let a = Attempt {
                        client,
                        node,
                        key: &key,
                        value,
                        default_w,
                        ttl,
                    };
                    blind(c, a, &wl, &history).await
                };
                if !healthy || on_conn >= wl.ops_per_connection {
                    conn = None;
                }
                tokio::time::sleep(wl.pace).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One write a client is about to make.
struct Attempt<'a> {
    client: usize,
    node: usize,
    key: &'a str,
    value: String,
    /// Leave W to the node's default instead of sending `w`.
    default_w: bool,
    /// A put of this attempt carries a time to live (`Workload::ttl_share`).
    ttl: bool,
}

/// A read followed by a write (a delete when `as_delete`) with the read's context. Returns
/// false when the connection should be dropped (no answer).
async fn rmw(
    c: &mut Conn,
    a: Attempt<'_>,
    as_delete: bool,
    wl: &Workload,
    history: &History,
) -> bool {
    let read = history.invoke(
        a.client,
        a.node,
        OpKind::Read {
            key: a.key.to_string(),
            values: Vec::new(),
        },
    );
    let answer = c
        .request(json!({"op": "get", "key": a.key, "r": wl.r}), wl.timeout)
        .await;
    let (values, context) = match &answer {
        Ok(v) if v["ok"] == true => {
            let values: Vec<String> = v["values"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| match x.as_str() {
                            Some(s) => s.to_string(),
                            None => x.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let context = v["context"].as_str().unwrap_or("").to_string();
            history.complete(read, Outcome::Ok, Some(values.clone()));
            (values, context)
        }
        Ok(v) => {
            history.complete(read, Outcome::Failed(v["error"].to_string()), None);
            return true;
        }
        Err(e) => {
            history.complete(read, Outcome::Unknown(e.clone()), None);
            return false;
        }
    };
    write(c, a, values, Some(context), as_delete, wl, history).await
}

/// An increment of counter `key` by `by`, through `node` for `client`.
async fn incr(
    c: &mut Conn,
    (client, node): (usize, usize),
    key: &str,
    by: u64,
    default_w: bool,
    wl: &Workload,
    history: &History,
) -> bool {
    let op = history.invoke(
        client,
        node,
        OpKind::Incr {
            key: key.to_string(),
            by,
        },
    );
    let mut req = json!({"op": "incr", "key": key, "by": by});
    if !default_w {
        req["w"] = json!(wl.w);
    }
    let answer = c.request(req, wl.timeout).await;
    let healthy = answer.is_ok();
    history.complete(op, write_outcome(&answer), None);
    healthy
}

/// A write without a context.
async fn blind(c: &mut Conn, a: Attempt<'_>, wl: &Workload, history: &History) -> bool {
    write(c, a, Vec::new(), None, false, wl, history).await
}

/// Records and sends a put, or a delete (which always carries its read's context);
/// `supersedes` are the values the read behind `context` returned.
async fn write(
    c: &mut Conn,
    a: Attempt<'_>,
    supersedes: Vec<String>,
    context: Option<String>,
    delete: bool,
    wl: &Workload,
    history: &History,
) -> bool {
    let (value, mut req) = if delete {
        // A label that no value can equal: "<client>-<seq>.delete".
        let label = format!("{}.delete", a.value);
        (label, json!({"op": "delete", "key": a.key}))
    } else {
        let mut req = json!({"op": "put", "key": a.key, "value": a.value});
        if a.ttl {
            req["ttl_s"] = json!(24 * 3600);
        }
        (a.value, req)
    };
    let op = history.invoke(
        a.client,
        a.node,
        OpKind::Write {
            key: a.key.to_string(),
            value,
            supersedes,
            blind: context.is_none(),
            delete,
        },
    );
    if let Some(ctx) = context {
        req["context"] = json!(ctx);
    }
    if !a.default_w {
        req["w"] = json!(wl.w);
    }
    let answer = c.request(req, wl.timeout).await;
    let healthy = answer.is_ok();
    history.complete(op, write_outcome(&answer), None);
    healthy
}

/// One thing the checker found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write is gone, and so is every descendant of it.
    Lost {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// The write as recorded (client, node, times).
        op: String,
        /// What the replicas hold instead.
        present: Vec<String>,
    },
    /// A value that no write ever wrote, or that a write refused as a whole wrote.
    Phantom {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The refused write that carried it, if any.
        refused_write: Option<String>,
    },
    /// A value stands next to a descendant of it, or outlived an acknowledged delete that
    /// replaced it (the descendant is then the delete's label, `<client>-<seq>.delete`).
    Resurrected {
        /// The key.
        key: String,
        /// The overwritten value.
        value: String,
        /// The descendant next to it.
        descendant: String,
    },
    /// A counter's count after repair is below the sum of its acknowledged increments, or
    /// above that plus the increments of unknown outcome, or is not a count.
    CounterOff {
        /// The key.
        key: String,
        /// What the replicas hold.
        present: Vec<String>,
        /// The sum of the acknowledged increments.
        acknowledged: u64,
        /// The sum of the increments of unknown outcome.
        unknown: u64,
    },
    /// Replicas of a key hold different values after repair.
    Divergent {
        /// The key.
        key: String,
        /// Replica id and its values.
        replicas: Vec<(String, Vec<String>)>,
    },
    /// Replicas whose Merkle roots still differ after repair rounds, or that could not be
    /// compared.
    NotInSync {
        /// The node whose repair reported it.
        node: String,
        /// Its repair report.
        report: String,
    },
    /// A replica could not be read during the check.
    Unreadable {
        /// The key.
        key: String,
        /// What went wrong.
        why: String,
    },
}

/// What a check found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Operation counts.
    pub counts: Counts,
    /// Keys checked.
    pub keys: usize,
    /// Acknowledged writes whose value (or a descendant) was found.
    pub acknowledged_present: u64,
    /// Unknown-outcome writes that turned out present (themselves or by a descendant).
    pub unknown_present: u64,
    /// Repair rounds until a round found every range in sync.
    pub repair_rounds: usize,
    /// Keys moved by the repair rounds, in total.
    pub keys_repaired: u64,
    /// Everything wrong.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Acknowledged writes lost.
    pub fn lost(&self) -> usize {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::Lost { .. }))
            .count()
    }

    /// Panics, naming the seed, the first twenty violations, the summary and `logs()`, when
    /// the check found anything wrong.
    pub fn assert_clean(&self, seed: u64, logs: impl FnOnce() -> String) {
        if self.violations.is_empty() {
            return;
        }
        let shown: Vec<String> = self
            .violations
            .iter()
            .take(20)
            .map(|v| format!("{v:?}"))
            .collect();
        panic!(
            "seed {seed}: {} violations (first {}):\n{}\n{}\nlogs:\n{}",
            self.violations.len(),
            shown.len(),
            shown.join("\n"),
            self.summary(),
            logs()
        );
    }

    /// A one-paragraph summary.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} writes ({} ok, {} failed, {} unknown; {} deletes, {} ok), {} reads ({} ok), \
             {} increments ({} ok) on {} keys; {} acknowledged writes present, {} unknown-outcome writes present; \
             repair: {} rounds, {} keys repaired; acknowledged writes lost: {}; violations: {}",
            c.writes,
            c.writes_ok,
            c.writes_failed,
            c.writes_unknown,
            c.deletes,
            c.deletes_ok,
            c.reads,
            c.reads_ok,
            c.incrs,
            c.incrs_ok,
            self.keys,
            self.acknowledged_present,
            self.unknown_present,
            self.repair_rounds,
            self.keys_repaired,
            self.lost(),
            self.violations.len()
        )
    }
}

/// Settling: waits for hinted handoff to drain, then runs `repair` on every node, round after
/// round, until a whole round finds every range of every node in sync (at most `max_rounds`).
/// Returns the rounds run, the keys they moved, and what was still out of sync.
pub async fn settle(
    urls: &[String],
    max_rounds: usize,
    limit: Duration,
) -> (usize, u64, Vec<Violation>) {
    let deadline = Instant::now() + limit;
    // Hints first: anti-entropy compares replicas, and a write a stand-in still holds as a
    // hint is on no replica yet.
    loop {
        let pending = match call(&urls[0], json!({"op": "hints"}), Duration::from_secs(20)).await {
            Ok(v) if v["ok"] == true => {
                let count: u64 = v["hints"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|h| h["count"].as_u64()).sum())
                    .unwrap_or(0);
                let unreachable = v["holders"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|h| h["unreachable"] == true));
                if unreachable {
                    u64::MAX
                } else {
                    count
                }
            }
            _ => u64::MAX,
        };
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            return (
                0,
                0,
                vec![Violation::NotInSync {
                    node: "cluster".into(),
                    report: format!("hints still pending after {limit:?} ({pending})"),
                }],
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut repaired = 0;
    let mut last = Vec::new();
    for round in 1..=max_rounds {
        last.clear();
        for url in urls {
            match call(url, json!({"op": "repair"}), Duration::from_secs(300)).await {
                Ok(v) if v["ok"] == true => {
                    let moved = v["keys_repaired"].as_u64().unwrap_or(u64::MAX);
                    repaired += moved;
                    let in_sync = v["ranges_in_sync"] == v["ranges_compared"]
                        && v["pairs_skipped"] == 0
                        && moved == 0;
                    if !in_sync {
                        last.push(Violation::NotInSync {
                            node: url.clone(),
                            report: v.to_string(),
                        });
                    }
                }
                Ok(v) => last.push(Violation::NotInSync {
                    node: url.clone(),
                    report: v.to_string(),
                }),
                Err(e) => last.push(Violation::NotInSync {
                    node: url.clone(),
                    report: e,
                }),
            }
        }
        if last.is_empty() {
            return (round, repaired, last);
        }
    }
    (max_rounds, repaired, last)
}

/// After the faults are healed and the clients stopped: settles the cluster (see [`settle`])
/// and checks `history` against what every replica of every key holds.
///
/// `urls[i]` must be the node with id `n{i+1}` (as the harnesses name them).
pub async fn verify(history: &History, urls: &[String]) -> Report {
    let mut report = Report {
        counts: history.counts(),
        ..Report::default()
    };
    let (rounds, moved, not_in_sync) = settle(urls, 4, Duration::from_secs(180)).await;
    report.repair_rounds = rounds;
    report.keys_repaired = moved;
    report.violations.extend(not_in_sync);

    let ops = history.ops();
    // Per key: every write that may have been applied, by value.
    let mut writes: BTreeMap<String, Vec<&Op>> = BTreeMap::new();
    let mut refused: HashMap<String, &Op> = HashMap::new();
    // Per counter key: the sums of the acknowledged increments and of the unknown ones.
    let mut counters: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for op in &ops {
        match &op.kind {
            OpKind::Write { key, value, .. } => match &op.outcome {
                Some(Outcome::Failed(_)) => {
                    refused.insert(value.clone(), op);
                }
                _ => writes.entry(key.clone()).or_default().push(op),
            },
            OpKind::Incr { key, by } => {
                let sums = counters.entry(key.clone()).or_default();
                match &op.outcome {
                    Some(Outcome::Ok) => sums.0 += by,
                    Some(Outcome::Failed(_)) => {}
                    Some(Outcome::Unknown(_)) | None => sums.1 += by,
                }
            }
            OpKind::Read { .. } => {}
        }
    }
    report.keys = writes.len() + counters.len();
    let by_id: HashMap<String, &String> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("n{}", i + 1), u))
        .collect();
    let mut conns: HashMap<String, Conn> = HashMap::new();
    for (key, key_writes) in &writes {
        let present = match read_replicas(key, urls, &by_id, &mut conns).await {
            Ok(Ok(values)) => values,
            Ok(Err(divergent)) => {
                report.violations.push(Violation::Divergent {
                    key: key.clone(),
                    replicas: divergent.clone(),
                });
                // Check against the union: a value held by any replica is not lost.
                divergent.into_iter().flat_map(|(_, v)| v).collect()
            }
            Err(why) => {
                report.violations.push(Violation::Unreadable {
                    key: key.clone(),
                    why,
                });
                continue;
            }
        };
        check_key(key, key_writes, &refused, &present, &mut report);
    }
    for (key, &(acknowledged, unknown)) in &counters {
        let present = match read_replicas(key, urls, &by_id, &mut conns).await {
            Ok(Ok(values)) => values,
            Ok(Err(divergent)) => {
                report.violations.push(Violation::Divergent {
                    key: key.clone(),
                    replicas: divergent,
                });
                continue;
            }
            Err(why) => {
                report.violations.push(Violation::Unreadable {
                    key: key.clone(),
                    why,
                });
                continue;
            }
        };
        report
            .violations
            .extend(check_counter(key, acknowledged, unknown, &present));
    }
    report
}

/// The check of one counter key: `present` is what its replicas hold (one count, or nothing
/// when no increment was applied).
fn check_counter(
    key: &str,
    acknowledged: u64,
    unknown: u64,
    present: &BTreeSet<String>,
) -> Option<Violation> {
    let count = match present.iter().collect::<Vec<_>>()[..] {
        [] => Some(0),
        [one] => one.parse::<u64>().ok(),
        _ => None,
    };
    match count {
        Some(n) if (acknowledged..=acknowledged + unknown).contains(&n) => None,
        _ => Some(Violation::CounterOff {
            key: key.to_string(),
            present: present.iter().cloned().collect(),
            acknowledged,
            unknown,
        }),
    }
}

/// Reads `key` from each of its replicas with `local: true`: the common set of values, or
/// each replica's set when they differ.
#[allow(clippy::type_complexity)]
async fn read_replicas(
    key: &str,
    urls: &[String],
    by_id: &HashMap<String, &String>,
    conns: &mut HashMap<String, Conn>,
) -> Result<Result<BTreeSet<String>, Vec<(String, Vec<String>)>>, String> {
    let limit = Duration::from_secs(20);
    let ring = request_on(conns, &urls[0], json!({"op": "ring", "key": key}), limit).await?;
    let replicas: Vec<String> = ring["preference_list"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if replicas.is_empty() {
        return Err(format!("no preference list in {ring}"));
    }
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for id in replicas {
        let url = by_id
            .get(&id)
            .ok_or_else(|| format!("replica {id} is not a node of this cluster"))?;
        let v = request_on(
            conns,
            url,
            json!({"op": "get", "key": key, "local": true}),
            limit,
        )
        .await?;
        if v["ok"] != true {
            return Err(format!("local get on {id}: {v}"));
        }
        let mut values: Vec<String> = v["values"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().map(String::from).unwrap_or(x.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        values.sort();
        seen.push((id, values));
    }
    if seen.windows(2).all(|w| w[0].1 == w[1].1) {
        Ok(Ok(seen
            .into_iter()
            .next()
            .map(|(_, v)| v.into_iter().collect())
            .unwrap_or_default()))
    } else {
        Ok(Err(seen))
    }
}

/// A request on a kept connection to `url` (opened on first use, reopened after a failure).
async fn request_on(
    conns: &mut HashMap<String, Conn>,
    url: &str,
    req: Value,
    limit: Duration,
) -> Result<Value, String> {
    if !conns.contains_key(url) {
        let c = Conn::connect(url, Duration::from_secs(5)).await?;
        conns.insert(url.to_string(), c);
    }
    let c = conns
        .get_mut(url)
        .ok_or_else(|| format!("no connection to {url}"))?;
    let answer = c.request(req, limit).await;
    if answer.is_err() {
        conns.remove(url);
    }
    answer
}

/// The checks of one key: `present` is what its replicas hold.
fn check_key(
    key: &str,
    writes: &[&Op],
    refused: &HashMap<String, &Op>,
    present: &BTreeSet<String>,
    report: &mut Report,
) {
    // value -> the writes that replaced it (their read returned it).
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut known: HashMap<&str, &Op> = HashMap::new();
    // Deletes by label, with whether they were acknowledged. Refused ones are not in `writes`,
    // so every delete here may have been applied: it covers what it replaced.
    let mut deletes: HashMap<&str, bool> = HashMap::new();
    for op in writes {
        if let OpKind::Write {
            value,
            supersedes,
            delete,
            ..
        } = &op.kind
        {
            if *delete {
                deletes.insert(value.as_str(), op.outcome == Some(Outcome::Ok));
            } else {
                known.insert(value.as_str(), op);
            }
            for s in supersedes {
                children.entry(s.as_str()).or_default().push(value.as_str());
            }
        }
    }
    // covered(v): v is present, or some write that replaced v is covered. A write replaces
    // only values its read returned, written by writes invoked before it, so one pass from the
    // last write to the first settles almost everything; passes repeat until nothing changes
    // (covered only ever turns true), so an out-of-order history cannot make a false loss.
    // Iterative on purpose: read-modify-write chains are tens of thousands of writes long in a
    // soak, too deep for recursion.
    let mut covered: HashMap<&str, bool> = HashMap::new();
    loop {
        let mut changed = false;
        for op in writes.iter().rev() {
            let OpKind::Write { value, .. } = &op.kind else {
                continue;
            };
            let v = value.as_str();
            if covered.get(v).copied().unwrap_or(false) {
                continue;
            }
            let c = present.contains(v)
                || deletes.contains_key(v)
                || children
                    .get(v)
                    .is_some_and(|cs| cs.iter().any(|c| covered.get(c).copied().unwrap_or(false)));
            if c {
                changed = true;
            }
            covered.insert(v, c);
        }
        if !changed {
            break;
        }
    }
    for op in writes {
        let OpKind::Write { value, delete, .. } = &op.kind else {
            continue;
        };
        if *delete {
            // What an acknowledged delete replaced is checked below, as a resurrection.
            continue;
        }
        let is_covered = covered.get(value.as_str()).copied().unwrap_or(false);
        match &op.outcome {
            Some(Outcome::Ok) if is_covered => report.acknowledged_present += 1,
            Some(Outcome::Ok) => report.violations.push(Violation::Lost {
                key: key.to_string(),
                value: value.clone(),
                op: describe(op),
                present: present.iter().cloned().collect(),
            }),
            _ if is_covered => report.unknown_present += 1,
            _ => {}
        }
    }
    for v in present {
        if !known.contains_key(v.as_str()) {
            report.violations.push(Violation::Phantom {
                key: key.to_string(),
                value: v.clone(),
                refused_write: refused.get(v.as_str()).map(|op| describe(op)),
            });
        }
    }
    // A present value must not be an ancestor of another present value, nor of an acknowledged
    // delete.
    for v in present {
        let mut stack: Vec<&str> = children.get(v.as_str()).cloned().unwrap_or_default();
        let mut visited: BTreeSet<&str> = BTreeSet::new();
        while let Some(d) = stack.pop() {
            if !visited.insert(d) {
                continue;
            }
            if present.contains(d) || deletes.get(d).copied().unwrap_or(false) {
                report.violations.push(Violation::Resurrected {
                    key: key.to_string(),
                    value: v.clone(),
                    descendant: d.to_string(),
                });
                break;
            }
            if let Some(more) = children.get(d) {
                stack.extend(more.iter().copied());
            }
        }
    }
}

/// One operation as a line for a report.
pub fn describe(op: &Op) -> String {
    format!(
        "client {} via n{}, invoked at {:.3}s, completed at {}, {:?}, {:?}",
        op.client,
        op.node + 1,
        op.invoked.as_secs_f64(),
        op.completed
            .map(|d| format!("{:.3}s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".into()),
        op.kind,
        op.outcome
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(value: &str, supersedes: &[&str], outcome: Outcome) -> Op {
        Op {
            client: 0,
            node: 0,
            kind: OpKind::Write {
                key: "k".into(),
                value: value.into(),
                supersedes: supersedes.iter().map(|s| s.to_string()).collect(),
                blind: supersedes.is_empty(),
                delete: false,
            },
            invoked: Duration::ZERO,
            completed: Some(Duration::ZERO),
            outcome: Some(outcome),
        }
    }

    fn delete(label: &str, supersedes: &[&str], outcome: Outcome) -> Op {
        let mut op = write(label, supersedes, outcome);
        if let OpKind::Write { delete, blind, .. } = &mut op.kind {
            *delete = true;
            *blind = false;
        }
        op
    }

    fn check(ops: &[Op], present: &[&str]) -> Report {
        let refs: Vec<&Op> = ops.iter().collect();
        let present: BTreeSet<String> = present.iter().map(|s| s.to_string()).collect();
        let mut report = Report::default();
        check_key("k", &refs, &HashMap::new(), &present, &mut report);
        report
    }

    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }

    #[test]
    fn a_delete_covers_what_it_replaced_and_once_acknowledged_keeps_it_gone() {
        // a <- b (read a) <- d (delete with b's context); c is a concurrent sibling of d.
        let ops = [
            write("a", &[], Outcome::Ok),
            write("b", &["a"], Outcome::Ok),
            delete("d.delete", &["b"], Outcome::Ok),
            write("c", &["b"], Outcome::Ok),
        ];
        let r = check(&ops, &["c"]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(
            r.acknowledged_present, 3,
            "a, b by their descendants, and c"
        );
        // The key deleted and nothing else written: nothing present is right.
        let r = check(&ops[..3], &[]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // b back after the acknowledged delete: resurrected, with the delete named.
        let r = check(&ops[..3], &["b"]);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(matches!(&r.violations[0],
            Violation::Resurrected { value, descendant, .. } if value == "b" && descendant == "d.delete"));
        // a, two steps up, is caught as well.
        let r = check(&ops[..3], &["a"]);
        assert!(
            matches!(&r.violations[..],
            [Violation::Resurrected { value, .. }] if value == "a"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_delete_of_unknown_outcome_may_or_may_not_have_applied() {
        let ops = [
            write("a", &[], Outcome::Ok),
            delete("d.delete", &["a"], unknown()),
        ];
        assert!(check(&ops, &[]).violations.is_empty());
        assert!(check(&ops, &["a"]).violations.is_empty());
    }

    #[test]
    fn acknowledged_siblings_must_all_be_present() {
        let ops = [write("a", &[], Outcome::Ok), write("b", &[], Outcome::Ok)];
        let r = check(&ops, &["a", "b"]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.acknowledged_present, 2);
        let r = check(&ops, &["a"]);
        assert_eq!(r.lost(), 1, "{:?}", r.violations);
        assert!(matches!(&r.violations[0], Violation::Lost { value, .. } if value == "b"));
    }

    #[test]
    fn a_descendant_covers_what_its_context_replaced_recursively() {
        // a <- b (read a) <- c (read b, unknown outcome): c present covers a and b.
        let ops = [
            write("a", &[], Outcome::Ok),
            write("b", &["a"], Outcome::Ok),
            write("c", &["b"], unknown()),
        ];
        let r = check(&ops, &["c"]);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.acknowledged_present, r.unknown_present), (2, 1));
        // If c never landed and b is gone, b is lost; a is still lost too (nothing covers it).
        let r = check(&ops, &[]);
        assert_eq!(r.lost(), 2, "{:?}", r.violations);
    }

    #[test]
    fn a_value_never_written_is_a_phantom_and_an_unknown_write_may_be_absent() {
        let ops = [write("a", &[], Outcome::Ok), write("u", &[], unknown())];
        let r = check(&ops, &["a", "zzz"]);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(matches!(&r.violations[0], Violation::Phantom { value, .. } if value == "zzz"));
        let refused = write("f", &[], Outcome::Failed("bad_request".into()));
        let mut refused_map = HashMap::new();
        refused_map.insert("f".to_string(), &refused);
        let refs: Vec<&Op> = ops.iter().collect();
        let present: BTreeSet<String> = ["a", "f"].iter().map(|s| s.to_string()).collect();
        let mut report = Report::default();
        check_key("k", &refs, &refused_map, &present, &mut report);
        assert!(
            matches!(
                &report.violations[..],
                [Violation::Phantom {
                    refused_write: Some(_),
                    ..
                }]
            ),
            "{:?}",
            report.violations
        );
    }

    #[test]
    fn an_overwritten_value_next_to_its_descendant_is_reported() {
        let ops = [
            write("a", &[], Outcome::Ok),
            write("b", &["a"], Outcome::Ok),
            write("c", &["b"], Outcome::Ok),
        ];
        let r = check(&ops, &["a", "c"]);
        assert!(
            r.violations.iter().any(|v| matches!(v,
                Violation::Resurrected { value, descendant, .. } if value == "a" && descendant == "c")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_chain_of_a_hundred_thousand_read_modify_writes_is_checked_without_recursion() {
        let values: Vec<String> = (0..100_000).map(|i| format!("v{i}")).collect();
        let ops: Vec<Op> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let before: Vec<&str> = if i == 0 {
                    vec![]
                } else {
                    vec![values[i - 1].as_str()]
                };
                write(v, &before, Outcome::Ok)
            })
            .collect();
        let r = check(&ops, &["v99999"]);
        assert!(r.violations.is_empty(), "{:?}", &r.violations[..1]);
        assert_eq!(r.acknowledged_present, 100_000);
    }

    #[test]
    fn a_counter_must_hold_every_acknowledged_increment_and_at_most_the_unknown_ones() {
        let present = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(check_counter("k", 10, 5, &present(&["10"])), None);
        assert_eq!(check_counter("k", 10, 5, &present(&["15"])), None);
        assert_eq!(check_counter("k", 0, 3, &present(&[])), None);
        for bad in [&["9"][..], &["16"], &["10", "11"], &["ten"], &[]] {
            assert!(
                matches!(
                    check_counter("k", 10, 5, &present(bad)),
                    Some(Violation::CounterOff { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn history_counts_unfinished_writes_as_unknown() {
        let h = History::new();
        let w = h.invoke(
            0,
            1,
            OpKind::Write {
                key: "k".into(),
                value: "v".into(),
                supersedes: vec![],
                blind: true,
                delete: false,
            },
        );
        h.invoke(
            1,
            1,
            OpKind::Write {
                key: "k".into(),
                value: "v2".into(),
                supersedes: vec![],
                blind: true,
                delete: false,
            },
        );
        h.complete(w, Outcome::Ok, None);
        let c = h.counts();
        assert_eq!((c.writes, c.writes_ok, c.writes_unknown), (2, 1, 1));
    }
}

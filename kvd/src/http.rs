//! Plain HTTP on the node's port: `GET /health`, `GET /ready` (503 while joining or leaving),
//! `GET /metrics` (Prometheus text format) and `GET /` (the web console).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use kv_core::membership::NodeState;
use serde_json::{json, Value};

use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::server::{write_response, RequestHead};

/// Answers one plain HTTP request.
pub async fn respond(
    node: &Arc<Node>,
    head: &RequestHead,
    stream: &mut crate::tls::Io,
) -> std::io::Result<()> {
    if head.method != "GET" && head.method != "HEAD" {
        return write_response(
            stream,
            405,
            "Method Not Allowed",
            "text/plain",
            b"only GET\n",
        )
        .await;
    }
    match head.path.as_str() {
        "/health" => {
            let body = health_json(node);
            // A node whose storage failed answers, but is not healthy: a liveness probe that
            // restarts it is what brings its writes back.
            let (code, reason) = match body["storage_error"].is_null() {
                true => (200, "OK"),
                false => (503, "Service Unavailable"),
            };
            let body = body.to_string();
            write_response(stream, code, reason, "application/json", body.as_bytes()).await
        }
        "/ready" => {
            // Ready = a full member: not still streaming its ranges in, not handing them over,
            // and able to write. A deployment that waits for this before starting the next
            // node serializes joins.
            let state = serving_state(node);
            let failed = node.replica.engine().failure();
            let ready = state == "normal" && failed.is_none();
            let body = json!({
                "ready": ready,
                "state": state,
                "id": node.id,
                "storage_error": failed,
            });
            let (code, reason) = match ready {
                true => (200, "OK"),
                false => (503, "Service Unavailable"),
            };
            write_response(
                stream,
                code,
                reason,
                "application/json",
                body.to_string().as_bytes(),
            )
            .await
        }
        "/metrics" => {
            let body = metrics_text(node);
            write_response(
                stream,
                200,
                "OK",
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
            .await
        }
        path => match static_file(node, path) {
            Some((content_type, body)) => {
                write_response(stream, 200, "OK", content_type, &body).await
            }
            None if path == "/" || path == "/index.html" => {
                let body = console_page(node);
                write_response(
                    stream,
                    200,
                    "OK",
                    "text/html; charset=utf-8",
                    body.as_bytes(),
                )
                .await
            }
            None => write_response(stream, 404, "Not Found", "text/plain", b"not found\n").await,
        },
    }
}

/// A file of the web console (`--www-dir`, `/`) or of the browser SDK it loads
/// (`--sdk-dir`, under `/sdk/`). Paths with `..` or hidden parts are refused.
fn static_file(node: &Node, path: &str) -> Option<(&'static str, Vec<u8>)> {
    let (dir, rel) = match path.strip_prefix("/sdk/") {
        Some(rel) => (node.config.sdk_dir.as_ref()?, rel),
        None => (
            node.config.www_dir.as_ref()?,
            match path.trim_start_matches('/') {
                "" => "index.html",
                rel => rel,
            },
        ),
    };
    if rel
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return None;
    }
    let file = dir.join(rel);
    let body = std::fs::read(&file).ok()?;
    let content_type = match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    Some((content_type, body))
}

fn health_json(node: &Node) -> Value {
    let m = node.membership();
    let up = m
        .members()
        .filter(|x| m.state(&x.id) == Some(NodeState::Up))
        .count();
    // Writes refused for lack of disk space (a flush or compaction held up, or the commit log
    // unable to grow): reads go on, writes resume once space is freed.
    let disk_full = node.replica.engine().no_space();
    // Writes refused until a restart: an I/O error that is not lack of space.
    let failed = node.replica.engine().failure();
    json!({
        "status": if failed.is_some() { "storage_failed" } else { "ok" },
        "storage_error": failed,
        "id": node.id,
        "state": serving_state(node),
        "members": m.members().count(),
        "members_up": up,
        "ring_nodes": node.ring().len(),
        "uptime_s": node.started.elapsed().as_secs(),
        "disk_full": disk_full.is_some(),
        "disk_full_reason": disk_full,
    })
}

/// Where this node is in its life in the ring: `joining` (streaming its ranges in), `leaving`
/// (handing them over), `left` (decommissioned), or `normal`.
fn serving_state(node: &Node) -> &'static str {
    if node.is_joining() {
        "joining"
    } else if node.is_leaving() {
        "leaving"
    } else if node.has_left() {
        "left"
    } else {
        "normal"
    }
}

/// This node's own figures, as shown by `status`.
pub fn local_stats(node: &Node) -> NodeStats {
    let s = node.replica.engine().stats();
    let hints = node.hints.summary();
    NodeStats {
        keys: node.replica.key_count(),
        disk_bytes: s.level_bytes.iter().sum(),
        uptime_s: node.started.elapsed().as_secs(),
        hints_pending: hints.values().map(|t| t.count).sum(),
        hints_by_target: hints.into_iter().map(|(t, h)| (t, h.count)).collect(),
        transfer: node.transfers.progress(),
        disk_full: node.replica.engine().no_space(),
        disk_free_bytes: s.disk_free_bytes,
        storage_error: node.replica.engine().failure(),
    }
}

/// Figures one node reports about itself for `status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// Keys held in the local replica.
    pub keys: u64,
    /// Bytes of table files.
    pub disk_bytes: u64,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Hinted-handoff writes this node holds for others.
    pub hints_pending: u64,
    /// The same, per target node.
    #[serde(default)]
    pub hints_by_target: std::collections::BTreeMap<String, u64>,
    /// A join or decommission in progress.
    #[serde(default)]
    pub transfer: Option<crate::rebalance::TransferProgress>,
    /// Why writes are refused for lack of disk space, while they are (`/health`'s
    /// `disk_full_reason`).
    #[serde(default)]
    pub disk_full: Option<String>,
    /// Free bytes of the file system holding the data dir (None from older nodes).
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// Why its storage stopped taking writes until a restart, if it did.
    #[serde(default)]
    pub storage_error: Option<String>,
}

/// One member as seen from this node, with its own figures when it answered in time.
pub struct MemberView {
    /// Id, address, dc, rack, weight.
    pub id: String,
    /// Where it listens.
    pub addr: String,
    /// Placement labels.
    pub dc: String,
    /// Placement labels.
    pub rack: String,
    /// Relative capacity.
    pub weight: u32,
    /// Its state in this node's view.
    pub state: Option<NodeState>,
    /// What it reported about itself (None when down or silent for a second).
    pub stats: Option<NodeStats>,
}

/// Every member, asking each live one for its figures in parallel.
pub async fn cluster_view(node: &Arc<Node>) -> Vec<MemberView> {
    let members: Vec<MemberView> = {
        let m = node.membership();
        m.members()
            .map(|x| MemberView {
                id: x.id.clone(),
                addr: x.addr.clone(),
                dc: x.dc.clone(),
                rack: x.rack.clone(),
                weight: x.weight,
                state: m.state(&x.id),
                stats: None,
            })
            .collect()
    };
    let mut asks = Vec::new();
    for v in &members {
        let node = node.clone();
        let (id, addr) = (v.id.clone(), v.addr.clone());
        asks.push(tokio::spawn(async move {
            if id == node.id {
                return Some(local_stats(&node));
            }
            if !node.is_up(&id) {
                return None;
            }
            match node
                .peers
                .call(&addr, &PeerRequest::Stats, Duration::from_secs(1))
                .await
            {
                Ok(PeerResponse::Stats { stats }) => Some(stats),
                _ => None,
            }
        }));
    }
    let mut out = Vec::with_capacity(members.len());
    for (mut v, ask) in members.into_iter().zip(asks) {
        v.stats = ask.await.ok().flatten();
        out.push(v);
    }
    out
}

/// Every member with its state and, for the nodes that answer within a second, their figures.
pub async fn status_json(node: &Arc<Node>) -> Value {
    let nodes: Vec<Value> = cluster_view(node)
        .await
        .into_iter()
        .map(|v| {
            let s = v.stats.as_ref();
            json!({
                "id": v.id,
                "addr": v.addr,
                "dc": v.dc,
                "rack": v.rack,
                "weight": v.weight,
                "state": state_name(v.state),
                "keys": s.map(|s| s.keys),
                "disk_bytes": s.map(|s| s.disk_bytes),
                "uptime_s": s.map(|s| s.uptime_s),
                "hints_pending": s.map(|s| s.hints_pending),
                "transfer": s.and_then(|s| s.transfer.clone()),
                "disk_full": s.map(|s| s.disk_full.is_some()),
                "disk_full_reason": s.and_then(|s| s.disk_full.clone()),
                "disk_free_bytes": s.and_then(|s| s.disk_free_bytes),
                "storage_failed": s.map(|s| s.storage_error.is_some()),
                "storage_error": s.and_then(|s| s.storage_error.clone()),
            })
        })
        .collect();
    json!({ "node": node.id, "nodes": nodes })
}

/// Pending hinted-handoff writes in the cluster, by target, and by the node holding them.
pub async fn hints_json(node: &Arc<Node>) -> Value {
    let view = cluster_view(node).await;
    let mut by_target: std::collections::BTreeMap<String, u64> = Default::default();
    let mut holders = Vec::new();
    for v in &view {
        match &v.stats {
            Some(s) => {
                for (t, c) in &s.hints_by_target {
                    *by_target.entry(t.clone()).or_default() += c;
                }
                holders.push(json!({"node": v.id, "hints_by_target": s.hints_by_target}));
            }
            // A member that left is out of the cluster and not asked: not "unreachable". (Its
            // data moved to the new owners; what it missed, anti-entropy repairs.)
            None if v.state == Some(NodeState::Left) => {}
            None => holders.push(json!({"node": v.id, "unreachable": true})),
        }
    }
    let hints: Vec<Value> = by_target
        .into_iter()
        .map(|(target, count)| json!({"target": target, "count": count}))
        .collect();
    json!({ "hints": hints, "holders": holders })
}

fn state_name(state: Option<NodeState>) -> &'static str {
    match state {
        Some(NodeState::Up) => "up",
        Some(NodeState::Down) => "down",
        Some(NodeState::Joining) => "joining",
        Some(NodeState::Leaving) => "leaving",
        Some(NodeState::Left) => "left",
        None => "unknown",
    }
}

/// `/metrics`: every family gets one `# HELP` and one `# TYPE` line before its samples.
fn metrics_text(node: &Node) -> String {
    use crate::metrics::{family, sample};
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(12 * 1024);
    let out = &mut out;
    node.metrics.render(out);
    let s = node.replica.engine().stats();
    sample(
        out,
        "kv_keys",
        "gauge",
        "Keys held by this node.",
        node.replica.key_count(),
    );
    family(
        out,
        "kv_storage_level_bytes",
        "gauge",
        "Bytes of tables on disk, by LSM level.",
    );
    for (level, bytes) in s.level_bytes.iter().enumerate() {
        let _ = writeln!(out, "kv_storage_level_bytes{{level=\"{level}\"}} {bytes}");
    }
    family(
        out,
        "kv_storage_level_tables",
        "gauge",
        "Tables on disk, by LSM level.",
    );
    for (level, n) in s.level_tables.iter().enumerate() {
        let _ = writeln!(out, "kv_storage_level_tables{{level=\"{level}\"}} {n}");
    }
    // Per target only while it has hints, so the family is empty when nothing is pending;
    // kv_hints_pending_all_targets shows that zero.
    let hints = node.hints.summary();
    family(
        out,
        "kv_hints_pending",
        "gauge",
        "Keys with hinted-handoff writes waiting for delivery, by target node (targets with any).",
    );
    for (target, h) in &hints {
        let _ = writeln!(out, "kv_hints_pending{{target=\"{target}\"}} {}", h.count);
    }
    family(
        out,
        "kv_hints_pending_bytes",
        "gauge",
        "Bytes of the hinted-handoff writes waiting for delivery, by target node.",
    );
    for (target, h) in &hints {
        let _ = writeln!(
            out,
            "kv_hints_pending_bytes{{target=\"{target}\"}} {}",
            h.bytes
        );
    }
    sample(
        out,
        "kv_hints_pending_all_targets",
        "gauge",
        "Keys with hinted-handoff writes waiting for delivery, all targets together.",
        hints.values().map(|h| h.count).sum::<u64>(),
    );
    let ae = &node.anti_entropy;
    let counters: [(&str, &std::sync::atomic::AtomicU64, &str, &str); 11] = [
        (
            "kv_hints_delivered_total",
            &node.hints.delivered,
            "counter",
            "Hinted-handoff writes delivered to their target.",
        ),
        (
            "kv_hints_dropped_total",
            &node.hints.dropped,
            "counter",
            "Hints refused or dropped because a target's hint space was full.",
        ),
        (
            "kv_hints_expired_total",
            &node.hints.expired,
            "counter",
            "Hints dropped undelivered after the hint expiry (anti-entropy covers them).",
        ),
        (
            "kv_cleanup_keys_removed_total",
            &node.transfers.keys_cleaned,
            "counter",
            "Keys dropped by cleanup from ranges this node no longer owns.",
        ),
        (
            "kv_tombstones_purged_total",
            &node.agreements.purged,
            "counter",
            "Tombstones purged once every replica held them and the grace period passed.",
        ),
        (
            "kv_anti_entropy_sessions_total",
            &ae.sessions,
            "counter",
            "Anti-entropy sessions (range compared with a peer).",
        ),
        (
            "kv_anti_entropy_keys_repaired_total",
            &ae.keys_repaired,
            "counter",
            "Keys brought up to date by anti-entropy.",
        ),
        (
            "kv_anti_entropy_bytes_total",
            &ae.bytes,
            "counter",
            "Bytes of keys and values moved by anti-entropy.",
        ),
        (
            "kv_anti_entropy_rounds_total",
            &ae.rounds,
            "counter",
            "Anti-entropy rounds completed.",
        ),
        (
            "kv_repair_pairs_done",
            &ae.repair_done,
            "gauge",
            "Range and peer pairs compared so far by the current or last repair.",
        ),
        (
            "kv_repair_pairs_total",
            &ae.repair_total,
            "gauge",
            "Range and peer pairs the current or last repair compares.",
        ),
    ];
    for (name, v, kind, help) in counters {
        sample(out, name, kind, help, v.load(Relaxed));
    }
    let storage: [(&str, f64, &str, &str); 19] = [
        (
            "kv_storage_tables",
            s.table_count as f64,
            "gauge",
            "Tables on disk.",
        ),
        (
            "kv_storage_memtable_bytes",
            s.memtable_bytes as f64,
            "gauge",
            "Bytes in the memtables.",
        ),
        (
            "kv_storage_flushes_total",
            s.flushes as f64,
            "counter",
            "Memtable flushes since the node started.",
        ),
        (
            "kv_storage_compactions_total",
            s.compactions as f64,
            "counter",
            "Compactions since the node started.",
        ),
        (
            "kv_storage_wal_syncs_total",
            s.wal_syncs as f64,
            "counter",
            "Commit-log fsyncs since the node started.",
        ),
        (
            "kv_storage_user_bytes_written_total",
            s.user_bytes_written as f64,
            "counter",
            "Bytes of keys and values written by users.",
        ),
        (
            "kv_storage_flush_bytes_written_total",
            s.flush_bytes_written as f64,
            "counter",
            "Bytes of tables written by flushes.",
        ),
        (
            "kv_storage_compaction_bytes_written_total",
            s.compaction_bytes_written as f64,
            "counter",
            "Bytes of tables written by compactions.",
        ),
        (
            "kv_storage_write_amplification",
            s.write_amplification,
            "gauge",
            "(Flush + compaction bytes) / user bytes written.",
        ),
        (
            "kv_storage_stall_seconds_total",
            s.stall_micros as f64 / 1e6,
            "counter",
            "Seconds writes waited for flushing or compaction.",
        ),
        (
            "kv_storage_bloom_skips_total",
            s.bloom_skips as f64,
            "counter",
            "Table lookups skipped because the bloom filter excluded the key.",
        ),
        (
            "kv_storage_cache_hit_ratio",
            s.cache_hit_ratio,
            "gauge",
            "Block cache hits / lookups.",
        ),
        (
            "kv_storage_page_cache_reads_total",
            s.page_cache_reads as f64,
            "counter",
            "Block cache misses of memory-only reads that the OS page cache answered.",
        ),
        (
            "kv_storage_cache_bytes",
            s.cache_bytes as f64,
            "gauge",
            "Bytes in the block cache.",
        ),
        (
            "kv_storage_no_space_refusals_total",
            s.no_space_refusals as f64,
            "counter",
            "Writes refused because the disk was full (or below the reserve).",
        ),
        (
            "kv_storage_failed",
            f64::from(u8::from(node.replica.engine().failure().is_some())),
            "gauge",
            "1 once the storage engine stopped taking writes after an I/O error that is not \
             lack of space (a failed fsync, a file system remounted read-only): reads go on, \
             writes come back with a restart.",
        ),
        (
            "kv_storage_disk_free_bytes",
            s.disk_free_bytes.unwrap_or(0) as f64,
            "gauge",
            "Free bytes of the file system holding the data dir.",
        ),
        (
            "kv_storage_reserve_bytes",
            s.reserve_bytes as f64,
            "gauge",
            "Free disk space kept back for flushes and compactions (--reserve-mb): below it \
             writes other than deletes are refused.",
        ),
        (
            "kv_storage_disk_full",
            f64::from(u8::from(s.no_space.is_some())),
            "gauge",
            "1 while writes are refused for lack of disk space: a flush or compaction held up \
             (retried every second), a commit log that cannot grow, or free space below the \
             reserve.",
        ),
    ];
    for (name, v, kind, help) in storage {
        sample(out, name, kind, help, v);
    }
    let m = node.membership();
    family(
        out,
        "kv_gossip_members",
        "gauge",
        "Cluster members as this node sees them, by state.",
    );
    for state in ["up", "down", "joining", "leaving", "left"] {
        let n = m
            .members()
            .filter(|x| state_name(m.state(&x.id)) == state)
            .count();
        let _ = writeln!(out, "kv_gossip_members{{state=\"{state}\"}} {n}");
    }
    std::mem::take(out)
}

fn console_page(node: &Node) -> String {
    let members: String = {
        let m = node.membership();
        m.members()
            .map(|x| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td></tr>",
                    html_escape(&x.id),
                    html_escape(&x.addr),
                    html_escape(&x.dc),
                    html_escape(&x.rack),
                    state_name(m.state(&x.id))
                )
            })
            .collect()
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kvd {id}</title></head><body>\
         <h1>kvd node {id}</h1><p>A node of a Dynamo-style key-value store. Clients speak JSON \
         over a WebSocket on this port; see <a href=\"/health\">/health</a> and \
         <a href=\"/metrics\">/metrics</a>.</p><table border=\"1\"><tr><th>member</th>\
         <th>address</th><th>dc/rack</th><th>state</th></tr>{members}</table></body></html>",
        id = html_escape(&node.id)
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

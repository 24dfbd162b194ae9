//! Plain HTTP on the node's port: `GET /health`, `GET /metrics` (Prometheus text format) and
//! `GET /` (the web console).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use kv_core::membership::NodeState;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::node::Node;
use crate::peer::{PeerRequest, PeerResponse};
use crate::server::{write_response, RequestHead};

/// Answers one plain HTTP request.
pub async fn respond(
    node: &Arc<Node>,
    head: &RequestHead,
    stream: &mut TcpStream,
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
            let body = health_json(node).to_string();
            write_response(stream, 200, "OK", "application/json", body.as_bytes()).await
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
        "/" | "/index.html" => {
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
        _ => write_response(stream, 404, "Not Found", "text/plain", b"not found\n").await,
    }
}

fn health_json(node: &Node) -> Value {
    let m = node.membership();
    let up = m
        .members()
        .filter(|x| m.state(&x.id) == Some(NodeState::Up))
        .count();
    json!({
        "status": "ok",
        "id": node.id,
        "members": m.members().count(),
        "members_up": up,
        "ring_nodes": node.ring().len(),
        "uptime_s": node.started.elapsed().as_secs(),
    })
}

/// This node's own figures, as shown by `status`.
pub fn local_stats(node: &Node) -> NodeStats {
    let s = node.replica.engine().stats();
    NodeStats {
        keys: node.replica.key_count(),
        disk_bytes: s.level_bytes.iter().sum(),
        uptime_s: node.started.elapsed().as_secs(),
        hints_pending: 0,
    }
}

/// Figures one node reports about itself for `status`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    /// Keys held in the local replica.
    pub keys: u64,
    /// Bytes of table files.
    pub disk_bytes: u64,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Hinted-handoff writes this node holds for others.
    pub hints_pending: u64,
}

/// Every member with its state and, for the nodes that answer within a second, their figures.
pub async fn status_json(node: &Arc<Node>) -> Value {
    let members: Vec<(String, String, String, String, Option<NodeState>, u32)> = {
        let m = node.membership();
        m.members()
            .map(|x| {
                (
                    x.id.clone(),
                    x.addr.clone(),
                    x.dc.clone(),
                    x.rack.clone(),
                    m.state(&x.id),
                    x.weight,
                )
            })
            .collect()
    };
    let mut asks = Vec::new();
    for (id, addr, ..) in &members {
        let node = node.clone();
        let (id, addr) = (id.clone(), addr.clone());
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
    let mut nodes = Vec::new();
    for ((id, addr, dc, rack, state, weight), ask) in members.into_iter().zip(asks) {
        let stats = ask.await.ok().flatten();
        nodes.push(json!({
            "id": id,
            "addr": addr,
            "dc": dc,
            "rack": rack,
            "weight": weight,
            "state": state_name(state),
            "keys": stats.map(|s| s.keys),
            "disk_bytes": stats.map(|s| s.disk_bytes),
            "uptime_s": stats.map(|s| s.uptime_s),
            "hints_pending": stats.map(|s| s.hints_pending),
        }));
    }
    json!({ "node": node.id, "nodes": nodes })
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

fn metrics_text(node: &Node) -> String {
    let mut out = String::with_capacity(8 * 1024);
    node.metrics.render(&mut out);
    let s = node.replica.engine().stats();
    let _ = writeln!(
        out,
        "# TYPE kv_keys gauge\nkv_keys {}",
        node.replica.key_count()
    );
    let _ = writeln!(out, "# TYPE kv_storage_level_bytes gauge");
    for (level, bytes) in s.level_bytes.iter().enumerate() {
        let _ = writeln!(out, "kv_storage_level_bytes{{level=\"{level}\"}} {bytes}");
    }
    let _ = writeln!(out, "# TYPE kv_storage_level_tables gauge");
    for (level, n) in s.level_tables.iter().enumerate() {
        let _ = writeln!(out, "kv_storage_level_tables{{level=\"{level}\"}} {n}");
    }
    let gauges: [(&str, f64); 12] = [
        ("kv_storage_tables", s.table_count as f64),
        ("kv_storage_memtable_bytes", s.memtable_bytes as f64),
        ("kv_storage_flushes_total", s.flushes as f64),
        ("kv_storage_compactions_total", s.compactions as f64),
        ("kv_storage_wal_syncs_total", s.wal_syncs as f64),
        (
            "kv_storage_user_bytes_written_total",
            s.user_bytes_written as f64,
        ),
        (
            "kv_storage_flush_bytes_written_total",
            s.flush_bytes_written as f64,
        ),
        (
            "kv_storage_compaction_bytes_written_total",
            s.compaction_bytes_written as f64,
        ),
        ("kv_storage_write_amplification", s.write_amplification),
        (
            "kv_storage_stall_seconds_total",
            s.stall_micros as f64 / 1e6,
        ),
        ("kv_storage_bloom_skips_total", s.bloom_skips as f64),
        ("kv_storage_cache_hit_ratio", s.cache_hit_ratio),
    ];
    for (name, v) in gauges {
        let _ = writeln!(out, "{name} {v}");
    }
    let m = node.membership();
    let _ = writeln!(out, "# TYPE kv_gossip_members gauge");
    for state in ["up", "down", "joining", "leaving", "left"] {
        let n = m
            .members()
            .filter(|x| state_name(m.state(&x.id)) == state)
            .count();
        let _ = writeln!(out, "kv_gossip_members{{state=\"{state}\"}} {n}");
    }
    out
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

//! Counters and latency histograms for `/metrics` (Prometheus text format).
//!
//! Everything is a relaxed atomic: a request pays a few uncontended increments, never a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        if let Some(i) = BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The operations counted per op.
pub const OPS: [&str; 4] = ["get", "put", "delete", "incr"];

/// Kinds of peer requests a node serves, as `/metrics` labels them: the three of the request
/// path, then everything else (gossip, anti-entropy, streaming, hints, admin).
pub const PEER_KINDS: [&str; 4] = ["mint", "replicate", "read", "other"];

/// Per-op counters and latencies, plus the node's background activity.
#[derive(Default)]
pub struct Metrics {
    /// Client requests handled, per op in [`OPS`] order.
    pub requests: [AtomicU64; OPS.len()],
    /// Client requests that ended in an error, per op.
    pub errors: [AtomicU64; OPS.len()],
    /// Coordinator latency per op.
    pub latency: [Histogram; OPS.len()],
    /// Requests answered `unavailable` (quorum not met).
    pub unavailable: AtomicU64,
    /// Requests answered `timeout`.
    pub timeouts: AtomicU64,
    /// Stale replicas brought up to date after a read.
    pub read_repairs: AtomicU64,
    /// Frames refused as malformed or too large.
    pub bad_frames: AtomicU64,
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Client connections refused because the node had too many.
    pub connections_refused: AtomicU64,
    /// Requests refused because a connection had too many in flight.
    pub overloaded: AtomicU64,
    /// Requests sent to peers.
    pub peer_requests: AtomicU64,
    /// Peer requests that failed (unreachable, error, timeout).
    pub peer_failures: AtomicU64,
    /// Requests this node served for peers, by [`PEER_KINDS`]: its work as a replica of
    /// writes and reads other nodes coordinate.
    pub peer_served: [AtomicU64; 4],
    /// Gossip rounds completed.
    pub gossip_rounds: AtomicU64,
    /// Sibling values dropped because a key exceeded the sibling cap.
    pub siblings_capped: AtomicU64,
    /// Incoming connections whose TLS handshake failed (plain requests to a TLS port,
    /// clients that do not trust the certificate).
    pub tls_handshakes_failed: AtomicU64,
    /// Replica operations (reads and writes of this node's copy, for clients and for
    /// peers) that could not run from memory on the request's own thread — a block on disk,
    /// or a write that would wait for flushing or compaction — and ran on the blocking pool.
    pub blocking_pool_ops: AtomicU64,
}

/// Index of an op in [`OPS`].
pub fn op_index(op: &str) -> Option<usize> {
    OPS.iter().position(|o| *o == op)
}

impl Metrics {
    /// Renders the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        labeled_counters(
            out,
            "kv_requests_total",
            "Client requests handled, by op.",
            "op",
            &OPS,
            &self.requests,
        );
        labeled_counters(
            out,
            "kv_request_errors_total",
            "Client requests that ended in an error, by op.",
            "op",
            &OPS,
            &self.errors,
        );
        family(
            out,
            "kv_request_duration_seconds",
            "histogram",
            "Coordinator latency of client requests, by op.",
        );
        for (i, op) in OPS.iter().enumerate() {
            self.latency[i].render(out, "kv_request_duration_seconds", &format!("op=\"{op}\""));
        }
        labeled_counters(
            out,
            "kv_peer_served_total",
            "Requests this node served for peers, by kind.",
            "kind",
            &PEER_KINDS,
            &self.peer_served,
        );
        let singles: [(&str, &AtomicU64, &str, &str); 13] = [
            (
                "kv_unavailable_total",
                &self.unavailable,
                "counter",
                "Requests answered unavailable (quorum not met).",
            ),
            (
                "kv_timeouts_total",
                &self.timeouts,
                "counter",
                "Requests answered timeout.",
            ),
            (
                "kv_read_repairs_total",
                &self.read_repairs,
                "counter",
                "Stale replicas brought up to date after a read.",
            ),
            (
                "kv_bad_frames_total",
                &self.bad_frames,
                "counter",
                "Frames refused as malformed or too large.",
            ),
            (
                "kv_client_connections",
                &self.connections,
                "gauge",
                "Client connections open now.",
            ),
            (
                "kv_connections_refused_total",
                &self.connections_refused,
                "counter",
                "Client connections refused because the node had too many.",
            ),
            (
                "kv_overloaded_total",
                &self.overloaded,
                "counter",
                "Requests refused because their connection had too many in flight.",
            ),
            (
                "kv_peer_requests_total",
                &self.peer_requests,
                "counter",
                "Requests sent to peers.",
            ),
            (
                "kv_peer_failures_total",
                &self.peer_failures,
                "counter",
                "Peer requests that failed (unreachable, error, timeout).",
            ),
            (
                "kv_gossip_rounds_total",
                &self.gossip_rounds,
                "counter",
                "Gossip rounds completed.",
            ),
            (
                "kv_siblings_capped_total",
                &self.siblings_capped,
                "counter",
                "Sibling values dropped because a key exceeded the sibling cap.",
            ),
            (
                "kv_blocking_pool_ops_total",
                &self.blocking_pool_ops,
                "counter",
                "Replica operations that ran on the blocking pool (disk reads, stalled writes).",
            ),
            (
                "kv_tls_handshakes_failed_total",
                &self.tls_handshakes_failed,
                "counter",
                "Incoming connections whose TLS handshake failed.",
            ),
        ];
        for (name, v, kind, help) in singles {
            sample(out, name, kind, help, v.load(Relaxed));
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a family, written once, before its samples.
/// `kind` is `counter`, `gauge` or `histogram`; `help` is one line.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family of one unlabeled sample: its `# HELP` and `# TYPE` lines and `name value`.
pub fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A counter family with one label: `name{label="names[i]"} values[i]`.
fn labeled_counters(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    names: &[&str],
    values: &[AtomicU64],
) {
    family(out, name, "counter", help);
    for (n, v) in names.iter().zip(values) {
        let _ = writeln!(out, "{name}{{{label}=\"{n}\"}} {}", v.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x", "op=\"get\"");
        assert!(
            out.contains("x_bucket{op=\"get\",le=\"0.00005\"} 1"),
            "{out}"
        );
        assert!(out.contains("x_bucket{op=\"get\",le=\"0.001\"} 2"), "{out}");
        assert!(out.contains("x_bucket{op=\"get\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{op=\"get\"} 3"), "{out}");
    }
}

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

/// Shards of the per-request statistics. Each thread adds to one (see [`Requests`]).
const SHARDS: usize = 8;

/// One op's counts in one shard.
#[derive(Default)]
struct OpCounts {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Latency observations per bucket of [`BUCKETS_US`] (larger ones count only in
    /// `requests`, the histogram's `+Inf`).
    buckets: [AtomicU64; BUCKETS_US.len()],
    sum_us: AtomicU64,
}

/// A shard: every op's counts, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard([OpCounts; OPS.len()]);

/// Requests, errors and coordinator latency per op, kept in [`SHARDS`] shards: each thread
/// adds to its own, and `/metrics` sums them. With one set of counters, every request's four
/// increments pulled the same cache lines from one worker thread's core to the other's.
#[derive(Default)]
pub struct Requests {
    shards: [Shard; SHARDS],
}

thread_local! {
    /// This thread's shard of [`Requests`].
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Relaxed) as usize % SHARDS
    };
}

impl Requests {
    /// Counts one request of op `op` (an index in [`OPS`]) that took `d`.
    pub fn record(&self, op: usize, d: Duration, failed: bool) {
        let c = &self.shards[SHARD.with(|s| *s)].0[op];
        let us = d.as_micros() as u64;
        c.requests.fetch_add(1, Relaxed);
        if let Some(i) = BUCKETS_US.iter().position(|&b| us <= b) {
            c.buckets[i].fetch_add(1, Relaxed);
        }
        c.sum_us.fetch_add(us, Relaxed);
        if failed {
            c.errors.fetch_add(1, Relaxed);
        }
    }

    /// The sum over the shards of one op's count that `field` picks.
    fn total(&self, op: usize, field: impl Fn(&OpCounts) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(&s.0[op]).load(Relaxed))
            .sum()
    }

    /// Renders a counter family with a sample per op: the count `field` picks.
    fn render_counter(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        field: impl Fn(&OpCounts) -> &AtomicU64,
    ) {
        family(out, name, "counter", help);
        for (i, op) in OPS.iter().enumerate() {
            let _ = writeln!(out, "{name}{{op=\"{op}\"}} {}", self.total(i, &field));
        }
    }

    /// Renders op `op`'s latency histogram, a sample per bucket (cumulative), `_sum` and
    /// `_count`.
    fn render_latency(&self, out: &mut String, name: &str, op: usize) {
        let labels = format!("op=\"{}\"", OPS[op]);
        let mut cumulative = 0;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            cumulative += self.total(op, |c| &c.buckets[i]);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = self.total(op, |c| &c.requests);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.total(op, |c| &c.sum_us) as f64 / 1e6
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
    /// Client requests handled, those that ended in an error, and coordinator latency, per
    /// op in [`OPS`] order.
    pub requests: Requests,
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
        let r = &self.requests;
        let help = "Client requests handled, by op.";
        r.render_counter(out, "kv_requests_total", help, |c| &c.requests);
        let help = "Client requests that ended in an error, by op.";
        r.render_counter(out, "kv_request_errors_total", help, |c| &c.errors);
        family(
            out,
            "kv_request_duration_seconds",
            "histogram",
            "Coordinator latency of client requests, by op.",
        );
        for i in 0..OPS.len() {
            r.render_latency(out, "kv_request_duration_seconds", i);
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
        let h = Requests::default();
        h.record(0, Duration::from_micros(40), false);
        h.record(0, Duration::from_micros(700), true);
        h.record(1, Duration::from_micros(70), false);
        // What another thread records (in its own shard) counts in the totals too.
        std::thread::scope(|s| {
            s.spawn(|| h.record(0, Duration::from_secs(10), false));
        });
        let mut out = String::new();
        h.render_latency(&mut out, "x", 0);
        assert!(
            out.contains("x_bucket{op=\"get\",le=\"0.00005\"} 1"),
            "{out}"
        );
        assert!(out.contains("x_bucket{op=\"get\",le=\"0.001\"} 2"), "{out}");
        assert!(out.contains("x_bucket{op=\"get\",le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count{op=\"get\"} 3"), "{out}");
        assert_eq!(h.total(0, |c| &c.errors), 1);
        assert_eq!(h.total(1, |c| &c.requests), 1);
        let mut out = String::new();
        h.render_latency(&mut out, "x", 1);
        assert!(
            out.contains("x_bucket{op=\"put\",le=\"0.00005\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"put\",le=\"0.0001\"} 1"),
            "{out}"
        );
    }

    #[test]
    fn request_families_sum_the_shards() {
        let m = Metrics::default();
        m.requests.record(1, Duration::from_micros(300), true);
        std::thread::scope(|s| {
            s.spawn(|| m.requests.record(1, Duration::from_micros(30), false));
        });
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "# TYPE kv_requests_total counter",
            "kv_requests_total{op=\"put\"} 2",
            "kv_requests_total{op=\"get\"} 0",
            "# TYPE kv_request_errors_total counter",
            "kv_request_errors_total{op=\"put\"} 1",
            "kv_request_errors_total{op=\"get\"} 0",
            "# TYPE kv_request_duration_seconds histogram",
            "kv_request_duration_seconds_bucket{op=\"put\",le=\"0.00005\"} 1",
            "kv_request_duration_seconds_bucket{op=\"put\",le=\"0.0005\"} 2",
            "kv_request_duration_seconds_count{op=\"put\"} 2",
            "kv_request_duration_seconds_sum{op=\"put\"} 0.00033",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line} missing from:\n{out}"
            );
        }
    }
}

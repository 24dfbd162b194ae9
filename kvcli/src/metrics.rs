//! `kvcli metrics`: fetches a node's `/metrics` (Prometheus text, on the node's one port) and
//! summarizes it: requests and errors per op, latency percentiles estimated from the histogram
//! buckets, quorum failures, storage figures and the membership it sees.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{http_get, ClientError};
use crate::commands::{human_bytes, print_table, Env};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text format; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], Vec::new(), &line[sp..])
        }
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((name, value));
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(out)
}

/// The `q` quantile (0..1) of a histogram given as cumulative `(upper bound, count)` buckets
/// sorted by bound (the last may be +Inf), estimated as Prometheus' `histogram_quantile` does:
/// linear interpolation inside the bucket that holds the rank. A rank in the +Inf bucket
/// answers the highest finite bound (the true value is known only to be above it).
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let in_bucket = count - prev_count;
            if in_bucket <= 0.0 {
                return Some(bound);
            }
            return Some(prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket);
        }
        prev_bound = bound;
        prev_count = count;
    }
    Some(prev_bound)
}

/// The ops a node counts.
const OPS: [&str; 4] = ["get", "put", "delete", "incr"];

fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for s in samples.iter().filter(|s| s.name == name) {
        found = true;
        total += s.value;
    }
    found.then_some(total)
}

fn with_label(samples: &[Sample], name: &str, k: &str, v: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && s.label(k) == Some(v))
        .map(|s| s.value)
}

/// Total client requests a node has handled (`kv_requests_total` over every op).
pub fn requests_total(samples: &[Sample]) -> f64 {
    sum(samples, "kv_requests_total").unwrap_or(0.0)
}

/// The summary of one node's metrics as a JSON document (also the `--json` output).
pub fn summarize(node: &str, samples: &[Sample]) -> Value {
    let mut ops = serde_json::Map::new();
    for op in OPS {
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == "kv_request_duration_seconds_bucket" && s.label("op") == Some(op))
            .filter_map(|s| {
                let le = s.label("le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let us = |q: f64| quantile(&buckets, q).map(|s| (s * 1e6).round() as u64);
        let count = with_label(samples, "kv_request_duration_seconds_count", "op", op);
        let total = with_label(samples, "kv_request_duration_seconds_sum", "op", op);
        let mean = match (count, total) {
            (Some(c), Some(t)) if c > 0.0 => Some((t / c * 1e6).round() as u64),
            _ => None,
        };
        ops.insert(
            op.into(),
            json!({
                "requests": with_label(samples, "kv_requests_total", "op", op).unwrap_or(0.0) as u64,
                "errors": with_label(samples, "kv_request_errors_total", "op", op).unwrap_or(0.0) as u64,
                "latency_us": {"p50": us(0.50), "p95": us(0.95), "p99": us(0.99), "mean": mean},
            }),
        );
    }
    let int = |name: &str| sum(samples, name).map(|v| v as u64);
    let mut members = serde_json::Map::new();
    for s in samples.iter().filter(|s| s.name == "kv_gossip_members") {
        if let Some(state) = s.label("state") {
            members.insert(state.into(), json!(s.value as u64));
        }
    }
    json!({
        "node": node,
        "ops": ops,
        "unavailable": int("kv_unavailable_total"),
        "timeouts": int("kv_timeouts_total"),
        "read_repairs": int("kv_read_repairs_total"),
        "bad_frames": int("kv_bad_frames_total"),
        "overloaded": int("kv_overloaded_total"),
        "connections": int("kv_client_connections"),
        "peer_failures": int("kv_peer_failures_total"),
        // The unlabeled total shows 0 too; nodes older than it only have the per-target family.
        "hints_pending": int("kv_hints_pending_all_targets").or_else(|| int("kv_hints_pending")),
        "storage": {
            "keys": int("kv_keys"),
            "disk_bytes": int("kv_storage_level_bytes"),
            "memtable_bytes": int("kv_storage_memtable_bytes"),
            "tables": int("kv_storage_tables"),
            "flushes": int("kv_storage_flushes_total"),
            "compactions": int("kv_storage_compactions_total"),
            "write_amplification": sum(samples, "kv_storage_write_amplification"),
            "cache_hit_ratio": sum(samples, "kv_storage_cache_hit_ratio"),
        },
        "members": members,
    })
}

/// Fetches and parses the metrics of the node at `host_port`.
pub async fn fetch(host_port: &str, timeout: Duration) -> Result<Vec<Sample>, ClientError> {
    let text = http_get(host_port, "/metrics", timeout).await?;
    Ok(parse(&text))
}

/// Prints one node's summary.
pub fn print_summary(s: &Value, env: &Env) {
    let st = env.out;
    println!(
        "{}",
        st.bold(&match (s["node"].as_str(), s["addr"].as_str()) {
            (Some(id), Some(addr)) if id != addr => format!("node {id} ({addr})"),
            (Some(id), _) => format!("node {id}"),
            _ => "node ?".to_string(),
        })
    );
    let ms = |v: &Value| match v.as_u64() {
        Some(us) => format!("{:.2}", us as f64 / 1000.0),
        None => "-".into(),
    };
    let rows: Vec<Vec<String>> = OPS
        .iter()
        .map(|op| {
            let o = &s["ops"][op];
            let l = &o["latency_us"];
            vec![
                op.to_string(),
                o["requests"].to_string(),
                o["errors"].to_string(),
                ms(&l["p50"]),
                ms(&l["p95"]),
                ms(&l["p99"]),
                ms(&l["mean"]),
            ]
        })
        .collect();
    print_table(
        &[
            "OP", "REQUESTS", "ERRORS", "P50(ms)", "P95(ms)", "P99(ms)", "MEAN(ms)",
        ],
        &rows,
    );
    let n = |v: &Value| v.as_u64().map_or("-".to_string(), |x| x.to_string());
    println!(
        "failures: {} unavailable, {} timeouts, {} overloaded, {} bad frames, {} peer failures",
        n(&s["unavailable"]),
        n(&s["timeouts"]),
        n(&s["overloaded"]),
        n(&s["bad_frames"]),
        n(&s["peer_failures"])
    );
    println!(
        "activity: {} read repairs, {} client connections, {} hints pending",
        n(&s["read_repairs"]),
        n(&s["connections"]),
        n(&s["hints_pending"])
    );
    let g = &s["storage"];
    println!(
        "storage:  {} keys, {} on disk in {} tables, {} in memtable, {} flushes, {} compactions, write amplification {}, cache hits {}",
        n(&g["keys"]),
        g["disk_bytes"].as_u64().map_or("-".into(), human_bytes),
        n(&g["tables"]),
        g["memtable_bytes"].as_u64().map_or("-".into(), human_bytes),
        n(&g["flushes"]),
        n(&g["compactions"]),
        g["write_amplification"].as_f64().map_or("-".into(), |x| format!("{x:.2}")),
        g["cache_hit_ratio"].as_f64().map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
    );
    let members: BTreeMap<String, u64> = s["members"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .filter(|(_, v)| *v > 0)
                .collect()
        })
        .unwrap_or_default();
    let members: Vec<String> = members.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "members:  {}",
        if members.is_empty() {
            "-".into()
        } else {
            members.join(", ")
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE kv_requests_total counter
kv_requests_total{op="get"} 10
kv_requests_total{op="put"} 4
kv_request_errors_total{op="get"} 1
kv_request_duration_seconds_bucket{op="get",le="0.0001"} 5
kv_request_duration_seconds_bucket{op="get",le="0.001"} 9
kv_request_duration_seconds_bucket{op="get",le="+Inf"} 10
kv_request_duration_seconds_sum{op="get"} 0.02
kv_request_duration_seconds_count{op="get"} 10
kv_storage_level_bytes{level="0"} 100
kv_storage_level_bytes{level="1"} 50
kv_keys 7
kv_gossip_members{state="up"} 3
"#;

    #[test]
    fn parses_names_labels_and_values() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 12);
        assert_eq!(s[0].name, "kv_requests_total");
        assert_eq!(s[0].label("op"), Some("get"));
        assert_eq!(s[0].value, 10.0);
        assert_eq!(requests_total(&s), 14.0);
        assert!(parse_line(r#"x{a="q\"uote",b="2"} 3"#)
            .is_some_and(|x| x.label("a") == Some("q\"uote") && x.label("b") == Some("2")));
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [(0.0001, 5.0), (0.001, 9.0), (f64::INFINITY, 10.0)];
        // The median is the 5th of 10: the top of the first bucket.
        assert!((quantile(&b, 0.5).unwrap() - 0.0001).abs() < 1e-12);
        // p70 = rank 7: half-way through the second bucket (5..9).
        let p70 = quantile(&b, 0.7).unwrap();
        assert!((p70 - 0.00055).abs() < 1e-9, "{p70}");
        // p99 falls in +Inf: the highest finite bound.
        assert_eq!(quantile(&b, 0.99), Some(0.001));
        assert_eq!(quantile(&[(1.0, 0.0)], 0.5), None);
    }

    #[test]
    fn summary_adds_up_storage_and_ops() {
        let v = summarize("n1", &parse(TEXT));
        assert_eq!(v["ops"]["get"]["requests"], 10);
        assert_eq!(v["ops"]["get"]["errors"], 1);
        assert_eq!(v["ops"]["get"]["latency_us"]["p50"], 100);
        assert_eq!(v["ops"]["get"]["latency_us"]["mean"], 2000);
        assert_eq!(v["storage"]["disk_bytes"], 150);
        assert_eq!(v["storage"]["keys"], 7);
        assert_eq!(v["members"]["up"], 3);
    }
}

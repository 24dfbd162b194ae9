//! `kvcli bench` against a live node: every workload with tiny settings returns a sane
//! summary (the INTERFACE fields, ordered percentiles, the mix of its workload), the
//! --duration mode, the human report, and clear failures.

use kv_tests::{kvcli, Cluster, ClusterOpts};
use serde_json::Value;

fn one_node() -> Cluster {
    Cluster::start(1, ClusterOpts::one_replica())
}

fn bench(node: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["--node", node, "--json", "bench"];
    args.extend_from_slice(extra);
    let (code, out, err) = kvcli(&args);
    let doc = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    (code, doc, err)
}

fn assert_sane_latency(l: &Value, what: &str) {
    let p = |k: &str| {
        l[k].as_u64()
            .unwrap_or_else(|| panic!("{what}: latency_us.{k} missing in {l}"))
    };
    assert!(p("p50") > 0, "{what}: {l}");
    assert!(
        p("p50") <= p("p95")
            && p("p95") <= p("p99")
            && p("p99") <= p("p999")
            && p("p999") <= p("max"),
        "{what}: percentiles out of order: {l}"
    );
}

#[test]
fn every_workload_gives_a_sane_summary() {
    let cluster = one_node();
    let node = cluster.nodes[0].url();
    // (workload, the operation kinds its mix must show)
    let cases: [(&str, &[&str]); 7] = [
        ("put", &["update"]),
        ("get", &["read"]),
        ("a", &["read", "update"]),
        ("b", &["read", "update"]),
        ("c", &["read"]),
        ("d", &["read", "insert"]),
        ("f", &["read", "rmw"]),
    ];
    for (workload, kinds) in cases {
        let (code, doc, err) = bench(
            &node,
            &[
                "--workload",
                workload,
                "--records",
                "50",
                "--ops",
                "300",
                "--clients",
                "4",
                "--value-size",
                "64",
            ],
        );
        assert_eq!(code, 0, "{workload}: {err}");
        assert_eq!(doc["workload"], workload, "{doc}");
        assert_eq!(doc["ops"], 300, "{workload}: {doc}");
        assert_eq!(doc["errors"], 0, "{workload}: {doc}");
        assert!(doc["ops_per_sec"].as_f64().unwrap() > 0.0, "{doc}");
        assert_sane_latency(&doc["latency_us"], workload);
        let by_op = doc["by_op"].as_object().unwrap();
        let mut seen: Vec<&str> = by_op.keys().map(String::as_str).collect();
        seen.sort();
        let mut want = kinds.to_vec();
        want.sort();
        assert_eq!(seen, want, "{workload}: {doc}");
        let sum: u64 = by_op.values().map(|o| o["ops"].as_u64().unwrap()).sum();
        assert_eq!(sum, 300, "{workload}: the kinds add up to the total: {doc}");
        for (k, o) in by_op {
            assert_sane_latency(&o["latency_us"], &format!("{workload}/{k}"));
        }
    }
    // Two of f's clients may read-modify-write one key at once: concurrent writes, kept as
    // siblings, as they should be. A last read-only run's load phase replaces every record
    // with one write made with its read's context (one client per key), so the records
    // must be single values after it.
    let (code, doc, err) = bench(
        &node,
        &[
            "--workload",
            "get",
            "--records",
            "50",
            "--ops",
            "50",
            "--clients",
            "4",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["errors"], 0, "{doc}");
    // The load phase wrote the records, and d's inserts wrote new ones after them.
    let (code, out, _) = kvcli(&["--node", &node, "--json", "get", "key:0000000049"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["found"], true);
    assert_eq!(
        v["values"].as_array().unwrap().len(),
        1,
        "repeated runs replace records instead of piling up siblings: {v}"
    );
    let (_, out, _) = kvcli(&["--node", &node, "--json", "get", "key:0000000050"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["found"], true,
        "workload d inserted records past --records"
    );
}

#[test]
fn duration_mode_report_and_failures() {
    let cluster = one_node();
    let node = cluster.nodes[0].url();

    let (code, doc, err) = bench(
        &node,
        &[
            "--workload",
            "a",
            "--records",
            "20",
            "--duration",
            "0.5",
            "--clients",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(doc["ops"].as_u64().unwrap() > 0, "{doc}");
    let secs = doc["seconds"].as_f64().unwrap();
    assert!((0.4..5.0).contains(&secs), "ran for {secs} s: {doc}");
    assert_eq!(doc["distribution"], "zipfian");

    // The human report: the settings, throughput and a latency table.
    let (code, out, err) = kvcli(&[
        "--node",
        &node,
        "bench",
        "--workload",
        "b",
        "--records",
        "20",
        "--ops",
        "100",
        "--clients",
        "2",
        "--distribution",
        "uniform",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("workload b (95% read, 5% update), uniform distribution"),
        "{out}"
    );
    assert!(
        out.contains("throughput:") && out.contains("ops/s"),
        "{out}"
    );
    assert!(out.contains("P99.9") && out.contains("read"), "{out}");
    assert!(!out.contains('\x1b'), "no colour when piped: {out:?}");
    assert!(
        err.is_empty(),
        "no progress bar when stderr is not a terminal: {err:?}"
    );

    // Every operation failing (W above the replica count) is an error naming why.
    let (code, doc, err) = bench(
        &node,
        &[
            "--workload",
            "put",
            "--records",
            "5",
            "--ops",
            "10",
            "--clients",
            "2",
            "--w",
            "3",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(doc["errors"], 10, "the summary still counts them: {doc}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("every operation failed") && err.contains("exceeds"),
        "{err}"
    );

    let (code, _, err) = bench(&node, &["--clients", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--clients"), "{err}");
    let (code, _, err) = bench(&node, &["--workload", "z"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'z'"), "{err}");
    let (code, _, err) = bench("ws://127.0.0.1:1", &["--ops", "10"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unreachable"), "{err}");
}

/// Ctrl-C (SIGINT) ends a long run early with the summary of what was done.
#[test]
fn interrupted_run_still_reports() {
    let cluster = one_node();
    let node = cluster.nodes[0].url();
    let child = std::process::Command::new(kv_tests::kvcli_bin())
        .args([
            "--node",
            &node,
            "--json",
            "bench",
            "--workload",
            "c",
            "--records",
            "10",
            "--clients",
            "2",
            "--duration",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the measured phase runs (the node has served more gets than the 10 of the
    // load), then interrupt it.
    let addr = cluster.nodes[0].addr.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let gets = kv_tests::http_get(&addr, "/metrics")
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("kv_requests_total{op=\"get\"}"))
                    .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        if gets > 100 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the bench never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("bench interrupted after"), "{stderr}");
    let doc: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(doc["ops"].as_u64().unwrap() > 0, "{doc}");
    assert!(doc["seconds"].as_f64().unwrap() < 60.0, "{doc}");
}

#[test]
fn threads_sets_how_many_threads_run_the_clients() {
    let cluster = one_node();
    let node = cluster.nodes[0].url();
    for n in [1usize, 3] {
        let child = std::process::Command::new(kv_tests::kvcli_bin())
            .args([
                "--node",
                &node,
                "--json",
                "bench",
                "--records",
                "20",
                "--clients",
                "4",
            ])
            .args(["--duration", "3", "--threads", &n.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Counted while the measured phase runs; the runtime's threads all exist by then.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let workers = kv_tests::runtime_workers(child.id());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "--threads {n}");
        assert_eq!(workers, n, "--threads {n}");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(doc["ops"].as_u64().unwrap() > 0, "{doc}");
    }
    let (code, _, err) = bench(&node, &["--threads", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--threads must be at least 1"), "{err}");
}

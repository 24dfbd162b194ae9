//! `kvcli import`: JSON lines written to the cluster and read back with `get`; malformed lines
//! counted and named, the rest still imported. (`export` waits for a scan op in the node.)

use std::io::Write;

use kv_tests::{kvcli, kvcli_with_stdin, Cluster, ClusterOpts};
use serde_json::{json, Value};

#[test]
fn import_then_read_every_key_back() {
    let cluster = Cluster::start(3, ClusterOpts::default());
    let node = cluster.nodes[0].url();
    let dir = tempfile::tempdir().unwrap();

    // 300 pairs: plain, with spaces and quotes, non-ASCII, and bytes given as value_b64.
    let mut want: Vec<(String, Value)> = Vec::new();
    let path = dir.path().join("data.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..300 {
        let key = format!("imp:{i:04}");
        let line = match i % 4 {
            0 => json!({"key": key, "value": format!("value {i}")}),
            1 => json!({"key": key, "value": format!("with \"quotes\" and spaces {i}")}),
            2 => json!({"key": key, "value": format!("ünïcødé ✓ {i}")}),
            _ => json!({"key": key, "value_b64": "AAH/"}),
        };
        writeln!(f, "{line}").unwrap();
        let expect = match i % 4 {
            3 => json!({"value_b64": "AAH/"}),
            _ => line["value"].clone(),
        };
        want.push((key, expect));
    }
    drop(f);

    let (code, out, err) = kvcli(&["--node", &node, "--json", "import", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let counts: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(counts, json!({"imported": 300, "errors": 0}));

    // Every key back, in one script-mode session.
    let read_back = || {
        let script: String = want.iter().map(|(k, _)| format!("get {k}\n")).collect();
        let (code, out, err) = kvcli_with_stdin(&["--node", &node, "--json"], Some(&script));
        assert_eq!(code, 0, "{err}");
        let docs: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(docs.len(), 300);
        for ((key, value), doc) in want.iter().zip(&docs) {
            assert_eq!(doc["key"], key.as_str());
            assert_eq!(doc["values"], json!([value]), "{key}: {doc}");
        }
    };
    read_back();

    // The human output. Importing the same file again adds no sibling: a blind write of the
    // bytes a key already holds replaces them.
    let (code, out, err) = kvcli(&["--node", &node, "import", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("imported 300 keys from"), "{out}");
    read_back();
}

#[test]
fn malformed_lines_are_named_and_the_rest_imported() {
    let cluster = Cluster::start(1, ClusterOpts::one_replica());
    let node = cluster.nodes[0].url();
    let input = format!(
        "{}\nnot json\n\n{}\n{}\n{}\n",
        json!({"key": "good1", "value": "a"}),
        json!({"value": "no key"}),
        json!({"key": "k".repeat(2000), "value": "key too large"}),
        json!({"key": "good2", "value": "b"}),
    );
    // From standard input.
    let (code, out, err) =
        kvcli_with_stdin(&["--node", &node, "--json", "import", "-"], Some(&input));
    assert_eq!(code, 1, "failed lines make the import fail: {err}");
    let counts: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(counts, json!({"imported": 2, "errors": 3}));
    assert!(err.contains("line 2: not JSON"), "{err}");
    assert!(err.contains("line 4: no \"key\""), "{err}");
    assert!(err.contains("line 5") && err.contains("too_large"), "{err}");
    for (k, v) in [("good1", "a"), ("good2", "b")] {
        let (_, out, _) = kvcli(&["--node", &node, "get", k]);
        assert!(out.starts_with(&format!("{v}\n")), "{out}");
    }

    let (code, _, err) = kvcli(&["--node", &node, "import", "/nonexistent/file.jsonl"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot open /nonexistent/file.jsonl"), "{err}");
}

//! kvcli's admin commands against a live cluster: hints, repair, export (round trip with
//! import) and decommission, each with its `--json` shape.

use std::collections::BTreeSet;

use kv_tests::{kvcli, Cluster, ClusterOpts};
use serde_json::Value;

fn json(line: &str) -> Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn hints_repair_export_import_and_decommission() {
    let cluster = Cluster::start(4, ClusterOpts::default());
    let node = cluster.nodes[0].url();
    let n = ["--node", node.as_str(), "--json"];

    let (code, out, err) = kvcli(&[n[0], n[1], n[2], "hints"]);
    assert_eq!(code, 0, "{err}");
    assert!(json(&out)["hints"].is_array(), "{out}");

    // Import a file with a binary value and a value with spaces, then export everything.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut lines = Vec::new();
    for i in 0..150 {
        lines.push(format!(r#"{{"key":"exp{i}","value":"value {i}"}}"#));
    }
    lines.push(r#"{"key":"bin","value":{"value_b64":"AP8A"}}"#.to_string());
    std::fs::write(&input, lines.join("\n")).unwrap();
    let (code, out, err) = kvcli(&[n[0], n[1], n[2], "import", input.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["imported"], 151, "{out}");

    let exported = dir.path().join("out.jsonl");
    let (code, out, err) = kvcli(&[
        n[0],
        n[1],
        n[2],
        "export",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["keys"], 151, "{out}");
    let read = |p: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| json(l).to_string())
            .collect()
    };
    assert_eq!(
        read(&exported),
        read(&input),
        "export gives back exactly what was imported"
    );

    let (code, out, err) = kvcli(&[n[0], n[1], n[2], "repair"]);
    assert_eq!(code, 0, "{err}");
    let r = json(&out);
    for f in ["ranges_compared", "keys_repaired", "bytes_exchanged"] {
        assert!(r[f].is_u64(), "repair lacks {f}: {out}");
    }
    assert_eq!(r["keys_repaired"], 0, "a healthy cluster is in sync: {out}");

    let (code, out, err) = kvcli(&[n[0], n[1], n[2], "decommission", "n4"]);
    assert_eq!(code, 0, "{err}");
    let d = json(&out);
    assert_eq!(d["ok"], true, "{out}");
    assert!(d["moved_keys"].as_u64().unwrap() > 0, "{out}");
    let (_, out, _) = kvcli(&[n[0], n[1], n[2], "ring"]);
    let ids: Vec<String> = json(&out)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.contains(&"n4".to_string()), "{ids:?}");
    // A node that left is out of the cluster, not a holder that failed to answer.
    let (code, out, err) = kvcli(&[n[0], n[1], n[2], "hints"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !json(&out)["holders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["node"] == "n4"),
        "{out}"
    );
    // Everything is still there after the node left.
    let (code, out, err) = kvcli(&[
        n[0],
        n[1],
        n[2],
        "export",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["keys"], 151, "{out}");
    assert_eq!(read(&exported), read(&input));

    let (code, _, err) = kvcli(&[n[0], n[1], "decommission", "nobody"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a node"), "{err}");
}

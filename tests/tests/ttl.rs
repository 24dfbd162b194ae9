//! Values with a time to live (`put ... "ttl_s"`, `kvcli put --ttl`): readable until they
//! expire, then read as deleted on every replica; a write with the read's context replaces an
//! expired value; expired values are purged like tombstones once every replica holds them;
//! export and import keep the expiry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_tests::{kvcli, Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn purged(addr: &str) -> u64 {
    kv_tests::metric(addr, "kv_tombstones_purged_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_expire_everywhere_are_replaced_purged_and_exported_with_their_expiry() {
    let mut opts = ClusterOpts::default();
    opts.extra.extend(kv_tests::PURGE_SOON.map(String::from));
    let cluster = Cluster::start(3, opts);
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let mut ws = Ws::connect(&urls[0]).await;
    let put = |key: &str, ttl: Option<u64>| {
        let mut req = json!({"op": "put", "key": key, "value": key, "w": 3});
        if let Some(t) = ttl {
            req["ttl_s"] = json!(t);
        }
        req
    };
    let before = now_ms();
    for (key, ttl) in [("session", Some(2)), ("tmp", Some(1)), ("forever", None)] {
        let r = ws.request(put(key, ttl)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let url = &urls[2];
    let (code, out, err) = kvcli(&["--node", url, "put", "cli", "from kvcli", "--ttl", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = kvcli(&["--node", url, "get", "cli"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("from kvcli\n") && out.contains("expires in "),
        "{out}"
    );

    // Readable until then, with the expiry in the answer, through any node.
    let mut other = Ws::connect(&urls[1]).await;
    let got = other
        .request(json!({"op": "get", "key": "session", "r": 3}))
        .await;
    assert_eq!(got["values"], json!(["session"]), "{got}");
    let expires = got["siblings"][0]["expires_at_ms"].as_u64().unwrap();
    assert!(
        (before + 1_900..=now_ms() + 2_100).contains(&expires),
        "expires at {expires}, written at {before}"
    );
    let forever = other.request(json!({"op": "get", "key": "forever"})).await;
    assert!(
        forever["siblings"][0].get("expires_at_ms").is_none(),
        "{forever}"
    );

    // Export keeps the expiry.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.jsonl");
    let (code, _, err) = kvcli(&[
        "--node",
        &urls[0],
        "export",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line = |k: &str| lines.iter().find(|l| l["key"] == k).cloned().unwrap();
    assert_eq!(line("session")["expires_at_ms"], json!(expires));
    assert!(line("forever").get("expires_at_ms").is_none());

    // Expired: deleted for every reader, on every replica, but still a version.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    for url in &urls {
        let mut c = Ws::connect(url).await;
        for key in ["session", "tmp", "cli"] {
            let local = c
                .request(json!({"op": "get", "key": key, "local": true}))
                .await;
            assert_eq!(local["found"], false, "{url} {key}: {local}");
            assert_eq!(local["values"], json!([]), "{url} {key}: {local}");
            assert_ne!(local["context"], "", "{url} {key}: {local}");
        }
        let kept = c.request(json!({"op": "get", "key": "forever"})).await;
        assert_eq!(kept["values"], json!(["forever"]), "{kept}");
    }
    // A write with the read's context replaces the expired value (no hidden sibling left).
    let read = ws.request(json!({"op": "get", "key": "session"})).await;
    let w = ws
        .request(json!({"op": "put", "key": "session", "value": "renewed", "context": read["context"], "w": 3}))
        .await;
    assert_eq!(w["ok"], true, "{w}");
    let again = other
        .request(json!({"op": "get", "key": "session", "r": 3}))
        .await;
    assert_eq!(again["values"], json!(["renewed"]), "{again}");

    // Purged like tombstones once every replica synced after the expiry (less the allowed
    // clock skew of 1 s): the expired keys leave no state.
    kv_tests::purge_now(&urls).await;
    let mut total = 0;
    for (i, url) in urls.iter().enumerate() {
        let mut c = Ws::connect(url).await;
        for key in ["tmp", "cli"] {
            let local = c
                .request(json!({"op": "get", "key": key, "local": true}))
                .await;
            assert_eq!(local["context"], "", "{url} still holds {key}: {local}");
        }
        total += purged(&cluster.nodes[i].addr);
    }
    assert!(
        total >= 6,
        "two expired keys purged on three replicas: {total}"
    );

    // Import: an expired line is skipped, a live one keeps the time it has left.
    let input = dir.path().join("import.jsonl");
    let now = now_ms();
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n",
            json!({"key": "imp-old", "value": "x", "expires_at_ms": now - 1_000}),
            json!({"key": "imp-new", "value": "y", "expires_at_ms": now + 60_000}),
        ),
    )
    .unwrap();
    let (code, out, err) = kvcli(&[
        "--node",
        &urls[0],
        "--json",
        "import",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["imported"], 1, "{out}");
    assert_eq!(summary["expired"], 1, "{out}");
    let imp = ws.request(json!({"op": "get", "key": "imp-new"})).await;
    let at = imp["siblings"][0]["expires_at_ms"].as_u64().unwrap();
    assert!(
        (now + 59_000..=now + 62_000).contains(&at),
        "imported expiry {at}"
    );
    let old = ws.request(json!({"op": "get", "key": "imp-old"})).await;
    assert_eq!(old["found"], false, "{old}");

    // Bad times to live are refused, and nothing is written.
    for bad in [json!(0), json!(-5), json!(1u64 << 40)] {
        let r = ws
            .request(json!({"op": "put", "key": "bad", "value": "v", "ttl_s": bad}))
            .await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "bad_request", "{r}");
    }
    let r = ws
        .request(json!({"op": "delete", "key": "forever", "ttl_s": 5}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let bad = ws.request(json!({"op": "get", "key": "bad"})).await;
    assert_eq!(bad["context"], "", "{bad}");
}

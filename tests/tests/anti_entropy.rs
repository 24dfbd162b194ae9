//! Merkle anti-entropy: a wiped node refilled by `repair`; a delete made while a replica was
//! down stays deleted after repair; the bytes a repair exchanges follow the differences.

use std::time::Duration;

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

fn opts() -> ClusterOpts {
    ClusterOpts {
        extra: vec![
            "--gossip-interval-ms".into(),
            "300".into(),
            // Only on demand: the tests decide when repair runs.
            "--anti-entropy-interval-s".into(),
            "0".into(),
        ],
        ..ClusterOpts::default()
    }
}

async fn repair(url: &str) -> Value {
    let mut ws = Ws::connect(url).await;
    let r = ws.request(json!({"op": "repair"})).await;
    assert_eq!(r["ok"], true, "{r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_rejoins_at_its_place_and_repair_refills_it() {
    let mut cluster = Cluster::start(3, opts());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    for i in 0..300 {
        let r = ws
            .request(json!({"op": "put", "key": format!("w{i}"), "value": format!("v{i}"), "w": 3}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let tokens_before =
        std::fs::read_to_string(cluster.nodes[2].data_dir.join("node-identity.json")).unwrap();
    let tokens_before: Value = serde_json::from_str(&tokens_before).unwrap();

    cluster.kill(2);
    std::fs::remove_dir_all(&cluster.nodes[2].data_dir).unwrap();
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));
    let identity: Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.nodes[2].data_dir.join("node-identity.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        identity["tokens"], tokens_before["tokens"],
        "back at its old place in the ring"
    );
    assert_ne!(
        identity["actor"], tokens_before["actor"],
        "a new data dir mints under a new name"
    );

    let mut local = Ws::connect(&cluster.nodes[2].url()).await;
    let r = local
        .request(json!({"op": "get", "key": "w0", "local": true}))
        .await;
    assert_eq!(r["found"], false, "the wiped node starts empty: {r}");

    let stats = repair(&cluster.nodes[2].url()).await;
    assert_eq!(stats["keys_repaired"], 300, "{stats}");
    for i in 0..300 {
        let r = local
            .request(json!({"op": "get", "key": format!("w{i}"), "local": true}))
            .await;
        assert_eq!(
            r["values"],
            json!([format!("v{i}")]),
            "w{i} after repair: {r}"
        );
    }
    // A second repair finds everything in sync.
    let again = repair(&cluster.nodes[2].url()).await;
    assert_eq!(again["keys_repaired"], 0, "{again}");
    assert_eq!(again["ranges_in_sync"], again["ranges_compared"], "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_made_while_a_replica_was_down_stays_deleted_after_repair() {
    let mut cluster = Cluster::start(3, opts());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    let r = ws
        .request(json!({"op": "put", "key": "doomed", "value": "alive", "w": 3}))
        .await;
    assert_eq!(r["ok"], true);
    let read = ws.request(json!({"op": "get", "key": "doomed"})).await;

    cluster.kill(2);
    cluster.wait_state(0, 2, "down", Duration::from_secs(20));
    // Strict: no hint, so only anti-entropy can tell the returning replica.
    let d = ws
        .request(json!({"op": "delete", "key": "doomed", "context": read["context"], "w": 2, "sloppy": false}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));

    let mut n3 = Ws::connect(&cluster.nodes[2].url()).await;
    let before = n3
        .request(json!({"op": "get", "key": "doomed", "local": true}))
        .await;
    assert_eq!(
        before["values"],
        json!(["alive"]),
        "the returning replica still has it: {before}"
    );

    let stats = repair(&cluster.nodes[0].url()).await;
    assert!(stats["keys_repaired"].as_u64().unwrap() >= 1, "{stats}");
    for node in &cluster.nodes {
        let mut c = Ws::connect(&node.url()).await;
        let local = c
            .request(json!({"op": "get", "key": "doomed", "local": true}))
            .await;
        assert_eq!(
            local["found"], false,
            "{} resurrected the key: {local}",
            node.id
        );
        let read = c
            .request(json!({"op": "get", "key": "doomed", "r": 3}))
            .await;
        assert_eq!(read["found"], false, "{read}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_traffic_follows_the_differences_not_the_data() {
    let mut cluster = Cluster::start(3, opts());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    let value = "x".repeat(200);
    for i in 0..3000 {
        let r = ws
            .request(json!({"op": "put", "key": format!("d{i}"), "value": value, "w": 3}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let in_sync = repair(&cluster.nodes[2].url()).await;
    assert_eq!(in_sync["keys_repaired"], 0, "{in_sync}");
    let quiet_bytes = in_sync["bytes_exchanged"].as_u64().unwrap();

    cluster.kill(2);
    cluster.wait_state(0, 2, "down", Duration::from_secs(20));
    for i in 0..10 {
        let r = ws
            .request(json!({"op": "put", "key": format!("d{i}"), "value": "changed", "w": 2, "sloppy": false}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));
    let stats = repair(&cluster.nodes[2].url()).await;
    assert_eq!(stats["keys_repaired"], 10, "{stats}");
    let bytes = stats["bytes_exchanged"].as_u64().unwrap();
    let data_bytes = 3000 * (value.len() as u64 + 8);
    println!("repair of 10 changed keys among 3000: {bytes} bytes exchanged (in-sync check: {quiet_bytes} bytes; data {data_bytes} bytes)");
    assert!(
        bytes * 10 < data_bytes,
        "repair sent {bytes} bytes for 10 keys of {data_bytes} bytes of data"
    );
}

fn metric(addr: &str, name: &str) -> u64 {
    kv_tests::http_get(addr, "/metrics")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_is_purged_only_once_every_replica_holds_it() {
    let mut o = opts();
    o.extra
        .extend(["--tombstone-grace-s", "0", "--hint-expiry-s", "1"].map(String::from));
    let mut cluster = Cluster::start(3, o);
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    assert_eq!(
        ws.request(json!({"op": "put", "key": "gone", "value": "v", "w": 3}))
            .await["ok"],
        true
    );
    let read = ws.request(json!({"op": "get", "key": "gone"})).await;

    cluster.kill(2);
    cluster.wait_state(0, 2, "down", Duration::from_secs(20));
    let d = ws
        .request(json!({"op": "delete", "key": "gone", "context": read["context"], "w": 2, "sloppy": false}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // n3 missed the delete: no replica may purge the tombstone yet.
    repair(&cluster.nodes[0].url()).await;
    let held = ws
        .request(json!({"op": "get", "key": "gone", "local": true}))
        .await;
    assert_eq!(held["found"], false);
    assert_ne!(
        held["context"], "",
        "the tombstone is kept while a replica lacks it: {held}"
    );
    assert_eq!(
        metric(&cluster.nodes[0].addr, "kv_tombstones_purged_total"),
        0
    );

    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));
    // Every pair of replicas syncs; then each purges.
    for i in 0..3 {
        repair(&cluster.nodes[i].url()).await;
    }
    for i in 0..3 {
        repair(&cluster.nodes[i].url()).await;
    }
    let mut purged = 0;
    for node in &cluster.nodes {
        let mut c = Ws::connect(&node.url()).await;
        let local = c
            .request(json!({"op": "get", "key": "gone", "local": true}))
            .await;
        assert_eq!(
            local["found"], false,
            "{} brought the value back: {local}",
            node.id
        );
        assert_eq!(
            local["context"], "",
            "{} still holds the tombstone: {local}",
            node.id
        );
        purged += metric(&node.addr, "kv_tombstones_purged_total");
    }
    // At least once each: a replica that could not purge yet may carry the tombstone back once
    // to one that already had, which then purges it again.
    assert!(purged >= 3, "each replica purged the tombstone: {purged}");
    // The key can be written again, and reads back.
    assert_eq!(
        ws.request(json!({"op": "put", "key": "gone", "value": "back", "w": 3}))
            .await["ok"],
        true
    );
    let r = ws
        .request(json!({"op": "get", "key": "gone", "r": 3}))
        .await;
    assert_eq!(r["values"], json!(["back"]), "{r}");
}

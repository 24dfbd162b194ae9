//! A node SIGKILLed and restarted keeps its data and identity; a node paused (SIGSTOP) during a
//! write misses it and is repaired by a later read.

use std::time::Duration;

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_with_its_data_and_identity() {
    let mut cluster = Cluster::start(
        3,
        ClusterOpts {
            sync: "always",
            ..ClusterOpts::default()
        },
    );
    let url2 = cluster.nodes[2].url();
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    for i in 0..200 {
        let r = ws
            .request(json!({"op": "put", "key": format!("k{i}"), "value": format!("v{i}"), "w": 3}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let identity_before =
        std::fs::read_to_string(cluster.nodes[2].data_dir.join("node-identity.json")).unwrap();

    cluster.kill(2);
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));

    let identity_after: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.nodes[2].data_dir.join("node-identity.json")).unwrap(),
    )
    .unwrap();
    let before: serde_json::Value = serde_json::from_str(&identity_before).unwrap();
    assert_eq!(identity_after["id"], "n3");
    assert_eq!(
        identity_after["tokens"], before["tokens"],
        "same place in the ring"
    );
    assert_eq!(
        identity_after["actor"], before["actor"],
        "same data, same actor"
    );

    // With N=3 on 3 nodes every key is local to every node: all 200 are there after the crash.
    let mut local = Ws::connect(&url2).await;
    for i in 0..200 {
        let r = local
            .request(json!({"op": "get", "key": format!("k{i}"), "local": true}))
            .await;
        assert_eq!(
            r["values"],
            json!([format!("v{i}")]),
            "k{i} after restart: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_misses_a_write_and_a_read_repairs_it() {
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            extra: vec![
                "--gossip-interval-ms".into(),
                "300".into(),
                "--request-timeout-ms".into(),
                "2000".into(),
            ],
            ..ClusterOpts::default()
        },
    );
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    assert_eq!(
        ws.request(json!({"op": "put", "key": "p", "value": "old", "w": 3}))
            .await["ok"],
        true
    );

    // Paused and known down: the coordinator does not send it the write at all.
    cluster.pause(2);
    cluster.wait_state(0, 2, "down", Duration::from_secs(20));
    let r = ws.request(json!({"op": "get", "key": "p", "r": 2})).await;
    let ctx = r["context"].as_str().unwrap().to_string();
    let w = ws
        .request(json!({"op": "put", "key": "p", "value": "new", "context": ctx, "w": 2}))
        .await;
    assert_eq!(w["ok"], true, "W=2 is met by the two running replicas: {w}");
    cluster.resume(2);
    cluster.wait_state(0, 2, "up", Duration::from_secs(20));

    let mut n3 = Ws::connect(&cluster.nodes[2].url()).await;
    let before = n3
        .request(json!({"op": "get", "key": "p", "local": true}))
        .await;
    assert_eq!(
        before["values"],
        json!(["old"]),
        "the paused node missed the write: {before}"
    );

    // A read through any coordinator that hears from all three repairs the stale replica.
    let r = ws.request(json!({"op": "get", "key": "p", "r": 3})).await;
    assert_eq!(r["values"], json!(["new"]), "{r}");
    let mut repaired = false;
    for _ in 0..50 {
        let after = n3
            .request(json!({"op": "get", "key": "p", "local": true}))
            .await;
        if after["values"] == json!(["new"]) {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(repaired, "read repair brought the paused node up to date");
    // The coordinator counts the repair once the replica acknowledged it, a moment after the
    // replica applied it.
    let mut repairs = 0;
    for _ in 0..50 {
        let metrics = kv_tests::http_get(&cluster.nodes[0].addr, "/metrics").unwrap();
        repairs = metrics
            .lines()
            .find_map(|l| l.strip_prefix("kv_read_repairs_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        if repairs >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(repairs >= 1, "read repairs are counted in /metrics");
}

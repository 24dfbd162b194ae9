//! Changing a node's weight rebalances: restarted with `--weight 2`, a node takes about twice
//! the share of the ring, streams in the data of the ranges it gains and hands over what it
//! gives up; every key stays readable and each replica holds what it serves.

use std::time::{Duration, Instant};

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

async fn ownership(url: &str, id: &str) -> f64 {
    let mut ws = Ws::connect(url).await;
    let ring = ws.request(json!({"op": "ring"})).await;
    ring["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["ownership"].as_f64())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_twice_the_weight_takes_about_twice_the_data() {
    let mut cluster = Cluster::start(4, ClusterOpts::one_replica());
    let url = cluster.nodes[0].url();
    let mut ws = Ws::connect(&url).await;
    for i in 0..600 {
        let r = ws
            .request(json!({"op": "put", "key": format!("wt{i}"), "value": format!("v{i}")}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let before = ownership(&url, "n4").await;

    cluster.stop(3);
    cluster.set_flag(3, "--weight", "2");
    cluster.restart(3);
    cluster.wait_converged(Duration::from_secs(30));
    // Wait for the move to finish (the node reports no transfer any more).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = ws.request(json!({"op": "status"})).await;
        let n4 = st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "n4")
            .cloned()
            .unwrap();
        let identity =
            std::fs::read_to_string(cluster.nodes[3].data_dir.join("node-identity.json")).unwrap();
        if n4["transfer"].is_null() && identity.contains("\"moving_from\": null") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebalance did not finish: {n4}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = ownership(&url, "n4").await;
    println!("n4 owned {before:.3} of the ring at weight 1, {after:.3} at weight 2");
    assert!(
        after > before * 1.5,
        "weight 2 takes a larger share: {before} -> {after}"
    );

    // N=1: each key lives on exactly its one owner, which must hold it.
    for i in 0..600 {
        let key = format!("wt{i}");
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["values"], json!([format!("v{i}")]), "{key}: {r}");
        let pl = ws.request(json!({"op": "ring", "key": key})).await;
        let owner = pl["preference_list"][0].as_str().unwrap().to_string();
        let idx = cluster.nodes.iter().position(|n| n.id == owner).unwrap();
        let mut local = Ws::connect(&cluster.nodes[idx].url()).await;
        let l = local
            .request(json!({"op": "get", "key": key, "local": true}))
            .await;
        assert_eq!(
            l["values"],
            json!([format!("v{i}")]),
            "{owner} serves {key} but lacks it: {l}"
        );
    }
}
